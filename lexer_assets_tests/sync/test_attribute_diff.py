"""The attribute diff against hand-worked cases and a plain-Python reference on random data."""

from __future__ import annotations

import random

import duckdb
import pyarrow as pa
import pytest

from lexer_assets.sync.attribute_diff import ValuePolicy, plan_changes


def _run(desired: dict[str, set[str]], known: dict[str, set[str]], policies: list[ValuePolicy], cap: int):
    conn = duckdb.connect()
    for name, rows in (("desired_rel", desired), ("known_rel", known)):
        pairs = [(c, v) for c, vs in rows.items() for v in vs]
        conn.register(name, pa.table({"customer_id": [p[0] for p in pairs], "value": [p[1] for p in pairs]},
                                     schema=pa.schema([("customer_id", pa.string()), ("value", pa.string())])))
    counts = plan_changes(conn, desired="desired_rel", known="known_rel", policies=policies, array_cap=cap)
    rows = conn.sql("SELECT customer_id, adds, removes FROM sync_changes").fetchall()
    return counts, {c: (set(a), set(r)) for c, a, r in rows}


def test_hand_worked_case() -> None:
    desired = {"a": {"VIP", "New"}, "b": {"VIP"}, "c": set()}
    known = {"a": {"VIP"}, "b": {"Lapsed", "VIP"}, "c": {"Old"}, "d": {"Keep"}}
    policies = [ValuePolicy("VIP", 1), ValuePolicy("New", 2), ValuePolicy("Keep", 3, removable=False)]
    counts, changes = _run(desired, known, policies, cap=10)
    # a gains New only (VIP already held); b loses retired Lapsed; c loses Old; d keeps its append-only value
    assert changes == {"a": ({"New"}, set()), "b": (set(), {"Lapsed"}), "c": (set(), {"Old"})}
    assert (counts.customers, counts.adds, counts.removes) == (3, 1, 2)


def test_cap_keeps_highest_priority_and_reports_held_back() -> None:
    desired = {"a": {"A", "B", "C"}, "b": {"C"}}
    known = {"a": {"C"}}
    policies = [ValuePolicy("A", 1), ValuePolicy("B", 2), ValuePolicy("C", 3)]
    counts, changes = _run(desired, known, policies, cap=2)
    # a may hold 2: A and B win; C (held by Braze, lowest priority) is removed
    assert changes == {"a": ({"A", "B"}, {"C"}), "b": ({"C"}, set())}
    assert (counts.capped_customers, counts.held_back_values) == (1, 1)


def _reference(desired, known, policies, cap):
    prio = {p.value: p.priority for p in policies}
    removable = {p.value: p.removable for p in policies}
    out = {}
    for cust in set(desired) | set(known):
        want = sorted(desired.get(cust, set()), key=lambda v: (prio.get(v, 100), v))[:cap]
        have = known.get(cust, set())
        adds = set(want) - have
        removes = {v for v in have - set(want) if removable.get(v, True)}
        if adds or removes:
            out[cust] = (adds, removes)
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_matches_plain_python_reference(seed: int) -> None:
    rng = random.Random(seed)
    values = [f"aud{i}" for i in range(8)]
    policies = [ValuePolicy(v, rng.randint(1, 5), removable=rng.random() > 0.2) for v in values[:6]]
    desired = {f"c{i}": set(rng.sample(values, rng.randint(0, 5))) for i in range(300)}
    known = {f"c{i}": set(rng.sample(values, rng.randint(0, 5))) for i in range(0, 400, 2)}
    _, changes = _run(desired, known, policies, cap=3)
    expected = _reference(desired, known, policies, cap=3)
    assert changes == expected
    assert all(not (a & r) for a, r in changes.values())
