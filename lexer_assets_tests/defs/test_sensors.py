"""Landing sensors: the pure decisions tick by tick, then the real sensors on a folder bucket and orders folder."""

import datetime as dt
import os
import time
from pathlib import Path

import dagster as dg
import pytest

from lexer_assets.defs.automation import (
    LandingCursor,
    landing_decision,
    orders_decision,
    sensors,
)
from lexer_assets.defs.resources import resources_for
from lexer_assets.storage.object_store import ObjectInfo
from lexer_assets_tests.conftest import local_settings

BASE = "segment-export/seg-1/"
T0 = dt.datetime(2026, 12, 3, 5, 0, tzinfo=dt.UTC)


def obj(prefix: str, name: str, size: int, minute: float, day: str = "2026-12-03") -> ObjectInfo:
    return ObjectInfo(f"{BASE}{day}/{prefix}/{name}", size, T0 + dt.timedelta(minutes=minute))


def decide(listing, cursor, minute, requested="exp-1", landed=None, settle=60.0):
    return landing_decision(listing, base_prefix=BASE, requested=requested, already_landed=landed, cursor=cursor,
                            now=T0 + dt.timedelta(minutes=minute), settle_seconds=settle)


def test_an_export_is_launched_once_its_listing_has_settled() -> None:
    cursor = LandingCursor()
    assert decide([], cursor, 0).launch is None  # requested, nothing written yet
    listing = [obj("exp-1", "a.zip", 100, 1)]
    first = decide(listing, cursor, 1.5)
    assert first.launch is None and "still being written" in first.reason
    listing.append(obj("exp-1", "b.zip", 50, 2))  # Braze writes another file: the wait starts again
    second = decide(listing, first.cursor, 2.5)
    assert second.launch is None and second.cursor.pending_since != first.cursor.pending_since
    third = decide(listing, second.cursor, 3.0)  # unchanged for 30 s of the required 60
    assert third.launch is None and "waiting" in third.reason
    fourth = decide(listing, third.cursor, 3.6)
    assert fourth.launch == "exp-1" and (fourth.files, fourth.bytes) == (2, 150)
    assert fourth.cursor.watermark == (T0 + dt.timedelta(minutes=2)).isoformat()
    # launched: later ticks (before braze/segment_export has run) do not launch it again
    assert decide(listing, fourth.cursor, 10).launch is None
    # and once it has been copied, it is 'already landed'
    assert "already landed" in decide(listing, LandingCursor(), 11, landed="exp-1").reason


def test_other_exports_and_foreign_keys_are_ignored() -> None:
    listing = [obj("exp-0", "old.zip", 10, -600), obj("someone-else", "x.zip", 10, 1),
               ObjectInfo(f"{BASE}not-a-date/exp-1/z.zip", 5, T0), ObjectInfo(f"{BASE}2026-12-03/exp-1", 5, T0)]
    assert "no files yet" in decide(listing, LandingCursor(), 2).reason


def test_the_cursor_survives_deleted_keys_and_only_newer_files_count() -> None:
    first_export = [obj("exp-1", "a.zip", 100, 1)]
    c = decide(first_export, LandingCursor(), 2).cursor
    launched = decide(first_export, c, 5)
    assert launched.launch == "exp-1"
    # the next day: Braze deleted yesterday's keys; the cursor holds no keys, only a last-modified watermark
    second = [obj("exp-2", "c.zip", 70, 60 * 24, day="2026-12-04")]
    c2 = decide(second, launched.cursor, 60 * 24 + 1, requested="exp-2", landed="exp-1").cursor
    again = decide(second, c2, 60 * 24 + 3, requested="exp-2", landed="exp-1")
    assert again.launch == "exp-2" and again.cursor.launched == ["exp-1", "exp-2"]
    # a file of the new request that is not newer than what was handled (e.g. a re-listed copy) is ignored
    stale = [obj("exp-3", "d.zip", 1, 60)]
    assert decide(stale, again.cursor, 60 * 24 + 5, requested="exp-3").launch is None
    assert LandingCursor.load(again.cursor.dump()) == again.cursor


def test_orders_decision() -> None:
    assert not orders_decision([], cursor=None, last_loaded_at=None, now=0, settle_seconds=1).launch


def _write(path: Path, text: str, age_s: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    old = time.time() - age_s
    os.utime(path, (old, old))


def test_orders_sensor_launches_on_new_and_changed_files(tmp_path: Path) -> None:
    settings = local_settings(tmp_path, LEXER_EXPORT_SETTLE_S="1")
    sensor = next(s for s in sensors(settings) if s.name == "commerce_orders_sensor")
    instance = dg.DagsterInstance.ephemeral()
    resources = resources_for(settings)

    def tick(cursor: str | None):
        ctx = dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources)
        return sensor(ctx), ctx.cursor

    result, cursor = tick(None)
    assert isinstance(result, dg.SkipReason) and "no order files" in result.skip_message
    _write(settings.orders_dir / "orders.csv", "order_id\n1\n", age_s=30)
    _write(settings.orders_dir / "_import.json", "{}", age_s=30)  # bookkeeping, not an order file
    result, _ = tick(cursor)
    assert isinstance(result, dg.SensorResult)
    assert [r.asset_selection for r in result.run_requests] == [[dg.AssetKey(["commerce", "orders"])]]
    cursor = result.cursor
    skipped, cursor = tick(cursor)
    assert isinstance(skipped, dg.SkipReason) and "unchanged" in skipped.skip_message
    _write(settings.orders_dir / "orders-2.csv", "order_id\n2\n", age_s=0)  # still being written
    skipped, cursor = tick(cursor)
    assert isinstance(skipped, dg.SkipReason) and "still being written" in skipped.skip_message
    _write(settings.orders_dir / "orders-2.csv", "order_id\n2\n", age_s=30)
    result, _ = tick(cursor)
    assert isinstance(result, dg.SensorResult) and len(result.run_requests) == 1


@pytest.fixture
def landing(tmp_path: Path):
    settings = local_settings(tmp_path, LEXER_EXPORT_SETTLE_S="0")
    sensor = next(s for s in sensors(settings) if s.name == "braze_export_landing_sensor")
    return settings, sensor, dg.DagsterInstance.ephemeral(), resources_for(settings)


def test_landing_sensor_on_a_folder_bucket(landing) -> None:
    settings, sensor, instance, resources = landing

    def tick(cursor: str | None):
        ctx = dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources)
        return sensor(ctx), ctx.cursor

    result, cursor = tick(None)
    assert "no export has been requested" in result.skip_message
    instance.report_runless_asset_event(dg.AssetMaterialization(
        ["braze", "export_request"], metadata={"object_prefix": "exp-7"}))
    root = settings.bucket.local_root
    segment = settings.braze.export_segment_id
    _write(root / f"segment-export/{segment}/2026-12-03/exp-7/{'a' * 32}.zip", "x" * 10, age_s=5)
    result, cursor = tick(cursor)
    assert isinstance(result, dg.SkipReason) and "still being written" in result.skip_message
    result, cursor = tick(cursor)
    assert isinstance(result, dg.SensorResult)
    (request,) = result.run_requests
    assert request.run_key == "segment-export:exp-7"
    assert request.asset_selection == [dg.AssetKey(["braze", "segment_export"])]
    # the run copied it: nothing more to do, even if the sensor's cursor were lost
    instance.report_runless_asset_event(dg.AssetMaterialization(
        ["braze", "segment_export"], metadata={"object_prefix": "exp-7"}))
    result, _ = tick(None)
    assert isinstance(result, dg.SkipReason) and "already landed" in result.skip_message
