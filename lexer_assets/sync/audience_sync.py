"""Keep Braze's array attribute equal to the hub's audiences: reconcile, plan, guard, log, send, confirm.

Durability. Every change is written to ``sync.braze_sync_log`` as *pending* before anything is sent; the
changes of a chunk are marked *sending* in their own transaction just before the chunk goes out; outcomes are
recorded, and ``sync.braze_attribute_state`` (what Braze acknowledged) moves only for objects Braze confirmed,
in one transaction per chunk. Kill the run at any moment (SIGKILL) and the state is exactly what Braze
confirmed and we recorded. The only window left is "Braze applied a request, the run died before recording
it": those changes are still *sending* (or *unconfirmed*: sent, but no answer came back after the client's
retries). The next run first **reconciles** them: it reads those users back from Braze (/users/export/ids),
sets their known state to what Braze really holds and marks the changes done or superseded; only then does it
plan. So nothing acknowledged is re-sent, and no value Braze already holds is re-added. Changes that were
merely *pending* (never sent) are superseded and recomputed by the next run's diff.

Retries and parking. Objects Braze refused (*failed*, e.g. the user does not exist while
``_update_existing_only`` is set) or that could not be sent (*rejected*, e.g. no identifier) stay out of the
known state, so the next run's diff contains them again and retries them. A change (customer, op, value)
refused in ``max_failed_runs`` different runs (default 3) is *parked*: left out of later diffs, counted and
reported per run (status *parked* in the log), until an operator releases parked changes
(``retry_parked``), which marks their earlier refusals *released*.

First sync. Customers the sync has never touched (no known state, no log) start from what Braze holds
according to the newest export (the attribute is in the exported ``custom_attributes``), so values already in
Braze are not re-added.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import duckdb
import pyarrow as pa

from lexer_assets.audiences.snapshots import sync_day
from lexer_assets.storage.catalog import TABLES
from lexer_assets.storage.warehouse import Warehouse
from lexer_assets.sync.attribute_diff import DiffCounts, ValuePolicy, plan_changes
from lexer_assets.sync.identity import IDENTITY_COLUMNS, ProfileReader, fill_from_key, read_back, track_identity
from lexer_assets.sync.sharding import ALL, Shard
from lexer_assets.sync.sync_guard import GuardLimits, GuardVerdict, SyncBlocked, evaluate_guard, sizes_at_last_sync

# Log statuses whose changes may have reached Braze without the outcome being recorded.
IN_FLIGHT = ("sending", "unconfirmed")
RECONCILE_CHUNK = 5_000


@dataclass(frozen=True)
class SyncedAudience:
    """What the sync needs to know of one audience in the YAML."""

    slug: str
    name: str
    activated: bool  # enabled and braze: true
    list_action: str = "maintain"
    priority: int = 100
    frozen: bool = False  # the YAML entry has problems: its value is neither added nor removed


class AttributeSender(Protocol):
    def send_attributes(self, objects: Sequence[dict], *, on_progress: Callable[[int, int], None] | None = None
                        ) -> list: ...


@dataclass
class AudienceSyncLine:
    audience_name: str
    snapshot_date: dt.date | None
    members: int  # the whole audience's size in its newest partition (all shards)
    adds: int = 0
    removes: int = 0
    customers: int = 0  # customers of this run with a change of this value
    requests: int = 0  # requests those customers alone would take
    sent: int = 0
    failed: int = 0
    held_back: int = 0  # customers the array cap kept this value from
    note: str = ""  # frozen, retired, no partition yet
    audience_slug: str | None = None  # None for a value no audience of the file produces (retired)


@dataclass
class SyncReport:
    run_id: str
    dry_run: bool
    diff: DiffCounts
    shard: str = "all"
    objects: int = 0
    requests_estimate: int = 0
    requests: int = 0  # /users/track requests actually made (retries included), when the sender counts them
    done: int = 0
    failed: int = 0
    pending: int = 0
    rejected: int = 0
    parked: int = 0
    absent: int = 0  # customers holding values who are not in the newest export: left as they are
    reconciled: int = 0
    status: str = "succeeded"
    guard: str = ""
    error: str = ""
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    failure_reasons: dict[str, int] = field(default_factory=dict)
    audiences: list[AudienceSyncLine] = field(default_factory=list)


# The sync writes only these tables: the publish after a sync copies just them into the analysts' store.
SYNC_TABLES = [t.name for t in TABLES if t.schema == "sync"]
_WRITE_LOCKS: dict[str, threading.RLock] = {}
_WRITE_LOCKS_GUARD = threading.Lock()


@contextlib.contextmanager
def _transaction(warehouse: Warehouse) -> Iterator[duckdb.DuckDBPyConnection]:
    """``warehouse.transaction()``, one at a time per database file in this process.

    Shards may run as threads of one process; DuckDB would let their transactions overlap and abort one on a
    write-write conflict. Across processes DuckDB's file lock already serialises writers.
    """
    key = str(Path(warehouse.path).resolve())
    with _WRITE_LOCKS_GUARD:
        lock = _WRITE_LOCKS.setdefault(key, threading.RLock())
    with lock, warehouse.transaction(tables=SYNC_TABLES) as conn:
        yield conn


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def _bootstrap_known_state(conn: duckdb.DuckDBPyConnection, attribute: str, shard: Shard) -> None:
    """Customers the sync never touched start from what Braze holds according to the newest export."""
    conn.execute(
        f"""
        INSERT INTO sync.braze_attribute_state
        SELECT DISTINCT customer_id, ?, value, now()::TIMESTAMP, 'export'
        FROM (
            SELECT u.customer_id,
                   unnest(json_extract_string(u.custom_attributes, '$."' || ? || '"[*]')) AS value
            FROM braze.users u
            WHERE {shard.sql('u.customer_id')}
              AND json_type(u.custom_attributes, '$."' || ? || '"') = 'ARRAY'
              AND NOT EXISTS (SELECT 1 FROM sync.braze_attribute_state s
                              WHERE s.attribute = ? AND s.customer_id = u.customer_id)
              AND NOT EXISTS (SELECT 1 FROM sync.braze_sync_log l
                              WHERE l.attribute = ? AND l.customer_id = u.customer_id))
        WHERE value IS NOT NULL
        """,
        [attribute, attribute, attribute, attribute, attribute],
    )


CURRENT_USERS = "braze.users"  # the newest export: the customers the sync may touch


def latest_sync_day() -> dt.date:
    """The latest day the sync may target: a partition computed for a later day (a mistyped backfill) never
    reaches Braze."""
    return dt.datetime.now(dt.UTC).date()


def desired_state(conn: duckdb.DuckDBPyConnection, audiences: Sequence[SyncedAudience], shard: Shard = ALL
                  ) -> tuple[list[ValuePolicy], list[AudienceSyncLine]]:
    """TEMP table sync_desired(customer_id, value) from each activated audience's newest partition.

    Rules: an activated audience contributes its newest partition; one without a partition yet, or with
    problems in the YAML (``frozen``), is unknown rather than empty, so its value is never removed (and a
    frozen one is not added either); a deactivated ``append`` audience is never removed; any other value
    Braze holds is retired and removed (the attribute belongs to the hub). A renamed audience (same slug, new
    name) is desired under its new name, so the old name is removed and the new one added in one object.
    """
    conn.execute("CREATE OR REPLACE TEMP TABLE sync_desired (customer_id VARCHAR, value VARCHAR)")
    policies: list[ValuePolicy] = []
    lines: list[AudienceSyncLine] = []
    for aud in audiences:
        if aud.frozen:
            policies.append(ValuePolicy(aud.name, aud.priority, removable=False))
            lines.append(AudienceSyncLine(aud.name, None, 0, note="frozen: the audiences file has problems "
                                          "with this audience; its value is neither added nor removed"))
            continue
        if not aud.activated:
            if aud.list_action == "append":  # append audiences never remove, even when deactivated
                policies.append(ValuePolicy(aud.name, aud.priority, removable=False))
            continue  # otherwise not a policy: its values, if Braze holds them, are retired and removed
        newest = sync_day(conn, aud.slug, latest_sync_day())
        # An audience with no partition yet is unknown, not empty: never remove its value.
        policies.append(ValuePolicy(aud.name, aud.priority,
                                    removable=aud.list_action == "maintain" and newest is not None))
        if newest is None:
            lines.append(AudienceSyncLine(aud.name, None, 0, note="no partition yet: nothing added or removed"))
            continue
        conn.execute(
            "INSERT INTO sync_desired SELECT DISTINCT customer_id, ? FROM lexer.audience_membership"
            f" WHERE audience_slug = ? AND snapshot_date = ? AND {shard.sql()}"
            f" AND customer_id IN (SELECT customer_id FROM {CURRENT_USERS})", [aud.name, aud.slug, newest])
        members = conn.execute(
            "SELECT count(DISTINCT customer_id) FROM lexer.audience_membership"
            " WHERE audience_slug = ? AND snapshot_date = ?", [aud.slug, newest]).fetchall()[0][0]
        lines.append(AudienceSyncLine(aud.name, newest, int(members), audience_slug=aud.slug))
    return policies, lines


def build_objects(rows: Iterable[dict], attribute: str) -> list[dict]:
    """One /users/track attributes object per changed customer; lists left out when empty."""
    objects = []
    for row in rows:
        delta: dict[str, list[str]] = {}
        if row["adds"]:
            delta["add"] = list(row["adds"])
        if row["removes"]:
            delta["remove"] = list(row["removes"])
        objects.append({**track_identity(row), "_update_existing_only": True, attribute: delta})
    return objects


def _ceil_div(a: int, b: int) -> int:
    return -(-a // max(b, 1))


def plan_sync(conn: duckdb.DuckDBPyConnection, *, audiences: Sequence[SyncedAudience], attribute: str,
              array_cap: int, batch_cap: int, run_id: str, dry_run: bool, shard: Shard = ALL,
              max_failed_runs: int = 3) -> SyncReport:
    """Inside an open transaction: known state, desired state, the diff (TEMP tables sync_changes, diff_ops,
    diff_excluded) and the report's counts per audience. Writes nothing but the first-sync bootstrap."""
    _bootstrap_known_state(conn, attribute, shard)
    policies, lines = desired_state(conn, audiences, shard)
    # Only customers in the newest export are synced (desired_state keeps to them too). One missing from it (a
    # line the export load rejected, a file that came empty) is unknown, not "in no audience": removing their
    # values would let a broken export wipe them; they are synced again when an export has them.
    conn.execute(
        "CREATE OR REPLACE TEMP TABLE sync_known AS SELECT customer_id, value FROM sync.braze_attribute_state"
        f" WHERE attribute = ? AND {shard.sql()} AND customer_id IN (SELECT customer_id FROM {CURRENT_USERS})",
        [attribute])
    absent = conn.execute(
        f"SELECT count(DISTINCT customer_id) FROM sync.braze_attribute_state WHERE attribute = ? AND {shard.sql()}"
        f" AND customer_id NOT IN (SELECT customer_id FROM {CURRENT_USERS})", [attribute]).fetchall()[0][0]
    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE sync_parked AS
        SELECT customer_id, op, value FROM sync.braze_sync_log
        WHERE attribute = ? AND status IN ('failed', 'rejected') AND {shard.sql()}
        GROUP BY ALL HAVING count(DISTINCT run_id) >= ?
        """, [attribute, max(1, int(max_failed_runs))])
    counts = plan_changes(conn, desired="sync_desired", known="sync_known", policies=policies,
                          array_cap=array_cap, exclude="sync_parked")
    per_value = {(v, op): (int(n), int(c)) for v, op, n, c in conn.sql(
        "SELECT value, op, count(*), count(DISTINCT customer_id) FROM diff_ops GROUP BY ALL").fetchall()}
    touched = dict(conn.sql("SELECT value, count(DISTINCT customer_id) FROM diff_ops GROUP BY ALL").fetchall())
    by_name = {line.audience_name: line for line in lines}
    for value, _op in sorted(per_value):
        if value not in by_name:  # a retired or deactivated audience being cleaned out of Braze
            by_name[value] = AudienceSyncLine(value, None, 0, note="retired: removed from Braze")
            lines.append(by_name[value])
    for line in lines:
        line.adds = per_value.get((line.audience_name, "add"), (0, 0))[0]
        line.removes = per_value.get((line.audience_name, "remove"), (0, 0))[0]
        line.customers = int(touched.get(line.audience_name, 0))
        line.requests = _ceil_div(line.customers, batch_cap)
        line.held_back = counts.held_back.get(line.audience_name, 0)
    parked = conn.sql("SELECT count(*) FROM diff_excluded").fetchall()[0][0]
    return SyncReport(run_id, dry_run, counts, shard="all" if shard.whole else f"{shard.index + 1}/{shard.count}",
                      audiences=lines, objects=counts.customers, parked=int(parked), absent=int(absent),
                      requests_estimate=_ceil_div(counts.customers, batch_cap))


def check_guard(conn: duckdb.DuckDBPyConnection, report: SyncReport, limits: GuardLimits,
                audiences: Sequence[SyncedAudience] = ()) -> GuardVerdict:
    """The safety guard on a planned run (see sync_guard). ``audiences``: the file's audiences, to tell a
    renamed audience (same slug) from one that is gone."""
    sizes_now = {line.audience_name: line.members for line in report.audiences if line.snapshot_date is not None}
    removed = [line.audience_name for line in report.audiences if line.snapshot_date is None and line.removes]
    renamed: set[str] = set()
    if removed:
        live_slugs = {a.slug for a in audiences if a.activated}
        # A name's slug as the syncs recorded it (a rename made the same day may have replaced the only
        # history row with the old name), else as the stored partitions have it.
        renamed = {name for name, slug in conn.execute(
            """SELECT DISTINCT audience_name, audience_slug FROM sync.braze_sync_runs
               WHERE audience_name IN (SELECT unnest($names::VARCHAR[])) AND audience_slug IS NOT NULL
               UNION
               SELECT DISTINCT audience_name, audience_slug FROM lexer.audience_history
               WHERE audience_name IN (SELECT unnest($names::VARCHAR[]))""", {"names": removed}).fetchall()
            if slug in live_slugs}
    gone = [name for name in removed if name not in renamed]
    before = sizes_at_last_sync(conn, list(sizes_now) + gone)
    retired = {name for name in gone if name in before}  # the hub synced it; stale export values are not
    sizes_now.update({name: 0 for name in retired})
    return evaluate_guard(sizes_now=sizes_now, sizes_before=before, removals=report.diff.removes, limits=limits,
                          retired=retired)


def preview_sync(warehouse: Warehouse, *, audiences: Sequence[SyncedAudience], attribute: str, array_cap: int,
                 batch_cap: int, shard: Shard = ALL, max_failed_runs: int = 3,
                 limits: GuardLimits | None = None) -> tuple[SyncReport, GuardVerdict | None]:
    """Plan (and guard) without changing anything and without a request: what a sync would do now."""
    with _transaction(warehouse) as conn:
        report = plan_sync(conn, audiences=audiences, attribute=attribute, array_cap=array_cap,
                           batch_cap=batch_cap, run_id="preview", dry_run=True, shard=shard,
                           max_failed_runs=max_failed_runs)
        verdict = check_guard(conn, report, limits, audiences) if limits is not None else None
        conn.execute("ROLLBACK")
        conn.execute("BEGIN TRANSACTION")  # the context manager commits an empty transaction
    return report, verdict


def run_sync(
    warehouse: Warehouse,
    sender: AttributeSender | None,
    *,
    audiences: Sequence[SyncedAudience],
    attribute: str,
    array_cap: int,
    batch_cap: int,
    run_id: str,
    dry_run: bool = False,
    chunk_size: int = 7_500,
    log: Callable[[str], None] = lambda _msg: None,
    shard: Shard = ALL,
    guard: GuardLimits | None = None,
    approved: bool = False,
    max_failed_runs: int = 3,
    retry_parked: bool = False,
    reader: ProfileReader | None = None,
    on_finish: Callable[[SyncReport], None] | None = None,
) -> SyncReport:
    """Reconcile in-flight changes, diff hub vs Braze, guard, log, send, and move the known state for what
    Braze confirmed. Writes a run report to ``sync.braze_sync_reports`` whatever happens (dry run, blocked,
    failed), then calls ``on_finish(report)`` (the confirmation) in every case. Raises ``SyncBlocked`` when
    the guard stops the run and it is not ``approved``."""
    started = _now()
    report = SyncReport(run_id, dry_run, DiffCounts(0, 0, 0, 0, 0), started_at=started)
    reconciled = 0
    try:
        if not dry_run:
            if sender is None:
                raise RuntimeError("a sync that is not a dry run needs a Braze client")
            rdr = reader if reader is not None else sender
            reconciled = reconcile_in_flight(warehouse, rdr, attribute=attribute, shard=shard,  # type: ignore[arg-type]
                                             run_id=run_id)
            report.reconciled = reconciled
            if reconciled:
                log(f"sync: reconciled {reconciled:,} customer(s) whose changes were in flight when an earlier "
                    "run stopped (read back from Braze)")
        with _transaction(warehouse) as conn:
            if retry_parked and not dry_run:
                conn.execute(f"UPDATE sync.braze_sync_log SET status = 'released' WHERE attribute = ? "
                             f"AND status IN ('failed', 'rejected') AND {shard.sql()}", [attribute])
            planned = plan_sync(conn, audiences=audiences, attribute=attribute, array_cap=array_cap,
                                batch_cap=batch_cap, run_id=run_id, dry_run=dry_run, shard=shard,
                                max_failed_runs=max_failed_runs)
            planned.reconciled = reconciled
            planned.started_at = started
            report = planned
            if report.absent:
                log(f"sync: {report.absent:,} customer(s) holding values are not in the newest export (a "
                    "rejected line, a missing file, deleted in Braze): left as they are until an export has them")
            verdict = check_guard(conn, report, guard, audiences) if guard is not None else None
            blocked = verdict is not None and verdict.blocked
            if verdict is not None:
                report.guard = (verdict.explain() if not blocked else
                                ("approved: " if approved else "") + verdict.explain())
            if dry_run or (blocked and not approved):
                conn.execute("ROLLBACK")
                conn.execute("BEGIN TRANSACTION")  # the context manager commits an empty transaction
            else:
                rows = _log_changes(conn, attribute=attribute, run_id=run_id, shard=shard)
        if report.diff.capped_customers:
            log(f"sync: {report.diff.capped_customers:,} customer(s) are in more audiences than the array cap "
                f"({array_cap}); held back: {report.diff.held_back}")
        if report.parked:
            log(f"sync: {report.parked:,} change(s) parked (refused by Braze in {max_failed_runs}+ runs)")
        if blocked and not approved:
            report.status = "blocked"
            _write_report(warehouse, report, attribute)
            _finished(on_finish, report)
            raise SyncBlocked(verdict)  # type: ignore[arg-type]
        if dry_run:
            _write_report(warehouse, report, attribute)
            _finished(on_finish, report)
            return report
        _send(warehouse, sender, rows, report, attribute=attribute, run_id=run_id,  # type: ignore[arg-type]
              chunk_size=chunk_size, log=log)
        _finish_report(warehouse, report, attribute)
        report.status = "succeeded" if not (report.failed or report.pending or report.rejected) else "partial"
        _write_report(warehouse, report, attribute)
        _finished(on_finish, report)
        return report
    except SyncBlocked:
        raise
    except BaseException as exc:
        report.status = "failed"
        report.error = str(exc)[:2_000] or type(exc).__name__
        with contextlib.suppress(Exception):  # the original error matters more than the report
            _write_report(warehouse, report, attribute)
        _finished(on_finish, report)
        raise


def _finished(on_finish: Callable[[SyncReport], None] | None, report: SyncReport) -> None:
    if on_finish is not None:
        with contextlib.suppress(Exception):  # a confirmation problem never changes the sync's outcome
            on_finish(report)


def _log_changes(conn: duckdb.DuckDBPyConnection, *, attribute: str, run_id: str, shard: Shard) -> list[dict]:
    """Supersede older pending changes of this shard, log this run's changes as pending, return the objects."""
    now = _now()
    conn.execute(
        "UPDATE sync.braze_sync_log SET status = 'superseded', finished_at = ? "
        f"WHERE status = 'pending' AND attribute = ? AND {shard.sql()}", [now, attribute])
    conn.execute(
        "INSERT INTO sync.braze_sync_log SELECT ?, customer_id, ?, op, value, NULL, 'pending', NULL, ?, NULL "
        "FROM diff_ops ORDER BY customer_id", [run_id, attribute, now])  # in chunk order (see _mark_sending)
    conn.execute(
        "INSERT INTO sync.braze_sync_log SELECT ?, customer_id, ?, op, value, NULL, 'parked', "
        "'refused by Braze in too many runs; not retried until released', ?, ? FROM diff_excluded",
        [run_id, attribute, now, now])
    changes = conn.sql(
        """
        SELECT c.customer_id, c.adds, c.removes, u.external_id, u.braze_id, u.alias_name, u.alias_label
        FROM sync_changes c LEFT JOIN braze.users u USING (customer_id) ORDER BY c.customer_id
        """
    ).fetchall()
    cols = ("customer_id", "adds", "removes", "external_id", "braze_id", "alias_name", "alias_label")
    return [fill_from_key(dict(zip(cols, r, strict=True))) for r in changes]


