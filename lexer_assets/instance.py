"""The local Dagster instance (`$LEXER_HOME/dagster`): run history kept between restarts, one DuckDB writer.

Keys checked against the Dagster 1.13 `dagster.yaml` reference (concurrency pools, run queue, retention) and by
starting `dagster dev` with this file (lexer_assets_tests/test_ui_end_to_end.py).
"""

from __future__ import annotations

from pathlib import Path

from lexer_assets.defs.policies import DUCKDB_WRITER_POOL
from lexer_assets.settings import Settings

_HEADER = "# Written by lexer-assets for the local profile"

INSTANCE_YAML = f"""\
{_HEADER} (LEXER_HOME/dagster). Edit freely: once the first line is changed,
# lexer-assets never rewrites this file.
#
# Run history: runs, event logs and schedule/sensor state live in SQLite files under this folder (Dagster's
# default storage for a DAGSTER_HOME), so history survives restarts of `make dev`; nothing purges runs.
concurrency:
  pools:
    # Every asset that writes the DuckDB working file runs in pool '{DUCKDB_WRITER_POOL}' (the only pool): one
    # writer step at a time across all runs, so runs queue instead of failing on DuckDB's file lock.
    default_limit: 1
    granularity: op
  runs:
    max_concurrent_runs: 4
# A run worker that dies (killed, machine restart) would otherwise keep its pool slot forever and every later
# run would wait in the queue: run monitoring marks such runs failed and frees their slots.
run_monitoring:
  enabled: true
  poll_interval_seconds: 30
  free_slots_after_run_end_seconds: 15
# The landing sensors tick every LEXER_LANDING_SENSOR_INTERVAL_S; keep their skipped ticks for a week only.
retention:
  schedule:
    purge_after_days: 90
  sensor:
    purge_after_days:
      skipped: 7
      failure: 30
      success: -1
telemetry:
  enabled: false
"""


def ensure_instance_config(settings: Settings) -> Path:
    """Write `dagster.yaml` under `$LEXER_HOME/dagster` (or refresh our own older copy); return that folder."""
    home = settings.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    current = config.read_text() if config.exists() else None
    if current is None or (current.startswith(_HEADER) and current != INSTANCE_YAML):
        config.write_text(INSTANCE_YAML)
    return home
