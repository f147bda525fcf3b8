"""Loading the code location touches no network, no S3 and no DuckDB; Dagster's own validation passes; the
local instance's dagster.yaml says what the README says."""

import os
import socket
import subprocess
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from lexer_assets.definitions import build_definitions
from lexer_assets.instance import INSTANCE_YAML, ensure_instance_config
from lexer_assets.settings import Settings
from lexer_assets_tests.conftest import REPO, local_settings


def test_prod_definitions_load_without_network_s3_or_duckdb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args, **_kwargs):
        raise AssertionError("loading the definitions must not connect anywhere")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(duckdb, "connect", refuse)
    prod_env = {
        "LEXER_PROFILE": "prod", "LEXER_HOME": str(tmp_path / "home"),
        "BRAZE_REST_ENDPOINT": "https://rest.iad-01.braze.com", "BRAZE_API_KEY": "not-a-real-key",
        "BRAZE_EXPORT_SEGMENT_ID": "seg-1", "LEXER_S3_BUCKET": "brand-exports", "LEXER_S3_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE", "AWS_SECRET_ACCESS_KEY": "not-a-real-secret",
    }
    for name, value in prod_env.items():  # Dagster resolves the secrets from the process environment
        monkeypatch.setenv(name, value)
    settings = Settings.from_env()
    defs = build_definitions(settings)
    graph = defs.resolve_asset_graph()
    assert dg.AssetKey(["braze", "audience_sync"]) in graph.get_all_asset_keys()
    defs.resolve_job_def("lexer_loop")
    assert not (tmp_path / "home").exists()  # nothing written, no DuckDB file opened


@pytest.mark.slow
def test_dagster_definitions_validate_passes(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {**os.environ, "LEXER_HOME": str(home), "LEXER_PROFILE": "local", "DAGSTER_HOME": str(tmp_path / "dg")}
    (tmp_path / "dg").mkdir()
    done = subprocess.run([str(REPO / ".venv" / "bin" / "dagster"), "definitions", "validate", "-w",
                           str(REPO / "workspace.yaml")], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=180)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert "All code locations passed validation" in out
    assert not home.exists()


def test_local_instance_limits_duckdb_writers_and_keeps_history(tmp_path: Path) -> None:
    settings = local_settings(tmp_path / "home")
    folder = ensure_instance_config(settings)
    assert folder == tmp_path / "home" / "dagster"
    instance = dg.DagsterInstance.from_config(str(folder))
    try:
        pools = instance.get_concurrency_config().pool_config
        assert pools.default_pool_limit == 1  # the only pool is duckdb_writer
        assert instance.get_settings("concurrency")["runs"]["max_concurrent_runs"] == 4
        assert instance.is_persistent  # SQLite under DAGSTER_HOME: run history survives restarts
        assert Path(instance.root_directory) == folder
    finally:
        instance.dispose()


def test_instance_yaml_is_refreshed_only_while_it_is_ours(tmp_path: Path) -> None:
    settings = local_settings(tmp_path / "home")
    config = ensure_instance_config(settings) / "dagster.yaml"
    assert config.read_text() == INSTANCE_YAML
    config.write_text(INSTANCE_YAML.replace("max_concurrent_runs: 4", "max_concurrent_runs: 2"))
    ensure_instance_config(settings)  # our own older copy: brought up to date
    assert config.read_text() == INSTANCE_YAML
    mine = "# my own instance settings\nconcurrency:\n  pools:\n    default_limit: 1\n"
    config.write_text(mine)
    ensure_instance_config(settings)  # a file the user took over is left alone
    assert config.read_text() == mine