def _send(warehouse: Warehouse, sender: AttributeSender, rows: list[dict], report: SyncReport, *,
          attribute: str, run_id: str, chunk_size: int, log: Callable[[str], None]) -> None:
    from lexer_assets.braze.client import BrazeAuthError

    stats = getattr(sender, "stats", None)
    requests_before = getattr(stats, "requests", 0)
    sent_so_far = 0
    batch_offset = 0
    try:
        for start in range(0, len(rows), chunk_size):
            chunk = rows[start:start + chunk_size]
            _mark_sending(warehouse, chunk, attribute=attribute, run_id=run_id)
            objects = build_objects(chunk, attribute)
            try:
                results = sender.send_attributes(objects)
            except BrazeAuthError as exc:
                if exc.results:  # what Braze confirmed before the key was refused still counts
                    _record_outcomes(warehouse, chunk, exc.results, attribute=attribute, run_id=run_id,
                                     batch_offset=batch_offset, report=report, refused=True)
                raise
            _record_outcomes(warehouse, chunk, results, attribute=attribute, run_id=run_id,
                             batch_offset=batch_offset, report=report)
            batch_offset += 1 + max((r.batch for r in results if r.batch is not None), default=-1)
            sent_so_far += len(chunk)
            log(f"sync: {sent_so_far:,}/{len(rows):,} customers processed "
                f"({report.done:,} confirmed, {report.failed:,} failed, {report.pending:,} pending)")
    finally:
        report.requests = getattr(stats, "requests", 0) - requests_before if stats is not None else 0


