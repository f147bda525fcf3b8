"""Desired vs known values of the Braze array attribute -> one add/remove change per customer.

Inputs are two relations of ``(customer_id, value)``: *desired* (the hub: members of each activated audience's
newest partition, the value being the audience name) and *known* (what Braze acknowledged). Rules:

- a value Braze already holds is never added again (re-adding moves it in Braze's array and costs a data point);
- a value is never both added and removed for one customer;
- values of ``append`` audiences are never removed, nor are values of audiences that have no computed partition
  yet (unknown is not empty: a broken or new audience must not wipe Braze);
- any other known value that is not desired is removed: the attribute belongs to the hub, so retired audiences
  are cleaned out ("maintain");
- a customer never gets more than ``array_cap`` desired values: lower ``priority`` numbers win, then the name.

The diff runs as SQL in DuckDB so a million customers x dozens of audiences takes seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import duckdb
import pyarrow as pa


@dataclass(frozen=True)
class ValuePolicy:
    """How the diff treats one attribute value (one audience name)."""

    value: str
    priority: int = 100
    removable: bool = True  # False for append audiences and audiences without a partition yet


@dataclass(frozen=True)
class DiffCounts:
    customers: int
    adds: int
    removes: int
    capped_customers: int
    held_back_values: int
    held_back: dict[str, int] = field(default_factory=dict)  # value -> customers it was held back from


def plan_changes(
    conn: duckdb.DuckDBPyConnection,
    *,
    desired: str,
    known: str,
    policies: Sequence[ValuePolicy],
    array_cap: int,
    target: str = "sync_changes",
    exclude: str | None = None,
) -> DiffCounts:
    """Create TEMP table ``target(customer_id, adds VARCHAR[], removes VARCHAR[])`` and return its counts.

    ``desired`` and ``known`` name relations with columns ``customer_id, value`` (chosen by code, not users).
    Values in ``desired`` without a policy get the default priority. ``exclude`` optionally names a relation
    ``(customer_id, op, value)`` of changes to leave out (parked changes; those left out are kept in TEMP table
    ``diff_excluded``); the per-change rows stay in TEMP table ``diff_ops(customer_id, op, value)``.
    """
    policy_table = pa.table({
        "value": [p.value for p in policies],
        "priority": pa.array([p.priority for p in policies], pa.int64()),
        "removable": pa.array([p.removable for p in policies], pa.bool_()),
    })
    conn.register("diff_policies", policy_table)
    # Only customers with more desired values than the cap need a priority ranking; sorting every customer's
    # values (a window over all rows) would dominate the diff when almost nobody is capped.
    conn.execute(f"""
        CREATE OR REPLACE TEMP TABLE diff_desired_ranked AS
        WITH d AS (SELECT DISTINCT customer_id, value FROM {desired}),
             n AS (SELECT customer_id, count(*) AS n FROM d GROUP BY customer_id),
             dn AS (SELECT d.customer_id, d.value, n.n FROM d JOIN n USING (customer_id))
        SELECT customer_id, value, 1::BIGINT AS rank FROM dn WHERE n <= {int(array_cap)}
        UNION ALL
        SELECT dn.customer_id, dn.value,
               row_number() OVER (PARTITION BY dn.customer_id
                                  ORDER BY coalesce(p.priority, 100), dn.value) AS rank
        FROM dn LEFT JOIN diff_policies p USING (value)
        WHERE dn.n > {int(array_cap)}
    """)
    conn.execute(f"""
        CREATE OR REPLACE TEMP TABLE diff_ops AS
        WITH capped AS (SELECT customer_id, value FROM diff_desired_ranked WHERE rank <= {int(array_cap)}),
             known AS (SELECT DISTINCT customer_id, value FROM {known}),
             adds AS (SELECT customer_id, value FROM capped EXCEPT SELECT customer_id, value FROM known),
             removes AS (
                SELECT k.customer_id, k.value FROM known k
                LEFT JOIN diff_policies p USING (value)
                WHERE coalesce(p.removable, true)
                  AND NOT EXISTS (SELECT 1 FROM capped c
                                  WHERE c.customer_id = k.customer_id AND c.value = k.value))
        SELECT customer_id, 'add' AS op, value FROM adds
        UNION ALL
        SELECT customer_id, 'remove' AS op, value FROM removes
    """)
    if exclude is not None:
        conn.execute(f"CREATE OR REPLACE TEMP TABLE diff_excluded AS SELECT d.* FROM diff_ops AS d "
                     f"SEMI JOIN {exclude} AS x ON d.customer_id = x.customer_id AND d.op = x.op "
                     "AND d.value = x.value")
        conn.execute(f"DELETE FROM diff_ops AS d USING {exclude} AS x WHERE d.customer_id = x.customer_id "
                     "AND d.op = x.op AND d.value = x.value")
    conn.execute(f"""
        CREATE OR REPLACE TEMP TABLE {target} AS
        SELECT customer_id,
               coalesce(list(value ORDER BY value) FILTER (WHERE op = 'add'), []::VARCHAR[]) AS adds,
               coalesce(list(value ORDER BY value) FILTER (WHERE op = 'remove'), []::VARCHAR[]) AS removes
        FROM diff_ops GROUP BY customer_id ORDER BY customer_id
    """)
    conn.unregister("diff_policies")
    customers, adds, removes = conn.execute(
        f"SELECT count(*), coalesce(sum(len(adds)), 0), coalesce(sum(len(removes)), 0) FROM {target}"
    ).fetchall()[0]
    capped, held = conn.execute(
        "SELECT count(DISTINCT customer_id), count(*) FROM diff_desired_ranked WHERE rank > ?", [int(array_cap)]
    ).fetchall()[0]
    held_back = dict(conn.execute(
        "SELECT value, count(*) FROM diff_desired_ranked WHERE rank > ? GROUP BY value ORDER BY value",
        [int(array_cap)]).fetchall())
    return DiffCounts(int(customers), int(adds), int(removes), int(capped), int(held),
                      {str(k): int(v) for k, v in held_back.items()})
