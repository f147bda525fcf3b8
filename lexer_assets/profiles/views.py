"""Views for analysts over the profile store (lexer.customer_profiles, audience membership and history).

Plain SQL views (no lambdas or other DuckDB-2-only syntax) so the published store, written in an older
storage version, can be queried by DuckDB 1.x tools too. Each view is documented in the data dictionary with
an example query; ``create_analyst_views`` is idempotent (CREATE OR REPLACE).
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb


@dataclass(frozen=True)
class AnalystView:
    name: str
    grain: str
    description: str
    columns: tuple[tuple[str, str], ...]  # (name, meaning)
    sql: str
    example: str


ANALYST_VIEWS: tuple[AnalystView, ...] = (
    AnalystView(
        name="lexer.customers_by_lifecycle_stage",
        grain="lifecycle stage in the current profiles",
        description="How many customers are in each lifecycle stage, what they spent and are predicted to spend.",
        columns=(
            ("lifecycle_stage", "new, active, lapsing, lapsed or never purchased."),
            ("customers", "Customers in the stage."),
            ("share", "Fraction of all customers (0-1)."),
            ("revenue", "Their revenue up to as_of_date."),
            ("average_revenue", "revenue / customers."),
            ("predicted_clv", "Sum of their predicted 365-day revenue."),
            ("email_subscribed", "Customers in the stage with email_subscribe opted_in or subscribed."),
            ("as_of_date", "Reference date of the profiles."),
        ),
        sql="""
SELECT lifecycle_stage,
       count(*) AS customers,
       count(*) / sum(count(*)) OVER () AS share,
       -- summed as cents: a sum of doubles shows float noise (1058395.1499999638)
       sum(CAST(revenue AS DECIMAL(18, 2)))::DOUBLE AS revenue,
       avg(revenue) AS average_revenue,
       sum(predicted_clv) AS predicted_clv,
       count(*) FILTER (WHERE email_subscribe IN ('opted_in', 'subscribed')) AS email_subscribed,
       max(as_of_date) AS as_of_date
FROM lexer.customer_profiles
GROUP BY lifecycle_stage""",
        example="SELECT * FROM lexer.customers_by_lifecycle_stage ORDER BY customers DESC;",
    ),
    AnalystView(
        name="lexer.customers_by_rfm_segment",
        grain="RFM segment in the current profiles",
        description="Size and value of each named RFM segment.",
        columns=(
            ("rfm_segment", "Named segment (see the RFM mapping)."),
            ("customers", "Customers in the segment."),
            ("share", "Fraction of all customers (0-1)."),
            ("average_orders", "Mean orders per customer."),
            ("average_revenue", "Mean revenue per customer."),
            ("average_days_since_last_order", "Mean days since the last order (null for No purchases)."),
            ("predicted_clv", "Sum of predicted 365-day revenue."),
        ),
        sql="""
SELECT rfm_segment,
       count(*) AS customers,
       count(*) / sum(count(*)) OVER () AS share,
       avg(orders) AS average_orders,
       avg(revenue) AS average_revenue,
       avg(days_since_last_order) AS average_days_since_last_order,
       sum(predicted_clv) AS predicted_clv
FROM lexer.customer_profiles
GROUP BY rfm_segment""",
        example="SELECT * FROM lexer.customers_by_rfm_segment ORDER BY predicted_clv DESC;",
    ),
    AnalystView(
        name="lexer.audience_size_over_time",
        grain="(audience, snapshot date)",
        description="Each audience's size per stored day, with entries, exits and the change since the "
                    "previous stored day.",
        columns=(
            ("audience_slug", "Stable audience id."),
            ("audience_name", "Audience name (the value written to Braze)."),
            ("snapshot_date", "Partition date."),
            ("size", "Members that day."),
            ("entered", "Members not in the previous stored day (null when that day's members are no longer "
                        "kept)."),
            ("exited", "Previous stored day's members no longer in (null likewise)."),
            ("size_change", "size minus the previous stored day's size (null on the first day)."),
            ("previous_snapshot_date", "The previous stored day (backfills may leave gaps)."),
        ),
        sql="""
SELECT audience_slug, audience_name, snapshot_date, size, entered, exited,
       size - lag(size) OVER w AS size_change,
       lag(snapshot_date) OVER w AS previous_snapshot_date
