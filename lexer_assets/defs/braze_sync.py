"""Hub -> Braze: keep the array attribute equal to the activated audiences each customer is in."""

from collections.abc import Sequence

import dagster as dg
from pydantic import Field

from lexer_assets.audiences.spec import Audience, AudienceError
from lexer_assets.braze.client import BrazeAuthError
from lexer_assets.defs.policies import DUCKDB_WRITER_POOL, numeric_metadata
from lexer_assets.defs.resources import BrazeResource, PipelineResource, SyncResource, WarehouseResource
from lexer_assets.sync.audience_sync import (
    SYNC_TABLES,
    SyncedAudience,
    SyncReport,
    audience_summary,
    preview_sync,
    record_notification,
    run_sync,
)
from lexer_assets.sync.notifications import NotifyConfig, notify
from lexer_assets.sync.sharding import Shard, rate_share
from lexer_assets.sync.sync_guard import APPROVE_TAG, GuardLimits, SyncBlocked

SYNC_KEY = dg.AssetKey(["braze", "audience_sync"])
GUARD_CHECK = "sync_guard"


class SyncConfig(dg.Config):
    dry_run: bool = Field(default=False, description="Compute and report the changes; send nothing.")
    approve: bool = Field(default=False, description="Approve a run the safety guard blocked (same as the "
                          f"run tag {APPROVE_TAG}=true).")
    shard: int = Field(default=0, description="Which shard this run syncs (0-based).")
    shards: int = Field(default=1, description="How many shards the customers are split into (each run "
                        "takes 1/shards of the rate limit).")
    retry_parked: bool = Field(default=False, description="Put changes Braze refused too often back in.")


def synced_audiences(audiences: Sequence[Audience]) -> list[SyncedAudience]:
    return [SyncedAudience(slug=a.slug, name=a.name, activated=bool(a.enabled and a.activation.braze),
                           list_action=a.activation.list_action, priority=a.activation.priority,
                           frozen=bool(a.problems))
            for a in audiences]


