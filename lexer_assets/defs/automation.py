"""Automation applied in one spot: the export schedule, the landing sensors, declarative automation conditions,
freshness policies and the table metadata that depends on settings.

How the loop runs by itself:

1. ``braze_export_schedule`` (cron ``LEXER_EXPORT_CRON``) materialises ``braze/export_request``.
2. ``braze_export_landing_sensor`` lists the segment's folder in the bucket every
   ``LEXER_LANDING_SENSOR_INTERVAL_S``; when the requested export's files have stopped changing it launches one
   run of ``braze/segment_export`` (run key = the export's ``object_prefix``, so once per export).
   ``commerce_orders_sensor`` does the same for ``commerce/orders`` when an order file is added or changed.
3. ``lexer_automation`` (declarative automation, RUNNING on load) then requests ``braze/users``,
   ``lexer/customer_profiles``, the latest partition of every audience and ``braze/audience_sync``: each once
   per upstream change (or new code version: an audience's rules), never while an upstream is running or
   failed a blocking check, nor while one is missing (except for the sync, which goes on without an audience
   whose step failed and leaves that audience's values alone).

The decisions of the sensors are plain functions (``landing_decision``, ``orders_decision``) over a JSON cursor,
so tests call them directly; the sensors only list the bucket/folder and read the instance.
"""


import datetime as dt
import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import dagster as dg

from lexer_assets.braze.export_landing import segment_prefix
from lexer_assets.defs.audiences import INVALID_AUDIENCES_FILE
from lexer_assets.defs.commerce import order_files
from lexer_assets.defs.resources import BrazeResource, BucketResource, PipelineResource
from lexer_assets.settings import Settings
from lexer_assets.storage.object_store import ObjectInfo

EXPORT_REQUEST = dg.AssetKey(["braze", "export_request"])
SEGMENT_EXPORT = dg.AssetKey(["braze", "segment_export"])
USERS = dg.AssetKey(["braze", "users"])
ORDERS = dg.AssetKey(["commerce", "orders"])
PROFILES = dg.AssetKey(["lexer", "customer_profiles"])
SYNC = dg.AssetKey(["braze", "audience_sync"])

EXPORT_SCHEDULE = "braze_export_schedule"
LANDING_SENSOR = "braze_export_landing_sensor"
ORDERS_SENSOR = "commerce_orders_sensor"
AUTOMATION_SENSOR = "lexer_automation"
# Dagster tags every run the automation sensor launches with this (dagster._core.storage.tags).
AUTOMATION_RUN_TAG = "dagster/from_automation_condition"
# Exports launched, remembered so a re-listed old export is never launched twice (run keys also guard this).
_REMEMBERED_EXPORTS = 20


# ---- declarative automation ---------------------------------------------------------------------------------

def chain_condition(*, every_dep_present: bool = True) -> dg.AutomationCondition:
    """Downstream of a landing: run once when an upstream updates, only when upstream is done and checked.

    Like ``AutomationCondition.eager()`` (latest time partition only, never while a dependency is missing or in
    progress, never while itself in progress) with three differences:
    - the memory of "an upstream updated" is cleared when automation *requests* the asset or when another run
      (a manual one, a backfill) materialises it, but not when automation's own run completes: an export
      landing while the chain is still running is picked up once that run ends instead of being forgotten;
    - a new code version triggers it too: an audience's version is a hash of its rules, so editing a rule and
      reloading recomputes today's partition (and then the sync) without waiting for the next export;
    - every upstream's blocking checks must have passed (or be requested in the same tick, where the run stops
      the child if they fail).

    ``every_dep_present=False`` (the sync): a dependency that is missing does not hold it back. An audience
    whose step failed today has no partition for today; the sync then keeps that audience's values as they are
    (it reads each audience's newest stored day) and still sends the other audiences' changes.
    """
    ac = dg.AutomationCondition
    updated_by_another_run = (
        ac.newly_updated() & ~ac.executed_with_tags(tag_keys={AUTOMATION_RUN_TAG})
    ).with_label("updated_by_another_run")
    condition = (
        ac.in_latest_time_window()
        & (ac.newly_missing() | ac.any_deps_updated() | ac.code_version_changed())
        .since(ac.newly_requested() | updated_by_another_run | ac.initial_evaluation())
        .with_label("upstream_updated_since_handled")
    )
    if every_dep_present:
        checked = ~ac.any_deps_missing() & ac.all_deps_blocking_checks_passed()
    else:
        # a missing dependency has no check results: only the present ones must have passed theirs
        checks_passed = ac.all_checks_match(ac.check_passed() | ac.will_be_requested(), blocking_only=True)
        checked = ac.all_deps_match(ac.missing() | checks_passed).with_label("present_deps_checks_passed")
    return (
        condition
        & ~ac.any_deps_in_progress()
        & ~ac.in_progress()
        & checked
    ).with_label("lexer_chain" if every_dep_present else "lexer_chain_present_deps")


