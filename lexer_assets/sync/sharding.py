"""Split the sync into N shards by a stable hash of the customer id, each run separately.

The hash is the first 15 hex digits of the MD5 of the customer id, as an integer, modulo the shard count: the
same in SQL (DuckDB's ``md5``) and in Python (``hashlib``), across versions and machines, so a customer always
belongs to the same shard and the shards together cover every customer exactly once.

Rate limit: shards run as separate processes that cannot see each other's requests, so each takes an equal
share of the workspace's /users/track limit (``rate_share``). Together they never exceed it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (0-based); ``Shard(0, 1)`` is the whole population."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"shards must be at least 1, got {self.count}")
        if not 0 <= self.index < self.count:
            raise ValueError(f"shard must be between 0 and {self.count - 1} (shards={self.count}), got {self.index}")

    @property
    def whole(self) -> bool:
        return self.count == 1

    def sql(self, column: str = "customer_id") -> str:
        """A SQL predicate selecting this shard's rows (``column`` is chosen by code, never by users)."""
        if self.whole:
            return "TRUE"
        return f"((('0x' || left(md5({column}), 15))::UBIGINT % {self.count}) = {self.index})"

    def __str__(self) -> str:
        return "all customers" if self.whole else f"shard {self.index + 1} of {self.count}"


def shard_of(customer_id: str, count: int) -> int:
    """The shard a customer belongs to (the Python twin of ``Shard.sql``)."""
    return int(hashlib.md5(customer_id.encode()).hexdigest()[:15], 16) % count


def rate_share(requests_per_window: int, shards: int) -> int:
    """Requests per window one shard may use so that all shards together stay within the limit."""
    return max(1, requests_per_window // max(1, shards))


ALL = Shard()  # the whole population (the default everywhere)
