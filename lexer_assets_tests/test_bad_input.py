"""Bad input through the real pipeline: a clear error naming what and where, and nothing lost."""

from __future__ import annotations

import datetime as dt
import gzip
import json
from pathlib import Path

import dagster as dg
import pytest

from lexer_assets.defs.braze_export import segment_export, users
from lexer_assets.defs.resources import resources_for
from lexer_assets.demo import audiences_alone_failed, prepare_inputs, run_loop
from lexer_assets.population import synthetic_population, write_braze_export
from lexer_assets.storage.warehouse import Warehouse
from lexer_assets_tests.conftest import http_settings, local_settings

BROKEN_AUDIENCE = """
- name: Broken spenders
  slug: broken_spenders
  description: A rule on a column that does not exist.
  owner: tests@example.com
  activation: {braze: true, list_action: maintain, priority: 1}
  rules:
    all:
      - {column: revnue, op: '>=', value: 100}
"""


def test_malformed_export_line_is_rejected_and_the_rest_loads(tmp_path: Path) -> None:
    settings = local_settings(tmp_path / "home")
    population = synthetic_population(50, seed=3, end_date=dt.date(2026, 11, 30))
    good = population.braze_users
    object_prefix = "0f0e0d0c-0000-4000-8000-000000000001-1764547200"
    root = settings.bucket.local_root
    assert root is not None
    folder_files = write_braze_export(good, root, segment_id=settings.braze.export_segment_id,
                                      export_date=dt.date(2026, 12, 1), object_prefix=object_prefix,
                                      users_per_file=30)
    # A third file, gzip under a .zip name: line 1 good, line 2 truncated JSON, line 3 good.
    extra_users = [{"external_id": "extra-1", "email": "a@example.com"},
                   {"external_id": "extra-2", "email": "b@example.com"}]
    bad = folder_files[0].parent / ("f" * 32 + ".zip")
    bad.write_bytes(gzip.compress(
        (json.dumps(extra_users[0]) + "\n" + '{"external_id": "broken", "email": \n'
         + json.dumps(extra_users[1]) + "\n").encode()))
    wh = Warehouse(settings.warehouse_path, settings.published_store_path)
    with wh.transaction() as conn:
        conn.execute("INSERT INTO braze.export_requests VALUES (?, ?, now()::TIMESTAMP, [], 'zip')",
                     [object_prefix, settings.braze.export_segment_id])

    result = dg.materialize([segment_export, users], resources=resources_for(settings))
    assert result.success

    with wh.connect() as conn:
        loaded = {r[0] for r in conn.sql("SELECT customer_id FROM braze.users").fetchall()}
        rejects = conn.sql("SELECT export_file, export_line, reason FROM braze.export_rejects").fetchall()
    expected_ids = {u.get("external_id") for u in good if u.get("external_id")} | {"extra-1", "extra-2"}
    assert expected_ids <= loaded
    assert "broken" not in loaded
    assert len(rejects) == 1
    file_label, line, reason = rejects[0]
    assert bad.name in file_label and line == 2
    assert "json" in reason.lower()