def profiles_condition() -> dg.AutomationCondition:
    """The chain rule, plus: when the profile table goes stale (no export for a day), rebuild it as of today.

    Recency, lifecycle stage and CLV move with the date even without new data; rebuilding once when freshness
    fails keeps the audiences right. ``newly_true`` makes it one request per failure, not one per tick.
    """
    ac = dg.AutomationCondition
    stale = (ac.freshness_failed().newly_true() & ~ac.in_progress() & ~ac.any_deps_missing()
             & ~ac.any_deps_in_progress()).with_label("rebuild_when_stale")
    return (chain_condition() | stale).with_label("lexer_chain_or_stale")


def freshness_policy(key: dg.AssetKey, settings: Settings) -> dg.FreshnessPolicy:
    """How late each asset may be before the UI shows it stale (windows are settings; see README)."""
    auto = settings.automation
    if key == ORDERS:
        return dg.FreshnessPolicy.time_window(fail_window=dt.timedelta(hours=auto.orders_freshness_fail_hours))
    warn = min(auto.freshness_warn_hours, auto.freshness_fail_hours)
    return dg.FreshnessPolicy.time_window(fail_window=dt.timedelta(hours=auto.freshness_fail_hours),
                                          warn_window=dt.timedelta(hours=warn))


def automation_condition(key: dg.AssetKey) -> dg.AutomationCondition | None:
    """None for what the schedule and the landing sensors start; the chain rule for everything downstream."""
    if key in (EXPORT_REQUEST, SEGMENT_EXPORT, ORDERS, INVALID_AUDIENCES_FILE):
        return None
    if key == PROFILES:
        return profiles_condition()
    if key == SYNC:
        return chain_condition(every_dep_present=False)
    return chain_condition()


def _store_metadata(spec: dg.AssetSpec, settings: Settings) -> dict[str, object]:
    """Where analysts find a table asset's data, and how to query it."""
    table = spec.metadata.get("dagster/table_name")
    if not table:
        return {}
    return {
        "profile_store": dg.MetadataValue.path(str(settings.published_store_path)),
        "query": dg.MetadataValue.md(
            f"Read-only copy for analysts: `{settings.published_store_path}`\n\n"
            f"```\n.venv/bin/lexer-assets query \"SELECT * FROM {table} LIMIT 20\"\n"
            f"duckdb -readonly {settings.published_store_path}\n```"),
    }


def _apply(spec: dg.AssetSpec, settings: Settings) -> dg.AssetSpec:
    updates: dict[str, object] = {
        "automation_condition": automation_condition(spec.key),
        "freshness_policy": freshness_policy(spec.key, settings),
        "metadata": {**spec.metadata, **_store_metadata(spec, settings)},
    }
    if spec.key == SYNC:
        # The sync reads the newest partition of each audience: depending on the last partition only means a
        # missing historical day never blocks it and a backfill of old days never triggers it.
        updates["deps"] = [dg.AssetDep(d.asset_key, partition_mapping=dg.LastPartitionMapping())
                           for d in spec.deps]
    return spec.replace_attributes(**updates)  # type: ignore[arg-type]


def with_automation(assets: Sequence[dg.AssetsDefinition], settings: Settings) -> list[dg.AssetsDefinition]:
    """Attach automation conditions, freshness policies and store links to every asset (one spot)."""
    return [a.map_asset_specs(lambda spec: _apply(spec, settings)) for a in assets]


# ---- schedule -------------------------------------------------------------------------------------------------

def schedules(settings: Settings) -> list[dg.ScheduleDefinition]:
    return [dg.ScheduleDefinition(
        name=EXPORT_SCHEDULE,
        cron_schedule=settings.automation.export_cron,
        execution_timezone="UTC",
        target=dg.AssetSelection.assets(EXPORT_REQUEST),
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Asks Braze for a fresh segment export (LEXER_EXPORT_CRON, UTC). The landing sensor takes "
                    "it from there.",
    )]


# ---- landing of a Braze export ---------------------------------------------------------------------------------

