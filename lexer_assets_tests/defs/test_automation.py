"""Declarative automation over simulated ticks (``dg.evaluate_automation_conditions``), on the real definitions.

Nothing executes: runs and their results are written into an ephemeral instance the way the daemon would see
them (a run in progress has planned materialisations; a finished run has materialisations and check results),
and each tick is evaluated with the cursor of the previous one. Expected requests are written out by hand from
the asset graph in the README.
"""

import datetime as dt
from collections.abc import Iterable
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.events import DagsterEvent, DagsterEventType, StepMaterializationData
from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus

from lexer_assets.audiences.spec import load_audiences
from lexer_assets.definitions import build_definitions
from lexer_assets.defs.automation import AUTOMATION_RUN_TAG
from lexer_assets_tests.conftest import local_settings

USERS = "braze/users"
PROFILES = "lexer/customer_profiles"
SYNC = "braze/audience_sync"
START = dt.datetime(2026, 12, 3, 6, 0, tzinfo=dt.UTC)
TODAY = "2026-12-03"


def _key(user_string: str) -> dg.AssetKey:
    return dg.AssetKey.from_user_string(user_string)


class Simulation:
    """An instance, a clock and the automation cursor, advanced one tick at a time."""

    def __init__(self, defs: dg.Definitions, start: dt.datetime = START) -> None:
        self.defs = defs
        self.graph = defs.resolve_asset_graph()
        self.instance = dg.DagsterInstance.ephemeral()
        self.now = start
        self.cursor = None
        self.job = defs.resolve_implicit_global_asset_job_def()

    def tick(self, minutes: float = 1) -> set[tuple[str, str | None]]:
        """Advance the clock and evaluate every automation condition; what was requested."""
        self.now += dt.timedelta(minutes=minutes)
        result = dg.evaluate_automation_conditions(defs=self.defs, instance=self.instance,
                                                   evaluation_time=self.now, cursor=self.cursor)
        self.cursor = result.cursor
        return {(r.key.to_user_string(), p) for r in result.results if isinstance(r.key, dg.AssetKey)
                for p in result.get_requested_partitions(r.key)}

    def land(self, *keys: str, partition: str | None = None) -> None:
        """A materialisation made outside automation (the landing sensor's run, a manual run)."""
        for key in keys:
            self.instance.report_runless_asset_event(dg.AssetMaterialization(_key(key), partition=partition))

    def start_run(self, requested: Iterable[tuple[str, str | None]], automated: bool = True) -> DagsterRun:
        """A run whose materialisations are planned (in progress): the daemon's (automated) or a person's."""
        requested = set(requested)
        partitions = {p for _, p in requested if p}
        assert len(partitions) <= 1, "one run per partition"
        tags = {"dagster/partition": partitions.pop()} if partitions else {}
        if automated:
            tags[AUTOMATION_RUN_TAG] = "true"
        return self.instance.create_run_for_job(
            job_def=self.job, asset_selection={_key(k) for k, _ in requested}, tags=tags,
            status=DagsterRunStatus.STARTED)

    def reload(self, defs: dg.Definitions) -> None:
        """The code location is reloaded with new definitions (same instance, same automation cursor)."""
        self.defs = defs
        self.graph = defs.resolve_asset_graph()
        self.job = defs.resolve_implicit_global_asset_job_def()

    def finish_run(self, run: DagsterRun, *, failed_checks: Iterable[str] = (),
                   failed_assets: Iterable[str] = ()) -> None:
        """The run materialises its assets, their checks run (pass unless named), and it succeeds; with
        ``failed_assets`` those steps fail (nothing materialised) and so does the run."""
        failed = set(failed_checks)
        broken = {_key(k) for k in failed_assets}
        partition = run.tags.get("dagster/partition")
        for key in sorted(run.asset_selection or (), key=lambda k: k.to_user_string()):
            if key in broken:
                continue
            self._event(run, DagsterEventType.ASSET_MATERIALIZATION,
                        StepMaterializationData(dg.AssetMaterialization(key, partition=partition)))
            for check_key in self.graph.get_check_keys_for_assets({key}):
                name = f"{key.to_user_string()}:{check_key.name}"
                self._event(run, DagsterEventType.ASSET_CHECK_EVALUATION,
                            dg.AssetCheckEvaluation(key, check_key.name, passed=name not in failed))
        self._event(run, DagsterEventType.RUN_FAILURE if broken else DagsterEventType.RUN_SUCCESS, None)

    def run_to_completion(self, requested: set[tuple[str, str | None]], *, automated: bool = True,
                          failed_checks: Iterable[str] = (), failed_assets: Iterable[str] = ()) -> None:
        self.finish_run(self.start_run(requested, automated), failed_checks=failed_checks,
                        failed_assets=failed_assets)

    def _event(self, run: DagsterRun, kind: DagsterEventType, data: object) -> None:
        event = DagsterEvent(event_type_value=kind.value, job_name=run.job_name,
                             event_specific_data=data)  # type: ignore[arg-type]
        self.instance.report_dagster_event(event, run_id=run.run_id)


