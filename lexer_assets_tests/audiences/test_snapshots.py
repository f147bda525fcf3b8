"""One audience over days on a small real DuckDB hub: which export a day uses, history, replacement, reuse.

Expected members are worked out by hand from the fixture rows written in each test.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import dagster as dg
import duckdb
import pytest
import yaml

from lexer_assets.audiences.rules import WINDOWS
from lexer_assets.audiences.snapshots import (
    NOTE_CURRENT,
    NOTE_EARLIEST,
    export_for_day,
    materialize_days,
    membership_cutoff,
    prune_membership,
    sync_day,
)
from lexer_assets.audiences.spec import Audience, AudienceError, load_audiences
from lexer_assets.braze.export_load import load_export
from lexer_assets.defs.audiences import backfill_audiences
from lexer_assets.population import write_braze_export
from lexer_assets.profiles.build import LifecycleThresholds, build_profiles
from lexer_assets.storage.warehouse import Warehouse, ensure_tables
from lexer_assets_tests.conftest import local_settings

THRESHOLDS = LifecycleThresholds()


def _audiences(tmp_path: Path, *entries: dict) -> list[Audience]:
    path = tmp_path / "audiences.yaml"
    full = [{"description": "test", "owner": "tests@example.com", "activation": {"braze": False}, **e}
            for e in entries]
    path.write_text(yaml.safe_dump(full, sort_keys=False))
    return load_audiences(path)


def _user(external_id: str, country: str) -> dict:
    return {"external_id": external_id, "braze_id": f"b-{external_id}", "country": country,
            "email": f"{external_id}@example.com", "created_at": "2025-01-01T00:00:00Z"}


def _hub(tmp_path: Path) -> duckdb.DuckDBPyConnection:
    conn = duckdb.connect(str(tmp_path / "hub.duckdb"))
    ensure_tables(conn)
    return conn


def _add_export(conn: duckdb.DuckDBPyConnection, home: Path, prefix: str, export_date: dt.date,
                users: list[dict], landed: dt.datetime) -> list[Path]:
    """Write an export's files under the hub's raw folder and list them in braze.export_files."""
    raw_root = home / "raw" / "braze-exports" / export_date.isoformat()
    files = write_braze_export(users, raw_root, segment_id="seg", export_date=export_date, object_prefix=prefix)
    for f in files:
        conn.execute("INSERT INTO braze.export_files VALUES (?, ?, ?, ?, ?, ?)",
                     [prefix, export_date, f.name, str(f.relative_to(home)), f.stat().st_size, landed])
    return files


def _members(conn: duckdb.DuckDBPyConnection, slug: str) -> dict[dt.date, set[str]]:
    out: dict[dt.date, set[str]] = {}
    for day, customer in conn.execute("SELECT snapshot_date, customer_id FROM lexer.audience_membership "
                                      "WHERE audience_slug = ?", [slug]).fetchall():
        out.setdefault(day, set()).add(customer)
    return out


def _history(conn: duckdb.DuckDBPyConnection, slug: str) -> list[tuple]:
    return conn.execute("SELECT snapshot_date, size, entered, exited, object_prefix FROM lexer.audience_history "
                        "WHERE audience_slug = ? ORDER BY snapshot_date", [slug]).fetchall()


def test_a_day_uses_the_export_current_then(tmp_path: Path) -> None:
    home = tmp_path / "home"
    conn = _hub(tmp_path)
    # u1 lived in Australia until the April export says Great Britain; u2 moved the other way.
    march = _add_export(conn, home, "p-march", dt.date(2026, 3, 1), [_user("u1", "AU"), _user("u2", "GB")],
                        dt.datetime(2026, 3, 1, 6))
    april = _add_export(conn, home, "p-april", dt.date(2026, 4, 1), [_user("u1", "GB"), _user("u2", "AU")],
                        dt.datetime(2026, 4, 1, 6))
    assert march and april
    load_export(conn, april, object_prefix="p-april")  # braze.users holds the newest export only
    audiences = _audiences(tmp_path, {"name": "Australians", "slug": "aus",
                                      "rules": [{"column": "country", "op": "=", "value": "AU"}]})
    days = [dt.date(2026, 2, 10), dt.date(2026, 3, 1), dt.date(2026, 3, 31), dt.date(2026, 4, 1),
            dt.date(2026, 4, 20)]

    assert export_for_day(conn, dt.date(2026, 3, 31)).object_prefix == "p-march"
    assert export_for_day(conn, dt.date(2026, 4, 1)).object_prefix == "p-april"
    stats = materialize_days(conn, audiences[0], audiences, days, THRESHOLDS, home=home,
                             cache_dir=tmp_path / "cache")

    assert [(s.snapshot_date, s.object_prefix, s.export_note) for s in stats] == [
        (dt.date(2026, 2, 10), "p-march", NOTE_EARLIEST),  # before any export: the earliest one
        (dt.date(2026, 3, 1), "p-march", NOTE_CURRENT),
        (dt.date(2026, 3, 31), "p-march", NOTE_CURRENT),
        (dt.date(2026, 4, 1), "p-april", NOTE_CURRENT),
        (dt.date(2026, 4, 20), "p-april", NOTE_CURRENT),
    ]
    assert _members(conn, "aus") == {days[0]: {"u1"}, days[1]: {"u1"}, days[2]: {"u1"}, days[3]: {"u2"},
                                     days[4]: {"u2"}}
    assert [h[4] for h in _history(conn, "aus")] == ["p-march"] * 3 + ["p-april"] * 2
    # The hub's own tables were not touched by reading the March export back.
    assert conn.sql("SELECT DISTINCT object_prefix FROM braze.users").fetchall() == [("p-april",)]
    assert conn.sql("SELECT count(*) FROM braze.export_rejects").fetchall() == [(0,)]


def _orders_hub(tmp_path: Path) -> duckdb.DuckDBPyConnection:
    """Three customers; orders on known days (amounts irrelevant)."""
    conn = _hub(tmp_path)
    conn.execute("INSERT INTO braze.users (customer_id, external_id, object_prefix) VALUES "
                 "('a', 'a', 'p'), ('b', 'b', 'p'), ('c', 'c', 'p')")
    orders = [("a", "2026-05-01"), ("b", "2026-05-03"), ("c", "2026-05-04"), ("a", "2026-05-05")]
    for i, (customer, day) in enumerate(orders):
        conn.execute("INSERT INTO commerce.orders (order_id, customer_id, order_date, units, amount) "
                     "VALUES (?, ?, ?, 1, 10)", [f"o{i}", customer, day])
    return conn


def test_history_is_right_after_an_out_of_order_backfill(tmp_path: Path) -> None:
    conn = _orders_hub(tmp_path)
    audiences = _audiences(tmp_path, {"name": "Recent", "slug": "recent", "rules": [{"ordered_in_last_days": 2}]})
    d = [dt.date(2026, 5, day) for day in range(1, 7)]
    # Members by hand (orders in (day-2, day]): 1st {a}, 2nd {a}, 3rd {b}, 4th {b, c}, 5th {c, a}, 6th {a}.
    expected = {d[0]: {"a"}, d[1]: {"a"}, d[2]: {"b"}, d[3]: {"b", "c"}, d[4]: {"a", "c"}, d[5]: {"a"}}
    def computed_at(day: dt.date) -> dt.datetime:
        return conn.execute("SELECT materialized_at FROM lexer.audience_history WHERE audience_slug = 'recent' "
                            "AND snapshot_date = ?", [day]).fetchall()[0][0]

    stamps: dict[dt.date, dt.datetime] = {}
    for chunk in ([d[4], d[5]], [d[0]], [d[2], d[3]], [d[1]]):  # later days first, gaps filled afterwards
        materialize_days(conn, audiences[0], audiences, chunk, THRESHOLDS, home=tmp_path, cache_dir=None)
        stamps |= {day: computed_at(day) for day in chunk}
    assert _members(conn, "recent") == expected
    # Filling a gap recounts the next day's entered/exited, but that day's members were computed earlier.
    assert {day: computed_at(day) for day in d} == stamps
    # entered/exited against the previous day, by hand from the sets above
    assert [h[:4] for h in _history(conn, "recent")] == [
        (d[0], 1, 1, 0), (d[1], 1, 0, 0), (d[2], 1, 1, 1), (d[3], 2, 1, 0), (d[4], 2, 1, 1), (d[5], 1, 0, 1)]


def test_rerunning_a_day_replaces_it_and_an_empty_day_is_stored(tmp_path: Path) -> None:
    conn = _orders_hub(tmp_path)
    audiences = _audiences(
        tmp_path,
        {"name": "Recent", "slug": "recent", "rules": [{"ordered_in_last_days": 1}]},
        {"name": "Nobody", "slug": "nobody", "rules": [{"column": "orders", "op": ">", "value": 99}]})
    day = dt.date(2026, 5, 4)
    for _ in range(2):
        materialize_days(conn, audiences[0], audiences, [day], THRESHOLDS, home=tmp_path, cache_dir=None)
    assert conn.sql("SELECT customer_id FROM lexer.audience_membership ORDER BY 1").fetchall() == [("c",)]
    assert _history(conn, "recent") == [(day, 1, 1, 0, "p")]

    stats = materialize_days(conn, audiences[1], audiences, [day], THRESHOLDS, home=tmp_path, cache_dir=None)
    assert [(s.size, s.entered, s.exited) for s in stats] == [(0, 0, 0)]
    assert _history(conn, "nobody") == [(day, 0, 0, 0, "p")]
    assert _members(conn, "nobody") == {}


def test_past_day_profiles_are_built_once_and_reused_until_orders_change(tmp_path: Path) -> None:
    conn = _orders_hub(tmp_path)
    audiences = _audiences(
        tmp_path,
        {"name": "Two orders", "slug": "two", "rules": [{"column": "orders", "op": ">=", "value": 2}]},
        {"name": "Any order", "slug": "any", "rules": [{"column": "orders", "op": ">=", "value": 1}]})
    cache = tmp_path / "cache"
    day = dt.date(2026, 5, 5)
    first = materialize_days(conn, audiences[0], audiences, [day], THRESHOLDS, home=tmp_path, cache_dir=cache)
    second = materialize_days(conn, audiences[1], audiences, [day], THRESHOLDS, home=tmp_path, cache_dir=cache)
    assert (first[0].profiles_source, second[0].profiles_source) == ("built", "cache")
    assert (first[0].size, second[0].size) == (1, 3)  # a has two orders by the 5th; a, b, c have one

    conn.execute("INSERT INTO commerce.orders (order_id, customer_id, order_date, units, amount) "
                 "VALUES ('late', 'b', DATE '2026-05-02', 1, 10)")  # a corrected order file
    again = materialize_days(conn, audiences[0], audiences, [day], THRESHOLDS, home=tmp_path, cache_dir=cache)
    assert (again[0].profiles_source, again[0].size) == ("built", 2)


def test_broken_rules_write_nothing(tmp_path: Path) -> None:
    conn = _orders_hub(tmp_path)
    audiences = _audiences(tmp_path, {"name": "Typo", "slug": "typo",
                                      "rules": [{"column": "revnue", "op": ">", "value": 1}]})
    with pytest.raises(AudienceError, match="revnue"):
        materialize_days(conn, audiences[0], audiences, [dt.date(2026, 5, 5)], THRESHOLDS, home=tmp_path,
                         cache_dir=None)
    assert conn.sql("SELECT count(*) FROM lexer.audience_history").fetchall() == [(0,)]


def test_windows_from_first_and_last_order_dates_match_every_order_line(tmp_path: Path) -> None:
    """Time windows read two dates per customer; checked against plain Python over the order lines."""
    assert WINDOWS == ("ordered_in_last_days", "no_order_in_last_days", "first_order_within_days"), (
        "a new window kind: check create_order_bounds still answers it exactly")
    conn = _orders_hub(tmp_path)
    lines = {"a": [dt.date(2026, 5, 1), dt.date(2026, 5, 5)], "b": [dt.date(2026, 5, 3)],
             "c": [dt.date(2026, 5, 4)]}
    entries = [{"name": f"{key} {n}", "slug": f"{key}_{n}", "rules": [{key: n}]}
               for key in WINDOWS for n in (1, 2, 3, 5)]
    audiences = _audiences(tmp_path, *entries)
    days = [dt.date(2026, 4, 30) + dt.timedelta(days=i) for i in range(8)]

    def expected(key: str, n: int, day: dt.date) -> set[str]:
        out = set()
        for customer in ("a", "b", "c"):
            seen = [d for d in lines[customer] if d <= day]
            in_window = any(day - dt.timedelta(days=n) < d for d in seen)
            if key == "ordered_in_last_days" and in_window:
                out.add(customer)
            if key == "no_order_in_last_days" and not in_window:
                out.add(customer)
            if key == "first_order_within_days" and in_window and min(seen) > day - dt.timedelta(days=n):
                out.add(customer)
        return out

    for audience, entry in zip(audiences, entries, strict=True):
        materialize_days(conn, audience, audiences, days, THRESHOLDS, home=tmp_path, cache_dir=tmp_path / "c")
        key, n = next(iter(entry["rules"][0].items()))
        got = _members(conn, audience.slug)
        for day in days:
            assert got.get(day, set()) == expected(key, n, day), (audience.slug, day)


def test_retention_keeps_recent_member_lists_and_every_size(tmp_path: Path) -> None:
    conn = _orders_hub(tmp_path)
    audiences = _audiences(tmp_path, {"name": "Recent", "slug": "recent", "rules": [{"ordered_in_last_days": 2}]})
    d = [dt.date(2026, 5, day) for day in range(1, 7)]
    # By hand (orders in (day-2, day]): 1st {a}, 2nd {a}, 3rd {b}, 4th {b, c}, 5th {a, c}, 6th {a}.
    materialize_days(conn, audiences[0], audiences, d, THRESHOLDS, home=tmp_path, cache_dir=None)
    full_history = [(d[0], 1, 1, 0), (d[1], 1, 0, 0), (d[2], 1, 1, 1), (d[3], 2, 1, 0), (d[4], 2, 1, 1),
                    (d[5], 1, 0, 1)]

    # 3 days kept back from the newest (the 6th): the 4th, 5th and 6th. "Today" is the 2nd, so the sync
    # reads the 2nd (a day after today never reaches Braze): its list stays too.
    cutoff = membership_cutoff(conn, "recent", 3)
    assert cutoff == d[3]
    assert sync_day(conn, "recent", d[1]) == d[1]
    deleted = prune_membership(conn, "recent", cutoff=cutoff, today=d[1])
    assert deleted == 2  # the 1st's {a} and the 3rd's {b}
    assert _members(conn, "recent") == {d[1]: {"a"}, d[3]: {"b", "c"}, d[4]: {"a", "c"}, d[5]: {"a"}}
    assert [h[:4] for h in _history(conn, "recent")] == full_history  # sizes of every day stay

    # With today after the 6th, the 2nd is no longer the sync's day and goes as well.
    assert prune_membership(conn, "recent", cutoff=cutoff, today=dt.date(2026, 6, 1)) == 1
    assert sorted(_members(conn, "recent")) == [d[3], d[4], d[5]]

    # Recomputing the 4th: its previous day (the 3rd) has lost its list, so entered/exited are unknown (NULL),
    # not 2 and 0; the 5th is recounted against the 4th's list as before.
    stats = materialize_days(conn, audiences[0], audiences, [d[3]], THRESHOLDS, home=tmp_path, cache_dir=None)
    assert [(s.size, s.entered, s.exited) for s in stats] == [(2, None, None)]
    # Recomputing the 2nd (before the cutoff): the 1st has no list; the 3rd, whose list is gone, keeps its
    # size and loses its now-stale entered/exited.
    materialize_days(conn, audiences[0], audiences, [d[1]], THRESHOLDS, home=tmp_path, cache_dir=None)
    assert [h[:4] for h in _history(conn, "recent")] == [
        (d[0], 1, 1, 0), (d[1], 1, None, None), (d[2], 1, None, None), (d[3], 2, None, None), (d[4], 2, 1, 1),
        (d[5], 1, 0, 1)]
    assert membership_cutoff(conn, "recent", 3, [dt.date(2026, 5, 9)]) == dt.date(2026, 5, 7)


def test_backfill_prunes_old_member_lists_in_the_analysts_store_too(tmp_path: Path) -> None:
    audiences_file = tmp_path / "audiences.yaml"
    _audiences(tmp_path, {"name": "Recent", "slug": "recent", "rules": [{"ordered_in_last_days": 2}]})
    settings = local_settings(tmp_path / "home", LEXER_AUDIENCES_FILE=str(audiences_file),
                              LEXER_AS_OF="2026-05-06", LEXER_PARTITIONS_START="2026-04-01",
                              LEXER_MEMBERSHIP_RETENTION_DAYS="3")
    wh = Warehouse(settings.warehouse_path, settings.published_store_path)
    with wh.transaction() as conn:
        conn.execute("INSERT INTO braze.users (customer_id, external_id, object_prefix) VALUES "
                     "('a', 'a', 'p'), ('b', 'b', 'p'), ('c', 'c', 'p')")
        for i, (customer, day) in enumerate([("a", "2026-05-01"), ("b", "2026-05-03"), ("c", "2026-05-04"),
                                             ("a", "2026-05-05")]):
            conn.execute("INSERT INTO commerce.orders (order_id, customer_id, order_date, units, amount) "
                         "VALUES (?, ?, ?, 1, 10)", [f"o{i}", customer, day])
        build_profiles(conn, as_of=dt.date(2026, 5, 6))
    wh.publish()
    instance = dg.DagsterInstance.ephemeral()
    d = [dt.date(2026, 5, day) for day in range(1, 7)]
    assert backfill_audiences(settings, d[0], d[2], instance=instance).success  # nothing to prune yet
    assert backfill_audiences(settings, d[3], d[5], instance=instance).success  # the 1st-3rd lists go

    conn = wh.read_only()  # what analysts see
    try:
        days = conn.sql("SELECT DISTINCT snapshot_date FROM lexer.audience_membership ORDER BY 1").fetchall()
        sizes = conn.sql("SELECT snapshot_date, size FROM lexer.audience_history ORDER BY 1").fetchall()
    finally:
        conn.close()
    assert [r[0] for r in days] == d[3:]
    assert sizes == [(d[0], 1), (d[1], 1), (d[2], 1), (d[3], 2), (d[4], 2), (d[5], 1)]
