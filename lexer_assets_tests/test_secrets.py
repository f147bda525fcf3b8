"""The Braze REST key and the AWS secret never leave the process environment.

A prod-profile configuration (secrets in env vars, resolved by Dagster as EnvVars) points at the Braze emulator
over HTTP, which exports into an S3 bucket served by moto. Three runs go through a real Dagster instance under
LEXER_HOME: one succeeding end to end, one with a wrong key (401: the emulator, like Braze, echoes the rejected
key in its answer), one whose sync fails for a key lacking users.track (403). Then every place a secret could
land is searched: captured stdout/stderr, Python log records, every event of every run (run config and tags
included), every table of the DuckDB working file and of the published store, and every file under LEXER_HOME.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import shutil
import sqlite3
import zlib
from collections.abc import Iterator
from pathlib import Path

import boto3
import dagster as dg
import duckdb
import pytest
from dagster._serdes import serialize_value

from lexer_assets.braze.emulator import EmulatorConfig, EmulatorState, start_in_thread
from lexer_assets.defs.commerce import IMPORT_MANIFEST
from lexer_assets.demo import local_instance, run_loop
from lexer_assets.population import synthetic_population, write_orders_csv
from lexer_assets.settings import Settings
from lexer_assets_tests.conftest import COMMITTED_AUDIENCES

pytestmark = pytest.mark.slow

BRAZE_KEY = "braze-key-LEAKCHECK-4f1d8a2c9b7e"
WRONG_KEY = "braze-key-WRONGLEAK-0a9b8c7d6e5f"
NO_TRACK_KEY = "braze-key-NOTRACKLEAK-13579bdf"
AWS_SECRET = "aws-secret-LEAKCHECK/9xQ2+Zr7Kp3Wm5"
WEBHOOK_TOKEN = "WEBHOOKTOKEN-LEAKCHECK-77e1"  # chat webhook URLs embed a token: treated as a secret too
SECRETS = (BRAZE_KEY, WRONG_KEY, NO_TRACK_KEY, AWS_SECRET, WEBHOOK_TOKEN)
SEGMENT_ID = "5e1f0c3a-7b2d-4e8f-9a6c-0d4b2f8e1c7a"
BUCKET = "brand-leak-check"


@pytest.fixture
def s3_url() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="AKIAEMULATORWRITER01",
                 aws_secret_access_key="emulator-side").create_bucket(Bucket=BUCKET)
    try:
        yield url
    finally:
        server.stop()


def _texts_of_tables(path: Path) -> str:
    conn = duckdb.connect(str(path), read_only=True)
    try:
        tables = conn.execute("SELECT table_schema, table_name FROM information_schema.tables").fetchall()
        chunks = []
        for schema, table in tables:
            chunks.append(str(conn.execute(f'SELECT * FROM "{schema}"."{table}"').fetchall()))
        return "\n".join(chunks)
    finally:
        conn.close()


def _sqlite_texts(path: Path) -> str:
    """Every cell of every table of a SQLite file as text; zlib-compressed blobs (Dagster's snapshots) unpacked."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        chunks = []
        for table in tables:
            for row in conn.execute(f'SELECT * FROM "{table}"'):
                for cell in row:
                    if isinstance(cell, bytes):
                        with contextlib.suppress(zlib.error):
                            cell = zlib.decompress(cell)
                        cell = cell.decode("utf-8", "replace")
                    chunks.append(str(cell))
        return "\n".join(chunks)
    finally:
        conn.close()


def _assert_nowhere(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"a secret leaked into {where}"


def test_no_secret_anywhere_after_good_and_failing_runs(tmp_path: Path, s3_url: str,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capfd: pytest.CaptureFixture[str],
                                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    home = tmp_path / "home"
    audiences = tmp_path / "audiences.yaml"
    shutil.copyfile(COMMITTED_AUDIENCES, audiences)

    # "Braze": the emulator's workspace lives outside LEXER_HOME; it writes exports into the moto bucket.
    population = synthetic_population(300, seed=11, end_date=dt.date.today() - dt.timedelta(days=1))
    state = EmulatorState(tmp_path / "braze-workspace")
    state.seed(population.braze_users, segment_id=SEGMENT_ID, api_key=BRAZE_KEY)
    state.add_api_key(NO_TRACK_KEY, ["users.export.segment", "users.export.ids", "segments.list"])
    config = EmulatorConfig(s3_endpoint_url=s3_url, s3_bucket=BUCKET, s3_region="us-east-1",
                            aws_access_key_id="AKIAEMULATORWRITER01", aws_secret_access_key="emulator-side",
                            export_delay_s=0)
    orders_dir = home / "commerce" / "orders"
    orders_dir.mkdir(parents=True)
    write_orders_csv(population.orders, orders_dir / "orders.csv")
    (orders_dir / IMPORT_MANIFEST).write_text(json.dumps({"shift_days": 0, "source": "synthetic"}))

    with start_in_thread(tmp_path / "braze-workspace", config=config) as server:
        for name in list(os.environ):
            if name.startswith(("LEXER_", "BRAZE_", "AWS_")):
                monkeypatch.delenv(name)
        env = {"LEXER_PROFILE": "prod", "LEXER_HOME": str(home), "LEXER_AUDIENCES_FILE": str(audiences),
               "BRAZE_REST_ENDPOINT": server.url, "BRAZE_API_KEY": BRAZE_KEY, "BRAZE_EXPORT_SEGMENT_ID": SEGMENT_ID,
               "LEXER_S3_BUCKET": BUCKET, "LEXER_S3_REGION": "us-east-1", "LEXER_S3_ENDPOINT_URL": s3_url,
               "AWS_ACCESS_KEY_ID": "AKIAHUBREADER0000001", "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
               "LEXER_EXPORT_SETTLE_S": "0.2", "LEXER_EXPORT_TIMEOUT_S": "30",
               # nobody listens on port 9 of loopback: every confirmation fails to deliver, and says so
               "LEXER_NOTIFY_WEBHOOK_URL": f"http://127.0.0.1:9/hooks/{WEBHOOK_TOKEN}"}
        for name, value in env.items():
            monkeypatch.setenv(name, value)

        def run(key: str) -> dg.ExecuteInProcessResult:
            monkeypatch.setenv("BRAZE_API_KEY", key)
            settings = Settings.from_env()
            assert settings.profile == "prod" and not settings.bucket.is_local
            return run_loop(settings, instance=instance, quiet=False)  # quiet=False: the console logger prints

        instance = local_instance(Settings.from_env())
        good = run(BRAZE_KEY)
        assert good.success
        wrong = run(WRONG_KEY)
        assert not wrong.success
        failure = next(e for e in wrong.all_events if e.is_step_failure)
        assert "401" in str(failure.step_failure_data.error)
        # A newly activated audience gives the sync work; the key cannot send it.
        audiences.write_text(audiences.read_text().replace("braze: false", "braze: true", 1))
        no_track = run(NO_TRACK_KEY)
        assert not no_track.success
        failed_steps = [e.step_key for e in no_track.all_events if e.is_step_failure]
        assert failed_steps == ["braze__audience_sync"]
        assert "users.track" in str(next(e for e in no_track.all_events if e.is_step_failure).event_specific_data)

        # 1. what was printed, and what went through Python logging
        captured = capfd.readouterr()
        assert "braze__audience_sync" in captured.out or "braze/audience_sync" in captured.out  # it did print
        assert "webhook: not delivered" in captured.out  # the confirmation tried the webhook, and said so
        _assert_nowhere(captured.out + captured.err, "stdout/stderr")
        _assert_nowhere("\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records),
                        "Python log records")

        # 2. the Dagster event log and run records (run config and tags: what the UI shows)
        for result in (good, wrong, no_track):
            run_record = instance.get_run_by_id(result.run_id)
            assert run_record is not None
            _assert_nowhere(serialize_value(run_record), f"run {result.run_id}")
            events = instance.all_logs(result.run_id)
            assert len(events) > 10
            for event in events:
                _assert_nowhere(serialize_value(event), f"event {event.dagster_event_type} of {result.run_id}")

    # 3. the DuckDB store: working file and the analysts' copy, every table as text
    settings = Settings.from_env()
    for path in (settings.warehouse_path, settings.published_store_path):
        text = _texts_of_tables(path)
        assert "braze_sync_log" in str(path) or len(text) > 1000
        _assert_nowhere(text, str(path))

    # 4. every file under LEXER_HOME (event log and run storage, DuckDB files, raw exports, compute logs):
    # raw bytes, and for SQLite files every cell with compressed snapshots unpacked.
    files = [p for p in home.rglob("*") if p.is_file()]
    assert any(p.suffix == ".duckdb" for p in files) and any("dagster" in p.parts for p in files)
    snapshot_texts = []
    for path in files:
        data = path.read_bytes()
        for secret in SECRETS:
            assert secret.encode() not in data, f"a secret leaked into {path}"
        if data.startswith(b"SQLite format 3"):
            text = _sqlite_texts(path)
            _assert_nowhere(text, str(path))
            snapshot_texts.append(text)
    # The search reaches the stored job snapshot (the resource config the UI shows): the access key id, which is
    # plain config, is there, and the secret next to it is only the variable's name.
    stored = "\n".join(snapshot_texts)
    assert "AKIAHUBREADER0000001" in stored
    assert all(name in stored for name in ("AWS_SECRET_ACCESS_KEY", "BRAZE_API_KEY", "LEXER_NOTIFY_WEBHOOK_URL"))
