"""The blocking guard check in Dagster: a big drop fails the check and the sync does not run in that run; the
same run with the approval tag syncs. The sync launched alone is blocked by its own guard."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from lexer_assets.audiences.spec import load_audiences
from lexer_assets.defs.braze_sync import SYNC_KEY, build_sync_asset, build_sync_checks
from lexer_assets.defs.resources import WarehouseResource, resources_for
from lexer_assets.sync.sync_guard import APPROVE_TAG
from lexer_assets_tests.conftest import local_settings
from lexer_assets_tests.sync.world import DAY1, World, set_members

CUSTOMERS = [f"c{i:03d}" for i in range(100)]
AUDIENCES_YAML = """
- name: VIP
  slug: vip
  description: test
  owner: crm@example.com
  activation: {braze: true, list_action: maintain, priority: 1}
  rules:
    - {column: revenue, op: '>=', value: 1}
"""


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path, CUSTOMERS)
    yield w
    w.close()


def _defs(world: World, tmp_path: Path, members: list[str], *, yaml: str = AUDIENCES_YAML,
          others: dict[str, tuple[str, list[str]]] | None = None) -> dg.Definitions:
    """Definitions with stand-ins for the audiences (``vip`` plus ``others``: slug -> (name, members))."""
    audiences_file = tmp_path / "audiences.yaml"
    audiences_file.write_text(yaml)
    settings = local_settings(tmp_path / "home", BRAZE_REST_ENDPOINT=world.server.url,
                              LEXER_AUDIENCES_FILE=str(audiences_file))
    audiences = load_audiences(audiences_file)

    def stand_in(slug: str, name: str, who: list[str]) -> dg.AssetsDefinition:
        @dg.asset(key=["audiences", slug])
        def _audience() -> None:
            """Stand-in for the audience asset: writes today's membership."""
            set_members(world.wh, slug, name, DAY1, who)
        return _audience

    stand_ins = [stand_in("vip", "VIP", members),
                 *(stand_in(slug, name, who) for slug, (name, who) in (others or {}).items())]
    resources = resources_for(settings)
    resources["warehouse"] = WarehouseResource(path=str(world.wh.path), published_path=str(tmp_path / "pub.duckdb"))
    return dg.Definitions(assets=[*stand_ins, build_sync_asset([a.key for a in stand_ins])],
                          asset_checks=build_sync_checks(audiences), resources=resources,
                          jobs=[dg.define_asset_job("loop", selection=dg.AssetSelection.all()),
                                dg.define_asset_job("sync_only", selection=dg.AssetSelection.assets(SYNC_KEY))])


def _synced(result: dg.ExecuteInProcessResult) -> bool:
    return any(e.is_step_success and e.step_key == "braze__audience_sync" for e in result.all_events)


def test_blocking_check_stops_the_sync_until_approved(world: World, tmp_path: Path) -> None:
    first = _defs(world, tmp_path, CUSTOMERS[:80]).resolve_job_def("loop").execute_in_process(raise_on_error=False)
    assert first.success and _synced(first)
    assert len(world.braze()) == 80

    defs = _defs(world, tmp_path, CUSTOMERS[:20])  # -75 %
    blocked = defs.resolve_job_def("loop").execute_in_process(raise_on_error=False)
    check = next(e for e in blocked.get_asset_check_evaluations() if e.check_name == "sync_guard")
    assert not check.passed and "dropped from 80 to 20" in (check.description or "")
    assert not _synced(blocked)
    assert len(world.braze()) == 80  # nothing removed

    alone = defs.resolve_job_def("sync_only").execute_in_process(raise_on_error=False)
    assert not alone.success
    failure = next(e for e in alone.all_events if e.is_step_failure)
    assert "dropped from 80 to 20" in failure.step_failure_data.user_failure_data.description
    assert len(world.braze()) == 80

    approved = defs.resolve_job_def("loop").execute_in_process(raise_on_error=False, tags={APPROVE_TAG: "true"})
    assert approved.success and _synced(approved)
    assert world.braze() == {c: ["VIP"] for c in CUSTOMERS[:20]}


def test_disabling_a_synced_audience_fails_the_guard_check_too(world: World, tmp_path: Path) -> None:
    """The check and the sync agree: a synced audience that is disabled is a drop to 0 needing approval, and
    the remaining audiences' checks say so (the disabled one has no check of its own any more)."""
    lapsed = """
- name: Lapsed
  slug: lapsed
  description: test
  owner: crm@example.com
  activation: {braze: true, list_action: maintain, priority: 2}
  rules:
    - {column: revenue, op: '>=', value: 1}
"""
    both = AUDIENCES_YAML + lapsed
    first = _defs(world, tmp_path, CUSTOMERS[:30], yaml=both, others={"lapsed": ("Lapsed", CUSTOMERS[30:40])})
    assert first.resolve_job_def("loop").execute_in_process(raise_on_error=False).success
    assert len(world.braze()) == 40

    off = both.replace("priority: 2}", "priority: 2}\n  enabled: false")
    disabled = _defs(world, tmp_path, CUSTOMERS[:30], yaml=off)
    blocked = disabled.resolve_job_def("loop").execute_in_process(raise_on_error=False)
    check = next(e for e in blocked.get_asset_check_evaluations() if e.check_name == "sync_guard")
    assert not check.passed
    assert "'Lapsed' had 10 members at the last sync and is no longer activated" in (check.description or "")
    assert not _synced(blocked)
    assert len(world.braze()) == 40
