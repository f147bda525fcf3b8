"""Customer profiles: hand-checked CDNOW customers, edge cases and the table contract.

Expected values are worked out by hand (commented) or by plain Python over the CDNOW file, never read back
from the code under test.
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import date
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest

from lexer_assets.commerce.order_files import load_orders
from lexer_assets.profiles.build import LifecycleThresholds, build_profiles, create_attributed_orders
from lexer_assets.profiles.rfm import SEGMENTS
from lexer_assets.storage.catalog import BRAZE_USERS, CUSTOMER_PROFILES
from lexer_assets.storage.warehouse import ensure_tables

CDNOW = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "cdnow" / "CDNOW_master.txt"
needs_cdnow = pytest.mark.skipif(not CDNOW.exists(), reason=f"CDNOW data not at {CDNOW}")


def insert_users(conn: duckdb.DuckDBPyConnection, users: list[dict[str, object]]) -> None:
    """Insert braze.users rows from dicts (missing columns are NULL; JSON columns given as Python values)."""
    json_cols = {c.name for c in BRAZE_USERS.columns if c.type == "JSON"}
    for u in users:
        cols = list(u)
        values = [json.dumps(u[c]) if c in json_cols and u[c] is not None else u[c] for c in cols]
        conn.execute(f"INSERT INTO braze.users ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", values)


def profile(conn: duckdb.DuckDBPyConnection, customer_id: str, table: str = "lexer.customer_profiles") -> dict:
    cur = conn.execute(f"SELECT * FROM {table} WHERE customer_id = ?", [customer_id])
    names = [d[0] for d in cur.description]
    rows = cur.fetchall()
    assert len(rows) == 1, (customer_id, rows)
    return dict(zip(names, rows[0], strict=True))


@pytest.fixture
def conn(tmp_path: Path) -> duckdb.DuckDBPyConnection:
    c = duckdb.connect(str(tmp_path / "hub.duckdb"))
    ensure_tables(c)
    yield c
    c.close()


# --- CDNOW: hand-checked customers ----------------------------------------------------------------------------

def _cdnow_by_customer() -> dict[str, list[tuple[date, int, Decimal]]]:
    out: dict[str, list[tuple[date, int, Decimal]]] = defaultdict(list)
    for line in CDNOW.read_text().splitlines()[1:]:
        cid, d, units, amount = line.split()
        out[cid].append((date(int(d[:4]), int(d[4:6]), int(d[6:])), int(units), Decimal(amount)))
    return out


def _quintiles(values: dict[str, object]) -> dict[str, int]:
    """Plain-Python reference of the documented rule: score = 1 + 5 * (r - 1) // n, r = 1 + number of worse."""
    ordered = sorted(values.values())
    n = len(ordered)
    import bisect
    return {k: 1 + 5 * bisect.bisect_left(ordered, v) // n for k, v in values.items()}


@pytest.fixture
def cdnow_conn(conn: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    load_orders(conn, [CDNOW])
    # Every CDNOW customer is a Braze user whose external_id is the CDNOW id; plus one alias-only user.
    conn.execute(
        "INSERT INTO braze.users (customer_id, external_id, braze_id) "
        "SELECT lpad(i::VARCHAR, 5, '0'), lpad(i::VARCHAR, 5, '0'), 'b' || i FROM range(1, 23571) t(i)"
    )
    insert_users(conn, [{"customer_id": "alias:crm:zz", "alias_name": "zz", "alias_label": "crm"}])
    return conn


@needs_cdnow
def test_cdnow_hand_checked_customers_as_of_end_of_data(cdnow_conn: duckdb.DuckDBPyConnection) -> None:
    stats = build_profiles(cdnow_conn, as_of=date(1998, 6, 30))
    assert (stats.customers, stats.with_orders, stats.without_orders) == (23571, 23570, 1)
    assert (stats.unmatched_orders, stats.unmatched_customers_ids) == (0, 0)

    # 00001: one order, 1997-01-01, 1 CD, $11.77.
    p = profile(cdnow_conn, "00001")
    assert (p["orders"], p["units"], p["revenue"], p["average_order_value"]) == (1, 1, 11.77, 11.77)
    assert (p["first_order_date"], p["last_order_date"]) == (date(1997, 1, 1), date(1997, 1, 1))
    assert p["days_since_last_order"] == 365 + 180  # 1997-01-01 -> 1998-01-01 -> 1998-06-30
    assert p["tenure_days"] == 545
    assert p["purchase_frequency"] == pytest.approx(365 / 545)
    assert (p["orders_last_90_days"], p["revenue_last_365_days"]) == (0, 0.0)
    assert p["lifecycle_stage"] == "lapsed"

    # 00002: two orders the same day (1997-01-12: 1 CD for $12.00 and 5 CDs for $77.00) count as two orders.
    p = profile(cdnow_conn, "00002")
    assert (p["orders"], p["units"], p["revenue"], p["average_order_value"]) == (2, 6, 89.0, 44.5)
    assert p["first_order_date"] == p["last_order_date"] == date(1997, 1, 12)
    assert p["days_since_last_order"] == p["tenure_days"] == 534

    # 00003: six orders 1997-01-02 .. 1998-05-28; $20.76+20.76+19.54+57.45+20.96+16.99 = $156.46, 16 CDs.
    p = profile(cdnow_conn, "00003")
    assert (p["orders"], p["units"], p["revenue"]) == (6, 16, pytest.approx(156.46))
    assert p["days_since_last_order"] == 33  # 28 May -> 30 June
    assert p["tenure_days"] == 544  # 1997-01-02 -> 1998-06-30
    assert p["orders_last_90_days"] == 1  # only 1998-05-28 is after 1998-04-01
    assert p["revenue_last_365_days"] == pytest.approx(57.45 + 20.96 + 16.99)  # orders after 1997-06-30
    assert p["lifecycle_stage"] == "active"  # 33 days < 90

    # 00455: a single $0.00 order is still an order.
    p = profile(cdnow_conn, "00455")
    assert (p["orders"], p["revenue"], p["average_order_value"]) == (1, 0.0, 0.0)

    # The alias-only Braze user is kept, without orders.
    p = profile(cdnow_conn, "alias:crm:zz")
    assert (p["orders"], p["revenue"], p["recency_score"]) == (0, 0.0, None)
    assert (p["rfm_segment"], p["lifecycle_stage"], p["predicted_clv"]) == ("No purchases", "never purchased", 0.0)


@needs_cdnow
def test_cdnow_rfm_scores_match_a_plain_python_ranking(cdnow_conn: duckdb.DuckDBPyConnection) -> None:
    as_of = date(1997, 12, 31)
    build_profiles(cdnow_conn, as_of=as_of)
    orders = {c: [o for o in rows if o[0] <= as_of] for c, rows in _cdnow_by_customer().items()}
    last = {c: max(o[0] for o in rows) for c, rows in orders.items()}
    count = {c: len(rows) for c, rows in orders.items()}
    revenue = {c: sum(o[2] for o in rows) for c, rows in orders.items()}
    r, f, m = _quintiles(last), _quintiles(count), _quintiles(revenue)
    got = {cid: (rs, fs, ms) for cid, rs, fs, ms in cdnow_conn.sql(
        "SELECT customer_id, recency_score, frequency_score, monetary_score FROM lexer.customer_profiles "
        "WHERE orders > 0").fetchall()}
    assert got == {c: (r[c], f[c], m[c]) for c in orders}
    # 00003 as of 1997-12-31 has 5 orders ($139.47), the 1998-05-28 one is in the future.
    p = profile(cdnow_conn, "00003")
    assert (p["orders"], p["revenue"], p["as_of_date"]) == (5, pytest.approx(139.47), as_of)
    # Everyone's scores are 1..5 and all purchasers get a named segment.
    segments = dict(cdnow_conn.sql(
        "SELECT rfm_segment, count(*) FROM lexer.customer_profiles GROUP BY 1").fetchall())
    assert set(segments) <= set(SEGMENTS) | {"No purchases"}
    assert segments["No purchases"] == 1


# --- synthetic edge cases --------------------------------------------------------------------------------------

AS_OF = date(2026, 6, 30)


def _orders_csv(path: Path, rows: list[tuple[str, str, str, str, int, float]]) -> Path:
    lines = ["order_id,customer_id,email,order_date,units,amount"]
    lines += [",".join(str(v) for v in r) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_edge_cases(conn: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    camp = [
        {"name": "in", "last_received": "2026-04-02T09:00:00.000Z",  # as_of - 89 days: inside the 90 days
         "engaged": {"opened_email": True, "clicked_email": True}},
        {"name": "edge", "last_received": "2026-04-01T23:59:00.000Z",  # as_of - 90 days: outside
         "engaged": {"opened_email": True}},
        {"name": "late", "last_received": "2026-07-01T08:00:00.000Z",  # after as_of: ignored
         "engaged": {"opened_email": True}},
        {"name": "no", "last_received": "2026-06-29T10:00:00.000Z", "engaged": {"opened_email": False}},
    ]
    insert_users(conn, [
        {"customer_id": "A", "external_id": "A", "email_normalized": "a@x.com", "dob": date(1990, 6, 30),
         "country": "gb", "gender": "f", "campaigns_received": camp,
         "canvases_received": [{"name": "cv", "last_received_message": "2026-06-01T00:00:00Z"}],
         "purchases": [{"name": "p", "count": 3}, {"name": "q", "count": 4}],
         "custom_events": [{"name": "e", "count": 10}], "total_revenue": 12.5},
        {"customer_id": "B", "external_id": "B", "dob": date(1990, 7, 1), "country": "UK"},
        {"customer_id": "braze:C", "braze_id": "C", "email_normalized": "c@x.com", "dob": date(2030, 1, 1),
         "country": " us ", "campaigns_received": {"not": "a list"}},
        {"customer_id": "D", "external_id": "D", "dob": date(2000, 2, 29), "country": "XX"},
        {"customer_id": "E", "external_id": "E", "campaigns_received": [
            # engaged through a key the profile has no column for: still engagement, not an email open
            {"name": "push", "last_received": "2026-05-01T07:00:00Z", "engaged": {"opened_push": True}},
            {"name": "odd", "last_received": "2026-06-01T07:00:00Z", "engaged": "yes"},  # not an object
            {"name": "str", "last_received": "2026-06-02T07:00:00Z", "engaged": {"opened_email": "maybe"}},
            # not JSON true: neither an open or click nor engagement, in every column alike
            {"name": "yes", "last_received": "2026-06-03T07:00:00Z", "engaged": {"opened_email": "yes"}},
            {"name": "one", "last_received": "2026-06-04T07:00:00Z", "engaged": {"clicked_email": 1}},
            {"name": "text", "last_received": "2026-06-05T07:00:00Z", "engaged": {"opened_email": "true"}},
        ]},
    ])
    f = _orders_csv(tmp_path / "o.csv", [
        ("1", "A", "", "2026-06-20", 1, 10.0),
        ("2", "A", "", "2026-06-20", 2, 0.0),       # second order the same day, zero amount
        ("3", "A", "", "2026-07-01", 1, 99.0),      # after as_of: ignored
        ("4", "", "c@x.com", "2026-03-01", 1, 5.0),  # matched by email to the alias/braze-only user
        ("5", "ZZ", "C@X.COM", "2025-06-01", 1, 7.0),  # unknown id, email matches C
        ("6", "nobody", "", "2026-01-01", 1, 1.0),  # unmatched
        ("7", "", "who@x.com", "2026-01-02", 1, 1.0),  # unmatched
        ("8", "nobody", "", "2026-01-03", 1, 1.0),  # unmatched, same identity as order 6
        ("9", "D", "", "2020-01-01", 1, 50.0),
    ])
    load_orders(conn, [f])
    stats = build_profiles(conn, as_of=AS_OF)
    assert (stats.customers, stats.with_orders, stats.without_orders) == (5, 3, 2)
    assert (stats.unmatched_orders, stats.unmatched_customers_ids) == (3, 2)

    a = profile(conn, "A")
    assert (a["orders"], a["units"], a["revenue"], a["average_order_value"]) == (2, 3, 10.0, 5.0)
    assert (a["days_since_last_order"], a["tenure_days"]) == (10, 10)
    assert a["purchase_frequency"] == pytest.approx(2 * 365 / 10)
    assert a["lifecycle_stage"] == "new"  # first order 10 days ago < 30
    assert (a["age"], a["age_band"], a["country"], a["gender"]) == (36, "35-44", "GB", "F")  # birthday today
    assert a["messages_received_90d"] == 3  # "in", "no" and the canvas
    assert (a["email_opens_90d"], a["email_clicks_90d"]) == (1, 1)
    assert str(a["last_engaged_at"]) == "2026-04-02 09:00:00"  # "late" is after as_of, "no" not engaged
    assert (a["braze_purchase_count"], a["braze_custom_event_count"], a["braze_total_revenue"]) == (7, 10, 12.5)
    assert a["email"] == "a@x.com"

    b = profile(conn, "B")
    assert (b["age"], b["age_band"], b["country"]) == (35, "35-44", None)  # birthday tomorrow; UK is not ISO
    assert (b["orders"], b["lifecycle_stage"], b["rfm_segment"]) == (0, "never purchased", "No purchases")
    assert (b["messages_received_90d"], b["braze_purchase_count"], b["last_engaged_at"]) == (0, 0, None)

    c = profile(conn, "braze:C")
    assert (c["age"], c["age_band"], c["country"]) == (None, "unknown", "US")  # dob in the future
    assert (c["orders"], c["revenue"], c["first_order_date"]) == (2, 12.0, date(2025, 6, 1))
    assert c["revenue_last_365_days"] == 5.0  # 2025-06-01 is more than 365 days before 2026-06-30
    assert (c["days_since_last_order"], c["lifecycle_stage"]) == (121, "lapsing")  # 2026-03-01: 90 <= 121 < 180
    assert c["messages_received_90d"] == 0

    d = profile(conn, "D")
    assert (d["age"], d["country"], d["lifecycle_stage"]) == (26, None, "lapsed")  # 29 Feb 2000 -> 26 on 2026-06-30
    e = profile(conn, "E")
    assert (e["age"], e["age_band"], e["dob"]) == (None, "unknown", None)
    assert (e["messages_received_90d"], e["email_opens_90d"], e["email_clicks_90d"]) == (6, 0, 0)
    assert str(e["last_engaged_at"]) == "2026-05-01 07:00:00"  # only "push" has a true engaged value


def _ages_on(conn: duckdb.DuckDBPyConnection, as_of: date) -> dict[str, tuple[int | None, str]]:
    build_profiles(conn, as_of=as_of, target="ages")
    return {r[0]: (r[1], r[2]) for r in conn.sql("SELECT customer_id, age, age_band FROM ages").fetchall()}


def test_age_on_29_february_and_band_edges(conn: duckdb.DuckDBPyConnection) -> None:
    insert_users(conn, [
        {"customer_id": "leap", "dob": date(2000, 2, 29)},
        {"customer_id": "17", "dob": date(2008, 3, 1)},
        {"customer_id": "old", "dob": date(1900, 1, 1)},
        {"customer_id": "65", "dob": date(1961, 2, 28)},
    ])
    # Common year: a 29 February child turns 26 on 1 March 2026, not on 28 February.
    assert _ages_on(conn, date(2026, 2, 28))["leap"] == (25, "25-34")
    ages = _ages_on(conn, date(2026, 3, 1))
    assert ages["leap"] == (26, "25-34")
    assert ages["17"] == (18, "18-24")  # 18th birthday that day
    assert ages["65"] == (65, "65+")
    assert ages["old"] == (None, "unknown")  # 126: a placeholder dob, not an age
    # Leap year: the birthday itself.
    assert _ages_on(conn, date(2028, 2, 28))["leap"] == (27, "25-34")
    assert _ages_on(conn, date(2028, 2, 29))["leap"] == (28, "25-34")
    assert _ages_on(conn, date(2026, 2, 28))["17"] == (17, "under 18")


def test_lifecycle_boundaries_follow_the_thresholds(conn: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    insert_users(conn, [{"customer_id": k, "external_id": k} for k in ("n29", "n30", "a89", "a90", "l179", "l180")])
    # Each customer's first order is 400 days back unless named n*; the last order is the number in its name.
    rows = [
        ("1", "n29", "", "2026-06-01", 1, 1.0),   # 29 days: new
        ("2", "n30", "", "2026-05-31", 1, 1.0),   # 30 days: first order not within 30 -> active
        ("3", "a89", "", "2025-05-26", 1, 1.0), ("4", "a89", "", "2026-04-02", 1, 1.0),    # 89: active
        ("5", "a90", "", "2025-05-26", 1, 1.0), ("6", "a90", "", "2026-04-01", 1, 1.0),    # 90: lapsing
        ("7", "l179", "", "2025-05-26", 1, 1.0), ("8", "l179", "", "2026-01-02", 1, 1.0),  # 179: lapsing
        ("9", "l180", "", "2025-05-26", 1, 1.0), ("10", "l180", "", "2026-01-01", 1, 1.0),  # 180: lapsed
    ]
    load_orders(conn, [_orders_csv(tmp_path / "o.csv", rows)])
    build_profiles(conn, as_of=AS_OF)
    got = dict(conn.sql("SELECT customer_id, lifecycle_stage FROM lexer.customer_profiles").fetchall())
    assert got == {"n29": "new", "n30": "active", "a89": "active", "a90": "lapsing", "l179": "lapsing",
                   "l180": "lapsed"}
    days = dict(conn.sql("SELECT customer_id, days_since_last_order FROM lexer.customer_profiles").fetchall())
    assert days == {"n29": 29, "n30": 30, "a89": 89, "a90": 90, "l179": 179, "l180": 180}
    build_profiles(conn, as_of=AS_OF, thresholds=LifecycleThresholds(new_customer_days=31, active_days=180,
                                                                    lapsing_days=181))
    got = dict(conn.sql("SELECT customer_id, lifecycle_stage FROM lexer.customer_profiles").fetchall())
    assert got == {"n29": "new", "n30": "new", "a89": "active", "a90": "active", "l179": "active",
                   "l180": "lapsing"}


def test_table_has_exactly_the_catalog_columns_and_temp_target_leaves_it_alone(
    conn: duckdb.DuckDBPyConnection,
) -> None:
    insert_users(conn, [{"customer_id": "A", "external_id": "A"}])
    build_profiles(conn, as_of=AS_OF)
    described = [(r[0], r[1]) for r in conn.sql("DESCRIBE lexer.customer_profiles").fetchall()]
    assert described == [(c.name, c.type) for c in CUSTOMER_PROFILES.columns]
    insert_users(conn, [{"customer_id": "B", "external_id": "B"}])
    build_profiles(conn, as_of=date(2026, 1, 1), target="profiles_asof")
    assert conn.sql("SELECT count(*) FROM lexer.customer_profiles").fetchall() == [(1,)]
    assert conn.sql("SELECT count(*), min(as_of_date) FROM profiles_asof").fetchall() == [(2, date(2026, 1, 1))]
    assert conn.sql(
        "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'profiles_asof' AND temporary"
    ).fetchall() == [(1,)]
    with pytest.raises(ValueError, match="plain table name"):
        build_profiles(conn, as_of=AS_OF, target="x; DROP TABLE braze.users")


def test_attributed_orders_prefer_external_id_and_drop_unmatched(
    conn: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    insert_users(conn, [
        {"customer_id": "K1", "external_id": "K1", "email_normalized": "shared@x.com"},
        {"customer_id": "K2", "external_id": "K2", "email_normalized": "k2@x.com"},
        # Shares K1's email but was created later: email-only orders for shared@x.com go to K1.
        {"customer_id": "braze:9", "braze_id": "9", "email_normalized": "shared@x.com",
         "created_at": "2026-05-01 00:00:00"},
    ])
    conn.execute("UPDATE braze.users SET created_at = TIMESTAMP '2026-01-01' WHERE customer_id = 'K1'")
    rows = [
        ("o1", "K2", "shared@x.com", "2026-06-01", 1, 1.0),  # id wins over email
        ("o2", "", "shared@x.com", "2026-06-02", 1, 2.0),   # email -> oldest profile K1
        ("o3", "gone", "k2@x.com", "2026-06-03", 1, 3.0),   # unknown id, falls back to email
        ("o4", "gone", "", "2026-06-04", 1, 4.0),           # unmatched
        ("o5", "K1", "", "2026-07-01", 1, 5.0),             # after as_of
    ]
    load_orders(conn, [_orders_csv(tmp_path / "o.csv", rows)])
    create_attributed_orders(conn, as_of=AS_OF, name="att")
    assert conn.sql("SELECT order_id, customer_id FROM att ORDER BY order_id").fetchall() == [
        ("o1", "K2"), ("o2", "K1"), ("o3", "K2")
    ]
