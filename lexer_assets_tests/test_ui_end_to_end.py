"""The UI path, for real: `dagster dev` on a free port, runs launched through GraphQL, the graph in Chromium.

A small synthetic population is prepared under a temporary LEXER_HOME (with its own DAGSTER_HOME and the
project's dagster.yaml); the whole graph is materialised through the `lexer_loop` job for today, a 3-day
backfill of one audience is launched the way the UI launches it, and the global asset lineage page is opened in
headless Chromium, which must show every asset. The screenshot is kept in `test-artifacts/asset-graph.png`.

Needs Debian's `chromium` (`apt-get install -y chromium`; `.ci/run` installs it); skips without it.
"""

import contextlib
import datetime as dt
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from lexer_assets.audiences.spec import load_audiences
from lexer_assets.demo import prepare_inputs
from lexer_assets.instance import ensure_instance_config
from lexer_assets_tests.conftest import COMMITTED_AUDIENCES, REPO, local_settings

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
ARTIFACTS = REPO / "test-artifacts"
LOCATION = "lexer_assets.definitions"
BACKFILLED = "vip"
CUSTOMERS = 300


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(what: str, probe, timeout: float, every: float = 0.5):
    """Poll ``probe`` until it returns something truthy; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last answer: {last!r})")


class DagsterDev:
    """`dagster dev` in its own process group, stopped (and killed if need be) at the end."""

    def __init__(self, env: dict[str, str], port: int, log: Path) -> None:
        self.port = port
        self.log = log
        self._log_file = log.open("w")
        self.proc = subprocess.Popen(
            [str(REPO / ".venv" / "bin" / "dagster"), "dev", "-w", str(REPO / "workspace.yaml"),
             "-p", str(port), "-h", "127.0.0.1"],
            cwd=REPO, env=env, stdout=self._log_file, stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=15)
        # the webserver, daemon and code servers are in the same group; nothing of it may outlive the test
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._log_file.close()

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture
def dagster_dev(tmp_path: Path) -> Iterator[tuple[DagsterDev, Path]]:
    if CHROMIUM is None:
        pytest.skip("Chromium not found: install Debian's package with `sudo apt-get install -y chromium` "
                    "(.ci/run does this) to run the UI end-to-end test")
    home = tmp_path / "home"
    settings = local_settings(home)
    prepare_inputs(settings, orders_file=None, customers=CUSTOMERS, seed=11, say=lambda _m: None)
    dagster_home = ensure_instance_config(settings)
    env = {**os.environ, "LEXER_HOME": str(home), "LEXER_PROFILE": "local", "LEXER_EXPORT_SETTLE_S": "0.2",
           "LEXER_AUDIENCES_FILE": str(COMMITTED_AUDIENCES), "DAGSTER_HOME": str(dagster_home)}
    for name in ("LEXER_AS_OF", "LEXER_ORDERS_DIR", "LEXER_BUCKET_DIR", "BRAZE_REST_ENDPOINT", "BRAZE_API_KEY"):
        env.pop(name, None)
    dev = DagsterDev(env, _free_port(), tmp_path / "dagster-dev.log")
    try:
        yield dev, tmp_path
    finally:
        dev.stop()


def _graphql(dev: DagsterDev):
    from dagster_graphql import DagsterGraphQLClient

    return DagsterGraphQLClient("127.0.0.1", port_number=dev.port, timeout=60)


def _location_loaded(client) -> bool:
    answer = client._execute("{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus "
                             "locationOrLoadError { __typename } } } } }")
    entries = answer["workspaceOrError"]["locationEntries"]
    return any(e["name"] == LOCATION and e["loadStatus"] == "LOADED"
               and e["locationOrLoadError"]["__typename"] == "RepositoryLocation" for e in entries)


def _server_up(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


BACKFILL = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on InvalidSubsetError { message }
  }
}"""
BACKFILL_STATUS = """
query($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    ... on PartitionBackfill { status runs(limit: 10) { runId status } }
  }
}"""
MATERIALIZED = """
query($path: [String!]!, $partitions: [String!]) {
  assetOrError(assetKey: {path: $path}) {
    ... on Asset { assetMaterializations(partitions: $partitions) { partition } }
  }
}"""
SENSORS = """
query($location: String!) {
  sensorsOrError(repositorySelector: {repositoryName: "__repository__", repositoryLocationName: $location}) {
    ... on Sensors { results { name sensorState { status } } }
  }
}"""


