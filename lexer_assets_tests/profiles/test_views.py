"""Analyst views over hand-made membership, history and profiles."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import duckdb
import pytest

from lexer_assets.profiles.build import build_profiles
from lexer_assets.profiles.views import ANALYST_VIEWS, create_analyst_views
from lexer_assets.storage.warehouse import ensure_tables

D1, D2 = date(2026, 6, 1), date(2026, 6, 2)


@pytest.fixture
def conn(tmp_path: Path) -> duckdb.DuckDBPyConnection:
    c = duckdb.connect(str(tmp_path / "hub.duckdb"))
    ensure_tables(c)
    create_analyst_views(c)
    yield c
    c.close()


def test_audience_overlap_counts_shared_members(conn: duckdb.DuckDBPyConnection) -> None:
    # D1: vip = {1, 2, 3}, lapsed = {3, 4}; D2: vip = {1}, lapsed = {1}
    rows = [("vip", D1, c) for c in "123"] + [("lapsed", D1, c) for c in "34"] + [("vip", D2, "1"),
                                                                                   ("lapsed", D2, "1")]
    conn.executemany("INSERT INTO lexer.audience_membership VALUES (?, upper(?), ?, ?)",
                     [(s, s, d, c) for s, d, c in rows])
    got = conn.sql(
        "SELECT snapshot_date, audience_slug, other_audience_slug, shared_members, audience_size, "
        "other_audience_size, share_of_audience, jaccard FROM lexer.audience_overlap "
        "WHERE audience_slug <> other_audience_slug ORDER BY 1, 2"
    ).fetchall()
    assert got == [
        (D1, "lapsed", "vip", 1, 2, 3, 0.5, 0.25),   # shared {3}; union {1,2,3,4}
        (D1, "vip", "lapsed", 1, 3, 2, pytest.approx(1 / 3), 0.25),
        (D2, "lapsed", "vip", 1, 1, 1, 1.0, 1.0),
        (D2, "vip", "lapsed", 1, 1, 1, 1.0, 1.0),
    ]
    assert conn.sql("SELECT shared_members FROM lexer.audience_overlap WHERE snapshot_date = ? "
                    "AND audience_slug = 'vip' AND other_audience_slug = 'vip'", params=[D1]).fetchall() == [(3,)]


def test_audience_size_over_time_change_from_previous_stored_day(conn: duckdb.DuckDBPyConnection) -> None:
    conn.executemany(
        "INSERT INTO lexer.audience_history (audience_slug, audience_name, snapshot_date, size, entered, exited) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        [("vip", "VIP", D1, 10, 10, 0), ("vip", "VIP", date(2026, 6, 5), 7, 1, 4), ("x", "X", D2, 3, 3, 0)],
    )
    assert conn.sql("SELECT audience_slug, snapshot_date, size_change, previous_snapshot_date "
                    "FROM lexer.audience_size_over_time ORDER BY 1, 2").fetchall() == [
        ("vip", D1, None, None), ("vip", date(2026, 6, 5), -3, D1), ("x", D2, None, None)
    ]


def test_lifecycle_and_segment_views_summarise_profiles(conn: duckdb.DuckDBPyConnection) -> None:
    conn.execute("INSERT INTO braze.users (customer_id, external_id, email_subscribe) VALUES "
                 "('A', 'A', 'opted_in'), ('B', 'B', 'unsubscribed'), ('C', 'C', 'subscribed')")
    conn.execute("INSERT INTO commerce.orders (order_id, customer_id, order_date, units, amount) VALUES "
                 "('1', 'A', DATE '2026-06-20', 1, 30.0), ('2', 'B', DATE '2025-01-01', 1, 10.0)")
    build_profiles(conn, as_of=date(2026, 6, 30))
    got = {r[0]: r[1:] for r in conn.sql(
        "SELECT lifecycle_stage, customers, share, revenue, email_subscribed FROM lexer.customers_by_lifecycle_stage"
    ).fetchall()}
    assert got == {"new": (1, pytest.approx(1 / 3), 30.0, 1), "lapsed": (1, pytest.approx(1 / 3), 10.0, 0),
                   "never purchased": (1, pytest.approx(1 / 3), 0.0, 1)}
    segments = dict(conn.sql("SELECT rfm_segment, customers FROM lexer.customers_by_rfm_segment").fetchall())
    assert sum(segments.values()) == 3 and segments["No purchases"] == 1


def test_views_survive_a_profile_rebuild_and_every_view_has_an_example(conn: duckdb.DuckDBPyConnection) -> None:
    build_profiles(conn, as_of=date(2026, 6, 30))  # replaces the table the views read
    for view in ANALYST_VIEWS:
        conn.sql(view.example.rstrip(";")).fetchall()
        assert view.description and view.columns
