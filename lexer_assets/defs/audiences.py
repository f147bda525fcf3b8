"""One daily-partitioned asset per audience in the YAML: adding an audience adds an asset, nothing else."""

import datetime as dt
from collections.abc import Sequence

import dagster as dg

from lexer_assets.audiences.snapshots import prepare_day, store_snapshot
from lexer_assets.audiences.spec import Audience, AudienceError
from lexer_assets.defs.policies import DUCKDB_WRITER_POOL, table_definition_metadata
from lexer_assets.defs.profiles import customer_profiles
from lexer_assets.defs.resources import PipelineResource, WarehouseResource
from lexer_assets.storage.catalog import AUDIENCE_MEMBERSHIP


def audience_key(audience: Audience) -> dg.AssetKey:
    return dg.AssetKey(["audiences", audience.slug])


def _description(audience: Audience) -> str:
    activation = audience.activation
    braze = (f"sent to Braze as `{audience.name}` ({activation.list_action}, priority {activation.priority})"
             if activation.braze and audience.enabled else "not sent to Braze")
    return (f"Audience **{audience.name}** (owner: {audience.owner or 'unknown'}; {braze}).\n\n"
            f"{audience.description or ''}\n\nDefined in `{audience.file}` line {audience.line}. Each daily "
            "partition is the membership as of that day; backfill any range to rebuild history.")


def build_audience_asset(audience: Audience, audiences: Sequence[Audience],
                         partitions_def: dg.DailyPartitionsDefinition) -> dg.AssetsDefinition:
    @dg.asset(
        key=audience_key(audience),
        deps=[customer_profiles],
        partitions_def=partitions_def,
        backfill_policy=dg.BackfillPolicy.single_run(),
        group_name="audiences",
        kinds={"duckdb"},
        owners=[audience.owner] if audience.owner and "@" in audience.owner else None,
        tags={"braze_activated": str(bool(audience.activation.braze and audience.enabled)).lower()},
        pool=DUCKDB_WRITER_POOL,
        description=_description(audience),
        metadata={**table_definition_metadata(AUDIENCE_MEMBERSHIP), "audience_name": audience.name},
    )
    def _audience(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
                  pipeline: PipelineResource) -> dg.MaterializeResult:
        days = sorted(dt.date.fromisoformat(k) for k in context.partition_keys)
        wh = warehouse.get()
        stats = []
        try:
            with wh.transaction() as conn:
                for day in days:
                    prepare_day(conn, day, pipeline.thresholds())
                    stats.append(store_snapshot(conn, audience, audiences, day))
        except AudienceError as exc:
            raise dg.Failure(description=f"audience {audience.name!r} was not computed: {exc}") from None
        wh.publish()
        last = stats[-1]
        for s in stats:
            context.log.info(f"{audience.name} on {s.snapshot_date}: {s.size} members "
                             f"(+{s.entered} / -{s.exited})")
        return dg.MaterializeResult(metadata={
            "size": dg.MetadataValue.int(last.size),
            "entered": dg.MetadataValue.int(last.entered),
            "exited": dg.MetadataValue.int(last.exited),
            "dagster/row_count": dg.MetadataValue.int(last.size),
            "snapshot_date": last.snapshot_date.isoformat(),
            "days_computed": len(stats),
            "export_used": last.object_prefix or "none",
        })

    return _audience
