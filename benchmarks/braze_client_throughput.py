"""Benchmark: BrazeClient.send_attributes against the emulator running as a separate process.

Reports objects/s, requests/s, the client's CPU seconds per 100,000 objects, 429s, and the ratio of the
client's throughput to the same emulator's ceiling, measured in the same run with a minimal raw loop
(aiohttp on uvloop, pre-encoded bodies, same concurrency, no validation / limiting / retries). Raw-loop and client
rounds alternate over the same objects, so load from elsewhere on the machine hurts both alike; when the raw
loop would outrun the emulator's rate limit the ceiling is that limit (requests per second x 75).

    .venv/bin/python -m benchmarks.braze_client_throughput [--objects 200000] [--in-flight 8]
        [--rate-limit 3000 --rate-window 3] [--rounds 4] [--also-throttled]

``--also-throttled`` adds a second scenario in which the emulator's limit (300 requests per 3 s) is far
below its capacity, so the ceiling is Braze's limit itself and the proactive limiter is what is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import uvloop

from lexer_assets.braze.client import BrazeClient
from lexer_assets.braze.emulator import EmulatorConfig, EmulatorState, start_subprocess

KEY = "bench-key"
SEGMENT = "bench-segment"


@dataclass
class Run:
    name: str
    objects: int
    seconds: float
    requests: int
    rate_limited: int
    cpu_s: float

    @property
    def objects_per_s(self) -> float:
        return self.objects / self.seconds

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds

    def line(self) -> str:
        return (
            f"{self.name:<28} {self.objects:>8} obj {self.seconds:7.2f} s {self.objects_per_s:>9,.0f} obj/s "
            f"{self.requests_per_s:>7,.0f} req/s  429s={self.rate_limited:<5} "
            f"client CPU {self.cpu_s / self.objects * 100_000:5.2f} s/100k obj"
        )


def make_objects(n: int, users: int) -> list[dict]:
    return [
        {
            "external_id": f"user-{i % users:07d}",
            "_update_existing_only": True,
            "lexer_audience": {"add": ["High value customers"], "remove": ["Lapsed last 180 days"]},
        }
        for i in range(n)
    ]


def raw_loop(url: str, objects: list[dict], cap: int, in_flight: int) -> Run:
    """The ceiling: pre-encoded bodies posted by ``in_flight`` aiohttp workers; 429s simply re-sent."""
    bodies = [json.dumps({"attributes": objects[i : i + cap]}).encode() for i in range(0, len(objects), cap)]
    stats = {"requests": 0, "429": 0}

    async def main() -> None:
        queue = list(reversed(bodies))
        headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=in_flight)) as session:

            async def worker() -> None:
                while queue:
                    body = queue.pop()
                    while True:
                        stats["requests"] += 1
                        async with session.post(f"{url}/users/track", data=body, headers=headers) as r:
                            await r.read()
                            if r.status != 429:
                                break
                            stats["429"] += 1

            await asyncio.gather(*(worker() for _ in range(in_flight)))

    cpu, started = time.process_time(), time.perf_counter()
    uvloop.run(main())  # the fastest loop here, so the ceiling is not understated
    return Run(
        "raw loop (ceiling)",
        len(objects),
        time.perf_counter() - started,
        stats["requests"],
        stats["429"],
        time.process_time() - cpu,
    )


def client_run(url: str, objects: list[dict], in_flight: int, rate_limit: int, window: float) -> Run:
    client = BrazeClient(url, KEY, max_in_flight=in_flight, rate_limit_requests=rate_limit, rate_limit_window_s=window)
    cpu, started = time.process_time(), time.perf_counter()
    results = client.send_attributes(objects)
    seconds, cpu_s = time.perf_counter() - started, time.process_time() - cpu
    not_done = sum(r.status != "done" for r in results)
    if not_done:
        raise SystemExit(f"{not_done} objects were not confirmed done")
    return Run(
        "BrazeClient.send_attributes", len(objects), seconds, client.stats.requests, client.stats.rate_limited, cpu_s
    )


def _total(name: str, runs: list[Run]) -> Run:
    return Run(
        name,
        sum(r.objects for r in runs),
        sum(r.seconds for r in runs),
        sum(r.requests for r in runs),
        sum(r.rate_limited for r in runs),
        sum(r.cpu_s for r in runs),
    )


def scenario(title: str, n_objects: int, rounds: int, in_flight: int, rate_limit: int, window: float) -> float:
    """Alternate raw-loop and client rounds over the same objects (so a busy machine hurts both alike)."""
    with tempfile.TemporaryDirectory(prefix="braze-bench-") as tmp:
        users = min(n_objects, 200_000)
        state = EmulatorState(Path(tmp) / "state")
        state.seed(
            (
                {"external_id": f"user-{i:07d}", "custom_attributes": {"lexer_audience": ["Lapsed"]}}
                for i in range(users)
            ),
            segment_id=SEGMENT,
            api_key=KEY,
        )
        config = EmulatorConfig(track_rate_limit=rate_limit, track_rate_window_s=window)
        objects = make_objects(n_objects, users)
        size = -(-n_objects // rounds)
        raw_runs: list[Run] = []
        client_runs: list[Run] = []
        with start_subprocess(Path(tmp) / "state", config=config) as emulator:
            raw_loop(emulator.url, objects[:7_500], 75, in_flight)  # warm-up (connections, SQLite cache)
            for n in range(rounds):
                chunk = objects[n * size : (n + 1) * size]
                order = ("raw", "client") if n % 2 == 0 else ("client", "raw")
                for kind in order:
                    time.sleep(window)  # start each run with a fresh rate window
                    if kind == "raw":
                        raw_runs.append(raw_loop(emulator.url, chunk, 75, in_flight))
                    else:
                        client_runs.append(client_run(emulator.url, chunk, in_flight, rate_limit, window))
        raw = _total("raw loop (ceiling)", raw_runs)
        measured = _total("BrazeClient.send_attributes", client_runs)
        # Nothing can sustain more than the limit; a short raw run straddling two fixed windows can seem to.
        ceiling = min(raw.objects_per_s, rate_limit / window * 75)
        ratio = measured.objects_per_s / ceiling
        print(
            f"\n== {title}: emulator limit {rate_limit} requests per {window:g} s, {in_flight} in flight, "
            f"{rounds} alternating rounds =="
        )
        print(raw.line())
        print(measured.line())
        per_round = [c.objects_per_s / r.objects_per_s for c, r in zip(client_runs, raw_runs, strict=True)]
        print(
            f"ceiling {ceiling:,.0f} obj/s; client / ceiling = {ratio:.1%} (per round "
            f"{min(per_round):.0%}..{max(per_round):.0%}); client 429s: {measured.rate_limited} "
            f"(goal >= 80% with zero 429s)"
        )
        return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=200_000)
    parser.add_argument("--in-flight", type=int, default=8)
    parser.add_argument("--rate-limit", type=int, default=3000)
    parser.add_argument("--rate-window", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--also-throttled", action="store_true")
    args = parser.parse_args()
    scenario("Braze's limit", args.objects, args.rounds, args.in_flight, args.rate_limit, args.rate_window)
    if args.also_throttled:
        scenario("limit below emulator capacity", 60_000, 2, args.in_flight, 300, 3.0)


if __name__ == "__main__":
    main()