@pytest.fixture(scope="module")
def defs(tmp_path_factory: pytest.TempPathFactory) -> dg.Definitions:
    return build_definitions(local_settings(tmp_path_factory.mktemp("home")))


@pytest.fixture(scope="module")
def audience_slugs() -> list[str]:
    from lexer_assets_tests.conftest import COMMITTED_AUDIENCES

    return [a.slug for a in load_audiences(COMMITTED_AUDIENCES)]


def audiences_on(slugs: list[str], day: str) -> set[tuple[str, str | None]]:
    return {(f"audiences/{s}", day) for s in slugs}


def landed_and_settled(sim: Simulation) -> None:
    """Orders loaded long ago; the export was requested and has just landed (the sensor's run finished)."""
    sim.land("commerce/orders", "braze/export_request")
    assert sim.tick() == set()  # nothing downstream can run without the export
    sim.land("braze/segment_export")


def test_a_landing_requests_the_chain_once_in_order(defs: dg.Definitions, audience_slugs: list[str]) -> None:
    sim = Simulation(defs)
    assert sim.tick() == set()  # a fresh instance requests nothing: every upstream is missing
    landed_and_settled(sim)

    # each step waits for the previous one to be materialised with its blocking checks passed
    steps = [{(USERS, None)}, {(PROFILES, None)}, audiences_on(audience_slugs, TODAY), {(SYNC, None)}]
    for expected in steps:
        requested = sim.tick()
        assert requested == expected
        assert sim.tick() == set()  # requested once: the next tick does not ask again
        sim.run_to_completion(requested)
    assert sim.tick() == set()
    assert sim.tick(minutes=60) == set()


def test_nothing_is_requested_twice_while_a_run_is_in_progress(defs: dg.Definitions) -> None:
    sim = Simulation(defs)
    sim.tick()
    landed_and_settled(sim)
    requested = sim.tick()
    assert requested == {(USERS, None)}
    run = sim.start_run(requested)
    sim.tick()
    # a second export lands while braze/users is still loading the first one
    sim.land("braze/segment_export")
    for _ in range(3):
        assert sim.tick() == set()
    sim.finish_run(run)
    # the run ends: the export that landed during it is loaded, once; profiles go in the same run, after it
    # (braze/users passed its blocking checks before, and the run stops profiles if the reload fails them)
    assert sim.tick() == {(USERS, None), (PROFILES, None)}
    assert sim.tick() == set()


def test_a_failed_blocking_check_stops_the_chain(defs: dg.Definitions, audience_slugs: list[str]) -> None:
    sim = Simulation(defs)
    sim.tick()
    landed_and_settled(sim)
    requested = sim.tick()
    sim.run_to_completion(requested, failed_checks=[f"{USERS}:unique_customer_ids"])
    for _ in range(3):
        assert sim.tick() == set()  # profiles never built on duplicated users