@dataclass
class LandingCursor:
    """What the landing sensor remembers between ticks (stored as JSON in the sensor's cursor).

    ``watermark``: newest last-modified time of any file of an export already launched. Files at or before it
    belong to exports already handled, so the cursor stays right when Braze deletes old keys (it holds no key
    list that could go stale). ``pending``: the listing of the export being watched and since when it has not
    changed.
    """

    watermark: str = ""  # ISO timestamp (UTC)
    launched: list[str] = field(default_factory=list)
    pending_prefix: str = ""
    pending_fingerprint: str = ""
    pending_since: str = ""

    @classmethod
    def load(cls, raw: str | None) -> "LandingCursor":
        return cls(**json.loads(raw)) if raw else cls()

    def dump(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@dataclass(frozen=True)
class LandingDecision:
    launch: str | None  # object_prefix whose export is complete and should be loaded
    cursor: LandingCursor
    reason: str
    files: int = 0
    bytes: int = 0


def _fingerprint(files: Sequence[ObjectInfo]) -> str:
    listing = "\n".join(f"{f.key}\t{f.size}" for f in sorted(files, key=lambda o: o.key))
    return hashlib.sha256(listing.encode()).hexdigest()[:16]


def _is_date(folder: str) -> bool:
    try:
        return len(folder) == 10 and dt.date.fromisoformat(folder) is not None
    except ValueError:
        return False


def _as_utc(value: dt.datetime) -> dt.datetime:
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def landing_decision(listing: Sequence[ObjectInfo], *, base_prefix: str, requested: str | None,
                     already_landed: str | None, cursor: LandingCursor, now: dt.datetime,
                     settle_seconds: float) -> LandingDecision:
    """Is the requested export complete? Braze writes no marker: complete = listing unchanged for the settle time.

    ``listing``: everything under ``[path/]segment-export/<segment_id>/``; ``requested``: the object_prefix of
    the newest export request; ``already_landed``: the object_prefix braze/segment_export last copied.
    """
    now = _as_utc(now)
    watermark = dt.datetime.fromisoformat(cursor.watermark) if cursor.watermark else None
    if requested is None:
        return LandingDecision(None, cursor, "no export has been requested yet")
    if requested == already_landed or requested in cursor.launched:
        return LandingDecision(None, cursor, f"export {requested} has already landed")
    files = []
    for obj in listing:
        parts = obj.key[len(base_prefix):].split("/")
        # <YYYY-MM-dd>/<object_prefix>/<file>, newer than every export already handled
        if (len(parts) == 3 and parts[1] == requested and parts[2] and _is_date(parts[0])
                and (watermark is None or _as_utc(obj.last_modified) > watermark)):
            files.append(obj)
    if not files:
        return LandingDecision(None, cursor, f"export {requested} has written no files yet")
    fingerprint = _fingerprint(files)
    total = sum(f.size for f in files)
    if cursor.pending_prefix != requested or cursor.pending_fingerprint != fingerprint:
        changed = LandingCursor(cursor.watermark, list(cursor.launched), requested, fingerprint, now.isoformat())
        return LandingDecision(None, changed, f"export {requested} is still being written "
                                              f"({len(files)} file(s), {total:,} bytes)", len(files), total)
    quiet = (now - dt.datetime.fromisoformat(cursor.pending_since)).total_seconds()
    if quiet < settle_seconds:
        return LandingDecision(None, cursor, f"export {requested} unchanged for {quiet:.0f} s; waiting for "
                                             f"{settle_seconds:.0f} s", len(files), total)
    newest = max(_as_utc(f.last_modified) for f in files)
    mark = max(newest, watermark) if watermark else newest
    done = LandingCursor(mark.isoformat(), [*cursor.launched, requested][-_REMEMBERED_EXPORTS:])
    return LandingDecision(requested, done, f"export {requested} is complete: {len(files)} file(s), "
                                            f"{total:,} bytes", len(files), total)


def _latest_metadata(instance: dg.DagsterInstance, key: dg.AssetKey) -> tuple[dict, float | None]:
    event = instance.get_latest_materialization_event(key)
    if event is None or event.asset_materialization is None:
        return {}, None
    meta = {k: v.value for k, v in event.asset_materialization.metadata.items()}
    return meta, event.timestamp


def _landing_sensor(settings: Settings) -> dg.SensorDefinition:
    @dg.sensor(
        name=LANDING_SENSOR,
        target=dg.AssetSelection.assets(SEGMENT_EXPORT),
        minimum_interval_seconds=settings.automation.landing_sensor_interval_s,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Watches `[path/]segment-export/<segment_id>/` in the bucket and launches "
                    "braze/segment_export once the requested export's files stop changing.",
    )
    def braze_export_landing_sensor(context: dg.SensorEvaluationContext, bucket: BucketResource,
                                    braze: BrazeResource, pipeline: PipelineResource
                                    ) -> dg.SensorResult | dg.SkipReason:
        requested = _latest_metadata(context.instance, EXPORT_REQUEST)[0].get("object_prefix")
        landed = _latest_metadata(context.instance, SEGMENT_EXPORT)[0].get("object_prefix")
        cursor = LandingCursor.load(context.cursor)
        base = segment_prefix(bucket.path_prefix, braze.export_segment_id)
        needs_listing = requested is not None and requested != landed and requested not in cursor.launched
        listing = bucket.store().list(base) if needs_listing else []
        decision = landing_decision(listing, base_prefix=base, requested=requested, already_landed=landed,
                                    cursor=cursor, now=dt.datetime.now(dt.UTC),
                                    settle_seconds=pipeline.export_settle_seconds)
        context.log.info(decision.reason)
        if decision.launch is None:
            context.update_cursor(decision.cursor.dump())
            return dg.SkipReason(decision.reason)
        return dg.SensorResult(
            run_requests=[dg.RunRequest(run_key=f"segment-export:{decision.launch}",
                                        asset_selection=[SEGMENT_EXPORT],
                                        tags={"lexer/object_prefix": decision.launch})],
            cursor=decision.cursor.dump(),
        )

    return braze_export_landing_sensor


# ---- order files landing -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class OrdersDecision:
    launch: bool
    cursor: str
    reason: str


def orders_fingerprint(files: Sequence[Path]) -> tuple[str, float]:
    """A fingerprint of the order files (name, size, modification time) and the newest modification time."""
    stats = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    digest = hashlib.sha256(json.dumps(stats).encode()).hexdigest()[:16]
    return digest, max((s[2] for s in stats), default=0) / 1e9


def orders_decision(files: Sequence[Path], *, cursor: str | None, last_loaded_at: float | None,
                    now: float, settle_seconds: float) -> OrdersDecision:
    """Launch commerce/orders when an order file was added or changed and has been quiet for the settle time."""
    if not files:
        return OrdersDecision(False, cursor or "", "no order files")
    fingerprint, newest = orders_fingerprint(files)
    if fingerprint == cursor:
        return OrdersDecision(False, fingerprint, "order files unchanged")
    if last_loaded_at is not None and last_loaded_at >= newest and cursor is None:
        # first look after a manual load of these very files: remember them, launch nothing
        return OrdersDecision(False, fingerprint, "order files already loaded")
    if now - newest < settle_seconds:
        return OrdersDecision(False, cursor or "", "an order file is still being written")
    return OrdersDecision(True, fingerprint, f"{len(files)} order file(s) new or changed")


def _orders_sensor(settings: Settings) -> dg.SensorDefinition:
    @dg.sensor(
        name=ORDERS_SENSOR,
        target=dg.AssetSelection.assets(ORDERS),
        minimum_interval_seconds=settings.automation.landing_sensor_interval_s,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Launches commerce/orders when an order file in LEXER_ORDERS_DIR is added or changed.",
    )
    def commerce_orders_sensor(context: dg.SensorEvaluationContext, pipeline: PipelineResource
                               ) -> dg.SensorResult | dg.SkipReason:
        import time

        files = order_files(Path(pipeline.orders_dir))
        decision = orders_decision(files, cursor=context.cursor,
                                   last_loaded_at=_latest_metadata(context.instance, ORDERS)[1],
                                   now=time.time(), settle_seconds=pipeline.export_settle_seconds)
        if not decision.launch:
            context.update_cursor(decision.cursor)
            return dg.SkipReason(decision.reason)
        return dg.SensorResult(
            run_requests=[dg.RunRequest(run_key=f"orders:{decision.cursor}", asset_selection=[ORDERS])],
            cursor=decision.cursor)

    return commerce_orders_sensor


def sensors(settings: Settings) -> list[dg.SensorDefinition]:
    return [
        _landing_sensor(settings),
        _orders_sensor(settings),
        dg.AutomationConditionSensorDefinition(
            AUTOMATION_SENSOR,
            target=dg.AssetSelection.all(),
            default_status=dg.DefaultSensorStatus.RUNNING,
            minimum_interval_seconds=settings.automation.landing_sensor_interval_s,
            description="Declarative automation: brings users, profiles, the latest audience partitions and the "
                        "sync up to date after a landing (on when the code location loads).",
        ),
    ]
