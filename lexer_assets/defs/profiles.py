"""The enriched customer table analysts query and audiences segment on."""

import dagster as dg

from lexer_assets.defs.braze_export import users
from lexer_assets.defs.commerce import orders
from lexer_assets.defs.policies import (
    DUCKDB_WRITER_POOL,
    numeric_metadata,
    preview_markdown,
    table_definition_metadata,
)
from lexer_assets.defs.resources import PipelineResource, WarehouseResource
from lexer_assets.profiles.build import build_profiles
from lexer_assets.profiles.views import create_analyst_views
from lexer_assets.storage.catalog import CUSTOMER_PROFILES


@dg.asset(
    key=["lexer", "customer_profiles"],
    deps=[users, orders],
    group_name="profiles",
    kinds={"duckdb"},
    pool=DUCKDB_WRITER_POOL,
    metadata=table_definition_metadata(CUSTOMER_PROFILES),
)
def customer_profiles(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
                      pipeline: PipelineResource) -> dg.MaterializeResult:
    """`lexer.customer_profiles`: one row per customer of the newest Braze export, as of today.

    Orders attach by external_id, else by normalised email. Columns: identity, demographics (age band),
    consent, commerce (orders, revenue, AOV, recency, tenure, frequency), RFM scores and segment, lifecycle
    stage, predicted CLV, Braze engagement. See docs/data-dictionary.md.
    """
    as_of = pipeline.today()
    wh = warehouse.get()
    with wh.transaction(tables=[CUSTOMER_PROFILES.name]) as conn:
        stats = build_profiles(conn, as_of=as_of, thresholds=pipeline.thresholds())
        create_analyst_views(conn)  # views over profiles and audience tables, published with them
        by_stage = dict(conn.sql("SELECT lifecycle_stage, count(*) FROM lexer.customer_profiles "
                                 "GROUP BY ALL ORDER BY ALL").fetchall())
        preview = preview_markdown(conn, "SELECT customer_id, orders, revenue, rfm_segment, lifecycle_stage, "
                                         "predicted_clv FROM lexer.customer_profiles ORDER BY revenue DESC")
    wh.publish([CUSTOMER_PROFILES.name])  # only this table is copied into the analysts' store
    return dg.MaterializeResult(metadata={
        "dagster/row_count": dg.MetadataValue.int(stats.customers),
        "as_of_date": as_of.isoformat(),
        "customers_by_lifecycle_stage": dg.MetadataValue.json(by_stage),
        "top_customers": dg.MetadataValue.md(preview),
        **numeric_metadata({"customers_with_orders": stats.with_orders,
                            "customers_without_orders": stats.without_orders,
                            "unmatched_orders": stats.unmatched_orders}),
    })