def _mark_sending(warehouse: Warehouse, chunk: list[dict], *, attribute: str, run_id: str) -> None:
    """Just before a chunk goes out: its changes may reach Braze from now on (see reconcile_in_flight).

    Chunks are contiguous ranges of this run's customers (sorted), and the log is written in that order, so a
    range predicate lets DuckDB skip every row group outside the chunk (zone maps) instead of a join.
    """
    with _transaction(warehouse) as conn:
        conn.execute(
            "UPDATE sync.braze_sync_log SET status = 'sending' WHERE run_id = ? AND attribute = ? "
            "AND status = 'pending' AND customer_id BETWEEN ? AND ?",
            [run_id, attribute, chunk[0]["customer_id"], chunk[-1]["customer_id"]])


def _log_status(result: object, refused: bool = False) -> str:
    status = result.status  # type: ignore[attr-defined]
    if status == "pending" and not refused:
        # Sent at least once without a confirmation: Braze may have applied it (reconciled next run).
        return "unconfirmed" if result.batch is not None else "pending"  # type: ignore[attr-defined]
    return status


def _record_outcomes(warehouse: Warehouse, chunk: list[dict], results: Sequence, *, attribute: str,
                     run_id: str, batch_offset: int, report: SyncReport, refused: bool = False) -> None:
    """``refused``: the run stopped on a 401/403, so whatever was not confirmed was refused, not applied."""
    outcome = pa.table({
        "customer_id": pa.array([row["customer_id"] for row in chunk], pa.string()),
        "status": pa.array([_log_status(r, refused) for r in results], pa.string()),
        "reason": pa.array([r.reason for r in results], pa.string()),
        "batch": pa.array([None if r.batch is None else r.batch + batch_offset for r in results], pa.int32()),
    })
    for r in results:
        if r.status == "done":
            report.done += 1
        else:
            setattr(report, r.status, getattr(report, r.status) + 1)
            key = f"{r.status}: {r.reason}"
            report.failure_reasons[key] = report.failure_reasons.get(key, 0) + 1
    # What Braze confirmed, straight from the chunk: no join against the whole log.
    done_adds = [(row["customer_id"], v) for row, r in zip(chunk, results, strict=True) if r.status == "done"
                 for v in row["adds"]]
    done_removes = [(row["customer_id"], v) for row, r in zip(chunk, results, strict=True) if r.status == "done"
                    for v in row["removes"]]
    lo, hi = chunk[0]["customer_id"], chunk[-1]["customer_id"]
    with _transaction(warehouse) as conn:
        conn.register("sync_outcome", outcome)
        now = _now()
        conn.execute(
            """
            UPDATE sync.braze_sync_log AS l SET status = o.status, error = o.reason, batch = o.batch,
                   finished_at = CASE WHEN o.status IN ('pending', 'unconfirmed') THEN NULL ELSE ? END
            FROM sync_outcome o
            WHERE l.run_id = ? AND l.attribute = ? AND l.customer_id = o.customer_id
              AND l.customer_id BETWEEN ? AND ? AND l.status IN ('pending', 'sending')
            """, [now, run_id, attribute, lo, hi])
        conn.unregister("sync_outcome")
        # The known state moves only for what Braze confirmed.
        if done_removes:
            conn.register("sync_done_removes", _pairs(done_removes))
            conn.execute(
                """
                DELETE FROM sync.braze_attribute_state AS s USING sync_done_removes d
                WHERE s.attribute = ? AND s.customer_id = d.customer_id AND s.value = d.value
                  AND s.customer_id BETWEEN ? AND ?
                """, [attribute, lo, hi])
            conn.unregister("sync_done_removes")
        if done_adds:
            conn.register("sync_done_adds", _pairs(done_adds))
            conn.execute("INSERT INTO sync.braze_attribute_state SELECT customer_id, ?, value, ?, ? "
                         "FROM sync_done_adds", [attribute, now, run_id])
            conn.unregister("sync_done_adds")


