"""Keep Braze's array attribute equal to the hub's audiences: plan, log, send, confirm.

Durability: every change is written to ``sync.braze_sync_log`` as *pending* before it is sent, and
``sync.braze_attribute_state`` (what Braze acknowledged) moves only for objects Braze confirmed, in the same
transaction that records their outcome. A run killed at any moment leaves the state exactly at what Braze
confirmed; the next run recomputes the diff from it and sends the rest. Objects Braze rejected stay in the diff
and are retried by later runs with their reason logged.

The first sync of an attribute starts from what Braze holds according to the newest export (the attribute is in
the exported ``custom_attributes``), so values already in Braze are not re-added.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import duckdb
import pyarrow as pa

from lexer_assets.storage.warehouse import Warehouse
from lexer_assets.sync.attribute_diff import DiffCounts, ValuePolicy, plan_changes


@dataclass(frozen=True)
class SyncedAudience:
    """What the sync needs to know of one audience in the YAML."""

    slug: str
    name: str
    activated: bool  # enabled and braze: true
    list_action: str = "maintain"
    priority: int = 100


class AttributeSender(Protocol):
    def send_attributes(self, objects: Sequence[dict], *, on_progress: Callable[[int, int], None] | None = None
                        ) -> list: ...


@dataclass
class AudienceSyncLine:
    audience_name: str
    snapshot_date: dt.date | None
    members: int
    adds: int = 0
    removes: int = 0
    sent: int = 0
    failed: int = 0


@dataclass
class SyncReport:
    run_id: str
    dry_run: bool
    diff: DiffCounts
    objects: int = 0
    requests_estimate: int = 0
    done: int = 0
    failed: int = 0
    pending: int = 0
    rejected: int = 0
    failure_reasons: dict[str, int] = field(default_factory=dict)
    audiences: list[AudienceSyncLine] = field(default_factory=list)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def _bootstrap_known_state(conn: duckdb.DuckDBPyConnection, attribute: str) -> None:
    """Before the first sync of an attribute, take what Braze holds from the newest export."""
    already = conn.execute(
        "SELECT (SELECT count(*) FROM sync.braze_attribute_state WHERE attribute = ?)"
        " + (SELECT count(*) FROM sync.braze_sync_log WHERE attribute = ?)", [attribute, attribute]
    ).fetchall()[0][0]
    if already:
        return
    conn.execute(
        """
        INSERT INTO sync.braze_attribute_state
        SELECT DISTINCT customer_id, ?, value, now()::TIMESTAMP, 'export'
        FROM (
            SELECT customer_id,
                   unnest(CASE WHEN json_type(custom_attributes, '$."' || ? || '"') = 'ARRAY'
                               THEN json_extract_string(custom_attributes, '$."' || ? || '"[*]')
                               ELSE []::VARCHAR[] END) AS value
            FROM braze.users)
        WHERE value IS NOT NULL
        """,
        [attribute, attribute, attribute],
    )


def desired_state(conn: duckdb.DuckDBPyConnection, audiences: Sequence[SyncedAudience]
                   ) -> tuple[list[ValuePolicy], list[AudienceSyncLine]]:
    """TEMP table sync_desired(customer_id, value) from each activated audience's newest partition."""
    conn.execute("CREATE OR REPLACE TEMP TABLE sync_desired (customer_id VARCHAR, value VARCHAR)")
    policies: list[ValuePolicy] = []
    lines: list[AudienceSyncLine] = []
    for aud in audiences:
        if not aud.activated:
            continue  # not a policy: its values, if Braze holds them, are retired and removed
        newest = conn.execute(
            "SELECT max(snapshot_date) FROM lexer.audience_membership WHERE audience_slug = ?", [aud.slug]
        ).fetchall()[0][0]
        # An audience with no partition yet is unknown, not empty: never remove its value.
        policies.append(ValuePolicy(aud.name, aud.priority,
                                    removable=aud.list_action == "maintain" and newest is not None))
        if newest is None:
            lines.append(AudienceSyncLine(aud.name, None, 0))
            continue
        conn.execute(
            "INSERT INTO sync_desired SELECT DISTINCT customer_id, ? FROM lexer.audience_membership"
            " WHERE audience_slug = ? AND snapshot_date = ?", [aud.name, aud.slug, newest])
        members = conn.execute("SELECT count(*) FROM sync_desired WHERE value = ?", [aud.name]).fetchall()[0][0]
        lines.append(AudienceSyncLine(aud.name, newest, int(members)))
    return policies, lines


