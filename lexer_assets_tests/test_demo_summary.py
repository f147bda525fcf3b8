"""The demo's closing table: one line per audience, plus the values a run removed that no audience produces."""

import datetime as dt
from pathlib import Path

from lexer_assets.demo import summary_table
from lexer_assets.storage.warehouse import Warehouse
from lexer_assets_tests.conftest import local_settings


def test_summary_lists_a_renamed_audiences_old_name_with_its_removals(tmp_path: Path) -> None:
    settings = local_settings(tmp_path / "home")
    wh = Warehouse(settings.warehouse_path, settings.published_store_path)
    day = dt.date(2026, 12, 3)
    with wh.transaction() as conn:
        conn.execute("INSERT INTO lexer.audience_history VALUES ('vip', 'VIP Gold', ?, 3737, NULL, 0, 'p', now())",
                     [day])
        for name, slug, snapshot, members, adds, removes in (("VIP Gold", "vip", day, 3737, 3737, 0),
                                                              ("VIP", None, None, 0, 0, 3737)):
            conn.execute("INSERT INTO sync.braze_sync_runs VALUES ('run-1', ?, ?, ?, ?, ?, ?, 0, now(), ?)",
                         [name, snapshot, members, adds, removes, removes + adds, slug])
    lines = summary_table(settings, "run-1").splitlines()
    assert lines[0].split() == ["audience", "day", "members", "entered", "exited", "adds", "removes", "sent",
                                "failed"]
    assert lines[2].split() == ["VIP", "Gold", "2026-12-03", "3,737", "?", "0", "3,737", "0", "3,737", "0"]
    assert lines[3].split() == ["VIP", "(old", "value)", "-", "-", "-", "0", "3,737", "3,737", "0"]
    assert len(lines) == 4
