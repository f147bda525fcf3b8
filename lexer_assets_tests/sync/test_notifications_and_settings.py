"""Webhook confirmation over real HTTP, delivery problems never raising, and the sync settings."""

from __future__ import annotations

import datetime as dt
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from lexer_assets.settings import Settings, SettingsError
from lexer_assets.sync.attribute_diff import DiffCounts
from lexer_assets.sync.audience_sync import AudienceSyncLine, SyncReport
from lexer_assets.sync.notifications import NotifyConfig, notify
from lexer_assets.sync.sharding import Shard, rate_share, shard_of


def _report() -> SyncReport:
    report = SyncReport("run-1", False, DiffCounts(3, 2, 1, 1, 1, {"Low": 1}), done=3, requests=1)
    report.audiences = [AudienceSyncLine("VIP", dt.date(2026, 3, 1), 10, adds=2, removes=1, sent=3)]
    return report


def test_webhook_receives_the_summary_as_json() -> None:
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hook?token=s3cret"
        assert notify(_report(), "lexer_audience", NotifyConfig(webhook_url=url)) == ["webhook: delivered"]
    finally:
        server.shutdown()
        server.server_close()
    (body,) = received
    assert (body["status"], body["adds"], body["removes"], body["held_back"]) == ("succeeded", 2, 1, {"Low": 1})
    assert body["audiences"][0]["audience_name"] == "VIP" and body["audiences"][0]["sent"] == 3


def test_delivery_problems_are_reported_not_raised_and_hide_the_webhook_url() -> None:
    config = NotifyConfig(smtp_host="127.0.0.1", smtp_port=1, recipients=("a@example.com",),
                          webhook_url="http://127.0.0.1:1/hook?token=s3cret", timeout_s=2)
    outcomes = notify(_report(), "lexer_audience", config)
    assert outcomes[0].startswith("email: not delivered") and outcomes[1].startswith("webhook: not delivered")
    assert "s3cret" not in " ".join(outcomes) and "s3cret" not in repr(config)


def test_sync_settings_from_env() -> None:
    s = Settings.from_env({"LEXER_SYNC_MAX_DROP_SHARE": "0.3", "LEXER_SYNC_MAX_REMOVALS": "10",
                           "LEXER_NOTIFY_TO": "a@example.com, b@example.com", "LEXER_NOTIFY_SMTP_PORT": "2525"}).sync
    assert (s.max_drop_share, s.max_removals, s.notify_to, s.notify_smtp_port) == (
        0.3, 10, ("a@example.com", "b@example.com"), 2525)
    with pytest.raises(SettingsError, match="LEXER_SYNC_MAX_DROP_SHARE"):
        Settings.from_env({"LEXER_SYNC_MAX_DROP_SHARE": "1.5"})


def test_shards_cover_everyone_once_and_share_the_rate_limit() -> None:
    ids = [f"c{i}" for i in range(3000)]
    counts = [sum(shard_of(c, 3) == k for c in ids) for k in range(3)]
    assert sum(counts) == 3000 and min(counts) > 900  # a fair split
    assert rate_share(3000, 4) * 4 <= 3000
    with pytest.raises(ValueError, match="shard must be between 0 and 1"):
        Shard(2, 2)
