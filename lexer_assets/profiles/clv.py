"""predicted_clv: revenue a customer is expected to bring in the next ``horizon_days`` (365 in the profiles).

Model ("recency-decay model", refitted on the brand's own history at every build, pure SQL, no optimiser):

1. *Fit window.* Go back one horizon: ``t0 = as_of - horizon_days``. For every customer who had ordered by
   ``t0``, note their state on ``t0`` (orders so far, days since last order, days since first order) and count
   the orders they really placed in ``(t0, as_of]``.
2. *Expected future orders.* Customers are grouped by frequency class (orders: 1, 2, 3, 4-5, 6-10, 11+) and
   30-day bins of recency and tenure. The log of each cell's mean future order count is fitted by weighted
   least squares (weight = customers in the cell) with one level per frequency class and two slopes shared by
   all classes: ``ln E[orders] = level[class] + b * days_since_last_order + c * tenure_days``. Both slopes are
   capped at 0 (time never raises the prediction). Exponential decay lets the model extrapolate to customers
   staler than any seen in the fit window, which a lookup table cannot. A class absent from the fit borrows
   the nearest lower fitted class.
3. *Spend per order.* The customer's own average order value shrunk towards the typical customer's by
   ``PRIOR_ORDERS`` pseudo-orders, ``(revenue + k * typical_aov) / (orders + k)``: one basket says little.
   ``typical_aov`` is the median of the customers' average order values, so one huge order moves that
   customer's estimate only, not everyone's (it also fits CDNOW better than the mean order value did).
4. *Predict.* ``predicted_clv = exp(level[class] + b * days_since_last_order + c * tenure_days) x spend per
   order``, with today's state. When the history is shorter than one horizon (nothing to fit) the prediction
   is "the last horizon repeats": the customer's revenue in the ``horizon_days`` ending on as_of.
   Customers without orders get 0.

Checked on CDNOW by ``backtest`` (fit with data up to 1997-12-31, predict 1998-01-01..1998-06-30, 181 days):
``CDNOW_BACKTEST`` holds the figures (total error about +9%, against +23% for "the last 181 days repeat").
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import duckdb

CLV_HORIZON_DAYS = 365
PRIOR_ORDERS = 1.0
BIN_DAYS = 30
FREQUENCY_CLASSES = ((1, "1"), (2, "2"), (3, "3"), (5, "4-5"), (10, "6-10"))  # then 11+

BACKTEST_NOTE = (
    "CDNOW backtest (23,570 customers; fit on orders up to 1997-12-31, predict 1998-01-01..1998-06-30): "
    "predicted ${predicted:,.0f} vs actual ${actual:,.0f} in total ({error:+.1f}%); mean absolute error per "
    "customer ${mae:.2f} (RMSE ${rmse:.2f}). Baseline \"the last 181 days repeat\": {naive_error:+.1f}% in "
    "total, MAE ${naive_mae:.2f}."
)


def _class_sql(expr: str) -> str:
    whens = " ".join(f"WHEN {expr} <= {upper} THEN {i}" for i, (upper, _) in enumerate(FREQUENCY_CLASSES))
    return f"CASE {whens} ELSE {len(FREQUENCY_CLASSES)} END"


def clv_state_sql(orders: str, as_of: date, horizon_days: int = CLV_HORIZON_DAYS) -> str:
    """Per-customer state the model needs, from a per-order table (customer_id, order_date, amount)."""
    a, t = f"DATE '{as_of.isoformat()}'", f"DATE '{(as_of - timedelta(days=horizon_days)).isoformat()}'"
    return f"""
SELECT customer_id, count(*) AS orders, sum(CAST(amount AS DECIMAL(18, 4)))::DOUBLE AS revenue,
       min(order_date) AS first_order_date, max(order_date) AS last_order_date,
       coalesce(sum(amount) FILTER (WHERE order_date > {t}), 0) AS revenue_last_horizon,
       count(*) FILTER (WHERE order_date <= {t}) AS fit_orders,
       max(order_date) FILTER (WHERE order_date <= {t}) AS fit_last_order_date
FROM {orders} WHERE order_date <= {a} GROUP BY customer_id"""


def clv_predictions_sql(state: str, as_of: date, horizon_days: int = CLV_HORIZON_DAYS, *,
                        keep_columns: bool = False) -> str:
    """A SELECT of (customer_id, predicted_clv) for every row of ``state`` (with ``keep_columns``: every
    column of ``state`` plus predicted_clv, which saves the caller a join back on customer_id).

    ``state`` names a table/view/subquery with one row per customer who ordered on or before ``as_of``:
    customer_id, orders, revenue, first_order_date, last_order_date, revenue_last_horizon (revenue in the
    horizon ending on as_of), fit_orders and fit_last_order_date (orders on or before as_of - horizon, and the
    last of their dates).
    """
    a, t = f"DATE '{as_of.isoformat()}'", f"DATE '{(as_of - timedelta(days=horizon_days)).isoformat()}'"
    return f"""
