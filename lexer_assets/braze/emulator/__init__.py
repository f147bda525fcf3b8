"""A local stand-in for Braze's REST API: same endpoints, bodies, status codes, limits and faults."""

from lexer_assets.braze.emulator.app import EmulatorConfig, make_app
from lexer_assets.braze.emulator.server import RunningEmulator, serve, start_in_thread, start_subprocess
from lexer_assets.braze.emulator.state import ALL_PERMISSIONS, EmulatorState

__all__ = [
    "ALL_PERMISSIONS",
    "EmulatorConfig",
    "EmulatorState",
    "RunningEmulator",
    "make_app",
    "serve",
    "start_in_thread",
    "start_subprocess",
]