FROM lexer.audience_history
WINDOW w AS (PARTITION BY audience_slug ORDER BY snapshot_date)""",
        example=("SELECT snapshot_date, size, entered, exited FROM lexer.audience_size_over_time\n"
                 "WHERE audience_slug = 'vip' ORDER BY snapshot_date;"),
    ),
    AnalystView(
        name="lexer.audience_overlap",
        grain="(snapshot date, audience, other audience) with at least one shared member",
        description="How many members two audiences share on a day, and what fraction of each that is. "
                    "Pairs appear both ways (a, b) and (b, a); an audience paired with itself gives its size.",
        columns=(
            ("snapshot_date", "Partition date."),
            ("audience_slug", "First audience."),
            ("other_audience_slug", "Second audience."),
            ("shared_members", "Customers in both on that day."),
            ("audience_size", "Members of the first audience that day."),
            ("other_audience_size", "Members of the second audience that day."),
            ("share_of_audience", "shared_members / audience_size."),
            ("jaccard", "shared_members / members of either."),
        ),
        sql="""
WITH sizes AS (
  SELECT audience_slug, snapshot_date, count(*) AS size
  FROM lexer.audience_membership GROUP BY audience_slug, snapshot_date
),
pairs AS (
  SELECT a.snapshot_date, a.audience_slug, b.audience_slug AS other_audience_slug, count(*) AS shared_members
  FROM lexer.audience_membership a
  JOIN lexer.audience_membership b ON a.snapshot_date = b.snapshot_date AND a.customer_id = b.customer_id
  GROUP BY a.snapshot_date, a.audience_slug, b.audience_slug
)
SELECT p.snapshot_date, p.audience_slug, p.other_audience_slug, p.shared_members,
       sa.size AS audience_size, sb.size AS other_audience_size,
       p.shared_members / sa.size AS share_of_audience,
       p.shared_members / (sa.size + sb.size - p.shared_members) AS jaccard
FROM pairs p
JOIN sizes sa ON sa.audience_slug = p.audience_slug AND sa.snapshot_date = p.snapshot_date
JOIN sizes sb ON sb.audience_slug = p.other_audience_slug AND sb.snapshot_date = p.snapshot_date""",
        example=("SELECT audience_slug, other_audience_slug, shared_members, round(jaccard, 3) AS jaccard\n"
                 "FROM lexer.audience_overlap\n"
                 "WHERE snapshot_date = (SELECT max(snapshot_date) FROM lexer.audience_membership)\n"
                 "  AND audience_slug < other_audience_slug\n"
                 "ORDER BY shared_members DESC;"),
    ),
    AnalystView(
        name="lexer.audience_members_profile",
        grain="(audience, snapshot date, member) joined to the member's current profile",
        description="Audience members with their current profile columns, for profiling an audience "
                    "(the profile is today's, not the snapshot day's).",
        columns=(
            ("audience_slug", "Audience."),
            ("audience_name", "Audience name."),
            ("snapshot_date", "Partition date."),
            ("customer_id", "Member."),
            ("lifecycle_stage, rfm_segment, revenue, predicted_clv, age_band, country, email_subscribe",
             "From lexer.customer_profiles (null when the member is no longer a Braze user)."),
        ),
        sql="""
SELECT m.audience_slug, m.audience_name, m.snapshot_date, m.customer_id,
       p.lifecycle_stage, p.rfm_segment, p.revenue, p.predicted_clv, p.age_band, p.country, p.email_subscribe
FROM lexer.audience_membership m
LEFT JOIN lexer.customer_profiles p ON p.customer_id = m.customer_id""",
        example=("SELECT rfm_segment, count(*) FROM lexer.audience_members_profile\n"
                 "WHERE audience_slug = 'vip'\n"
                 "  AND snapshot_date = (SELECT max(snapshot_date) FROM lexer.audience_membership)\n"
                 "GROUP BY 1 ORDER BY 2 DESC;"),
    ),
)


def create_analyst_views(conn: duckdb.DuckDBPyConnection) -> None:
    """Create or replace every analyst view (the tables they read must exist: ``ensure_tables``)."""
    for view in ANALYST_VIEWS:
        conn.execute(f"CREATE OR REPLACE VIEW {view.name} AS {view.sql}")
