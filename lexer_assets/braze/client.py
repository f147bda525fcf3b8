"""Braze REST client: /users/track, /users/export/segment, /users/export/ids, /segments/list.

Sync methods on top of an async httpx client (bounded concurrency), so Dagster assets call them from plain
code. What it guarantees for /users/track (see ``send_attributes``): one ``ObjectResult`` per input object;
no request above the batch cap; 201 partial errors attributed to exactly the objects Braze named; a 400 batch
bisected down to the bad objects; 5xx / timeouts / dropped connections retried with exponential backoff and
jitter, and what never got through reported ``pending`` rather than lost; 429 honoured until Braze's reset;
a process-wide limiter per endpoint that keeps all senders under the workspace limit; 401/403 raised at once.
The REST key never appears in repr, log records or exception messages.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import logging
import random
import ssl
import threading
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import httpx

from lexer_assets.braze.batching import BATCH_MODES, identifier_problem
from lexer_assets.braze.rate_limit import SlidingWindowLimiter, parse_rate_limit_headers, shared_limiter

log = logging.getLogger(__name__)

T = TypeVar("T")

# Permission each endpoint needs (named in 403 errors so the fix is obvious).
ENDPOINT_PERMISSIONS = {
    "/users/track": "users.track",
    "/users/export/segment": "users.export.segment",
    "/users/export/ids": "users.export.ids",
    "/segments/list": "segments.list",
}
EXPORT_IDS_PER_REQUEST = 50
SEGMENTS_PAGE_SIZE = 100
# One encoder for every object (json.dumps with options builds a new encoder per call).
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
# Braze's shared pool for the export and segment endpoints.
OTHER_RATE_LIMIT = (250_000, 3600.0)


class BrazeError(Exception):
    """A Braze call failed; the message names the endpoint and cause but never the REST key."""


class BrazeAuthError(BrazeError):
    """401 (wrong key or cluster) or 403 (key lacks a permission). Never retried.

    ``results`` holds what ``send_attributes`` knew when it stopped (objects not confirmed are pending).
    """

    def __init__(self, message: str, *, status: int, results: list[ObjectResult] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.results = results


@dataclass(frozen=True)
class ObjectResult:
    """Outcome of one input object of ``send_attributes``.

    ``failed``: Braze refused it (permanent). ``pending``: never confirmed (transient errors exhausted, or
    the run stopped); safe to send again. ``rejected``: refused locally (e.g. no identifier), never sent.
    ``batch`` numbers the request batch it settled in (0-based, in the order batches were made, the halves
    of a bisected 400 batch included); None when never sent.
    """

    index: int
    status: Literal["done", "failed", "pending", "rejected"]
    reason: str | None
    batch: int | None


@dataclass
class ClientStats:
    """Counters for one client (cumulative over its calls); handy for benchmarks and run metadata."""

    requests: int = 0
    rate_limited: int = 0  # 429 answers
    transient_errors: int = 0  # 5xx, timeouts, connection errors
    bisections: int = 0


class _NoCookies(httpx.Cookies):
    """A cookie jar that ignores cookies (Braze sets none)."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None

    def set_cookie_header(self, request: httpx.Request) -> None:
        return None


class _GaveUp(Exception):
    """Transient failures (or 429s) outlasted the retry budget."""


class _Aborted(Exception):
    """Another request hit an auth error; stop sending."""


@dataclass
class _TrackRun:
    objects: list[dict]
    results: list[ObjectResult | None]
    total: int
    on_progress: Callable[[int, int], None] | None
    batch_numbers: itertools.count
    semaphore: asyncio.Semaphore
    settled: int = 0
    abort: BrazeAuthError | None = None

    def settle(
        self, indices: Sequence[int], status: str, reason: str | None, batch: int | None, *, record: bool = True
    ) -> None:
        if record:
            for i in indices:
                self.results[i] = ObjectResult(i, status, reason, batch)  # type: ignore[arg-type]
        self.settled += len(indices)
        if self.on_progress is not None:
            self.on_progress(self.settled, self.total)


