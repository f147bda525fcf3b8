"""The sync's safety guard: a broken upstream never empties Braze.

Two rules, both settings:

- an activated audience whose newest partition is smaller than its size at the last completed sync by more
  than ``max_drop_share`` (default 0.5) blocks the sync;
- a run that would remove more than ``max_removals`` values (all audiences together) blocks the sync;
- an audience the hub has synced that is no longer activated (deleted from the file, disabled, its slug
  changed) counts as dropped to 0 members, so removing it from Braze needs approval like any large drop. A
  rename (same slug, new name) is not a drop, and values the hub never synced (stale ones found in the first
  export) are cleaned without approval.

A blocked sync sends nothing and changes nothing; it stays blocked until someone approves that run (the
``lexer/approve_sync=true`` run tag or the sync's ``approve`` config flag). The guard runs twice: as a blocking
asset check before the sync in the same run, and inside the sync itself, so a sync launched alone cannot
bypass it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

import duckdb

APPROVE_TAG = "lexer/approve_sync"


@dataclass(frozen=True)
class GuardLimits:
    max_drop_share: float = 0.5
    max_removals: int = 50_000


@dataclass
class GuardVerdict:
    problems: list[str] = field(default_factory=list)
    removals: int = 0
    sizes: dict[str, tuple[int | None, int]] = field(default_factory=dict)  # name -> (last sync, now)

    @property
    def blocked(self) -> bool:
        return bool(self.problems)

    def explain(self) -> str:
        if not self.problems:
            return f"guard passed: {self.removals:,} removal(s), no audience dropped beyond the limit"
        return ("sync blocked by the safety guard: " + "; ".join(self.problems)
                + f". Nothing was sent. If this is intended, re-run with the run tag {APPROVE_TAG}=true "
                "(or the sync config approve: true).")


class SyncBlocked(Exception):
    """The guard stopped the sync; ``str()`` explains why and how to approve."""

    def __init__(self, verdict: GuardVerdict) -> None:
        self.verdict = verdict
        super().__init__(verdict.explain())


def evaluate_guard(*, sizes_now: Mapping[str, int], sizes_before: Mapping[str, int], removals: int,
                   limits: GuardLimits, retired: Collection[str] = ()) -> GuardVerdict:
    """Pure rule: which audiences dropped too much, and whether the removals exceed the limit.

    ``retired``: synced audiences no longer activated (their size now is 0)."""
    verdict = GuardVerdict(removals=removals)
    for name, now in sorted(sizes_now.items()):
        before = sizes_before.get(name)
        verdict.sizes[name] = (before, now)
        if before and before > 0 and (before - now) / before > limits.max_drop_share:
            if name in retired:
                verdict.problems.append(
                    f"audience {name!r} had {before:,} members at the last sync and is no longer activated "
                    "(deleted from the audiences file, disabled, or its slug changed): the run would remove it "
                    "from Braze")
                continue
            verdict.problems.append(
                f"audience {name!r} dropped from {before:,} to {now:,} members since the last sync "
                f"(-{(before - now) / before:.0%}, limit {limits.max_drop_share:.0%})")
    if removals > limits.max_removals:
        verdict.problems.append(f"the run would remove {removals:,} values from Braze "
                                f"(limit {limits.max_removals:,})")
    return verdict


def sizes_at_last_sync(conn: duckdb.DuckDBPyConnection, names: Sequence[str]) -> dict[str, int]:
    """Members of each audience (by name) as recorded by the newest completed sync that included it."""
    if not names:
        return {}
    rows = conn.execute(
        """
        SELECT audience_name, arg_max(members, finished_at)
        FROM sync.braze_sync_runs
        WHERE audience_name IN (SELECT unnest(?::VARCHAR[])) AND snapshot_date IS NOT NULL
        GROUP BY audience_name
        """, [list(names)]).fetchall()
    return {name: int(members) for name, members in rows if members is not None}