WITH st AS (SELECT * FROM {state}),
cells AS (
  SELECT {_class_sql("fit_orders")} AS fc, ({t} - fit_last_order_date) // {BIN_DAYS} AS rbin,
         ({t} - first_order_date) // {BIN_DAYS} AS tbin,
         avg({t} - fit_last_order_date) AS x, avg({t} - first_order_date) AS z, count(*) AS w,
         avg(orders - fit_orders) AS m
  FROM st WHERE fit_orders > 0 GROUP BY ALL HAVING avg(orders - fit_orders) > 0
),
centred AS (
  SELECT *, ln(m) AS y, sum(w * x) OVER g / sum(w) OVER g AS xg, sum(w * z) OVER g / sum(w) OVER g AS zg,
         sum(w * ln(m)) OVER g / sum(w) OVER g AS yg
  FROM cells WINDOW g AS (PARTITION BY fc)
),
moments AS (
  SELECT sum(w * (x - xg) ^ 2) AS sxx, sum(w * (z - zg) ^ 2) AS szz, sum(w * (x - xg) * (z - zg)) AS sxz,
         sum(w * (x - xg) * (y - yg)) AS sxy, sum(w * (z - zg) * (y - yg)) AS szy
  FROM centred
),
slopes AS (
  SELECT CASE WHEN det > 1e-9 * sxx * szz THEN least(0, (szz * sxy - sxz * szy) / det)
              ELSE least(0, coalesce(sxy / nullif(sxx, 0), 0)) END AS b,
         CASE WHEN det > 1e-9 * sxx * szz THEN least(0, (sxx * szy - sxz * sxy) / det) ELSE 0 END AS c
  FROM (SELECT *, sxx * szz - sxz * sxz AS det FROM moments)
),
fitted AS (SELECT fc, any_value(yg) AS yg, any_value(xg) AS xg, any_value(zg) AS zg FROM centred GROUP BY fc),
-- Every class gets its level here (borrowed from the nearest lower fitted class), over a handful of rows, so the
-- per-customer lookup below is a plain equi-join rather than an ASOF join over every customer.
levels AS (SELECT k.fc, f.yg, f.xg, f.zg
           FROM range(0, {len(FREQUENCY_CLASSES) + 1}) k(fc) ASOF LEFT JOIN fitted f ON f.fc <= k.fc),
pop AS (SELECT median(revenue / orders) AS aov FROM st)
SELECT {"s.* EXCLUDE (fc)" if keep_columns else "s.customer_id"},
       coalesce(
         exp(l.yg + slopes.b * (({a} - s.last_order_date) - l.xg) + slopes.c * (({a} - s.first_order_date) - l.zg))
           * (s.revenue + {PRIOR_ORDERS} * pop.aov) / (s.orders + {PRIOR_ORDERS}),
         s.revenue_last_horizon
       ) AS predicted_clv
FROM (SELECT *, {_class_sql("orders")} AS fc FROM st) s
CROSS JOIN pop
LEFT JOIN slopes ON true
LEFT JOIN levels l ON l.fc = s.fc
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
    state = f"({clv_state_sql('_clv_orders', calibration_end, horizon)})"
    pred = clv_predictions_sql(state, calibration_end, horizon)
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


# The figures the data dictionary quotes; lexer_assets_tests/profiles/test_clv.py recomputes them from the
# CDNOW file, so a model change that moves them fails until this (and the dictionary) is updated.
CDNOW_BACKTEST = BacktestReport(
    calibration_end=date(1997, 12, 31), holdout_end=date(1998, 6, 30), horizon_days=181, customers=23570,
    predicted_total=518049.28, actual_total=476154.37, total_error_pct=8.80, mae=22.44, naive_mae=22.63,
    naive_total_error_pct=22.58, rmse=67.37,
)


def markdown(report: BacktestReport | None = CDNOW_BACKTEST) -> str:
    """The model description (and, when given, the CDNOW backtest figures) for the data dictionary."""
    text = (__doc__ or "").split("\n", 2)[2].strip()
    if report is not None:
        text += "\n\n" + BACKTEST_NOTE.format(
            predicted=report.predicted_total, actual=report.actual_total, error=report.total_error_pct,
            mae=report.mae, rmse=report.rmse, naive_error=report.naive_total_error_pct, naive_mae=report.naive_mae)
    return text