def test_corrupt_export_file_names_the_export_and_keeps_the_users_loaded_before(tmp_path: Path) -> None:
    settings = local_settings(tmp_path / "home")
    root = settings.bucket.local_root
    assert root is not None
    wh = Warehouse(settings.warehouse_path, settings.published_store_path)
    population = synthetic_population(40, seed=4, end_date=dt.date(2026, 11, 30)).braze_users
    prefixes = ["0f0e0d0c-0000-4000-8000-00000000000a-1764547200", "0f0e0d0c-0000-4000-8000-00000000000b-1764633600"]
    for day, prefix in zip((1, 2), prefixes, strict=True):
        files = write_braze_export(population, root, segment_id=settings.braze.export_segment_id,
                                   export_date=dt.date(2026, 12, day), object_prefix=prefix, users_per_file=20)
        with wh.transaction() as conn:
            conn.execute("INSERT INTO braze.export_requests VALUES (?, ?, now()::TIMESTAMP, [], 'zip')",
                         [prefix, settings.braze.export_segment_id])
        if day == 1:
            assert dg.materialize([segment_export, users], resources=resources_for(settings)).success
        else:  # the second export's last file is cut short
            files[-1].write_bytes(files[-1].read_bytes()[:-40])
    with wh.connect() as conn:
        before = conn.sql("SELECT count(*) FROM braze.users").fetchall()[0][0]
    result = dg.materialize([segment_export, users], resources=resources_for(settings), raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    message = failure.step_failure_data.user_failure_data.description
    assert f"export {prefixes[1]} was not loaded" in message and files[-1].name in message
    with wh.connect() as conn:
        assert conn.sql("SELECT count(*), min(object_prefix) FROM braze.users").fetchall()[0] == (before, prefixes[0])


def test_unknown_column_stops_only_that_audience(tmp_path: Path, audiences_file: Path) -> None:
    with audiences_file.open("a") as fh:
        fh.write(BROKEN_AUDIENCE)
    settings = local_settings(tmp_path / "home", LEXER_AUDIENCES_FILE=str(audiences_file))
    prepare_inputs(settings, orders_file=None, customers=300, seed=5, say=lambda _m: None)
    result = run_loop(settings, quiet=True)
    assert not result.success
    failures = [e for e in result.all_events if e.is_step_failure]
    assert [e.step_key for e in failures] == ["audiences__broken_spenders"]
    message = failures[0].step_failure_data.user_failure_data.description
    assert str(audiences_file) in message
    assert "Broken spenders" in message
    assert "revnue" in message
    # every other audience was computed
    done = {e.step_key for e in result.all_events if e.is_step_success}
    assert {"audiences__vip", "audiences__new_customers", "lexer__customer_profiles"} <= done
    # the sync, skipped in that run, then runs alone (as the demo and automation do) for the others
    assert audiences_alone_failed(result)
    assert "braze__audience_sync" not in done
    synced = run_loop(settings, quiet=True, sync_only=True)
    assert synced.success
    wh = Warehouse(settings.warehouse_path, settings.published_store_path)
    with wh.connect() as conn:
        names = {r[0] for r in conn.execute("SELECT audience_name FROM sync.braze_sync_runs WHERE run_id = ?",
                                            [synced.run_id]).fetchall()}
    assert "VIP" in names and "Broken spenders" in names  # the broken one is reported, frozen


def test_wrong_braze_key_stops_the_sync_without_printing_it(served_emulator, audiences_file: Path,
                                                            capfd: pytest.CaptureFixture[str]) -> None:
    server, home = served_emulator
    settings = http_settings(home, server, LEXER_AUDIENCES_FILE=str(audiences_file))
    prepare_inputs(settings, orders_file=None, customers=300, seed=5, say=lambda _m: None)
    assert run_loop(settings, quiet=True).success

    # An audience is activated, so the next sync has changes to send; then the key is wrong.
    text = audiences_file.read_text()
    audiences_file.write_text(text.replace("braze: false", "braze: true", 1))
    secret = "wrong-key-3f9a7c55d1"
    bad = http_settings(home, server, LEXER_AUDIENCES_FILE=str(audiences_file), BRAZE_API_KEY=secret)
    wh = Warehouse(bad.warehouse_path, bad.published_store_path)
    with wh.connect() as conn:
        state_before = conn.sql("SELECT count(*) FROM sync.braze_attribute_state").fetchall()[0][0]
    sync_only = dg.AssetSelection.assets(dg.AssetKey(["braze", "audience_sync"]))
    from lexer_assets.definitions import build_definitions

    defs = build_definitions(bad)
    job = dg.define_asset_job("sync_only", selection=sync_only)
    defs = dg.Definitions.merge(defs, dg.Definitions(jobs=[job]))
    result = defs.resolve_job_def("sync_only").execute_in_process(raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    message = failure.step_failure_data.user_failure_data.description
    assert "401" in message and "wrong key" in message
    assert secret not in message
    for event in result.all_events:
        assert secret not in str(event)
    captured = capfd.readouterr()
    assert secret not in captured.out + captured.err

    with wh.connect() as conn:
        state_after = conn.sql("SELECT count(*) FROM sync.braze_attribute_state").fetchall()[0][0]
        pending = conn.sql("SELECT count(*) FROM sync.braze_sync_log WHERE status = 'pending'").fetchall()[0][0]
    assert state_after == state_before  # nothing confirmed, nothing lost
    assert pending > 0
    # With the right key, the same changes go through and Braze matches the hub.
    assert run_loop(settings, quiet=True).success
    with wh.connect() as conn:
        assert conn.sql("SELECT count(*) FROM sync.braze_sync_log WHERE status = 'pending'").fetchall()[0][0] == 0


@pytest.mark.parametrize(("spoil", "says"), [
    (lambda text: text.replace(",", ";"), ("LEXER_MAX_ORDER_REJECT_RATE", "orders.csv:1:")),  # ';' separators
    (lambda text: "", ("no order line could be loaded from orders.csv", "previous orders")),  # came out empty
], ids=["mostly_rejected", "empty"])
def test_a_spoiled_order_file_keeps_the_previous_orders(tmp_path: Path, spoil, says: tuple[str, str]) -> None:
    settings = local_settings(tmp_path / "home")
    prepare_inputs(settings, orders_file=None, customers=150, seed=5, say=lambda _m: None)
    assert run_loop(settings, quiet=True).success
    wh = Warehouse(settings.warehouse_path, settings.published_store_path)
    with wh.connect() as conn:
        before = conn.sql("SELECT count(*), sum(amount) FROM commerce.orders").fetchall()[0]
    csv_file = settings.orders_dir / "orders.csv"
    csv_file.write_text(spoil(csv_file.read_text()))
    result = run_loop(settings, quiet=True)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert failure.step_key == "commerce__orders"
    message = failure.step_failure_data.user_failure_data.description
    assert all(part in message for part in says), message
    with wh.connect() as conn:
        assert conn.sql("SELECT count(*), sum(amount) FROM commerce.orders").fetchall()[0] == before


def test_broken_audiences_file_keeps_the_pipeline_up_and_sends_nothing(tmp_path: Path,
                                                                       audiences_file: Path) -> None:
    settings = local_settings(tmp_path / "home", LEXER_AUDIENCES_FILE=str(audiences_file))
    text = audiences_file.read_text()
    audiences_file.write_text(text.replace("braze: false", "braze: true", 1))  # Braze holds values to lose
    prepare_inputs(settings, orders_file=None, customers=300, seed=5, say=lambda _m: None)
    assert run_loop(settings, quiet=True).success
    wh = Warehouse(settings.warehouse_path, settings.published_store_path)

    def sync_state() -> tuple[int, int]:
        with wh.connect() as conn:
            return (conn.sql("SELECT count(*) FROM sync.braze_attribute_state").fetchall()[0][0],
                    conn.sql("SELECT count(*) FROM sync.braze_sync_log").fetchall()[0][0])

    before = sync_state()
    assert before[0] > 0

    # A marketer leaves a bracket open on the file's last line.
    good = audiences_file.read_text()
    audiences_file.write_text(good + "- name: [Lapsed VIPs\n")
    broken_line = len(good.splitlines()) + 1
    result = run_loop(settings, quiet=True)  # the definitions load: the file is no longer fatal
    assert not result.success
    done = {e.step_key for e in result.all_events if e.is_step_success}
    assert {"braze__users", "commerce__orders", "lexer__customer_profiles"} <= done
    failures = [e for e in result.all_events if e.is_step_failure]
    assert [e.step_key for e in failures] == ["audiences__audiences_file_invalid"]
    message = failures[0].step_failure_data.user_failure_data.description
    assert f"{audiences_file}:" in message and "not valid YAML" in message
    line = int(message.split(f"{audiences_file}:")[1].split(":")[0])
    assert broken_line - 1 <= line <= broken_line + 1  # YAML reports the bracket's line or the end of file
    assert "braze__audience_sync" not in done

    # Run on its own (as automation could), the sync refuses before touching Braze.
    from lexer_assets.definitions import build_definitions

    defs = build_definitions(settings)
    job = dg.define_asset_job("sync_only", selection=dg.AssetSelection.assets(dg.AssetKey(["braze",
                                                                                         "audience_sync"])))
    merged = dg.Definitions.merge(defs, dg.Definitions(jobs=[job]))
    alone = merged.resolve_job_def("sync_only").execute_in_process(raise_on_error=False)
    assert not alone.success
    refusal = next(e for e in alone.all_events if e.is_step_failure)
    assert "nothing sent" in refusal.step_failure_data.user_failure_data.description
    assert sync_state() == before

    audiences_file.write_text(good)
    assert run_loop(settings, quiet=True).success


def test_a_missing_empty_or_mostly_bad_demo_order_file_changes_nothing(tmp_path: Path) -> None:
    settings = local_settings(tmp_path / "home")
    prepare_inputs(settings, orders_file=None, customers=50, seed=5, say=lambda _m: None)
    before = sorted(p.relative_to(settings.home) for p in settings.home.rglob("*"))
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    mostly_bad = tmp_path / "mostly_bad.csv"  # 1 good line, 50 whose amount is not a number: 98% bad
    mostly_bad.write_text("order_id,customer_id,email,order_date,units,amount\nG1,C1,,2026-11-01,1,5\n"
                          + "".join(f"B{i},C{i},,2026-11-01,1,xyz\n" for i in range(50)))
    for bad, says in ((tmp_path / "nonexistent.txt", "not found"), (empty, "has no order with a customer id"),
                      (mostly_bad, "50 of 51 lines are bad, more than LEXER_MAX_ORDER_REJECT_RATE=5.0% "
                                   r"\(first: line 3: amount 'xyz' is not a number\)")):
        with pytest.raises(SystemExit, match=says) as raised:
            prepare_inputs(settings, orders_file=bad, customers=0, seed=5, say=lambda _m: None)
        assert str(bad) in str(raised.value)
        assert "nothing was changed" in str(raised.value)
        # the previous demo's inputs and state are all still there
        assert sorted(p.relative_to(settings.home) for p in settings.home.rglob("*")) == before
