"""Child processes for the store tests: an analyst holding a read-only session, and a writer run.

Run as ``python -m lexer_assets_tests.storage._processes analyst STORE STOP OUT`` or
``... writer AS_OF`` (settings from the environment). Kept apart from the tests so each is a real process.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def analyst(store: Path, stop: Path, out: Path) -> None:
    """Hold one read-only session open and query it until ``stop`` exists; meanwhile open new sessions too.

    Writes what was seen to ``out``: the held session's answers (must never change), how many queries ran,
    every inconsistency found in a fresh session (a half-written table would show as one), and errors.
    """
    import duckdb

    held = duckdb.connect(str(store), read_only=True)
    report: dict = {"held": [], "fresh_days": [], "inconsistent": [], "errors": [], "queries": 0}

    def snapshot(conn: duckdb.DuckDBPyConnection) -> list:
        return conn.sql("SELECT (SELECT count(*) FROM lexer.customer_profiles), "
                        "(SELECT count(*) FROM lexer.audience_membership), "
                        "(SELECT coalesce(sum(size), 0) FROM lexer.audience_history), "
                        "(SELECT max(snapshot_date)::VARCHAR FROM lexer.audience_history)").fetchall()[0]

    while not stop.exists():
        try:
            report["held"].append(list(snapshot(held)))
            # duckdb.connect(path) while ``held`` is open would hand back the same open database (DuckDB
            # caches instances by path per process); ATTACH in a new in-memory instance opens the file anew,
            # as a new analyst session in another process would.
            fresh = duckdb.connect()
            try:
                fresh.execute(f"ATTACH '{store}' AS store (READ_ONLY)")
                fresh.execute("USE store")
                profiles, members, sizes, newest = snapshot(fresh)
                # history sizes and membership rows are written and published together
                if members != sizes or profiles == 0:
                    report["inconsistent"].append([profiles, members, sizes])
                report["fresh_days"].append(newest)
            finally:
                fresh.close()
            report["queries"] += 2
        except Exception as exc:  # reported to the test, which fails on any
            report["errors"].append(repr(exc))
        time.sleep(0.05)
    held.close()
    out.write_text(json.dumps(report))


def writer(as_of: str) -> None:
    """Materialise profiles and every audience's ``as_of`` partition (both write the DuckDB store)."""
    import dagster as dg

    from lexer_assets.definitions import build_definitions
    from lexer_assets.demo import local_instance
    from lexer_assets.settings import Settings

    settings = Settings.from_env()
    defs = build_definitions(settings)
    job = dg.define_asset_job("writers", selection=dg.AssetSelection.groups("profiles", "audiences"))
    merged = dg.Definitions.merge(defs, dg.Definitions(jobs=[job]))
    result = merged.resolve_job_def("writers").execute_in_process(
        partition_key=as_of, instance=local_instance(settings), raise_on_error=False)
    print(json.dumps({"success": result.success, "run_id": result.run_id}))
    sys.exit(0 if result.success else 1)


if __name__ == "__main__":
    if sys.argv[1] == "analyst":
        analyst(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
    else:
        writer(sys.argv[2])
