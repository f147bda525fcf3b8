"""Benchmark: load a 1,000,000-user Braze segment export (~200 zip files) into braze.users.

Side by side in the same run, each measured in its own child process (so peak RSS is that step's own):

* ``load_export``: :func:`lexer_assets.braze.export_load.load_export` from the **zip files** (decompression,
  line split, rejects, JSON extraction into typed columns, dedupe) into a fresh DuckDB file, committed.
* ``floor``: DuckDB's own ``read_json`` (auto-detected schema) over the **already decompressed** NDJSON on
  local disk, into a table of a fresh DuckDB file: the least any loader has to do.
* ``json_loads``: a plain Python loop, ``json.loads`` of every line of the decompressed NDJSON into a list of
  dicts (what people write first). Nothing is written anywhere; this is the cheapest form of that approach.
* ``load_export_ndjson`` (extra): ``load_export`` over the decompressed NDJSON, to separate the
  decompression cost from the rest.

Goals (issue 4): load_export <= 1.5x floor wall time; peak RSS < 1.5 GB; >= 5x faster than json_loads.

    .venv/bin/python -m benchmarks.export_load [--users 1000000] [--users-per-file 5000] [--workdir DIR]
        [--only load_export,floor,json_loads,load_export_ndjson] [--repeat N]

The export is generated once per workdir (deterministic: :mod:`lexer_assets.population`, seed 7, in parallel
slices) and reused; its decompressed copy is made with ``decompress_export``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import date
from pathlib import Path

EXPORT_DATE = date(2026, 12, 1)
SEGMENT_ID = "bench-segment"
OBJECT_PREFIX = "bench-0000-1764547200"
STEPS = ("load_export", "floor", "json_loads", "load_export_ndjson")


# ------------------------------------------------------------------------------------------------ generate

def _write_slice(args: tuple[str, int, int, int]) -> list[str]:
    root, start, count, users_per_file = args
    from lexer_assets.population import iter_population, write_braze_export

    users = (u for u, _ in iter_population(count, end_date=EXPORT_DATE, start=start))
    files = write_braze_export(users, Path(root), segment_id=SEGMENT_ID, export_date=EXPORT_DATE,
                               object_prefix=OBJECT_PREFIX, users_per_file=users_per_file,
                               first_file_number=start // users_per_file)
    return [str(f) for f in files]


def generate(workdir: Path, users: int, users_per_file: int) -> tuple[list[Path], list[Path]]:
    """The zip export and its decompressed NDJSON copy, made once per (workdir, users, users_per_file)."""
    from lexer_assets.braze.export_files import decompress_export

    marker = workdir / f"export-{users}-{users_per_file}.json"
    if marker.exists():
        saved = json.loads(marker.read_text())
        return [Path(p) for p in saved["zips"]], [Path(p) for p in saved["ndjson"]]
    bucket = workdir / "bucket"
    shutil.rmtree(bucket, ignore_errors=True)
    shutil.rmtree(workdir / "ndjson", ignore_errors=True)
    started = time.perf_counter()
    slices = [(str(bucket), start, min(users_per_file, users - start), users_per_file)
              for start in range(0, users, users_per_file)]
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        zips = [Path(p) for chunk in pool.map(_write_slice, slices, chunksize=4) for p in chunk]
    print(f"generated {len(zips)} zip files for {users:,} users in {time.perf_counter() - started:.1f} s",
          file=sys.stderr)
    ndjson = [p for _, p in decompress_export(zips, workdir / "ndjson")]
    marker.write_text(json.dumps({"zips": [str(p) for p in zips], "ndjson": [str(p) for p in ndjson]}))
    return zips, ndjson


# ------------------------------------------------------------------------------------------ measured steps

def _step_load_export(files: list[Path], scratch: Path) -> dict:
    import duckdb

    from lexer_assets.braze.export_load import load_export
    from lexer_assets.storage.warehouse import ensure_tables

    conn = duckdb.connect(str(scratch / "hub.duckdb"))
    ensure_tables(conn)
    conn.execute("BEGIN TRANSACTION")
    report = load_export(conn, files, object_prefix=OBJECT_PREFIX, work_dir=scratch / "work")
    conn.execute("COMMIT")
    conn.close()
    return {"rows": report.loaded, "rejected": report.rejected, "duplicates": report.duplicates}


def _step_floor(files: list[Path], scratch: Path) -> dict:
    import duckdb

    conn = duckdb.connect(str(scratch / "floor.duckdb"))
    listing = "[" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in files) + "]"
    conn.execute(f"CREATE TABLE users AS SELECT * FROM read_json({listing}, format='newline_delimited')")
    rows = conn.execute("SELECT count(*) FROM users").fetchone()[0]
    conn.close()
    return {"rows": rows}


def _step_json_loads(files: list[Path], scratch: Path) -> dict:
    users: list[dict] = []
    for path in files:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    users.append(json.loads(line))
    return {"rows": len(users)}


def _measure(step: str, files: list[Path]) -> dict:
    """Run one step in this (child) process and report wall, CPU and peak RSS."""
    fn = {"load_export": _step_load_export, "load_export_ndjson": _step_load_export, "floor": _step_floor,
          "json_loads": _step_json_loads}[step]
    with tempfile.TemporaryDirectory(prefix=f"bench-{step}-") as tmp:
        before = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        extra = fn(files, Path(tmp))
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"step": step, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
            "peak_rss_mb": round(after.ru_maxrss / 1024), **extra}


def _run_child(step: str, files: list[Path]) -> dict:
    listing = Path(tempfile.mkstemp(prefix="bench-files-", suffix=".json")[1])
    listing.write_text(json.dumps([str(p) for p in files]))
    try:
        out = subprocess.run([sys.executable, "-m", "benchmarks.export_load", "--child", step, str(listing)],
                             check=True, capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent.parent)
    finally:
        listing.unlink(missing_ok=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--users-per-file", type=int, default=5000)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "lexer-bench-export")
    parser.add_argument("--only", default=",".join(STEPS))
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--child", nargs=2, metavar=("STEP", "FILES_JSON"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        step, listing = args.child
        print(json.dumps(_measure(step, [Path(p) for p in json.loads(Path(listing).read_text())])))
        return 0

    args.workdir.mkdir(parents=True, exist_ok=True)
    zips, ndjson = generate(args.workdir, args.users, args.users_per_file)
    zip_mb = sum(p.stat().st_size for p in zips) / 1e6
    nd_mb = sum(p.stat().st_size for p in ndjson) / 1e6
    print(f"export: {args.users:,} users, {len(zips)} zip files ({zip_mb:.0f} MB), "
          f"{len(ndjson)} NDJSON members ({nd_mb:.0f} MB decompressed), {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f} (other work on the machine skews wall times)")
    results: dict[str, list[dict]] = {}
    for _ in range(args.repeat):
        for step in [s for s in args.only.split(",") if s]:
            files = ndjson if step in ("floor", "json_loads", "load_export_ndjson") else zips
            result = _run_child(step, files)
            results.setdefault(step, []).append(result)
            print(json.dumps(result), flush=True)
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    best = {step: min(runs, key=lambda r: r["wall_s"]) for step, runs in results.items()}
    print("\n| step | wall s | CPU s | peak RSS MB | rows |\n|---|---|---|---|---|")
    for step, r in best.items():
        print(f"| {step} | {r['wall_s']} | {r['cpu_s']} | {r['peak_rss_mb']} | {r['rows']:,} |")
    if "load_export" in best and "floor" in best:
        print(f"\nload_export / floor (wall): {best['load_export']['wall_s'] / best['floor']['wall_s']:.2f}x "
              f"(goal <= 1.5x); CPU: {best['load_export']['cpu_s'] / best['floor']['cpu_s']:.2f}x")
    if "load_export" in best and "json_loads" in best:
        print(f"json_loads / load_export (wall): "
              f"{best['json_loads']['wall_s'] / best['load_export']['wall_s']:.1f}x (goal >= 5x)")
    if "load_export" in best:
        print(f"load_export peak RSS: {best['load_export']['peak_rss_mb']} MB (goal < 1500 MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