def report_markdown(report: SyncReport) -> str:
    lines = ["| audience | snapshot | members | adds | removes | customers | requests | sent | failed | held back "
             "by cap | note |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for a in report.audiences:
        lines.append(f"| {a.audience_name} | {a.snapshot_date or '-'} | {a.members} | {a.adds} | {a.removes} "
                     f"| {a.customers} | {a.requests} | {a.sent} | {a.failed} | {a.held_back} | {a.note} |")
    return "\n".join(lines)


def _approved(context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext, flag: bool = False) -> bool:
    return flag or str(context.run.tags.get(APPROVE_TAG, "")).lower() in ("true", "1", "yes")


def _notify_config(sync: SyncResource) -> NotifyConfig:
    return NotifyConfig(smtp_host=sync.smtp_host, smtp_port=sync.smtp_port, sender=sync.notify_from,
                        recipients=tuple(sync.notify_to), webhook_url=sync.webhook_url)


def build_sync_asset(audience_keys: Sequence[dg.AssetKey]) -> dg.AssetsDefinition:
    @dg.asset(
        key=SYNC_KEY,
        deps=list(audience_keys),
        group_name="braze_sync",
        kinds={"braze"},
        pool=DUCKDB_WRITER_POOL,
    )
    def audience_sync(context: dg.AssetExecutionContext, config: SyncConfig, braze: BrazeResource,
                      warehouse: WarehouseResource, pipeline: PipelineResource,
                      sync: SyncResource) -> dg.MaterializeResult:
        """Sends each customer's `lexer_audience` changes (add/remove only) to Braze through /users/track.

        Desired state: the newest partition of every enabled, Braze-activated audience. Known state:
        `sync.braze_attribute_state`, which moves only for what Braze acknowledged; changes an interrupted run
        left in flight are read back from Braze first. Every change is logged in `sync.braze_sync_log`;
        refused objects are retried by later runs and parked after `LEXER_SYNC_MAX_FAILED_RUNS` runs. The
        safety guard (audience drop > `LEXER_SYNC_MAX_DROP_SHARE`, removals > `LEXER_SYNC_MAX_REMOVALS`) stops
        the run unless it is approved (run tag `lexer/approve_sync=true` or config `approve`). Config
        `dry_run` sends nothing; `shard`/`shards` split customers by a stable hash, each shard using its share
        of the rate limit. Every run ends with a report in `sync.braze_sync_reports` and a confirmation by
        email/webhook when configured.
        """
        try:
            audiences = synced_audiences(pipeline.audiences())
        except AudienceError as exc:
            # Without the file the desired state is unknown; syncing "no audiences" would empty every list.
            raise dg.Failure(description=f"sync stopped, nothing sent: the audiences file cannot be read:\n"
                                         f"{exc}") from None
        shard = Shard(config.shard, config.shards)
        wh = warehouse.get()
        client = None
        if not config.dry_run:
            share = rate_share(braze.rate_limit_requests, shard.count)
            client = braze.model_copy(update={"rate_limit_requests": share}).client()
        attribute = braze.attribute_name
        notify_config = _notify_config(sync)
        outcomes: list[str] = []

        def confirm(report: SyncReport) -> None:
            outcomes.extend(notify(report, attribute, notify_config))
            record_notification(wh, report, attribute, "; ".join(outcomes))
            for line in outcomes:
                context.log.info(f"confirmation {line}")

        try:
            report = run_sync(
                wh, client, audiences=audiences,
                attribute=attribute, array_cap=braze.array_cap, batch_cap=braze.batch_cap,
                run_id=context.run.run_id, dry_run=config.dry_run, log=context.log.info, shard=shard,
                guard=GuardLimits(sync.max_drop_share, sync.max_removals),
                approved=_approved(context, config.approve), max_failed_runs=sync.max_failed_runs,
                retry_parked=config.retry_parked, on_finish=confirm,
            )
        except SyncBlocked as exc:
            wh.publish(SYNC_TABLES)  # the blocked run's report is visible to analysts
            raise dg.Failure(description=str(exc)) from None
        except BrazeAuthError as exc:
            raise dg.Failure(description=f"sync stopped: {exc}. Nothing was lost: changes stay pending.") from None
        wh.publish(SYNC_TABLES)
        return dg.MaterializeResult(metadata={
            "dry_run": config.dry_run,
            "status": report.status,
            "shard": report.shard,
            "report": dg.MetadataValue.md(report_markdown(report)),
            "failure_reasons": dg.MetadataValue.json(report.failure_reasons),
            "held_back_by_cap": dg.MetadataValue.json(report.diff.held_back),
            "guard": report.guard or "not evaluated",
            "confirmation": "; ".join(outcomes),
            **numeric_metadata({"customers_changed": report.diff.customers, "adds": report.diff.adds,
                                "removes": report.diff.removes, "confirmed": report.done,
                                "failed": report.failed + report.rejected, "pending": report.pending,
                                "parked": report.parked, "absent_from_export": report.absent,
                                "reconciled": report.reconciled,
                                "capped_customers": report.diff.capped_customers,
                                "held_back_values": report.diff.held_back_values,
                                "requests_estimate": report.requests_estimate, "requests": report.requests}),
        })

    return audience_sync


def build_sync_checks(audiences: Sequence[Audience]) -> list[dg.AssetChecksDefinition]:
    """The blocking safety guard between the audiences and the sync: one check per Braze-activated audience.

    All of them are evaluated together after the audiences of the run are computed. An audience that shrank
    by more than the allowed share since the last sync fails its own check; a diff removing more values than
    allowed fails every check. The checks are blocking, so the sync (downstream of the audiences) does not run
    in that run unless it carries the approval tag. The sync repeats the guard itself, so a sync launched
    alone cannot bypass it.
    """
    activated = [a for a in synced_audiences(audiences) if a.activated and not a.frozen]
    if not activated:
        return []
    specs = [dg.AssetCheckSpec(GUARD_CHECK, asset=dg.AssetKey(["audiences", a.slug]), blocking=True,
                               description=f"Safety guard before `{a.name}` reaches Braze: size drop since the "
                                           "last sync and total removals within the limits (or approved).")
             for a in activated]
    by_slug = {a.slug: a for a in activated}

    # can_subset: materialising or backfilling one audience runs only that audience's guard
    @dg.multi_asset_check(specs=specs, name="braze_sync_guard", pool=DUCKDB_WRITER_POOL, can_subset=True)
    def braze_sync_guard(context: dg.AssetCheckExecutionContext, braze: BrazeResource,
                         warehouse: WarehouseResource, pipeline: PipelineResource, sync: SyncResource):
        """Evaluates the sync's safety guard on what the sync would do now (a dry plan: nothing is sent)."""
        report, verdict = preview_sync(
            warehouse.get(), audiences=synced_audiences(pipeline.audiences()), attribute=braze.attribute_name,
            array_cap=braze.array_cap, batch_cap=braze.batch_cap, max_failed_runs=sync.max_failed_runs,
            limits=GuardLimits(sync.max_drop_share, sync.max_removals))
        assert verdict is not None
        approved = _approved(context)
        lines = {line.audience_name: line for line in report.audiences}
        too_many_removals = verdict.removals > sync.max_removals
        # Problems of no activated audience (one that was synced and is now disabled or deleted) have no check
        # of their own: every check carries them, as the sync itself would stop on them.
        names = [f"audience {a.name!r}" for a in activated]
        orphan = [p for p in verdict.problems if not p.startswith(tuple(names))]
        for slug, aud in by_slug.items():
            if dg.AssetCheckKey(dg.AssetKey(["audiences", slug]), GUARD_CHECK) not in context.selected_asset_check_keys:
                continue
            before, now = verdict.sizes.get(aud.name, (None, lines[aud.name].members if aud.name in lines else 0))
            own = [p for p in verdict.problems if p.startswith(f"audience {aud.name!r}")]
            if too_many_removals:
                own.append(f"the run would remove {verdict.removals:,} values (limit {sync.max_removals:,})")
            own += orphan
            passed = not own or approved
            text = ("approved by run tag: " if own and approved else "") + (
                "; ".join(own) if own else "within the limits")
            yield dg.AssetCheckResult(
                asset_key=dg.AssetKey(["audiences", slug]), check_name=GUARD_CHECK, passed=passed,
                severity=dg.AssetCheckSeverity.ERROR,
                description=text if passed else verdict.explain(),
                metadata={"size_at_last_sync": -1 if before is None else before, "size_now": now,
                          "removals_planned": verdict.removals, "approved": approved,
                          "audiences": dg.MetadataValue.json(audience_summary(report))},
            )

    return [braze_sync_guard]
