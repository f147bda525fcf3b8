"""A small world for sync tests: a DuckDB hub with users and audience partitions, a served emulator with a
request journal, and helpers that read Braze back. Expected values are always built by the tests."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from pathlib import Path

import httpx
import pyarrow as pa

from lexer_assets.braze.client import BrazeClient
from lexer_assets.braze.emulator import EmulatorConfig
from lexer_assets.braze.emulator.server import RunningEmulator, start_in_thread
from lexer_assets.braze.emulator.state import EmulatorState
from lexer_assets.settings import DEFAULT_SEGMENT_ID, LOCAL_EMULATOR_KEY
from lexer_assets.storage.warehouse import Warehouse
from lexer_assets.sync.audience_sync import SyncedAudience, SyncReport, run_sync

ATTR = "lexer_audience"
DAY1 = dt.date(2026, 3, 1)
DAY2 = dt.date(2026, 3, 2)


def seed_emulator(state_dir: Path, customers: Iterable[str], held: dict[str, list[str]] | None = None) -> None:
    held = held or {}
    users = [{"external_id": c, **({"custom_attributes": {ATTR: held[c]}} if c in held else {})}
             for c in customers]
    EmulatorState(state_dir).seed(users, segment_id=DEFAULT_SEGMENT_ID, api_key=LOCAL_EMULATOR_KEY)


def load_hub_users(wh: Warehouse, customers: Iterable[str], held: dict[str, list[str]] | None = None) -> None:
    """braze.users as the newest export would have it (held: the attribute values Braze exported)."""
    held = held or {}
    ids = list(customers)
    table = pa.table({
        "customer_id": ids, "external_id": ids,
        "custom_attributes": [json.dumps({ATTR: held[c]} if c in held else {}) for c in ids],
    })
    with wh.transaction() as conn:
        conn.register("new_users", table)
        conn.execute("DELETE FROM braze.users")
        conn.execute("INSERT INTO braze.users (customer_id, external_id, custom_attributes) "
                     "SELECT customer_id, external_id, custom_attributes::JSON FROM new_users")
        conn.unregister("new_users")


def set_members(wh: Warehouse, slug: str, name: str, day: dt.date, members: Iterable[str]) -> None:
    ids = sorted(set(members))
    table = pa.table({"customer_id": pa.array(ids, pa.string())})
    with wh.transaction() as conn:
        conn.register("members", table)
        conn.execute("DELETE FROM lexer.audience_membership WHERE audience_slug = ? AND snapshot_date = ?",
                     [slug, day])
        conn.execute("INSERT INTO lexer.audience_membership SELECT ?, ?, ?, customer_id FROM members",
                     [slug, name, day])
        conn.unregister("members")
        # Like the audience asset: every computed day has a history row, even when nobody is in it.
        conn.execute("DELETE FROM lexer.audience_history WHERE audience_slug = ? AND snapshot_date = ?",
                     [slug, day])
        conn.execute("INSERT INTO lexer.audience_history VALUES (?, ?, ?, ?, 0, 0, NULL, now()::TIMESTAMP)",
                     [slug, name, day, len(ids)])


class World:
    def __init__(self, root: Path, customers: list[str], held: dict[str, list[str]] | None = None,
                 **config: object) -> None:
        self.root = root
        self.state_dir = root / "emulator"
        self.journal = root / "journal.jsonl"
        seed_emulator(self.state_dir, customers, held)
        cfg = EmulatorConfig(journal_path=str(self.journal), **config)  # type: ignore[arg-type]
        self.server: RunningEmulator = start_in_thread(self.state_dir, config=cfg)
        self.wh = Warehouse(root / "hub.duckdb")
        load_hub_users(self.wh, customers, held)

    def close(self) -> None:
        self.server.stop()

    def configure(self, **changes: object) -> None:
        httpx.post(f"{self.server.url}/_emulator/config", json=changes).raise_for_status()

    def client(self, **kw: object) -> BrazeClient:
        opts = {"backoff_base_s": 0.01, "backoff_max_s": 0.05, **kw}
        return BrazeClient(self.server.url, LOCAL_EMULATOR_KEY, **opts)  # type: ignore[arg-type]

    def braze(self) -> dict[str, list[str]]:
        """customer -> values Braze holds (customers holding a non-empty list only)."""
        return {k: v for k, v in EmulatorState(self.state_dir).attribute_values(ATTR).items() if v}

    def requests(self) -> list[dict]:
        if not self.journal.exists():
            return []
        return [json.loads(line) for line in self.journal.read_text().splitlines() if line]

    def objects(self) -> list[dict]:
        return [o for r in self.requests() for o in r["attributes"]]

    def sync(self, audiences: list[SyncedAudience], *, client: BrazeClient | None = None, array_cap: int = 100,
             run_id: str = "run", **kw: object) -> SyncReport:
        sender = None if kw.get("dry_run") else (client or self.client())
        return run_sync(self.wh, sender, audiences=audiences, attribute=ATTR, array_cap=array_cap, batch_cap=75,
                        run_id=run_id, **kw)  # type: ignore[arg-type]

    def log(self, run_id: str) -> list[tuple]:
        with self.wh.connect() as conn:
            return conn.execute("SELECT customer_id, op, value, status FROM sync.braze_sync_log WHERE run_id = ? "
                                "ORDER BY ALL", [run_id]).fetchall()