def up_to_todays_audiences(sim: Simulation, slugs: list[str]) -> set[tuple[str, str | None]]:
    """An export lands, users and profiles are built; automation then requests today's audiences."""
    sim.tick()
    landed_and_settled(sim)
    sim.run_to_completion(sim.tick())  # users
    sim.run_to_completion(sim.tick())  # profiles
    requested = sim.tick()
    assert requested == audiences_on(slugs, TODAY)
    return requested


def _with_audience_guard(defs: dg.Definitions, slugs: list[str]) -> tuple[dg.Definitions, str]:
    """The real blocking guard on the audiences if the definitions have one, else a stand-in like it."""
    graph = defs.resolve_asset_graph()
    keys = {_key(f"audiences/{s}") for s in slugs}
    blocking = [k for k in graph.get_check_keys_for_assets(keys) if graph.get(k).blocking]
    if blocking:
        return defs, blocking[0].name
    specs = [dg.AssetCheckSpec("stand_in_guard", asset=k, blocking=True) for k in sorted(keys, key=str)]

    @dg.multi_asset_check(specs=specs)
    def stand_in_guard() -> Iterable[dg.AssetCheckResult]:
        raise NotImplementedError  # never executed: results are written by the simulation

    return dg.Definitions.merge(defs, dg.Definitions(asset_checks=[stand_in_guard])), "stand_in_guard"


def test_a_failed_guard_on_an_audience_stops_the_sync(defs: dg.Definitions, audience_slugs: list[str]) -> None:
    guarded, guard = _with_audience_guard(defs, audience_slugs)
    sim = Simulation(guarded)
    requested = up_to_todays_audiences(sim, audience_slugs)
    sim.run_to_completion(requested, failed_checks=[f"audiences/{audience_slugs[0]}:{guard}"])
    for _ in range(3):
        assert sim.tick() == set()  # one audience failed its guard: nothing reaches Braze

    # a human looks, approves and re-materialises today's audiences; the guard passes; the sync goes
    sim.run_to_completion(audiences_on(audience_slugs, TODAY), automated=False)
    assert sim.tick() == {(SYNC, None)}


def test_a_day_boundary_requests_the_new_partitions_and_then_the_sync(defs: dg.Definitions,
                                                                      audience_slugs: list[str]) -> None:
    sim = Simulation(defs, start=dt.datetime(2026, 12, 3, 23, 50, tzinfo=dt.UTC))
    sim.tick()
    landed_and_settled(sim)
    for _ in range(4):  # users, profiles, today's audiences, sync
        sim.run_to_completion(sim.tick())
    assert sim.tick() == set()

    requested = sim.tick(minutes=10)  # 00:02 on 2026-12-04
    assert sim.now.date() == dt.date(2026, 12, 4)
    assert requested == audiences_on(audience_slugs, "2026-12-04")
    sim.run_to_completion(requested)
    assert sim.tick() == {(SYNC, None)}


def test_missing_history_is_not_backfilled(defs: dg.Definitions, audience_slugs: list[str]) -> None:
    """Only today's partition is ever requested; the ~337 days since LEXER_PARTITIONS_START stay missing."""
    sim = Simulation(defs)
    sim.tick()
    landed_and_settled(sim)
    seen: set[tuple[str, str | None]] = set()
    for _ in range(6):
        requested = sim.tick()
        seen |= requested
        if requested:
            sim.run_to_completion(requested)
    audience_partitions = {p for k, p in seen if k.startswith("audiences/")}
    assert audience_partitions == {TODAY}
    # and a backfill of old days (a marketer rebuilding history) does not trigger the sync
    for day in ("2026-11-01", "2026-11-02"):
        sim.run_to_completion(audiences_on(audience_slugs, day), automated=False)
    assert sim.tick() == set()


def test_orders_landing_flows_down_the_chain(defs: dg.Definitions, audience_slugs: list[str]) -> None:
    sim = Simulation(defs)
    sim.tick()
    landed_and_settled(sim)
    for _ in range(4):
        sim.run_to_completion(sim.tick())
    assert sim.tick() == set()
    sim.land("commerce/orders")  # the orders sensor's run loaded a new order file
    assert sim.tick() == {(PROFILES, None)}


