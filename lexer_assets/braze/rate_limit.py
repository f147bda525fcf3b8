"""Client-side rate limiting for Braze: a sliding-window limiter shared per endpoint, and header parsing.

Braze counts requests per workspace, so every sender in this process that talks to one endpoint must draw
from the same budget. The limiter is thread-safe and loop-agnostic (it hands out *delays*, the caller sleeps),
because each sync client call runs its own asyncio loop, possibly in different threads.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import httpx


class SlidingWindowLimiter:
    """At most ``requests`` reservations in any interval of ``window_s`` seconds (monotonic clock).

    A sliding window is stricter than Braze's fixed windows, so staying under it keeps every fixed window
    under the limit too. ``margin`` shrinks the budget a little because the server counts arrival times,
    which jitter relative to our send times.
    """

    def __init__(
        self, requests: int, window_s: float, *, margin: float = 0.02, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._blocked_until = 0.0
        self.configure(requests, window_s, margin=margin)

    def configure(self, requests: int, window_s: float, *, margin: float = 0.02) -> None:
        """Change the budget (keeps the recent history so the switch cannot cause a burst)."""
        if requests < 1 or window_s <= 0:
            raise ValueError(f"rate limit must be >= 1 request per > 0 s, got {requests} per {window_s}")
        with self._lock:
            self.requests = requests
            self.window_s = window_s
            self._budget = max(1, int(requests * (1.0 - margin)))
            old = list(getattr(self, "_sent", ()))
            self._sent: deque[float] = deque(old[-self._budget :], maxlen=self._budget)

    def reserve(self) -> float:
        """Reserve the next send slot; returns how many seconds the caller must wait before sending."""
        with self._lock:
            now = self._clock()
            slot = max(now, self._blocked_until)
            if len(self._sent) == self._budget:
                slot = max(slot, self._sent[0] + self.window_s)
            self._sent.append(slot)  # maxlen drops the oldest
            return slot - now

    def block_for(self, seconds: float) -> None:
        """Hold every sender back for ``seconds`` (Braze said 429 or 0 remaining until its reset)."""
        with self._lock:
            self._blocked_until = max(self._blocked_until, self._clock() + max(0.0, seconds))

    def blocked_for(self) -> float:
        """Seconds until senders may go again (0 if not blocked)."""
        with self._lock:
            return max(0.0, self._blocked_until - self._clock())


_REGISTRY: dict[str, SlidingWindowLimiter] = {}
_REGISTRY_LOCK = threading.Lock()


def shared_limiter(key: str, requests: int, window_s: float) -> SlidingWindowLimiter:
    """The process-wide limiter for ``key`` (endpoint + endpoint group); the latest configuration wins."""
    with _REGISTRY_LOCK:
        limiter = _REGISTRY.get(key)
        if limiter is None:
            limiter = _REGISTRY[key] = SlidingWindowLimiter(requests, window_s)
        elif (limiter.requests, limiter.window_s) != (requests, window_s):
            limiter.configure(requests, window_s)
        return limiter


@dataclass(frozen=True)
class RateLimitInfo:
    limit: int | None
    remaining: int | None
    reset_epoch: float | None  # epoch seconds when the current window ends

    def seconds_until_reset(self, now_epoch: float | None = None) -> float | None:
        if self.reset_epoch is None:
            return None
        return self.reset_epoch - (time.time() if now_epoch is None else now_epoch)


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value.strip())
    except ValueError:
        return None


def parse_rate_limit_headers(headers: Mapping[str, str]) -> RateLimitInfo:
    """Read ``X-RateLimit-Limit/Remaining/Reset`` in any letter case (HTTP/2 sends them lower-case)."""
    # httpx.Headers already looks names up case-insensitively; only plain mappings need lowering.
    lowered = headers if isinstance(headers, httpx.Headers) else {k.lower(): v for k, v in headers.items()}
    limit = _number(lowered.get("x-ratelimit-limit"))
    remaining = _number(lowered.get("x-ratelimit-remaining"))
    reset = _number(lowered.get("x-ratelimit-reset"))
    return RateLimitInfo(
        limit=None if limit is None else int(limit),
        remaining=None if remaining is None else int(remaining),
        reset_epoch=reset,
    )
