"""One daily-partitioned asset per audience in the YAML: adding an audience adds an asset, nothing else."""

import datetime as dt
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import dagster as dg

from lexer_assets.audiences.rules import describe_rules
from lexer_assets.audiences.snapshots import (
    SnapshotStats,
    materialize_days,
    membership_cutoff,
    membership_version,
    prune_membership,
)
from lexer_assets.audiences.spec import Audience, AudienceError
from lexer_assets.defs.policies import DUCKDB_WRITER_POOL, table_definition_metadata
from lexer_assets.defs.profiles import customer_profiles
from lexer_assets.defs.resources import PipelineResource, WarehouseResource
from lexer_assets.settings import Settings
from lexer_assets.storage.catalog import AUDIENCE_HISTORY, AUDIENCE_MEMBERSHIP
from lexer_assets.storage.warehouse import RowScope
from lexer_assets.sync.audience_sync import latest_sync_day


def audience_key(audience: Audience) -> dg.AssetKey:
    return dg.AssetKey(["audiences", audience.slug])


def _description(audience: Audience) -> str:
    activation = audience.activation
    braze = (f"sent to Braze as `{audience.name}` ({activation.list_action}, priority {activation.priority})"
             if activation.braze and audience.enabled else "not sent to Braze")
    return (f"Audience **{audience.name}** (owner: {audience.owner or 'unknown'}; {braze}).\n\n"
            f"{audience.description or ''}\n\nRules: {describe_rules(audience.rules)}.\n\n"
            f"Defined in `{audience.file}` line {audience.line}. Each daily partition is the membership as of "
            "that day (profiles and time windows as of that day, Braze attributes from the export current "
            "then); backfill any range to rebuild history (one run per range).")


def snapshot_metadata(s: SnapshotStats) -> dict[str, Any]:
    """Numeric metadata of one day (the UI plots size, entered and exited over partitions)."""
    # entered/exited are left out (not 0) when the previous day's member list is no longer kept
    changes = {k: dg.MetadataValue.int(v) for k, v in (("entered", s.entered), ("exited", s.exited))
               if v is not None}
    return {
        "size": dg.MetadataValue.int(s.size),
        **changes,
        "dagster/row_count": dg.MetadataValue.int(s.size),
        "snapshot_date": s.snapshot_date.isoformat(),
        "export_used": s.object_prefix or "none",
        "export_date": s.export_date.isoformat() if s.export_date else "none",
        "export_note": s.export_note,
        "profiles": s.profiles_source,
    }


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
        code_version=membership_version(audience, audiences),
        description=_description(audience),
        metadata={**table_definition_metadata(AUDIENCE_MEMBERSHIP), "audience_name": audience.name},
    )
    def _audience(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
                  pipeline: PipelineResource) -> Iterator[dg.MaterializeResult | dg.AssetMaterialization]:
        days = sorted(dt.date.fromisoformat(k) for k in context.partition_keys)
        wh = warehouse.get()
        home = Path(pipeline.home)
        try:
            with wh.connect() as conn:
                cutoff = membership_cutoff(conn, audience.slug, pipeline.membership_retention_days, days)
                assert cutoff is not None  # days is never empty
                # Only this audience's days of the (large) membership table change (the days computed, and
                # the days pruned before the cutoff): the publish copies those rows into the analysts' store,
                # and the (small) history table whole.
                wh.mark_unpublished([AUDIENCE_HISTORY.name], rows=[
                    RowScope(AUDIENCE_MEMBERSHIP.name,
                             "audience_slug = ? AND snapshot_date BETWEEN ?::DATE AND ?::DATE",
                             [audience.slug, days[0].isoformat(), days[-1].isoformat()]),
                    RowScope(AUDIENCE_MEMBERSHIP.name, "audience_slug = ? AND snapshot_date < ?::DATE",
                             [audience.slug, cutoff.isoformat()])])
                stats = materialize_days(conn, audience, audiences, days, pipeline.thresholds(), home=home,
                                         cache_dir=home / "cache")
                pruned = prune_membership(conn, audience.slug, cutoff=cutoff, today=latest_sync_day())
        except AudienceError as exc:
            raise dg.Failure(description=f"audience {audience.name!r} was not computed: {exc}") from None
        wh.publish([AUDIENCE_HISTORY.name])
        for s in stats[-10:]:  # a long backfill: the last days are enough in the log, all are in metadata
            changes = ("entered/exited unknown: the previous day's members are no longer kept"
                       if s.entered is None else f"+{s.entered:,} / -{s.exited:,}")
            context.log.info(f"{audience.name} on {s.snapshot_date}: {s.size:,} members ({changes}); export "
                             f"{s.object_prefix or 'none'} ({s.export_note}); profiles {s.profiles_source}")
        if pruned:
            context.log.info(f"{audience.name}: member lists of days before {cutoff} removed ({pruned:,} rows; "
                             f"LEXER_MEMBERSHIP_RETENTION_DAYS={pipeline.membership_retention_days}); "
                             "their sizes stay in lexer.audience_history")
        if len(stats) == 1:
            yield dg.MaterializeResult(metadata=snapshot_metadata(stats[0]))
            return
        # A range run: Dagster records the output once per partition with the same metadata, so the output
        # carries a summary and each day then gets its own materialization (the latest per partition, the
        # one the UI plots) with that day's numbers.
        yield dg.MaterializeResult(metadata={
            "days_computed": dg.MetadataValue.int(len(stats)),
            "range": f"{stats[0].snapshot_date}...{stats[-1].snapshot_date}",
            "sizes": dg.MetadataValue.json({s.snapshot_date.isoformat(): s.size for s in stats}),
        })
        for s in stats:
            yield dg.AssetMaterialization(asset_key=context.asset_key, partition=s.snapshot_date.isoformat(),
                                          metadata=snapshot_metadata(s))

    return _audience


