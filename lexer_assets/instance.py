"""The local Dagster instance (`$LEXER_HOME/dagster`): run history kept between restarts, one DuckDB writer."""

from __future__ import annotations

from pathlib import Path

from lexer_assets.defs.policies import DUCKDB_WRITER_POOL
from lexer_assets.settings import Settings

INSTANCE_YAML = f"""\
# Written by lexer-assets for the local profile (LEXER_HOME/dagster). Runs, event logs and schedules are kept in
# SQLite files in this folder, so run history survives restarts of `make dev`.
concurrency:
  pools:
    # The only pool is '{DUCKDB_WRITER_POOL}' (every asset that writes DuckDB): one writer at a time, across runs.
    default_limit: 1
  runs:
    max_concurrent_runs: 4
telemetry:
  enabled: false
"""


def ensure_instance_config(settings: Settings) -> Path:
    home = settings.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(INSTANCE_YAML)
    return home