def test_dagster_ui_materialises_backfills_and_shows_the_graph(dagster_dev: tuple[DagsterDev, Path]) -> None:
    dev, tmp = dagster_dev
    started = time.monotonic()
    _wait("the Dagster webserver", lambda: _server_up(dev.port) or dev.proc.poll() is not None, 90)
    assert dev.proc.poll() is None, f"dagster dev exited:\n{dev.tail()}"
    client = _graphql(dev)
    _wait("the code location to load", lambda: _location_loaded(client), 60)

    # automation is on when the code location loads
    answer = client._execute(SENSORS, {"location": LOCATION})["sensorsOrError"]["results"]
    sensors = {s["name"]: s["sensorState"]["status"] for s in answer}
    assert sensors["lexer_automation"] == "RUNNING", sensors
    assert sensors["braze_export_landing_sensor"] == "RUNNING", sensors

    # the whole graph for today, through GraphQL
    from dagster import DagsterRunStatus

    today = dt.datetime.now(dt.UTC).date()
    run_id = client.submit_job_execution("lexer_loop", tags={"dagster/partition": today.isoformat()})
    status = _wait("the lexer_loop run", lambda: (s := client.get_run_status(run_id)) in (
        DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED) and s, 120)
    assert status == DagsterRunStatus.SUCCESS, f"lexer_loop ended {status}:\n{dev.tail()}"

    # a 3-day backfill of one audience, launched as the UI launches it
    days = [(today - dt.timedelta(days=n)).isoformat() for n in (3, 2, 1)]
    launched = client._execute(BACKFILL, {"params": {
        "assetSelection": [{"path": ["audiences", BACKFILLED]}], "partitionNames": days, "fromFailure": False}})
    answer = launched["launchPartitionBackfill"]
    assert answer["__typename"] == "LaunchBackfillSuccess", answer

    def backfill_done():
        state = client._execute(BACKFILL_STATUS, {"id": answer["backfillId"]})["partitionBackfillOrError"]
        assert state["status"] not in ("FAILED", "FAILING", "CANCELED", "COMPLETED_FAILED"), (state, dev.tail())
        runs = state["runs"]
        return runs and all(r["status"] == "SUCCESS" for r in runs) and state

    _wait("the backfill", backfill_done, 120, every=1)
    got = client._execute(MATERIALIZED, {"path": ["audiences", BACKFILLED], "partitions": days})
    assert {m["partition"] for m in got["assetOrError"]["assetMaterializations"]} == set(days)

    # the asset graph page in a real browser
    client._execute("mutation { setNuxSeen }")  # the first-visit community dialog would cover the graph
    groups = ("audiences", "braze_export", "braze_sync", "commerce", "profiles")
    expanded = ",".join(f"global@global:{g}" for g in groups)
    url = f"http://127.0.0.1:{dev.port}/asset-groups?expanded={urllib.parse.quote(expanded)}"
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "asset-graph.png"
    shot.unlink(missing_ok=True)
    browser = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp / 'chromium'}",
         "--window-size=1800,1100", "--virtual-time-budget=20000", f"--screenshot={shot}", "--dump-dom", url],
        capture_output=True, text=True, timeout=90)
    dom = browser.stdout
    assert shot.exists() and shot.stat().st_size > 10_000, browser.stderr[-2000:]
    expected = ["export_request", "segment_export", "users", "orders", "customer_profiles", "audience_sync",
                *(a.slug for a in load_audiences(COMMITTED_AUDIENCES))]
    missing = [name for name in expected if f">{name}<" not in dom]
    assert not missing, f"asset(s) not on the graph page: {missing} (screenshot: {shot})"
    assert time.monotonic() - started < 150
