"""predicted_clv: revenue a customer is expected to bring in the next ``horizon_days`` (365 in the profiles).

Model ("look-back cell model", fitted on the brand's own history at every build, pure SQL):

1. *Fit.* Go back one horizon: ``t0 = as_of - horizon_days``. Put every customer who had ordered by ``t0``
   in a cell by their state on ``t0``: recency bucket (days since last order: 0-30, 31-90, 91-180, 181-365, 366+)
   x frequency bucket (orders: 1, 2, 3, 4-5, 6-10, 11+). For each cell measure the mean number of orders its
   customers actually placed in ``(t0, as_of]``: the expected number of future orders of someone in that
   state.
2. *Spend per order.* The customer's own average order value shrunk towards the population's average order
   value by ``PRIOR_ORDERS`` pseudo-orders: ``(revenue + k * pop_aov) / (orders + k)``; a one-order
   customer's single basket says little about the next one.
3. *Predict.* ``predicted_clv = expected future orders of the customer's cell today x spend per order``.
   A cell not seen in at least ``MIN_CELL_CUSTOMERS`` customers borrows the nearest more-recent cell with
   the same frequency;
   when the history is shorter than one horizon (nothing to fit), the fallback is "the last ``horizon_days``
   repeat": revenue in the ``horizon_days`` ending on as_of. Customers without orders get 0.

It needs no optimiser, is one extra aggregate over the orders, adapts to each brand's own repeat behaviour,
and assumes the next horizon behaves like the last one (it does not extrapolate a trend). Checked on CDNOW by
``backtest``: fit with data up to 1997-12-31, predict 1998-01-01..1998-06-30 (181 days), compare.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import duckdb

CLV_HORIZON_DAYS = 365
MIN_CELL_CUSTOMERS = 20
PRIOR_ORDERS = 1.0

RECENCY_BUCKETS = ((30, "0-30"), (90, "31-90"), (180, "91-180"), (365, "181-365"))
FREQUENCY_BUCKETS = ((1, "1"), (2, "2"), (3, "3"), (5, "4-5"), (10, "6-10"))


def _bucket_sql(expr: str, buckets: tuple[tuple[int, str], ...]) -> str:
    whens = " ".join(f"WHEN {expr} <= {upper} THEN {i}" for i, (upper, _) in enumerate(buckets))
    return f"CASE {whens} ELSE {len(buckets)} END"


def clv_predictions_sql(orders: str, as_of: date, horizon_days: int = CLV_HORIZON_DAYS) -> str:
    """A SELECT of (customer_id, predicted_clv) for every customer with an order on or before ``as_of``.

    ``orders`` names a table/view with (customer_id, order_date, amount), one row per order.
    """
    t0 = as_of - timedelta(days=horizon_days)
    a, t = f"DATE '{as_of.isoformat()}'", f"DATE '{t0.isoformat()}'"
    past_rb = _bucket_sql(f"({t} - last_past)", RECENCY_BUCKETS)
    past_fb = _bucket_sql("n_past", FREQUENCY_BUCKETS)
    now_rb = _bucket_sql(f"({a} - last_now)", RECENCY_BUCKETS)
    now_fb = _bucket_sql("n_now", FREQUENCY_BUCKETS)
    return f"""
WITH state AS (
  SELECT customer_id,
         count(*) AS n_now,
         max(order_date) AS last_now,
         sum(CAST(amount AS DECIMAL(18, 4)))::DOUBLE AS revenue_now,
         coalesce(sum(amount) FILTER (WHERE order_date > {t}), 0) AS revenue_last_horizon,
         count(*) FILTER (WHERE order_date <= {t}) AS n_past,
         max(order_date) FILTER (WHERE order_date <= {t}) AS last_past,
         count(*) FILTER (WHERE order_date > {t}) AS n_future
  FROM {orders} WHERE order_date <= {a}
  GROUP BY customer_id
),
cells AS (
  SELECT {past_rb} AS rb, {past_fb} AS fb, avg(n_future) AS expected_orders
  FROM state WHERE n_past > 0 GROUP BY ALL HAVING count(*) >= {MIN_CELL_CUSTOMERS}
),
pop AS (SELECT sum(revenue_now) / sum(n_now) AS aov FROM state)
SELECT s.customer_id,
       coalesce(c.expected_orders * (s.revenue_now + {PRIOR_ORDERS} * pop.aov) / (s.n_now + {PRIOR_ORDERS}),
                s.revenue_last_horizon) AS predicted_clv
FROM (SELECT *, {now_rb} AS rb, {now_fb} AS fb FROM state) s CROSS JOIN pop
ASOF LEFT JOIN cells c ON c.fb = s.fb AND c.rb <= s.rb
"""


@dataclass
class BacktestReport:
    calibration_end: date
    holdout_end: date
    horizon_days: int
    customers: int
    predicted_total: float
    actual_total: float
    total_error_pct: float  # (predicted - actual) / actual * 100
    mae: float  # mean absolute error per customer
    naive_mae: float  # the same for "the last horizon repeats"
    naive_total_error_pct: float
    rmse: float


def backtest(conn: duckdb.DuckDBPyConnection, *, calibration_end: date, holdout_end: date,
             orders: str = "commerce.orders") -> BacktestReport:
    """Fit on orders up to ``calibration_end``, predict ``(calibration_end, holdout_end]``, compare with
    what happened.

    Customers are everyone with an order on or before ``calibration_end`` (keyed by ``orders.customer_id``).
    """
    horizon = (holdout_end - calibration_end).days
    conn.execute(
        f"""CREATE OR REPLACE TEMP VIEW _clv_orders AS
            SELECT customer_id, order_date, amount FROM {orders} WHERE customer_id IS NOT NULL"""
    )
    pred = clv_predictions_sql("_clv_orders", calibration_end, horizon)
    c, h = f"DATE '{calibration_end.isoformat()}'", f"DATE '{holdout_end.isoformat()}'"
    t0 = f"DATE '{(calibration_end - timedelta(days=horizon)).isoformat()}'"
    row = conn.execute(
        f"""WITH p AS ({pred}),
            actual AS (SELECT customer_id, sum(amount) AS actual FROM _clv_orders
                       WHERE order_date > {c} AND order_date <= {h} GROUP BY customer_id),
            naive AS (SELECT customer_id, sum(amount) AS naive FROM _clv_orders
                      WHERE order_date > {t0} AND order_date <= {c} GROUP BY customer_id),
            j AS (SELECT p.predicted_clv AS p, coalesce(actual.actual, 0) AS a, coalesce(naive.naive, 0) AS nv
                  FROM p LEFT JOIN actual USING (customer_id) LEFT JOIN naive USING (customer_id))
            SELECT count(*), sum(p), sum(a), avg(abs(p - a)), avg(abs(nv - a)), sum(nv),
                   sqrt(avg((p - a) ^ 2))
            FROM j"""
    ).fetchall()[0]
    conn.execute("DROP VIEW _clv_orders")
    n, p_total, a_total, mae, naive_mae, naive_total, rmse = row
    return BacktestReport(
        calibration_end=calibration_end, holdout_end=holdout_end, horizon_days=horizon, customers=n,
        predicted_total=p_total, actual_total=a_total, total_error_pct=(p_total - a_total) / a_total * 100,
        mae=mae, naive_mae=naive_mae, rmse=rmse,
        naive_total_error_pct=(naive_total - a_total) / a_total * 100,
    )


def markdown() -> str:
    """The model description for the data dictionary."""
    return (__doc__ or "").split("\n", 2)[2].strip()