def test_automation_is_on_when_the_code_location_loads(defs: dg.Definitions) -> None:
    sensors = {s.name: s for s in defs.sensors}
    automation = sensors["lexer_automation"]
    assert isinstance(automation, dg.AutomationConditionSensorDefinition)
    assert automation.default_status == dg.DefaultSensorStatus.RUNNING
    for name in ("braze_export_landing_sensor", "commerce_orders_sensor"):
        assert sensors[name].default_status == dg.DefaultSensorStatus.RUNNING
    schedule = next(iter(defs.schedules))
    assert schedule.cron_schedule == "0 5 * * *"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING


def test_export_cron_is_a_setting(tmp_path: Path) -> None:
    defs = build_definitions(local_settings(tmp_path, LEXER_EXPORT_CRON="30 2 * * 1-5"))
    assert next(iter(defs.schedules)).cron_schedule == "30 2 * * 1-5"


def test_a_manual_run_of_the_whole_graph_is_not_repeated_by_automation(defs: dg.Definitions,
                                                                     audience_slugs: list[str]) -> None:
    """`make dev` users launch lexer_loop by hand: automation must not redo what that run just did."""
    sim = Simulation(defs)
    sim.tick()
    sim.land("commerce/orders")  # the orders sensor loaded the order files before anything else existed
    assert sim.tick() == set()
    everything = {(k.to_user_string(), TODAY if k.path[0] == "audiences" else None)
                  for k in sim.graph.materializable_asset_keys}
    sim.run_to_completion(everything, automated=False)
    for _ in range(3):
        assert sim.tick() == set()


def test_one_failed_audience_does_not_hold_back_the_others_sync(defs: dg.Definitions,
                                                                 audience_slugs: list[str]) -> None:
    sim = Simulation(defs)
    requested = up_to_todays_audiences(sim, audience_slugs)
    # one audience's step fails (say its rule names a column that is not there): today's partition is missing
    sim.run_to_completion(requested, failed_assets=[f"audiences/{audience_slugs[0]}"])
    assert sim.tick() == {(SYNC, None)}  # the others' changes still go (the failed one keeps its values)
    assert sim.tick() == set()
    # the rule is fixed and the audience materialised by hand: the sync follows
    sim.run_to_completion({(f"audiences/{audience_slugs[0]}", TODAY)}, automated=False)
    assert sim.tick() == {(SYNC, None)}


AUDIENCE_FILE = """
- name: Big spenders
  slug: big_spenders
  description: Spent a lot.
  owner: tests@example.com
  rules:
    - {{column: revenue, op: '>=', value: {threshold}}}
- name: Lapsed
  slug: lapsed
  description: {description}
  owner: tests@example.com
  rules:
    - {{column: lifecycle_stage, op: '=', value: lapsed}}
"""


def test_editing_a_rule_recomputes_that_audience_and_then_syncs(tmp_path: Path) -> None:
    audiences_file = tmp_path / "audiences.yaml"

    def defs_for(threshold: int, description: str) -> dg.Definitions:
        audiences_file.write_text(AUDIENCE_FILE.format(threshold=threshold, description=description))
        return build_definitions(local_settings(tmp_path / "home", LEXER_AUDIENCES_FILE=str(audiences_file)))

    sim = Simulation(defs_for(500, "Lapsed customers."))
    sim.tick()
    landed_and_settled(sim)
    for _ in range(4):  # users, profiles, today's audiences, sync
        sim.run_to_completion(sim.tick())
    assert sim.tick() == set()

    sim.reload(defs_for(500, "Customers who have lapsed."))  # a description is not a rule: nothing to redo
    assert sim.tick() == set()
    sim.reload(defs_for(1000, "Customers who have lapsed."))  # the marketer raises the threshold
    requested = sim.tick()
    assert requested == {("audiences/big_spenders", TODAY)}
    sim.run_to_completion(requested)
    assert sim.tick() == {(SYNC, None)}
    assert sim.tick() == set()