def _encode_batch(objects: Sequence[dict], indices: list[int] | Sequence[int]) -> tuple[bytes | None, dict[int, str]]:
    """The /users/track body for ``objects[indices]`` and the objects that cannot be encoded (removed
    from ``indices`` in place when it is a list). One encoder call per batch: per object costs twice as much.
    """
    try:
        return b'{"attributes":' + _ENCODER.encode([objects[i] for i in indices]).encode() + b"}", {}
    except (TypeError, ValueError):
        pass
    problems: dict[int, str] = {}
    for i in list(indices):
        try:
            _ENCODER.encode(objects[i])
        except (TypeError, ValueError) as exc:
            problems[i] = f"not JSON-serialisable: {exc}"
    kept = [i for i in indices if i not in problems]
    if isinstance(indices, list):
        indices[:] = kept
    if not kept:
        return None, problems
    return b'{"attributes":' + _ENCODER.encode([objects[i] for i in kept]).encode() + b"}", problems


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """httpx's default verifying context, built once (loading the CA bundle takes tens of ms per call)."""
    return httpx.create_ssl_context()


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed (it comes with uvicorn's standard extras): less CPU per request."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _run(coro: Coroutine[Any, Any, T]) -> T:
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(coro)


def _run_sync(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from sync code, even if this thread already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _run(factory())
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = _run(factory())
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="braze-client")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


class BrazeClient:
    """Talks to one Braze REST endpoint with one REST key. See the module docstring for guarantees."""

    def __init__(
        self,
        endpoint: str,
        api_key: str,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        batch_cap: int = 75,
        batch_mode: str = "total",
        rate_limit_requests: int = 3000,
        rate_limit_window_s: float = 3.0,
        max_in_flight: int = 8,
        max_retries: int = 6,
        timeout_s: float = 30.0,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        max_reset_wait_s: float = 120.0,
        max_rate_limited_retries: int = 50,
    ) -> None:
        if not endpoint.startswith(("http://", "https://")):
            raise ValueError(f"Braze endpoint must start with https:// (got {endpoint!r})")
        if batch_cap < 1:
            raise ValueError(f"batch_cap must be >= 1, got {batch_cap}")
        if batch_mode not in BATCH_MODES:
            raise ValueError(f"batch_mode must be one of {', '.join(BATCH_MODES)}, got {batch_mode!r}")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        self.endpoint = endpoint.rstrip("/")
        # Accept settings.Secret (has .get()) as well as a plain string; keep it private and out of repr.
        self.__key = api_key.get() if hasattr(api_key, "get") else str(api_key)
        if not self.__key:
            raise ValueError("Braze REST key is empty")
        self._transport = transport
        self.batch_cap = batch_cap
        self.batch_mode = batch_mode
        self.max_in_flight = max_in_flight
        self.max_retries = max_retries
        self.timeout_s = timeout_s
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.max_reset_wait_s = max_reset_wait_s
        self.max_rate_limited_retries = max_rate_limited_retries
        self.stats = ClientStats()
        self._track_limiter = shared_limiter(f"{self.endpoint} track", rate_limit_requests, rate_limit_window_s)
        self._other_limiter = shared_limiter(f"{self.endpoint} other", *OTHER_RATE_LIMIT)
        self._random = random.Random()
        self._urls = {p: httpx.URL(self.endpoint + p) for p in ENDPOINT_PERMISSIONS}
        self._headers = httpx.Headers(
            {
                "Authorization": f"Bearer {self.__key}",
                "Content-Type": "application/json",
                "User-Agent": "lexer-assets-braze-client",
            }
        )
        self._request_extensions = {"timeout": httpx.Timeout(timeout_s).as_dict()}

    def __repr__(self) -> str:
        return f"BrazeClient(endpoint={self.endpoint!r}, api_key='***', batch_cap={self.batch_cap})"

    # ---- plumbing ----------------------------------------------------------------------------------------
    def _scrub(self, text: str) -> str:
        return text.replace(self.__key, "***") if self.__key else text

    def _http(self) -> tuple[httpx.AsyncClient, bool]:
        owned = self._transport is None
        if owned:
            from httpx_aiohttp import AiohttpTransport

            limits = httpx.Limits(max_connections=self.max_in_flight, max_keepalive_connections=self.max_in_flight)
            transport: httpx.AsyncBaseTransport = AiohttpTransport(limits=limits, verify=_ssl_context())
        else:
            transport = self._transport  # type: ignore[assignment]
        client = httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(self.timeout_s))
        # Braze's REST API sets no cookies, and httpx's cookie jar costs more CPU per response than the rest
        # of the client together (urllib request emulation); with it off the client keeps up with Braze.
        if hasattr(client, "_cookies"):
            client._cookies = _NoCookies()
        return client, owned

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self.backoff_max_s, self.backoff_base_s * (2**attempt))
        return ceiling * self._random.uniform(0.5, 1.0)  # "equal jitter": never 0, never synchronised

    def _auth_error(self, response: httpx.Response, path: str) -> BrazeAuthError:
        if response.status_code == 401:
            return BrazeAuthError(
                f"Braze rejected the REST key (401): wrong key or wrong cluster/endpoint {self.endpoint}", status=401
            )
        permission = ENDPOINT_PERMISSIONS.get(path, path)
        return BrazeAuthError(
            f"Braze refused {path} (403 Access Denied): the REST key lacks the {permission!r} permission "
            f"(endpoint {self.endpoint})",
            status=403,
        )

    def _message(self, response: httpx.Response) -> str:
        try:
            body = response.json()
            text = body.get("message") if isinstance(body, dict) else None
            text = text or response.text
        except ValueError:
            text = response.text
        return self._scrub(str(text)[:500])

    async def _send(
        self,
        http: httpx.AsyncClient,
        method: str,
        path: str,
        *,
        limiter: SlidingWindowLimiter,
        content: bytes | None = None,
        params: dict | None = None,
        abort: Callable[[], bool] = lambda: False,
        max_limited: int | None = None,
    ) -> httpx.Response:
        """One logical request with retries. Returns a final 2xx/4xx answer; raises BrazeAuthError on
        401/403, _GaveUp when transient failures or 429s outlast their budgets, _Aborted if told to stop."""
        transient_attempt = 0
        limited_attempt = 0
        while True:
            if abort():
                raise _Aborted
            delay = limiter.reserve()
            if delay > 0:
                await asyncio.sleep(delay)
            if abort():
                raise _Aborted
            self.stats.requests += 1
            # Built by hand (absolute URL parsed once, headers prepared once): httpx's build_request merges
            # base URL, params, headers and cookies per call, which is most of its overhead per request.
            request = httpx.Request(
                method,
                self._urls[path],
                headers=self._headers,
                content=content,
                params=params,
                extensions=self._request_extensions,
            )
            try:
                response = await http.send(request)
            except (httpx.TransportError, OSError) as exc:  # timeouts, refused/reset/dropped connections
                self.stats.transient_errors += 1
                problem = f"{type(exc).__name__}: {self._scrub(str(exc))[:200] or 'connection error'}"
                if transient_attempt >= self.max_retries:
                    raise _GaveUp(f"{problem} (gave up after {transient_attempt + 1} attempts)") from None
                await asyncio.sleep(self._backoff(transient_attempt))
                transient_attempt += 1
                continue
            info = parse_rate_limit_headers(response.headers)
            status = response.status_code
            if status in (401, 403):
                raise self._auth_error(response, path)
            if status == 429:
                self.stats.rate_limited += 1
                budget = self.max_rate_limited_retries if max_limited is None else max_limited
                if limited_attempt >= budget:
                    raise _GaveUp(f"rate limited (429) {limited_attempt + 1} times: {self._message(response)}")
                wait = info.seconds_until_reset()
                if info.remaining is not None and info.remaining > 0:
                    # Budget left, yet 429: a concurrency refusal (e.g. this segment's export is still
                    # running), not a spent window. Back off on our own; don't stall every sender.
                    wait = self._backoff(limited_attempt + 2)
                elif wait is None or wait <= 0:
                    wait = self._backoff(limited_attempt)
                    limiter.block_for(wait)
                else:
                    wait = min(wait + 0.01, self.max_reset_wait_s)
                    limiter.block_for(wait)  # every sender on this endpoint waits, not just this one
                log.warning("Braze answered 429 on %s; waiting %.2f s before trying again", path, wait)
                await asyncio.sleep(0 if limiter.blocked_for() >= wait else wait)
                limited_attempt += 1
                continue
            if status >= 500:
                self.stats.transient_errors += 1
                if transient_attempt >= self.max_retries:
                    raise _GaveUp(f"HTTP {status} from Braze (gave up after {transient_attempt + 1} attempts)")
                await asyncio.sleep(self._backoff(transient_attempt))
                transient_attempt += 1
                continue
            if info.remaining == 0:
                wait = info.seconds_until_reset()
                if wait is not None and wait > 0:
                    limiter.block_for(min(wait + 0.01, self.max_reset_wait_s))
            return response

    # ---- /users/track ------------------------------------------------------------------------------------
    def send_attributes(
        self, objects: Sequence[dict], *, on_progress: Callable[[int, int], None] | None = None
    ) -> list[ObjectResult]:
        """Send attribute objects to /users/track; one ``ObjectResult`` per input, in input order.

        Each object is sent as given (the caller adds ``_update_existing_only`` and the array add/remove
        parts). Objects without a usable identifier, or not encodable as JSON, are ``rejected`` and never
        sent; they do not hold back the rest. ``on_progress(settled, total)`` is called as batches settle.
        Raises BrazeAuthError at once on 401/403 (its ``results`` say what had been confirmed by then).
        """
        return _run_sync(lambda: self._send_attributes(list(objects), on_progress))

    async def _send_attributes(
        self, objects: list[dict], on_progress: Callable[[int, int], None] | None
    ) -> list[ObjectResult]:
        total = len(objects)
        run = _TrackRun(
            objects=objects,
            results=[None] * total,
            total=total,
            on_progress=on_progress,
            batch_numbers=itertools.count(),
            semaphore=asyncio.Semaphore(self.max_in_flight),
        )
        # Validation and encoding stream into batches that go out while later objects are still being
        # prepared; `ahead` bounds how far preparation runs ahead of the requests in flight.
        ahead = asyncio.Semaphore(2 * self.max_in_flight)
        tasks: list[asyncio.Task] = []
        rejected: list[int] = []
        http: httpx.AsyncClient | None = None
        owned = False

        async def dispatch(indices: list[int]) -> None:
            nonlocal http, owned
            body, unencodable = _encode_batch(objects, indices)
            for i, problem in unencodable.items():
                run.results[i] = ObjectResult(i, "rejected", problem, None)
                rejected.append(i)
            if body is None:
                return
            if http is None:
                http, owned = self._http()
            await ahead.acquire()
            task = asyncio.create_task(self._track_batch(http, run, next(run.batch_numbers), indices, body))
            task.add_done_callback(lambda _: ahead.release())
            tasks.append(task)

        try:
            batch: list[int] = []
            for i, obj in enumerate(objects):
                problem = identifier_problem(obj)
                if problem is not None:
                    run.results[i] = ObjectResult(i, "rejected", problem, None)
                    rejected.append(i)
                    continue
                batch.append(i)
                if len(batch) == self.batch_cap:
                    await dispatch(batch)
                    batch = []
                if run.abort is not None:
                    break
            if batch and run.abort is None:
                await dispatch(batch)
            if rejected:
                run.settle(rejected, "rejected", None, None, record=False)
            if tasks:
                await asyncio.gather(*tasks)
        finally:
            if http is not None and owned:
                await http.aclose()
        results = [
            r
            if r is not None
            else ObjectResult(i, "pending", "not sent: the run stopped after an authentication error", None)
            for i, r in enumerate(run.results)
        ]
        if run.abort is not None:
            run.abort.results = results
            raise run.abort
        return results

    async def _track_batch(
        self, http: httpx.AsyncClient, run: _TrackRun, number: int, indices: Sequence[int], body: bytes
    ) -> None:
        try:
            async with run.semaphore:
                response = await self._send(
                    http,
                    "POST",
                    "/users/track",
                    content=body,
                    limiter=self._track_limiter,
                    abort=lambda: run.abort is not None,
                )
        except BrazeAuthError as exc:
            if run.abort is None:
                run.abort = exc
            run.settle(indices, "pending", f"not confirmed: {exc}", number)
            return
        except _Aborted:
            run.settle(indices, "pending", "not sent: the run stopped after an authentication error", None)
            return
        except _GaveUp as exc:
            run.settle(indices, "pending", f"not confirmed: {exc}", number)
            return

        status = response.status_code
        if 200 <= status < 300:
            failed = self._partial_errors(response, len(indices))
            done = [i for pos, i in enumerate(indices) if pos not in failed]
            if done:
                run.settle(done, "done", None, number)
            for pos, reason in failed.items():
                run.settle([indices[pos]], "failed", reason, number)
            return
        if status in (400, 413) and len(indices) > 1:
            # The whole request was refused: split it so the good objects still go and the bad ones show.
            self.stats.bisections += 1
            mid = len(indices) // 2
            halves = (indices[:mid], indices[mid:])
            await asyncio.gather(
                *(
                    self._track_batch(http, run, next(run.batch_numbers), h, _encode_batch(run.objects, h)[0] or b"")
                    for h in halves
                )
            )
            return
        run.settle(indices, "failed", f"HTTP {status}: {self._message(response)}", number)

    def _partial_errors(self, response: httpx.Response, sent: int) -> dict[int, str]:
        """Positions (in the sent array) Braze reported as failed in a 2xx answer, with Braze's reason."""
        try:
            body = response.json()
        except ValueError:
            return {}
        errors = body.get("errors") if isinstance(body, dict) else None
        failed: dict[int, str] = {}
        for err in errors or ():
            if not isinstance(err, dict) or err.get("input_array", "attributes") != "attributes":
                continue
            index = err.get("index")
            if isinstance(index, int) and 0 <= index < sent:
                failed[index] = self._scrub(str(err.get("type") or err.get("message") or "rejected by Braze"))
            else:
                log.warning("Braze reported an error without a usable index: %s", self._scrub(str(err))[:300])
        return failed

    # ---- exports and segments ----------------------------------------------------------------------------
    async def _call(
        self, http: httpx.AsyncClient, method: str, path: str, *, body: dict | None = None, params: dict | None = None,
        max_limited: int | None = 3,
    ) -> Any:
        """One call to an endpoint other than /users/track. By default few 429 retries: refusing an export or a
        segment listing is better reported than waited out. ``max_limited=None``: the client's full budget."""
        content = None if body is None else json.dumps(body).encode()
        try:
            response = await self._send(
                http, method, path, content=content, params=params, limiter=self._other_limiter,
                max_limited=max_limited,
            )
        except _GaveUp as exc:
            raise BrazeError(f"{path} on {self.endpoint} failed: {exc}") from None
        if not 200 <= response.status_code < 300:
            raise BrazeError(
                f"{path} on {self.endpoint} answered HTTP {response.status_code}: {self._message(response)}"
            )
        try:
            return response.json()
        except ValueError:
            snippet = self._scrub(response.text)[:200]
            raise BrazeError(f"{path} on {self.endpoint} answered non-JSON: {snippet}") from None

    async def _with_http(self, work: Callable[[httpx.AsyncClient], Coroutine[Any, Any, T]]) -> T:
        http, owned = self._http()
        try:
            return await work(http)
        finally:
            if owned:
                await http.aclose()

    def export_segment(
        self,
        segment_id: str,
        fields_to_export: Sequence[str],
        *,
        output_format: str = "zip",
        custom_attributes_to_export: Sequence[str] | None = None,
    ) -> dict:
        """Ask Braze to export a segment to the connected bucket; returns Braze's JSON answer
        (``{"message": "success", "object_prefix": ...}``)."""
        if output_format not in ("zip", "gzip"):
            raise ValueError(f"output_format must be 'zip' or 'gzip', got {output_format!r}")
        if not fields_to_export:
            raise ValueError("fields_to_export must name at least one field")
        body: dict[str, Any] = {
            "segment_id": segment_id,
            "fields_to_export": list(fields_to_export),
            "output_format": output_format,
        }
        if custom_attributes_to_export:
            body["custom_attributes_to_export"] = list(custom_attributes_to_export)
        return _run_sync(
            lambda: self._with_http(lambda http: self._call(http, "POST", "/users/export/segment", body=body))
        )

    def list_segments(self) -> list[dict]:
        """Every (non-archived) segment, reading pages of 100 until a short page."""

        async def all_pages(http: httpx.AsyncClient) -> list[dict]:
            segments: list[dict] = []
            for page in itertools.count():
                answer = await self._call(http, "GET", "/segments/list", params={"page": page, "sort_direction": "asc"})
                chunk = answer.get("segments") or []
                segments.extend(chunk)
                if len(chunk) < SEGMENTS_PAGE_SIZE:
                    return segments
            raise AssertionError("unreachable")

        return _run_sync(lambda: self._with_http(all_pages))

    def export_ids(
        self,
        *,
        external_ids: Sequence[str] = (),
        user_aliases: Sequence[dict] = (),
        braze_ids: Sequence[str] = (),
        fields_to_export: Sequence[str] | None = None,
    ) -> list[dict]:
        """Look users up by id through /users/export/ids; returns the users Braze found.

        External ids and aliases go 50 per request; Braze takes one ``braze_id`` per request.
        """
        ids: list[tuple[str, Any]] = [("external_ids", e) for e in external_ids]
        ids += [("user_aliases", a) for a in user_aliases]
        bodies: list[dict] = []
        for start in range(0, len(ids), EXPORT_IDS_PER_REQUEST):
            body: dict[str, Any] = {}
            for kind, value in ids[start : start + EXPORT_IDS_PER_REQUEST]:
                body.setdefault(kind, []).append(value)
            bodies.append(body)
        bodies += [{"braze_id": b} for b in braze_ids]
        if fields_to_export:
            for body in bodies:
                body["fields_to_export"] = list(fields_to_export)

        async def all_requests(http: httpx.AsyncClient) -> list[dict]:
            sem = asyncio.Semaphore(self.max_in_flight)

            async def one(body: dict) -> list[dict]:
                async with sem:
                    # Reads the sync must finish before planning (reconciliation, verify): wait 429s out.
                    answer = await self._call(http, "POST", "/users/export/ids", body=body, max_limited=None)
                if answer.get("invalid_user_ids"):
                    log.info("Braze did not find %d of the ids asked for", len(answer["invalid_user_ids"]))
                return answer.get("users") or []

            found = await asyncio.gather(*(one(b) for b in bodies))
            return [user for chunk in found for user in chunk]

        return _run_sync(lambda: self._with_http(all_requests))
