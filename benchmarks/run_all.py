"""`make bench`: every benchmark in turn, each printing its figures beside its same-run reference.

Pass a benchmark name to run only that one (e.g. `make bench ONLY=export_load`). Sizes default to the issue's
(a million customers); each benchmark takes its own `--help`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

BENCHMARKS = ("export_load", "profiles_build", "audiences_day", "braze_client_throughput", "sync_throughput")


def main() -> int:
    only = [b for b in os.environ.get("ONLY", "").split(",") if b] or list(BENCHMARKS)
    unknown = set(only) - set(BENCHMARKS)
    if unknown:
        print(f"unknown benchmark(s): {', '.join(sorted(unknown))}; choose from {', '.join(BENCHMARKS)}")
        return 2
    failed = []
    for name in only:
        print(f"\n=== {name} ===", flush=True)
        started = time.monotonic()
        code = subprocess.call([sys.executable, "-m", f"benchmarks.{name}"])
        print(f"=== {name}: exit {code} after {time.monotonic() - started:.0f} s", flush=True)
        if code:
            failed.append(name)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