def _pairs(pairs: list[tuple[str, str]]) -> pa.Table:
    return pa.table({"customer_id": pa.array([c for c, _ in pairs], pa.string()),
                     "value": pa.array([v for _, v in pairs], pa.string())})


def reconcile_in_flight(warehouse: Warehouse, reader: ProfileReader, *, attribute: str, shard: Shard = ALL,
                        run_id: str) -> int:
    """Changes an earlier run sent without recording Braze's answer: read those users back from Braze, set
    their known state to what Braze holds, mark the changes done (Braze holds the outcome) or superseded.
    Returns the number of customers reconciled."""
    with _transaction(warehouse) as conn:
        found = conn.execute(
            f"""
            SELECT DISTINCT l.customer_id, u.external_id, u.braze_id, u.alias_name, u.alias_label
            FROM sync.braze_sync_log l LEFT JOIN braze.users u USING (customer_id)
            WHERE l.attribute = ? AND l.status IN ('sending', 'unconfirmed') AND {shard.sql('l.customer_id')}
            ORDER BY 1
            """, [attribute]).fetchall()
    if not found:
        return 0
    rows = [fill_from_key(dict(zip(IDENTITY_COLUMNS, r, strict=True))) for r in found]
    held: dict[str, list[str] | None] = {}
    for start in range(0, len(rows), RECONCILE_CHUNK):
        held.update(read_back(reader, rows[start:start + RECONCILE_CHUNK], attribute))
    known_ids = [c for c, v in held.items() if v is not None]
    values = [(c, v) for c in known_ids for v in dict.fromkeys(held[c] or [])]
    now = _now()
    with _transaction(warehouse) as conn:
        conn.register("rec_ids", pa.table({"customer_id": pa.array(known_ids, pa.string())}))
        conn.register("rec_all", pa.table({"customer_id": pa.array(list(held), pa.string())}))
        conn.register("rec_values", pa.table({"customer_id": pa.array([c for c, _ in values], pa.string()),
                                              "value": pa.array([v for _, v in values], pa.string())}))
        conn.execute("DELETE FROM sync.braze_attribute_state WHERE attribute = ? "
                     "AND customer_id IN (SELECT customer_id FROM rec_ids)", [attribute])
        conn.execute("INSERT INTO sync.braze_attribute_state SELECT customer_id, ?, value, ?, ? FROM rec_values",
                     [attribute, now, f"reconcile:{run_id}"])
        conn.execute(
            """
            UPDATE sync.braze_sync_log AS l
            SET status = CASE
                    WHEN l.customer_id NOT IN (SELECT customer_id FROM rec_ids) THEN 'superseded'
                    WHEN (l.op = 'add') = EXISTS (SELECT 1 FROM rec_values v
                                                  WHERE v.customer_id = l.customer_id AND v.value = l.value)
                    THEN 'done' ELSE 'superseded' END,
                error = CASE WHEN l.customer_id NOT IN (SELECT customer_id FROM rec_ids)
                             THEN 'reconciled by run ' || ? || ': Braze has no such user'
                             ELSE 'reconciled by run ' || ? || ' from what Braze holds' END,
                finished_at = ?
            WHERE l.attribute = ? AND l.status IN ('sending', 'unconfirmed')
              AND l.customer_id IN (SELECT customer_id FROM rec_all)
            """, [run_id, run_id, now, attribute])
        for name in ("rec_ids", "rec_all", "rec_values"):
            conn.unregister(name)
    return len(held)


