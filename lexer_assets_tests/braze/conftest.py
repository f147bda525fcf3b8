"""Fixtures: a seeded Braze emulator served over real HTTP on loopback, and helpers to steer it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from lexer_assets.braze.emulator import EmulatorConfig, EmulatorState, start_in_thread

KEY = "test-key-0123456789abcdef"  # all permissions
SEGMENT_ID = "seg-all-users"
USERS = 300  # external ids u0 .. u299, each starting with lexer_audience ["A"]


def seed_users(n: int = USERS) -> list[dict]:
    return [
        {
            "external_id": f"u{i}",
            "email": f"u{i}@example.test",
            "first_name": f"First{i}",
            "custom_attributes": {"lexer_audience": ["A"], "tier": "gold"},
        }
        for i in range(n)
    ]


@dataclass
class Emulator:
    url: str
    state: EmulatorState
    bucket: Path

    def configure(self, **changes: object) -> None:
        """Change the running emulator's knobs (fault rates, limits, caps)."""
        r = httpx.post(f"{self.url}/_emulator/config", json=changes)
        r.raise_for_status()

    def reset_stats(self) -> None:
        httpx.post(f"{self.url}/_emulator/reset-stats").raise_for_status()

    def requests(self, path: str | None = "/users/track") -> list[dict]:
        """Requests the emulator answered since the last reset (oldest first)."""
        entries = httpx.get(f"{self.url}/_emulator/stats").json()["requests"]
        return [e for e in entries if path is None or e["path"] == path]

    def exports(self) -> list[dict]:
        return httpx.get(f"{self.url}/_emulator/stats").json()["exports"]


@pytest.fixture(scope="module")
def emulator_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    root = tmp_path_factory.mktemp("braze")
    state = EmulatorState(root / "state")
    state.seed(seed_users(), segment_id=SEGMENT_ID, api_key=KEY)
    config = EmulatorConfig(bucket_root=root / "bucket", duplicate_rate=0.0)
    running = start_in_thread(root / "state", config=config)
    try:
        yield Emulator(running.url, state, root / "bucket")
    finally:
        running.stop()


DEFAULTS = {
    "fault_429_rate": 0.0,
    "fault_5xx_rate": 0.0,
    "fault_drop_rate": 0.0,
    "latency_s": 0.0,
    "latency_jitter_s": 0.0,
    "track_batch_cap": 75,
    "track_batch_mode": "total",
    "track_rate_limit": 3000,
    "track_rate_window_s": 3.0,
    "max_array_length": 100,
    "export_delay_s": 0.0,
    "fault_seed": 0,
    "users_per_file": 5000,
    "bucket_path_prefix": "",
    "duplicate_rate": 0.0,
    "other_rate_limit": 250_000,
    "other_rate_window_s": 3600.0,
}


@pytest.fixture
def emulator(emulator_module: Emulator) -> Iterator[Emulator]:
    """The module's emulator with default knobs, fresh request log and freshly seeded users."""
    emulator_module.configure(**DEFAULTS)
    emulator_module.state.seed(seed_users(), segment_id=SEGMENT_ID, api_key=KEY)
    emulator_module.reset_stats()
    yield emulator_module
