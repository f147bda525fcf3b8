"""Build ``lexer.customer_profiles``: one row per Braze user, enriched with orders, scores and engagement.

Every time-dependent value is computed as of one reference date ``as_of`` (orders after it are ignored), so
the same code builds today's table and a past day for an audience backfill. The whole table is one SQL
statement over ``braze.users`` and the attributed orders; the column list and types come from the catalog
(``CUSTOMER_PROFILES``), so the table always has exactly the contract's columns in the contract's order.

Braze values (engagement, purchase/custom-event counts) come from the newest export: for a past ``as_of`` the
90-day windows are still filtered by date, but an export only holds what Braze kept at export time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, timedelta

import duckdb

from lexer_assets.profiles import clv, rfm
from lexer_assets.storage.catalog import CUSTOMER_PROFILES

# ISO 3166-1 alpha-2 officially assigned codes (249). Anything else (e.g. 'UK', 'EU', 'XX') becomes NULL.
ISO_COUNTRY_CODES: frozenset[str] = frozenset(str.split("""
AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT BV BW BY
BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM
FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT
JE JM JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN
MO MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT
PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL
TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW
"""))

AGE_BANDS: tuple[tuple[int, str], ...] = (
    (17, "under 18"), (24, "18-24"), (34, "25-34"), (44, "35-44"), (54, "45-54"), (64, "55-64"),
)
MAX_PLAUSIBLE_AGE = 120  # older than this is a placeholder dob (1900-01-01 and the like): age unknown
ENGAGEMENT_WINDOW_DAYS = 90
# Orders are attached to a user's row (braze.users' rowid, stable inside the build's transaction) rather than to
# its customer_id string: the per-customer sums and the join back to the users then run on an integer key.
# A braze.users that is a view must expose a ``rowid`` column (see audiences.snapshots.attach_export).
_ROW_KEY = "rowid"

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")


@dataclass(frozen=True)
class LifecycleThresholds:
    """Days that separate lifecycle stages (settings LEXER_NEW_CUSTOMER_DAYS, _ACTIVE_DAYS, _LAPSING_DAYS)."""

    new_customer_days: int = 30
    active_days: int = 90
    lapsing_days: int = 180

    def __post_init__(self) -> None:
        if min(self.new_customer_days, self.active_days, self.lapsing_days) < 1:
            raise ValueError(f"lifecycle thresholds must be at least 1 day: {self}")
        if self.active_days > self.lapsing_days:
            raise ValueError(f"active_days ({self.active_days}) must not exceed "
                             f"lapsing_days ({self.lapsing_days})")


@dataclass
class ProfileStats:
    customers: int  # rows written (= braze.users rows)
    with_orders: int  # customers with at least one order on or before as_of
    without_orders: int
    unmatched_orders: int  # orders on or before as_of that attach to no Braze user
    unmatched_customers_ids: int  # distinct order identities (customer id, else email) behind those orders


def _check_name(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"not a plain table name: {name!r}")
    return name


def _d(value: date) -> str:
    return f"DATE '{value.isoformat()}'"


# Order identity -> profile customer_id: external_id first, else the normalised email (oldest Braze profile
# when several share it). Used by create_attributed_orders and by build_profiles, so both attach alike.
# external_id needs no de-duplication: braze.users has one row per customer_id, which is the external_id
# whenever there is one. Emails do repeat across users, hence the arg_min.
def _by_external(key: str = "customer_id") -> str:
    """The by_external CTE (external_id, customer_id): ``key`` is the user column it yields as customer_id
    (``rowid`` for the profile build's integer row key)."""
    return f"""
by_external AS (
  SELECT external_id, {key} AS customer_id FROM braze.users WHERE external_id IS NOT NULL
)"""


def _by_email(only_emails: str | None = None, key: str = "customer_id") -> str:
    """The by_email CTE (email_normalized, customer_id); ``only_emails``: a relation whose ``order_email``
    column limits the tie-break to those emails (the same answer for them, over far fewer users); ``key`` as
    in ``_by_external``."""
    source = (f"braze.users SEMI JOIN {only_emails} f ON f.order_email = email_normalized" if only_emails
              else "braze.users WHERE email_normalized IS NOT NULL")
    return f"""
by_email AS (
  SELECT email_normalized, arg_min({key}, (coalesce(created_at, TIMESTAMP '9999-12-31'), customer_id))
         AS customer_id
  FROM {source} GROUP BY email_normalized
)"""


_IDENTITY_CTES = f"{_by_external()},{_by_email()}"


def create_attributed_orders(conn: duckdb.DuckDBPyConnection, *, as_of: date,
                             name: str = "orders_asof") -> None:
    """Create TEMP table ``name`` (customer_id, order_id, order_date, units, amount): the orders on or before
    as_of, keyed by the profile customer_id.

    An order attaches to the Braze user whose external_id equals the order's customer_id; failing that, to the
    user whose email_normalized equals the order's email (when several users share the email: the oldest
    Braze profile, then the smallest customer_id). Orders that attach to nobody are left out.
    """
    _check_name(name)
    conn.execute(
        f"""
CREATE OR REPLACE TEMP TABLE {name} AS
WITH {_IDENTITY_CTES}
SELECT coalesce(x.customer_id, e.customer_id) AS customer_id, o.order_id, o.order_date, o.units, o.amount
FROM commerce.orders o
LEFT JOIN by_external x ON x.external_id = o.customer_id
LEFT JOIN by_email e ON e.email_normalized = o.email
WHERE o.order_date <= {_d(as_of)} AND coalesce(x.customer_id, e.customer_id) IS NOT NULL
"""
    )


def _create_identity_totals(conn: duckdb.DuckDBPyConnection, *, as_of: date, name: str) -> None:
    """TEMP table: order totals per order identity (customer id, email) up to as_of, with the profile
    customer_id it attaches to (NULL when none).

    Every commerce column is a sum/min/max/filtered count, so totals per identity roll up exactly to totals
    per profile; joining ~1 row per identity instead of every order line to the users keeps the build close
    to the cost of the bare aggregate.
    """
    a = _d(as_of)
    t = _d(as_of - timedelta(days=clv.CLV_HORIZON_DAYS))
    conn.execute(
        f"""
CREATE OR REPLACE TEMP TABLE {name} AS
WITH by_identity AS (
  SELECT customer_id AS order_customer_id, email AS order_email,
         count(*) AS orders,
         sum(units) AS units,
         sum(CAST(amount AS DECIMAL(18, 4))) AS revenue,
         min(order_date) AS first_order_date,
         max(order_date) AS last_order_date,
         count(*) FILTER (WHERE order_date > {a} - 90) AS orders_last_90_days,
         sum(CAST(amount AS DECIMAL(18, 4))) FILTER (WHERE order_date > {a} - 365) AS revenue_last_365_days,
         count(*) FILTER (WHERE order_date <= {t}) AS fit_orders,
         max(order_date) FILTER (WHERE order_date <= {t}) AS fit_last_order_date
  FROM commerce.orders WHERE order_date <= {a}
  GROUP BY ALL
),
{_by_external(_ROW_KEY)},
-- Only the emails of identities that no external_id claims can attach by email, so the per-email tie-break
-- runs over those users instead of every user (the same attachment as _IDENTITY_CTES, far fewer rows).
fallback_emails AS (
  SELECT DISTINCT b.order_email FROM by_identity b
  ANTI JOIN by_external x ON x.external_id = b.order_customer_id
  WHERE b.order_email IS NOT NULL
),{_by_email("fallback_emails", _ROW_KEY)}
SELECT coalesce(x.customer_id, e.customer_id) AS user_row, b.*
FROM by_identity b
LEFT JOIN by_external x ON x.external_id = b.order_customer_id
LEFT JOIN by_email e ON e.email_normalized = b.order_email
"""
    )


def _age_sql(as_of: date) -> str:
    a = _d(as_of)
    # Whole years: a 29 February birthday is reached on 1 March in common years (month*100+day comparison).
    years = (f"(year({a}) - year(u.dob) - CASE WHEN month({a}) * 100 + day({a}) "
             f"< month(u.dob) * 100 + day(u.dob) THEN 1 ELSE 0 END)")
    return (f"CASE WHEN u.dob IS NULL OR u.dob > {a} OR {years} > {MAX_PLAUSIBLE_AGE} THEN NULL "
            f"ELSE {years} END")


def _age_band_sql(age: str) -> str:
    whens = " ".join(f"WHEN {age} <= {upper} THEN '{label}'" for upper, label in AGE_BANDS)
    return f"CASE WHEN {age} IS NULL THEN 'unknown' {whens} ELSE '65+' END"


def _lifecycle_sql(t: LifecycleThresholds) -> str:
    return (f"CASE WHEN coalesce(c.orders, 0) = 0 THEN 'never purchased' "
            f"WHEN c.tenure_days < {t.new_customer_days} THEN 'new' "
            f"WHEN c.days_since_last_order < {t.active_days} THEN 'active' "
            f"WHEN c.days_since_last_order < {t.lapsing_days} THEN 'lapsing' ELSE 'lapsed' END")


def _engagement_sql(as_of: date) -> str:
    """Every braze.users column plus Braze engagement in the 90 days ending on as_of and all-time event
    counts (computed on the user row itself: no join back on customer_id).

    JSON that is not a list of objects counts as empty (never an error); a campaign counts in the window when
    its ``last_received`` falls on one of the 90 days ending on as_of; a canvas by ``last_received_message``
    (else ``last_received``, else ``last_entered``: the first that is a date). A campaign is "engaged" when
    any value of its ``engaged`` object is JSON ``true`` (Braze adds keys over time, so the keys are not fixed
    here); an open or a click needs ``opened_email`` / ``clicked_email`` to be JSON ``true``. Anything else
    ("yes", 1, an ``engaged`` that is not an object) counts as no engagement, the same in every column.
    """
    a = _d(as_of)
    in_window = f"(CAST(x.ts AS DATE) > {a} - {ENGAGEMENT_WINDOW_DAYS} AND CAST(x.ts AS DATE) <= {a})"
    # ``engaged`` stays JSON and each campaign's flags are read once into a small struct: cheaper than a
    # MAP per campaign and than reading the map again in every count below. Dates are parsed by from_json
    # itself (a value that is not a date becomes NULL, as TRY_CAST would make it).
    campaign_type = '[{"last_received": "TIMESTAMP", "engaged": "JSON"}]'
    canvas_type = ('[{"last_received_message": "TIMESTAMP", "last_received": "TIMESTAMP", '
                   '"last_entered": "TIMESTAMP"}]')
    count_type = '[{"count": "BIGINT"}]'
    return f"""
SELECT * EXCLUDE (camps, canvases),
  len(list_filter(camps, lambda x: {in_window}))
    + len(list_filter(canvases, lambda x: {in_window})) AS messages_received_90d,
  len(list_filter(camps, lambda x: {in_window} AND x.opened)) AS email_opens_90d,
  len(list_filter(camps, lambda x: {in_window} AND x.clicked)) AS email_clicks_90d,
  list_max(list_transform(list_filter(camps, lambda x: x.engaged AND CAST(x.ts AS DATE) <= {a}),
                          lambda x: x.ts)) AS last_engaged_at,
  coalesce(list_sum(list_transform(from_json(purchases, '{count_type}'), lambda p: p.count)), 0)
    AS braze_purchase_count,
  coalesce(list_sum(list_transform(from_json(custom_events, '{count_type}'), lambda p: p.count)), 0)
    AS braze_custom_event_count
FROM (
  SELECT rowid AS user_row, *,
    coalesce(list_transform(from_json(campaigns_received, '{campaign_type}'),
      lambda j: {{'ts': j.last_received,
                 'opened': coalesce(json_extract(j.engaged, '$.opened_email')::VARCHAR = 'true', false),
                 'clicked': coalesce(json_extract(j.engaged, '$.clicked_email')::VARCHAR = 'true', false),
                 'engaged': coalesce(list_contains(json_extract(j.engaged, '$.*')::VARCHAR[], 'true'), false)}}),
      []) AS camps,
    coalesce(list_transform(from_json(canvases_received, '{canvas_type}'),
      lambda j: {{'ts': coalesce(j.last_received_message, j.last_received, j.last_entered)}}), []) AS canvases
  FROM braze.users
)
"""


def profiles_select_sql(*, as_of: date, thresholds: LifecycleThresholds, identity_totals: str) -> str:
    """The SELECT giving exactly the CUSTOMER_PROFILES columns (catalog order and types) as of ``as_of``,
    from the per-identity order totals made by ``_create_identity_totals``."""
    a = _d(as_of)
    countries = ", ".join(f"'{c}'" for c in sorted(ISO_COUNTRY_CODES))
    expressions = {
        "customer_id": "u.customer_id",
        "external_id": "u.external_id",
        "braze_id": "u.braze_id",
        "alias_name": "u.alias_name",
        "alias_label": "u.alias_label",
        "email": "u.email_normalized",
        "first_name": "u.first_name",
        "last_name": "u.last_name",
        "dob": "u.dob",
        "age": _age_sql(as_of),
        "age_band": _age_band_sql(f"({_age_sql(as_of)})"),
        "gender": "CASE WHEN upper(trim(u.gender)) IN ('M', 'F', 'O', 'N', 'P') "
                  "THEN upper(trim(u.gender)) END",
        "country": f"CASE WHEN upper(trim(u.country)) IN ({countries}) THEN upper(trim(u.country)) END",
        "home_city": "u.home_city",
        "language": "u.language",
        "time_zone": "u.time_zone",
        "email_subscribe": "u.email_subscribe",
        "push_subscribe": "u.push_subscribe",
        "braze_created_at": "u.created_at",
        "orders": "coalesce(c.orders, 0)",
        "units": "coalesce(c.units, 0)",
        "revenue": "coalesce(c.revenue, 0)",
        "average_order_value": "c.revenue / c.orders",
        "first_order_date": "c.first_order_date",
        "last_order_date": "c.last_order_date",
        "days_since_last_order": "c.days_since_last_order",
        "tenure_days": "c.tenure_days",
        "purchase_frequency": "c.orders * 365.0 / greatest(c.tenure_days, 1)",
        "orders_last_90_days": "coalesce(c.orders_last_90_days, 0)",
        "revenue_last_365_days": "coalesce(c.revenue_last_365_days, 0)",
        "recency_score": "c.recency_score",
        "frequency_score": "c.frequency_score",
        "monetary_score": "c.monetary_score",
        "rfm_segment": rfm.segment_sql("c.recency_score", "c.frequency_score", "c.monetary_score"),
        "lifecycle_stage": _lifecycle_sql(thresholds),
        "predicted_clv": "coalesce(c.predicted_clv, 0)",
        "messages_received_90d": "u.messages_received_90d",
        "email_opens_90d": "u.email_opens_90d",
        "email_clicks_90d": "u.email_clicks_90d",
        "last_engaged_at": "u.last_engaged_at",
        "braze_total_revenue": "u.total_revenue",
        "braze_purchase_count": "u.braze_purchase_count",
        "braze_custom_event_count": "u.braze_custom_event_count",
        "custom_attributes": "u.custom_attributes",
        "as_of_date": a,
    }
    missing = [c.name for c in CUSTOMER_PROFILES.columns if c.name not in expressions]
    extra = [n for n in expressions if n not in CUSTOMER_PROFILES.column_names]
    if missing or extra:  # a catalog change must come with its computation
        raise RuntimeError(f"profile columns out of step with the catalog: missing {missing}, extra {extra}")
    select = ",\n  ".join(f"CAST({expressions[c.name]} AS {c.type}) AS {c.name}"
                          for c in CUSTOMER_PROFILES.columns)
    return f"""
WITH commerce AS (
  SELECT user_row,
         sum(orders) AS orders,
         sum(units) AS units,
         sum(revenue)::DOUBLE AS revenue,
         min(first_order_date) AS first_order_date,
         max(last_order_date) AS last_order_date,
         sum(orders_last_90_days) AS orders_last_90_days,
         coalesce(sum(revenue_last_365_days), 0)::DOUBLE AS revenue_last_365_days,
         coalesce(sum(revenue_last_365_days), 0)::DOUBLE AS revenue_last_horizon,
         sum(fit_orders) AS fit_orders,
         max(fit_last_order_date) AS fit_last_order_date
  FROM {identity_totals} WHERE user_row IS NOT NULL GROUP BY user_row
),
{rfm.score_ctes_sql("commerce")},
scored AS (
  SELECT c.*, {a} - c.last_order_date AS days_since_last_order, {a} - c.first_order_date AS tenure_days,
         r.score AS recency_score, f.score AS frequency_score, m.score AS monetary_score
  FROM commerce c
  JOIN rfm_recency r ON r.v = c.last_order_date
  JOIN rfm_frequency f ON f.v = c.orders
  JOIN rfm_monetary m ON m.v = c.revenue
),
clv AS ({clv.clv_predictions_sql("scored", as_of, keep_columns=True)})
SELECT
  {select}
FROM ({_engagement_sql(as_of)}) u
LEFT JOIN clv c ON c.user_row = u.user_row
"""


def build_profiles(conn: duckdb.DuckDBPyConnection, *, as_of: date,
                   thresholds: LifecycleThresholds = LifecycleThresholds(),
                   target: str = "lexer.customer_profiles") -> ProfileStats:
    """Create or replace ``target`` with one profile row per ``braze.users`` row, computed as of ``as_of``.

    ``target`` is a real table ("schema.table", e.g. the default) or, without a schema, a TEMP table (for a
    past day computed next to the published table). Columns are exactly CUSTOMER_PROFILES's, in its order.
    Nothing here commits: the caller owns the transaction.
    """
    _check_name(target)
    totals = "_profile_identity_totals"
    _create_identity_totals(conn, as_of=as_of, name=totals)
    select = profiles_select_sql(as_of=as_of, thresholds=thresholds, identity_totals=totals)
    # Row order carries no meaning here; letting DuckDB write in any order lets it write in parallel.
    keep_order = conn.execute("SELECT current_setting('preserve_insertion_order')").fetchall()[0][0]
    conn.execute("SET preserve_insertion_order = false")
    try:
        conn.execute(CUSTOMER_PROFILES.ddl(target, replace=True))
        conn.execute(f"INSERT INTO {target} {select}")
    finally:
        conn.execute(f"SET preserve_insertion_order = {'true' if keep_order else 'false'}")
    customers, with_orders = conn.execute(
        f"SELECT count(*), count(*) FILTER (WHERE orders > 0) FROM {target}"
    ).fetchall()[0]
    unmatched_orders, unmatched_ids = conn.execute(
        f"""SELECT coalesce(sum(orders), 0),
                   count(DISTINCT coalesce('id:' || order_customer_id, 'email:' || order_email))
            FROM {totals} WHERE user_row IS NULL"""
    ).fetchall()[0]
    conn.execute(f"DROP TABLE {totals}")
    return ProfileStats(customers=customers, with_orders=with_orders, without_orders=customers - with_orders,
                        unmatched_orders=int(unmatched_orders), unmatched_customers_ids=unmatched_ids)