def _finish_report(warehouse: Warehouse, report: SyncReport, attribute: str) -> None:
    with _transaction(warehouse) as conn:
        per_value = dict(((v, s), n) for v, s, n in conn.execute(
            "SELECT value, status, count(*) FROM sync.braze_sync_log WHERE run_id = ? AND attribute = ?"
            " GROUP BY ALL", [report.run_id, attribute]).fetchall())
        now = _now()
        for line in report.audiences:
            line.sent = per_value.get((line.audience_name, "done"), 0)
            line.failed = sum(per_value.get((line.audience_name, s), 0)
                              for s in ("failed", "pending", "unconfirmed", "rejected"))
            conn.execute("INSERT INTO sync.braze_sync_runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         [report.run_id, line.audience_name, line.snapshot_date, line.members, line.adds,
                          line.removes, line.sent, line.failed, now, line.audience_slug])


def audience_summary(report: SyncReport) -> list[dict]:
    """Per-audience lines as plain JSON-able dicts (the report row, notifications, metadata)."""
    out = []
    for line in report.audiences:
        d = asdict(line)
        d["snapshot_date"] = line.snapshot_date.isoformat() if line.snapshot_date else None
        out.append(d)
    return out


def _write_report(warehouse: Warehouse, report: SyncReport, attribute: str) -> None:
    report.finished_at = _now()
    with _transaction(warehouse) as conn:
        conn.execute("DELETE FROM sync.braze_sync_reports WHERE run_id = ? AND attribute = ? AND shard = ?",
                     [report.run_id, attribute, report.shard])
        conn.execute(
            "INSERT INTO sync.braze_sync_reports VALUES (" + ", ".join(["?"] * 22) + ")",
            [report.run_id, attribute, "dry_run" if report.dry_run else "sync", report.status, report.shard,
             report.started_at, report.finished_at, report.diff.customers, report.diff.adds, report.diff.removes,
             report.done, report.failed + report.rejected, report.pending, report.parked, report.reconciled,
             report.diff.capped_customers, json.dumps(report.diff.held_back),
             report.requests_estimate if report.dry_run else report.requests, report.guard,
             json.dumps(audience_summary(report)), "", report.error])


def record_notification(warehouse: Warehouse, report: SyncReport, attribute: str, outcome: str) -> None:
    """Note on the run's report row where the confirmation went (or why it did not)."""
    with _transaction(warehouse) as conn:
        conn.execute("UPDATE sync.braze_sync_reports SET notified = ? WHERE run_id = ? AND attribute = ? "
                     "AND shard = ?", [outcome, report.run_id, attribute, report.shard])