def _identity(row: dict) -> dict:
    if row["external_id"]:
        return {"external_id": row["external_id"]}
    if row["alias_name"] and row["alias_label"]:
        return {"user_alias": {"alias_name": row["alias_name"], "alias_label": row["alias_label"]}}
    if row["braze_id"]:
        return {"braze_id": row["braze_id"]}
    return {}


def build_objects(rows: Iterable[dict], attribute: str) -> list[dict]:
    """One /users/track attributes object per changed customer; lists left out when empty."""
    objects = []
    for row in rows:
        delta: dict[str, list[str]] = {}
        if row["adds"]:
            delta["add"] = list(row["adds"])
        if row["removes"]:
            delta["remove"] = list(row["removes"])
        objects.append({**_identity(row), "_update_existing_only": True, attribute: delta})
    return objects


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
) -> SyncReport:
    """Diff hub vs Braze, log the changes, send them, move the known state for what Braze confirmed."""
    with warehouse.transaction() as conn:
        _bootstrap_known_state(conn, attribute)
        policies, lines = desired_state(conn, audiences)
        conn.execute(
            "CREATE OR REPLACE TEMP TABLE sync_known AS"
            " SELECT customer_id, value FROM sync.braze_attribute_state WHERE attribute = ?", [attribute])
        counts = plan_changes(conn, desired="sync_desired", known="sync_known", policies=policies,
                              array_cap=array_cap)
        per_value = dict(((v, op), n) for v, op, n in conn.sql(
            "SELECT value, op, count(*) FROM diff_ops GROUP BY ALL").fetchall())
        for line in lines:
            line.adds = per_value.get((line.audience_name, "add"), 0)
            line.removes = per_value.get((line.audience_name, "remove"), 0)
        retired = conn.sql("SELECT value, count(*) FROM diff_ops WHERE op = 'remove' GROUP BY ALL").fetchall()
        names = {line.audience_name for line in lines}
        for value, n in retired:
            if value not in names:  # a retired or deactivated audience being cleaned out of Braze
                lines.append(AudienceSyncLine(value, None, 0, removes=int(n)))
        report = SyncReport(run_id, dry_run, counts, audiences=lines, objects=counts.customers,
                            requests_estimate=-(-counts.customers // max(batch_cap, 1)))
        if dry_run:
            conn.execute("ROLLBACK")
            conn.execute("BEGIN TRANSACTION")  # the context manager commits an empty transaction
            return report
        now = _now()
        conn.execute(
            "UPDATE sync.braze_sync_log SET status = 'superseded', finished_at = ? "
            "WHERE status = 'pending' AND attribute = ?", [now, attribute])
        conn.execute(
            "INSERT INTO sync.braze_sync_log SELECT ?, customer_id, ?, op, value, NULL, 'pending', NULL, ?, NULL "
            "FROM diff_ops", [run_id, attribute, now])
        changes = conn.sql(
            """
            SELECT c.customer_id, c.adds, c.removes, u.external_id, u.braze_id, u.alias_name, u.alias_label
            FROM sync_changes c LEFT JOIN braze.users u USING (customer_id) ORDER BY c.customer_id
            """
        ).fetchall()
    cols = ("customer_id", "adds", "removes", "external_id", "braze_id", "alias_name", "alias_label")
    rows = [dict(zip(cols, r, strict=True)) for r in changes]
    for row in rows:
        if not any(row[k] for k in ("external_id", "braze_id", "alias_name")):
            _fill_identity_from_key(row)

    sent_so_far = 0
    batch_offset = 0
    for start in range(0, len(rows), chunk_size):
        if sender is None:
            raise RuntimeError("a sync that is not a dry run needs a Braze client")
        chunk = rows[start:start + chunk_size]
        objects = build_objects(chunk, attribute)
        results = sender.send_attributes(objects)
        _record_outcomes(warehouse, chunk, results, attribute=attribute, run_id=run_id,
                         batch_offset=batch_offset, report=report)
        batch_offset += 1 + max((r.batch for r in results if r.batch is not None), default=-1)
        sent_so_far += len(chunk)
        log(f"sync: {sent_so_far:,}/{len(rows):,} customers processed "
            f"({report.done:,} confirmed, {report.failed:,} failed, {report.pending:,} pending)")

    _finish_report(warehouse, report, attribute)
    return report


def _fill_identity_from_key(row: dict) -> None:
    """Customers no longer in the export: their identity is encoded in the hub's customer_id."""
    key: str = row["customer_id"]
    if key.startswith("braze:"):
        row["braze_id"] = key[len("braze:"):]
    elif key.startswith("alias:") and key.count(":") >= 2:
        _, label, name = key.split(":", 2)
        row["alias_label"], row["alias_name"] = label, name
    else:
        row["external_id"] = key


def _record_outcomes(warehouse: Warehouse, chunk: list[dict], results: Sequence, *, attribute: str,
                     run_id: str, batch_offset: int, report: SyncReport) -> None:
    status = [r.status for r in results]
    outcome = pa.table({
        "customer_id": [row["customer_id"] for row in chunk],
        "status": status,
        "reason": [r.reason for r in results],
        "batch": pa.array([None if r.batch is None else r.batch + batch_offset for r in results], pa.int32()),
    })
    for r in results:
        if r.status == "done":
            report.done += 1
        else:
            setattr(report, r.status, getattr(report, r.status) + 1)
            key = f"{r.status}: {r.reason}"
            report.failure_reasons[key] = report.failure_reasons.get(key, 0) + 1
    with warehouse.transaction() as conn:
        conn.register("sync_outcome", outcome)
        now = _now()
        conn.execute(
            """
            UPDATE sync.braze_sync_log AS l SET status = o.status, error = o.reason, batch = o.batch,
                   finished_at = CASE WHEN o.status = 'pending' THEN NULL ELSE ? END
            FROM sync_outcome o
            WHERE l.run_id = ? AND l.attribute = ? AND l.customer_id = o.customer_id
            """, [now, run_id, attribute])
        # The known state moves only for what Braze confirmed.
        conn.execute(
            """
            DELETE FROM sync.braze_attribute_state AS s
            USING sync.braze_sync_log l, sync_outcome o
            WHERE l.run_id = ? AND l.attribute = ? AND l.op = 'remove' AND o.status = 'done'
              AND l.customer_id = o.customer_id AND s.customer_id = l.customer_id
              AND s.attribute = l.attribute AND s.value = l.value
            """, [run_id, attribute])
        conn.execute(
            """
            INSERT INTO sync.braze_attribute_state
            SELECT l.customer_id, l.attribute, l.value, ?, ?
            FROM sync.braze_sync_log l JOIN sync_outcome o USING (customer_id)
            WHERE l.run_id = ? AND l.attribute = ? AND l.op = 'add' AND o.status = 'done'
            """, [now, run_id, run_id, attribute])
        conn.unregister("sync_outcome")


def _finish_report(warehouse: Warehouse, report: SyncReport, attribute: str) -> None:
    with warehouse.transaction() as conn:
        per_value = dict(((v, s), n) for v, s, n in conn.execute(
            "SELECT value, status, count(*) FROM sync.braze_sync_log WHERE run_id = ? AND attribute = ?"
            " GROUP BY ALL", [report.run_id, attribute]).fetchall())
        now = _now()
        for line in report.audiences:
            line.sent = per_value.get((line.audience_name, "done"), 0)
            line.failed = sum(per_value.get((line.audience_name, s), 0) for s in ("failed", "pending", "rejected"))
            conn.execute("INSERT INTO sync.braze_sync_runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         [report.run_id, line.audience_name, line.snapshot_date, line.members, line.adds,
                          line.removes, line.sent, line.failed, now])
