"""Shared fixtures: the shared data folder, a local-profile settings object, the emulator over real HTTP."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from lexer_assets.braze.emulator import EmulatorConfig
from lexer_assets.braze.emulator.server import RunningEmulator, start_in_thread
from lexer_assets.settings import LOCAL_EMULATOR_KEY, Settings

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("LEXER_SHARED_DIR", REPO.parent / "shared"))
CDNOW_FILE = SHARED / "data" / "cdnow" / "CDNOW_master.txt"
BRAZE_SAMPLE_BUCKET = SHARED / "data" / "braze-export-sample" / "bucket"
COMMITTED_AUDIENCES = REPO / "data" / "audiences.yaml"


def local_settings(home: Path, **env: str) -> Settings:
    """Settings of the local profile rooted in ``home`` (nothing from the developer's environment)."""
    return Settings.from_env({"LEXER_HOME": str(home), "LEXER_PROFILE": "local",
                              "LEXER_EXPORT_SETTLE_S": "0.2", **env})


@pytest.fixture
def audiences_file(tmp_path: Path) -> Path:
    target = tmp_path / "audiences.yaml"
    shutil.copyfile(COMMITTED_AUDIENCES, target)
    return target


@pytest.fixture
def served_emulator(tmp_path: Path) -> Iterator[tuple[RunningEmulator, Path]]:
    """An emulator over HTTP whose state and bucket live under ``tmp_path/home`` (the local profile's layout)."""
    home = tmp_path / "home"
    settings = local_settings(home)
    assert settings.bucket.local_root is not None
    config = EmulatorConfig(bucket_root=settings.bucket.local_root, export_delay_s=0)
    with start_in_thread(settings.emulator_dir, config=config) as server:
        yield server, home


def http_settings(home: Path, server: RunningEmulator, **env: str) -> Settings:
    return local_settings(home, BRAZE_REST_ENDPOINT=server.url, BRAZE_API_KEY=env.pop("BRAZE_API_KEY",
                          LOCAL_EMULATOR_KEY), **env)
