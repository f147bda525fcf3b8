"""Hub -> Braze: keep the array attribute equal to the activated audiences each customer is in."""

from collections.abc import Sequence

import dagster as dg

from lexer_assets.audiences.spec import Audience
from lexer_assets.braze.client import BrazeAuthError
from lexer_assets.defs.policies import DUCKDB_WRITER_POOL, numeric_metadata
from lexer_assets.defs.resources import BrazeResource, PipelineResource, WarehouseResource
from lexer_assets.sync.audience_sync import SyncedAudience, SyncReport, run_sync


class SyncConfig(dg.Config):
    dry_run: bool = False


def synced_audiences(audiences: Sequence[Audience]) -> list[SyncedAudience]:
    return [SyncedAudience(slug=a.slug, name=a.name, activated=bool(a.enabled and a.activation.braze),
                           list_action=a.activation.list_action, priority=a.activation.priority)
            for a in audiences]


def report_markdown(report: SyncReport) -> str:
    lines = ["| audience | snapshot | members | adds | removes | sent | failed |", "|---|---|---|---|---|---|---|"]
    for a in report.audiences:
        lines.append(f"| {a.audience_name} | {a.snapshot_date or '-'} | {a.members} | {a.adds} | {a.removes} "
                     f"| {a.sent} | {a.failed} |")
    return "\n".join(lines)


def build_sync_asset(audience_keys: Sequence[dg.AssetKey]) -> dg.AssetsDefinition:
    @dg.asset(
        key=["braze", "audience_sync"],
        deps=list(audience_keys),
        group_name="braze_sync",
        kinds={"braze"},
        pool=DUCKDB_WRITER_POOL,
    )
    def audience_sync(context: dg.AssetExecutionContext, config: SyncConfig, braze: BrazeResource,
                      warehouse: WarehouseResource, pipeline: PipelineResource) -> dg.MaterializeResult:
        """Sends each customer's `lexer_audience` changes (add/remove only) to Braze through /users/track.

        Desired state: the newest partition of every enabled, Braze-activated audience. Known state:
        `sync.braze_attribute_state`, which moves only for what Braze acknowledged. Every change is logged in
        `sync.braze_sync_log`; rejected objects stay in the diff and are retried next run. Objects carry
        `_update_existing_only: true`, at most the configured batch cap per request.
        """
        client = None if config.dry_run else braze.client()
        try:
            report = run_sync(
                warehouse.get(), client, audiences=synced_audiences(pipeline.audiences()),
                attribute=braze.attribute_name, array_cap=braze.array_cap, batch_cap=braze.batch_cap,
                run_id=context.run.run_id, dry_run=config.dry_run, log=context.log.info,
            )
        except BrazeAuthError as exc:
            raise dg.Failure(description=f"sync stopped: {exc}. Nothing was lost: changes stay pending.") from None
        warehouse.get().publish()
        return dg.MaterializeResult(metadata={
            "dry_run": config.dry_run,
            "report": dg.MetadataValue.md(report_markdown(report)),
            "failure_reasons": dg.MetadataValue.json(report.failure_reasons),
            **numeric_metadata({"customers_changed": report.diff.customers, "adds": report.diff.adds,
                                "removes": report.diff.removes, "confirmed": report.done,
                                "failed": report.failed, "pending": report.pending,
                                "capped_customers": report.diff.capped_customers,
                                "requests_estimate": report.requests_estimate}),
        })

    return audience_sync


def build_sync_checks(audiences: Sequence[Audience]) -> list[dg.AssetChecksDefinition]:
    """The blocking safety guard between the audiences and the sync (none yet)."""
    return []
