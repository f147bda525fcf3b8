"""The one entry point: assets, checks, jobs and resources for the configured profile.

Loading reads settings from the environment and the audiences YAML; it never touches Braze, S3 or DuckDB.
"""

from __future__ import annotations

import warnings

import dagster as dg

from lexer_assets.audiences.spec import AudienceError, parse_audiences
from lexer_assets.defs import automation
from lexer_assets.defs.audiences import build_audience_asset, build_invalid_file_asset
from lexer_assets.defs.braze_export import export_request, segment_export, users
from lexer_assets.defs.braze_sync import build_sync_asset, build_sync_checks
from lexer_assets.defs.checks import build_checks
from lexer_assets.defs.commerce import orders
from lexer_assets.defs.profiles import customer_profiles
from lexer_assets.defs.resources import resources_for
from lexer_assets.settings import Settings

MAIN_JOB = "lexer_loop"
SYNC_JOB = "lexer_sync"

# Audience assets use BackfillPolicy.single_run() (one run per backfilled range), a parameter Dagster marks beta.
warnings.filterwarnings("ignore", category=dg.BetaWarning)


def build_definitions(settings: Settings, *, loggers: dict[str, dg.LoggerDefinition] | None = None
                      ) -> dg.Definitions:
    audiences, problems = parse_audiences(settings.audiences_file)
    daily = dg.DailyPartitionsDefinition(start_date=settings.partitions_start.isoformat(), end_offset=1)
    if problems:
        # A marketer's typo in the YAML must not take ingestion, profiles and the UI down with it: the location
        # loads with a stand-in that fails with the problems, and the sync refuses to run (it re-reads the file).
        audiences = []
        audience_assets = [build_invalid_file_asset(AudienceError(problems))]
    else:
        audience_assets = [build_audience_asset(a, audiences, daily) for a in audiences]
    sync = build_sync_asset([a.key for a in audience_assets])
    assets = automation.with_automation(
        [export_request, segment_export, users, orders, customer_profiles, *audience_assets, sync], settings)
    main_job = dg.define_asset_job(
        MAIN_JOB, selection=dg.AssetSelection.all(),
        description="The whole loop: export request -> landed files -> users -> orders -> profiles -> "
                    "audiences (today's partition) -> Braze sync.",
    )
    sync_job = dg.define_asset_job(
        SYNC_JOB, selection=dg.AssetSelection.assets(sync.key),
        description="Only the Braze sync, from each audience's newest stored day (it applies the safety guard "
                    "itself): what automation runs after a run in which some audiences failed.",
    )
    return dg.Definitions(
        assets=assets,
        asset_checks=[*build_checks(audiences, settings), *build_sync_checks(audiences)],
        jobs=[main_job, sync_job],
        schedules=automation.schedules(settings),
        sensors=automation.sensors(settings),
        resources=resources_for(settings),
        # Writers are serialised by the duckdb_writer pool anyway, so locally one process per run beats a process
        # per step (each spawn re-imports Dagster: ~10 s a step). Prod keeps the multiprocess default, or the
        # engine's executor (docs/production.md).
        executor=dg.in_process_executor if settings.profile == "local" else None,
        loggers=loggers,
    )


defs = build_definitions(Settings.from_env())
