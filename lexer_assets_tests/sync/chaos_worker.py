"""One sync run in its own process (the chaos test SIGKILLs it): ``python -m ... <root> <emulator url>``."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

from lexer_assets.braze.client import BrazeClient
from lexer_assets.settings import LOCAL_EMULATOR_KEY
from lexer_assets.storage.warehouse import Warehouse
from lexer_assets.sync.audience_sync import SyncedAudience, run_sync

ATTR = "lexer_audience"
AUDIENCES = [SyncedAudience(f"aud{i}", f"Audience {i}", True, list_action="append" if i == 5 else "maintain",
                            priority=i) for i in range(6)]
ARRAY_CAP = 4


def main(argv: list[str]) -> int:
    root, url = Path(argv[0]), argv[1]
    client = BrazeClient(url, LOCAL_EMULATOR_KEY, backoff_base_s=0.02, backoff_max_s=0.2, max_retries=8,
                         max_reset_wait_s=2.0)
    report = run_sync(Warehouse(root / "hub.duckdb"), client, audiences=AUDIENCES, attribute=ATTR,
                      array_cap=ARRAY_CAP, batch_cap=75, run_id=f"chaos-{uuid.uuid4().hex[:8]}", chunk_size=2_000)
    print(f"{report.status} done={report.done} pending={report.pending} failed={report.failed} "
          f"reconciled={report.reconciled}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
