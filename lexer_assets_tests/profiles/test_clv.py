"""The CLV model: hand-computable cases and the CDNOW 1997 -> 1998 backtest figures."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import duckdb
import pytest

from lexer_assets.commerce.order_files import load_orders
from lexer_assets.profiles import clv
from lexer_assets.storage.warehouse import ensure_tables

CDNOW = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "cdnow" / "CDNOW_master.txt"


def _predict(conn: duckdb.DuckDBPyConnection, as_of: date, horizon: int) -> dict[str, float]:
    state = f"({clv.clv_state_sql('o', as_of, horizon)})"
    return dict(conn.sql(clv.clv_predictions_sql(state, as_of, horizon)).fetchall())


def test_one_cell_history_predicts_its_mean_future_orders_times_spend() -> None:
    conn = duckdb.connect()
    conn.execute("CREATE TABLE o (customer_id VARCHAR, order_date DATE, amount DOUBLE)")
    as_of, horizon = date(2026, 6, 30), 100
    t0 = as_of - timedelta(days=horizon)
    # 40 customers bought once for $10 five days before t0; the even ones bought again ($10) after t0.
    rows = [(f"c{i}", t0 - timedelta(days=5), 10.0) for i in range(40)]
    rows += [(f"c{i}", t0 + timedelta(days=20), 10.0) for i in range(0, 40, 2)]
    conn.executemany("INSERT INTO o VALUES (?, ?, ?)", rows)
    got = _predict(conn, as_of, horizon)
    # Fit: one cell (1 order, same recency and tenure), mean future orders 20/40 = 0.5; one cell gives no
    # slope. Spend per order: every order is $10, so (revenue + 1 * $10) / (orders + 1) = $10.
    # Prediction = 0.5 orders * $10 = $5 for everyone (their own state does not move the level: no slope).
    assert got == {f"c{i}": pytest.approx(5.0) for i in range(40)}


def test_one_huge_order_moves_only_its_customers_estimate() -> None:
    conn = duckdb.connect()
    conn.execute("CREATE TABLE o (customer_id VARCHAR, order_date DATE, amount DOUBLE)")
    as_of, horizon = date(2026, 6, 30), 100
    t0 = as_of - timedelta(days=horizon)
    # As above, plus "big", who once spent $10,000 five days before t0 and never came back.
    rows = [(f"c{i}", t0 - timedelta(days=5), 10.0) for i in range(40)] + [("big", t0 - timedelta(days=5), 1e4)]
    rows += [(f"c{i}", t0 + timedelta(days=20), 10.0) for i in range(0, 40, 2)]
    conn.executemany("INSERT INTO o VALUES (?, ?, ?)", rows)
    got = _predict(conn, as_of, horizon)
    # One cell of 41 customers, 20 future orders: level 20/41. Typical order value: the median of the
    # customers' own ($10 for the 40, $10,000 for big) = $10. Spend per order: (10 + 10) / 2 = $10 and
    # (20 + 10) / 3 = $10 for the 40; (10,000 + 10) / 2 = $5,005 for big. (With the mean order value,
    # $10,600 / 61 orders = $173.77, every one-order customer's spend would have been $91.89.)
    expected = {f"c{i}": pytest.approx(20 / 41 * 10) for i in range(40)} | {"big": pytest.approx(20 / 41 * 5005)}
    assert got == expected


def test_history_shorter_than_the_horizon_falls_back_to_the_last_horizon_repeating() -> None:
    conn = duckdb.connect()
    conn.execute("CREATE TABLE o (customer_id VARCHAR, order_date DATE, amount DOUBLE)")
    conn.executemany("INSERT INTO o VALUES (?, ?, ?)",
                     [("a", date(2026, 6, 1), 30.0), ("a", date(2026, 6, 2), 12.5), ("b", date(2026, 1, 1), 8.0)])
    assert _predict(conn, date(2026, 6, 30), 365) == {"a": 42.5, "b": 8.0}


@pytest.mark.skipif(not CDNOW.exists(), reason=f"CDNOW data not at {CDNOW}")
def test_cdnow_backtest_figures_match_the_documented_ones() -> None:
    conn = duckdb.connect()
    ensure_tables(conn)
    load_orders(conn, [CDNOW])
    report = clv.backtest(conn, calibration_end=date(1997, 12, 31), holdout_end=date(1998, 6, 30))
    expected = clv.CDNOW_BACKTEST
    assert (report.customers, report.horizon_days) == (23570, 181)  # 1998-01-01 .. 1998-06-30
    # Actual 1998 revenue, summed independently from the file.
    actual = sum(float(line.split()[3]) for line in CDNOW.read_text().splitlines()[1:]
                 if line.split()[1] >= "19980101")
    assert report.actual_total == pytest.approx(actual)
    for field in ("predicted_total", "actual_total", "total_error_pct", "mae", "rmse", "naive_mae",
                  "naive_total_error_pct"):
        assert getattr(report, field) == pytest.approx(getattr(expected, field), abs=0.01), field
    # The model must beat "the last 181 days repeat" on the total, or it is not worth its complexity.
    assert abs(report.total_error_pct) < abs(report.naive_total_error_pct)
