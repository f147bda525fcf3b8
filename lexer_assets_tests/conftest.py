"""Shared fixtures: the shared data folder, a local-profile settings object, the emulator over real HTTP."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lexer_assets.settings import LOCAL_EMULATOR_KEY, Settings

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("LEXER_SHARED_DIR", REPO.parent / "shared"))
CDNOW_FILE = SHARED / "data" / "cdnow" / "CDNOW_master.txt"
BRAZE_SAMPLE_BUCKET = SHARED / "data" / "braze-export-sample" / "bucket"
COMMITTED_AUDIENCES = REPO / "data" / "audiences.yaml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmulatorServer:
    """The Braze emulator app served by uvicorn on a loopback port, in a background thread."""

    def __init__(self, state_dir: Path, bucket_root: Path, **config: object) -> None:
        import uvicorn

        from lexer_assets.braze.emulator import EmulatorConfig, make_app

        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        app = make_app(state_dir, config=EmulatorConfig(bucket_root=bucket_root, export_delay_s=0, **config))
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                     lifespan="off"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> EmulatorServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("emulator did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


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
def served_emulator(tmp_path: Path) -> Iterator[tuple[EmulatorServer, Path]]:
    """An emulator over HTTP whose state and bucket live under ``tmp_path/home`` (the local profile's layout)."""
    home = tmp_path / "home"
    settings = local_settings(home)
    assert settings.bucket.local_root is not None
    with EmulatorServer(settings.emulator_dir, settings.bucket.local_root) as server:
        yield server, home


def http_settings(home: Path, server: EmulatorServer, **env: str) -> Settings:
    return local_settings(home, BRAZE_REST_ENDPOINT=server.url, BRAZE_API_KEY=env.pop("BRAZE_API_KEY",
                          LOCAL_EMULATOR_KEY), **env)
