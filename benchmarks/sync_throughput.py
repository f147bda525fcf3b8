"""Benchmark: the Braze attribute sync end to end, and the diff alone.

1. Sync: N customers (default 1,000,000) in 6 audiences (~2.5 values per customer) against the emulator in a
   separate process; a first sync, then a day-two sync with 5% of customers changing one audience. Reports
   wall time (plan + send + record), objects/s, requests, and the share of Braze's 75,000 objects/s ceiling
   (1,000 requests/s x 75 objects) reached.
2. Diff alone: ``plan_changes`` for N customers x 30 audiences in DuckDB (target: under 10 s for 1M).

    .venv/bin/python -m benchmarks.sync_throughput [--customers 1000000] [--diff-customers 1000000]
        [--skip-sync] [--in-flight 16]
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import tempfile
import time
from pathlib import Path

import duckdb
import pyarrow as pa

from lexer_assets.braze.client import BrazeClient
from lexer_assets.braze.emulator import EmulatorConfig, EmulatorState, start_subprocess
from lexer_assets.storage.warehouse import Warehouse
from lexer_assets.sync.attribute_diff import ValuePolicy, plan_changes
from lexer_assets.sync.audience_sync import SyncedAudience, run_sync

KEY = "bench-key"
ATTR = "lexer_audience"
CEILING = 75_000  # objects/s: Braze's /users/track limit of 3,000 requests / 3 s x 75 objects
SHARES = (0.7, 0.6, 0.5, 0.35, 0.25, 0.1)  # ~2.5 audiences per customer
AUDIENCES = [SyncedAudience(f"a{i}", f"Audience {i}", True, priority=i) for i in range(len(SHARES))]


def _membership(customers: list[str], seed: int) -> dict[str, list[str]]:
    rng = random.Random(seed)
    return {a.slug: [c for c in customers if rng.random() < share] for a, share in zip(AUDIENCES, SHARES,
                                                                                       strict=True)}


def _load(wh: Warehouse, customers: list[str], members: dict[str, list[str]], day: dt.date) -> None:
    with wh.transaction() as conn:
        if day == dt.date(2026, 3, 1):
            conn.register("u", pa.table({"customer_id": customers}))
            conn.execute("INSERT INTO braze.users (customer_id, external_id, custom_attributes) "
                         "SELECT customer_id, customer_id, '{}'::JSON FROM u")
            conn.unregister("u")
        for aud in AUDIENCES:
            conn.register("m", pa.table({"customer_id": members[aud.slug]}))
            conn.execute("INSERT INTO lexer.audience_membership SELECT ?, ?, ?, customer_id FROM m",
                         [aud.slug, aud.name, day])
            conn.unregister("m")


def bench_sync(n: int, in_flight: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="sync-bench-"))
    customers = [f"cust{i:07d}" for i in range(n)]
    t = time.perf_counter()
    state = EmulatorState(root / "emulator")
    state.seed(({"external_id": c} for c in customers), segment_id="bench", api_key=KEY)
    print(f"seeded {n:,} Braze users in {time.perf_counter() - t:.1f} s")
    wh = Warehouse(root / "hub.duckdb")
    day1 = _membership(customers, 1)
    _load(wh, customers, day1, dt.date(2026, 3, 1))
    # Day two: 5% of customers flip their membership of one audience.
    rng = random.Random(2)
    day2 = {k: set(v) for k, v in day1.items()}
    for c in rng.sample(customers, n // 20):
        aud = rng.choice(AUDIENCES).slug
        day2[aud].symmetric_difference_update({c})
    config = EmulatorConfig(track_rate_limit=3000, track_rate_window_s=3.0)
    with start_subprocess(root / "emulator", config=config) as server:
        for label, day, members in (("first sync", dt.date(2026, 3, 1), None),
                                    ("day two (5% churn)", dt.date(2026, 3, 2), day2)):
            if members is not None:
                _load(wh, customers, {k: sorted(v) for k, v in members.items()}, day)
            client = BrazeClient(server.url, KEY, max_in_flight=in_flight)
            t = time.perf_counter()
            report = run_sync(wh, client, audiences=AUDIENCES, attribute=ATTR, array_cap=100, batch_cap=75,
                              run_id=label, chunk_size=20_000)
            secs = time.perf_counter() - t
            rate = report.done / secs if secs else 0.0
            print(f"{label}: {report.diff.customers:,} objects ({report.diff.adds:,} adds, "
                  f"{report.diff.removes:,} removes) in {secs:.1f} s = {rate:,.0f} objects/s, "
                  f"{report.requests:,} requests, {rate / CEILING:.0%} of {CEILING:,} objects/s; "
                  f"status {report.status}")


def bench_diff(n: int, audiences: int = 30) -> None:
    conn = duckdb.connect()
    conn.execute(f"""
        CREATE TABLE desired AS
        SELECT 'cust' || lpad(i::VARCHAR, 7, '0') AS customer_id, 'Audience ' || a AS value
        FROM range({n}) t(i), range({audiences}) s(a)
        WHERE hash(i * 31 + a) % 12 = 0""")
    conn.execute("""
        CREATE TABLE known AS
        SELECT * FROM desired WHERE hash(customer_id || value) % 20 <> 0
        UNION ALL
        SELECT customer_id, 'Retired' FROM desired WHERE hash(customer_id) % 50 = 0""")
    values = conn.sql("SELECT count(*) FROM desired").fetchall()[0][0]
    policies = [ValuePolicy(f"Audience {a}", a) for a in range(audiences)]
    t = time.perf_counter()
    counts = plan_changes(conn, desired="desired", known="known", policies=policies, array_cap=3)
    secs = time.perf_counter() - t
    print(f"diff: {n:,} customers x {audiences} audiences ({values:,} desired values): {secs:.2f} s; "
          f"{counts.customers:,} changed, {counts.adds:,} adds, {counts.removes:,} removes, "
          f"{counts.capped_customers:,} capped")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--diff-customers", type=int, default=1_000_000)
    parser.add_argument("--in-flight", type=int, default=16)
    parser.add_argument("--skip-sync", action="store_true")
    args = parser.parse_args()
    bench_diff(args.diff_customers)
    if not args.skip_sync:
        bench_sync(args.customers, args.in_flight)


if __name__ == "__main__":
    main()
