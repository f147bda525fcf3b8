"""The analysts' store under real concurrency: separate processes, real DuckDB files, the full graph.

* An analyst process holds a read-only session on the published store for the whole of a full
  materialisation of the graph (and opens fresh sessions meanwhile): the run succeeds, the held session keeps
  answering the same, no fresh session ever sees membership and history out of step, and a new session
  afterwards sees the new day.
* Two runs launched together, both writing the store, both succeed and both days land.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lexer_assets.demo import local_instance, prepare_inputs, run_loop
from lexer_assets.settings import Settings
from lexer_assets_tests.conftest import REPO, local_settings

pytestmark = pytest.mark.slow

DAY1, DAY2, DAY3 = "2026-11-02", "2026-11-03", "2026-11-04"


def _env(settings: Settings, audiences_file: Path, as_of: str) -> dict[str, str]:
    return {**os.environ, "LEXER_HOME": str(settings.home), "LEXER_PROFILE": "local",
            "LEXER_AUDIENCES_FILE": str(audiences_file), "LEXER_AS_OF": as_of, "LEXER_EXPORT_SETTLE_S": "0.2"}


def _settings(tmp_path: Path, audiences_file: Path, as_of: str) -> Settings:
    return local_settings(tmp_path / "home", LEXER_AUDIENCES_FILE=str(audiences_file), LEXER_AS_OF=as_of)


def test_analyst_session_open_across_a_full_run(tmp_path: Path, audiences_file: Path) -> None:
    first = _settings(tmp_path, audiences_file, DAY1)
    prepare_inputs(first, orders_file=None, customers=3000, seed=3, say=lambda _m: None)
    assert run_loop(first, quiet=True).success
    store = first.published_store_path

    stop, out = tmp_path / "stop", tmp_path / "analyst.json"
    analyst = subprocess.Popen([sys.executable, "-m", "lexer_assets_tests.storage._processes", "analyst",
                                str(store), str(stop), str(out)], cwd=REPO)
    try:
        time.sleep(1.5)  # the session is open and querying before the run starts
        second = _settings(tmp_path, audiences_file, DAY2)
        result = run_loop(second, quiet=True)
        time.sleep(0.5)  # a fresh session after the last publish
    finally:
        stop.touch()
        analyst.wait(timeout=60)
    assert result.success
    assert analyst.returncode == 0
    seen = json.loads(out.read_text())
    assert seen["errors"] == []
    assert seen["inconsistent"] == []
    assert seen["queries"] > 20
    held = {tuple(h) for h in seen["held"]}
    assert len(held) == 1  # the held session saw one unchanging store
    assert next(iter(held))[3] == DAY1
    assert seen["fresh_days"][0] == DAY1 and seen["fresh_days"][-1] == DAY2  # new sessions see the new run


def test_two_runs_launched_together_both_write_the_store(tmp_path: Path, audiences_file: Path) -> None:
    settings = _settings(tmp_path, audiences_file, DAY1)
    prepare_inputs(settings, orders_file=None, customers=3000, seed=3, say=lambda _m: None)
    assert run_loop(settings, quiet=True).success

    # The local Dagster instance exists before runs are launched (as under `dagster dev`); two processes
    # creating its SQLite storage at the same moment race on the schema, which is not what this tests.
    instance = local_instance(settings)
    instance.get_runs(limit=1)
    instance.dispose()

    runs = [subprocess.Popen([sys.executable, "-m", "lexer_assets_tests.storage._processes", "writer", day],
                             cwd=REPO, env=_env(settings, audiences_file, day), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
            for day in (DAY2, DAY3)]
    outcomes = [r.communicate(timeout=300) for r in runs]
    for run, (stdout, stderr) in zip(runs, outcomes, strict=True):
        assert run.returncode == 0, stderr[-3000:]
        assert json.loads(stdout.strip().splitlines()[-1])["success"]

    import duckdb

    conn = duckdb.connect(str(settings.published_store_path), read_only=True)
    try:
        days = conn.sql("SELECT DISTINCT snapshot_date::VARCHAR FROM lexer.audience_history ORDER BY 1").fetchall()
        per_day = conn.sql("SELECT snapshot_date::VARCHAR, count(*) FROM lexer.audience_history "
                           "GROUP BY 1 ORDER BY 1").fetchall()
    finally:
        conn.close()
    assert [d for (d,) in days] == [DAY1, DAY2, DAY3]
    n_audiences = per_day[0][1]
    assert per_day == [(DAY1, n_audiences), (DAY2, n_audiences), (DAY3, n_audiences)]
