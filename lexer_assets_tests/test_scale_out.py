"""Scale-out: the Braze sync as two shards, two separate Dagster runs launched together, each executing its sync
step in its own process under the multiprocess executor, against the emulator over HTTP enforcing a small
workspace rate limit. Together they never pass the limit (no 429, no fixed window over it), they really ran at
the same time (some window holds more than one shard's share), and Braze ends up equal to the hub.
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
from collections import Counter
from pathlib import Path

import dagster as dg
import httpx
import pytest

from lexer_assets.audiences.spec import load_audiences
from lexer_assets.braze.client import BrazeClient
from lexer_assets.defs.braze_sync import synced_audiences
from lexer_assets.demo import prepare_inputs
from lexer_assets.settings import LOCAL_EMULATOR_KEY, Settings
from lexer_assets.storage.warehouse import Warehouse
from lexer_assets.sync.verify import verify_braze

pytestmark = pytest.mark.slow

SYNC_KEY = dg.AssetKey(["braze", "audience_sync"])
RATE_LIMIT = 20  # requests per window, the emulator's (workspace) limit and the configured one
WINDOW_S = 1.0
SHARDS = 2


def sync_job() -> dg.JobDefinition:
    """The sync alone, multiprocess executor (module level: child processes rebuild it with reconstructable)."""
    from lexer_assets.definitions import build_definitions

    defs = build_definitions(Settings.from_env())
    # Without the sync's own checks (they would add step processes and Braze reads to the measured window).
    job = dg.define_asset_job("sync_shard", selection=dg.AssetSelection.assets(SYNC_KEY).without_checks(),
                              executor_def=dg.multiprocess_executor)
    return dg.Definitions.merge(defs, dg.Definitions(jobs=[job])).resolve_job_def("sync_shard")


def upstream_job(settings: Settings) -> dg.JobDefinition:
    from lexer_assets.definitions import build_definitions

    defs = build_definitions(settings)
    job = dg.define_asset_job("upstream", selection=dg.AssetSelection.all() - dg.AssetSelection.assets(SYNC_KEY))
    return dg.Definitions.merge(defs, dg.Definitions(jobs=[job])).resolve_job_def("upstream")


def md5_shard(customer_id: str, shards: int) -> int:
    """The documented shard rule, written out here: first 15 hex digits of MD5, modulo the shard count."""
    return int(hashlib.md5(customer_id.encode()).hexdigest()[:15], 16) % shards


def test_two_shards_in_separate_processes_share_the_rate_limit(served_emulator, audiences_file: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    server, home = served_emulator
    env = {"LEXER_PROFILE": "local", "LEXER_HOME": str(home), "LEXER_AUDIENCES_FILE": str(audiences_file),
           "BRAZE_REST_ENDPOINT": server.url, "BRAZE_API_KEY": LOCAL_EMULATOR_KEY, "LEXER_EXPORT_SETTLE_S": "0.2",
           "LEXER_BRAZE_BATCH_CAP": "5", "LEXER_BRAZE_RATE_LIMIT": str(RATE_LIMIT),
           "LEXER_BRAZE_RATE_WINDOW_S": str(WINDOW_S)}
    for name, value in env.items():  # the step processes read the same settings from their environment
        monkeypatch.setenv(name, value)
    settings = Settings.from_env()
    prepare_inputs(settings, orders_file=None, customers=800, seed=9, say=lambda _m: None)
    (tmp_path / "dagster").mkdir()
    instance = dg.DagsterInstance.local_temp(str(tmp_path / "dagster"))
    assert upstream_job(settings).execute_in_process(instance=instance,
                                                     partition_key=settings.today().isoformat()).success

    httpx.post(f"{server.url}/_emulator/config",
               json={"track_rate_limit": RATE_LIMIT, "track_rate_window_s": WINDOW_S}).raise_for_status()
    httpx.post(f"{server.url}/_emulator/reset-stats").raise_for_status()

    results: dict[int, dg.ExecutionResult] = {}

    def launch(shard: int) -> None:
        with dg.execute_job(dg.reconstructable(sync_job), instance=instance, tags={"shard": str(shard)},
                            run_config={"ops": {"braze__audience_sync": {"config": {"shard": shard,
                                                                                     "shards": SHARDS}}}}
                            ) as result:
            results[shard] = result

    threads = [threading.Thread(target=launch, args=(i,)) for i in range(SHARDS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert sorted(results) == list(range(SHARDS))
    assert all(r.success for r in results.values())

    # Separate processes: each run executed its step in a child process of its own.
    pids = {}
    for shard, result in results.items():
        events = instance.all_logs(result.run_id)
        step_pids = {e.dagster_event.pid for e in events
                     if e.dagster_event is not None and e.dagster_event.event_type_value == "STEP_START"
                     and e.dagster_event.step_key == "braze__audience_sync"}
        assert len(step_pids) == 1
        pids[shard] = step_pids.pop()
    assert len(set(pids.values())) == SHARDS and os.getpid() not in pids.values()

    # Sharing the limit: no 429, no fixed window over the limit, yet some window holds more than one shard's
    # budget (each shard alone stays under limit/shards in any sliding window): they sent at the same time.
    track = [r for r in httpx.get(f"{server.url}/_emulator/stats").json()["requests"] if r["path"] == "/users/track"]
    assert track and all(r["status"] != 429 for r in track)
    per_window = Counter(math.floor(r["t"] / WINDOW_S) for r in track)
    assert max(per_window.values()) <= RATE_LIMIT
    assert max(per_window.values()) > RATE_LIMIT // SHARDS

    # Each run sent exactly its own shard's customers, the two together everyone, and Braze matches the hub.
    wh = Warehouse(settings.warehouse_path, settings.published_store_path)
    with wh.connect() as conn:
        sent = {shard: {row[0] for row in conn.execute(
            "SELECT DISTINCT customer_id FROM sync.braze_sync_log WHERE run_id = ?", [r.run_id]).fetchall()}
            for shard, r in results.items()}
    assert all(sent.values())
    for shard, customers in sent.items():
        assert {md5_shard(c, SHARDS) for c in customers} == {shard}
    report = verify_braze(wh, read_back_client(settings), audiences=synced_audiences(load_audiences(audiences_file)),
                          attribute=settings.braze.attribute_name, array_cap=settings.braze.array_cap)
    assert report.checked >= len(sent[0] | sent[1])
    assert report.mismatches == []


def read_back_client(settings: Settings) -> BrazeClient:
    # A generous limit for the read-back so it does not wait on the shards' budget.
    return BrazeClient(settings.braze.endpoint, settings.braze.api_key.get(), rate_limit_requests=1000)
