"""Does Braze hold what the hub says? Read every customer's attribute back from Braze and compare.

Expected for a customer: the values the sync would want them to hold (each activated audience's newest
partition, capped by priority). Braze may additionally hold values the hub must not remove (append audiences,
audiences without a partition yet); any other difference is a mismatch.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from lexer_assets.storage.warehouse import Warehouse
from lexer_assets.sync.audience_sync import SyncedAudience, desired_state
from lexer_assets.sync.identity import ProfileReader, keys_of


@dataclass
class Mismatch:
    customer_id: str
    expected: list[str]
    braze: list[str] | None  # None: the user is not in Braze


@dataclass
class VerifyReport:
    checked: int
    mismatches: list[Mismatch] = field(default_factory=list)


def verify_braze(warehouse: Warehouse, reader: ProfileReader, *, audiences: Sequence[SyncedAudience],
                 attribute: str, array_cap: int, chunk: int = 5_000,
                 progress: Callable[[int, int], None] | None = None,
                 sample: int | None = None) -> VerifyReport:
    """Compare every user (or a fixed random ``sample`` of them: the same users each time) with Braze."""
    with warehouse.connect() as conn:
        policies, _ = desired_state(conn, audiences)
        tolerated = {p.value for p in policies if not p.removable}
        expected_rows = conn.execute(
            """
            SELECT u.customer_id, u.external_id, u.braze_id, u.alias_name, u.alias_label,
                   coalesce(list(d.value ORDER BY d.value) FILTER (WHERE d.value IS NOT NULL), []::VARCHAR[])
            FROM braze.users u
            LEFT JOIN (SELECT customer_id, value, row_number() OVER (
                           PARTITION BY customer_id ORDER BY coalesce(p.priority, 100), value) AS rank
                       FROM sync_desired
                       LEFT JOIN (SELECT unnest(?::VARCHAR[]) AS value,
                                         unnest(?::INTEGER[]) AS priority) p USING (value)) d
                   ON d.customer_id = u.customer_id AND d.rank <= ?
            GROUP BY ALL ORDER BY u.customer_id
            """,
            [[p.value for p in policies], [p.priority for p in policies], array_cap],
        ).fetchall()
    if sample is not None and len(expected_rows) > sample:
        # fixed seed: a mismatch seen once is seen again on the next check, not hidden by a new draw
        expected_rows = sorted(random.Random(0).sample(expected_rows, sample))
    report = VerifyReport(checked=0)
    fields = ["external_id", "braze_id", "user_aliases", "custom_attributes"]
    for start in range(0, len(expected_rows), chunk):
        rows = expected_rows[start:start + chunk]
        by_external = [r[1] for r in rows if r[1]]
        by_alias = [{"alias_name": r[3], "alias_label": r[4]} for r in rows if not r[1] and r[3] and r[4]]
        by_braze = [r[2] for r in rows if not r[1] and not (r[3] and r[4]) and r[2]]
        found = reader.export_ids(external_ids=by_external, user_aliases=by_alias, braze_ids=by_braze,
                                  fields_to_export=fields)
        held: dict[str, list[str]] = {}
        for user in found:
            values = (user.get("custom_attributes") or {}).get(attribute) or []
            for key in keys_of(user):
                held[key] = list(values) if isinstance(values, list) else [values]
        for customer_id, external_id, braze_id, alias_name, alias_label, expected in rows:
            report.checked += 1
            key = (f"external:{external_id}" if external_id else
                   f"alias:{alias_label}:{alias_name}" if alias_name and alias_label else f"braze:{braze_id}")
            actual = held.get(key)
            if actual is None:
                if expected:
                    report.mismatches.append(Mismatch(customer_id, list(expected), None))
                continue
            missing = set(expected) - set(actual)
            extra = set(actual) - set(expected) - tolerated
            if missing or extra or len(actual) != len(set(actual)):
                report.mismatches.append(Mismatch(customer_id, list(expected), list(actual)))
        if progress:
            progress(min(start + chunk, len(expected_rows)), len(expected_rows))
    return report