INVALID_AUDIENCES_FILE = dg.AssetKey(["audiences", "audiences_file_invalid"])


def build_invalid_file_asset(error: AudienceError) -> dg.AssetsDefinition:
    """Stands in for the audiences while their file cannot be read (invalid YAML, a duplicate slug, ...).

    The code location still loads, so exports, orders and profiles keep running and the UI stays up; this
    asset sits where the audiences were, upstream of the sync, and fails with the file's problems (file and
    line). The sync re-reads the file when it runs and refuses to send anything while it is broken.
    """
    problems = str(error)

    @dg.asset(
        key=INVALID_AUDIENCES_FILE,
        deps=[customer_profiles],
        group_name="audiences",
        kinds={"yaml"},
        description=("**The audiences file cannot be read, so no audience is defined and nothing is synced to "
                     f"Braze.** Fix it (`lexer-assets audiences validate` shows every problem), then reload "
                     f"the code location.\n\n```\n{problems}\n```"),
    )
    def audiences_file_invalid() -> None:
        raise dg.Failure(description=f"the audiences file cannot be read; no audience was computed and the "
                                     f"sync sends nothing until it is fixed:\n{problems}")

    return audiences_file_invalid


def backfill_audiences(settings: Settings, first: dt.date, last: dt.date, names: Sequence[str] = (), *,
                       instance: dg.DagsterInstance | None = None) -> dg.ExecuteInProcessResult:
    """Materialise audience partitions ``first``..``last`` (inclusive) in one run, as a UI backfill does.

    ``names``: audience names or slugs (default: every audience). The profiles, orders and exports must
    already be loaded; each day's profiles are recomputed as of that day. Returns the run's result.
    """
    from lexer_assets.audiences.spec import find_audience, load_audiences
    from lexer_assets.definitions import build_definitions

    if last < first:
        raise ValueError(f"the range ends ({last}) before it starts ({first})")
    audiences = load_audiences(settings.audiences_file)
    chosen = [find_audience(audiences, n) for n in names] if names else audiences
    defs = build_definitions(settings)
    job = dg.define_asset_job("audiences_backfill", selection=dg.AssetSelection.assets(
        *[audience_key(a) for a in chosen]))
    merged = dg.Definitions.merge(defs, dg.Definitions(jobs=[job]))
    return merged.resolve_job_def("audiences_backfill").execute_in_process(
        instance=instance or dg.DagsterInstance.ephemeral(), raise_on_error=False,
        # The CLI prints a summary and each failure in one line: Dagster's console log would add stack traces.
        run_config={"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}},
        tags={"dagster/asset_partition_range_start": first.isoformat(),
              "dagster/asset_partition_range_end": last.isoformat()})
