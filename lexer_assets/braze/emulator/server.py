"""Serving the emulator over HTTP: blocking (the CLI), in a background thread, or in a subprocess."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from lexer_assets.braze.emulator.app import EmulatorConfig, make_app

CONFIG_ENV = "LEXER_BRAZE_EMULATOR_CONFIG"  # JSON EmulatorConfig for a served subprocess


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _server(state_dir: Path, config: EmulatorConfig | None, host: str, port: int) -> uvicorn.Server:
    app = make_app(state_dir, config=config)
    uv_config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", access_log=False, lifespan="off", backlog=2048
    )
    return uvicorn.Server(uv_config)


def serve(
    state_dir: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    config: EmulatorConfig | None = None,
    announce: bool = True,
) -> None:
    """Run the emulator until interrupted (``lexer-assets emulator serve --port P``).

    With ``port=0`` a free port is chosen; the base URL is printed on stdout either way.
    """
    sock = _bind(host, port)
    server = _server(state_dir, config, host, sock.getsockname()[1])
    if announce:
        print(f"Braze emulator listening on http://{host}:{sock.getsockname()[1]}", flush=True)
    server.run(sockets=[sock])


@dataclass
class RunningEmulator:
    """An emulator serving in the background; ``stop()`` ends it."""

    url: str
    _server: uvicorn.Server | None = None
    _thread: threading.Thread | None = None
    _process: subprocess.Popen | None = None

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    def __enter__(self) -> RunningEmulator:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def start_in_thread(
    state_dir: Path, *, config: EmulatorConfig | None = None, host: str = "127.0.0.1"
) -> RunningEmulator:
    """Serve the emulator on a free loopback port in a daemon thread; returns once it accepts requests."""
    sock = _bind(host, 0)
    port = sock.getsockname()[1]
    server = _server(state_dir, config, host, port)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]  # not the main thread
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="braze-emulator", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the Braze emulator did not start")
        time.sleep(0.01)
    return RunningEmulator(f"http://{host}:{port}", _server=server, _thread=thread)


def start_subprocess(
    state_dir: Path, *, config: EmulatorConfig | None = None, host: str = "127.0.0.1", port: int = 0
) -> RunningEmulator:
    """Serve the emulator from a separate Python process (benchmarks: the client gets its own CPU)."""
    cmd = [
        sys.executable,
        "-c",
        "import sys; from lexer_assets.braze.emulator.server import main; main(sys.argv[1:])",
        "--state-dir",
        str(state_dir),
        "--host",
        host,
        "--port",
        str(port),
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if config is not None:
        env[CONFIG_ENV] = config.to_json()  # not on the command line: it may hold AWS credentials
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline() if proc.stdout else ""
    if "listening on" not in line:
        proc.kill()
        raise RuntimeError(f"the Braze emulator process did not start (said {line!r})")
    return RunningEmulator(line.rsplit(" ", 1)[1].strip(), _process=proc)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve the local Braze emulator")
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    raw_config = os.environ.get(CONFIG_ENV)
    config = EmulatorConfig.from_json(raw_config) if raw_config else None
    serve(args.state_dir, host=args.host, port=args.port, config=config)


if __name__ == "__main__":
    main()
