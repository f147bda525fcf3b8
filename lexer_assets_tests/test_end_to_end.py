"""The whole loop on the real CDNOW order history, with the Braze emulator over real HTTP on loopback.

Expected values are computed here from the raw file in plain Python, not with the pipeline's SQL.
"""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal
from pathlib import Path

import pytest

from lexer_assets.braze.client import BrazeClient
from lexer_assets.defs.braze_sync import synced_audiences
from lexer_assets.demo import prepare_inputs, run_loop
from lexer_assets.settings import Settings
from lexer_assets.storage.warehouse import Warehouse
from lexer_assets.sync.verify import verify_braze
from lexer_assets_tests.conftest import CDNOW_FILE, http_settings

pytestmark = pytest.mark.slow

# Amounts have two decimals, so no customer's total sits within half a cent of these thresholds.
OLD_THRESHOLD = Decimal("100.005")
NEW_THRESHOLD = Decimal("150.005")

TEST_AUDIENCE = """
- name: Big spenders
  slug: big_spenders
  description: Test audience with a rule the test changes.
  owner: tests@example.com
  activation: {{braze: true, list_action: maintain, priority: 5}}
  rules:
    all:
      - {{column: revenue, op: '>=', value: {threshold}}}
"""


def cdnow_totals() -> dict[str, tuple[int, Decimal]]:
    """Orders (purchase lines) and revenue per customer, straight from the file."""
    orders: dict[str, int] = defaultdict(int)
    revenue: dict[str, Decimal] = defaultdict(Decimal)
    with CDNOW_FILE.open() as fh:
        next(fh)
        for line in fh:
            customer, _date, _cds, amount = line.split()
            orders[customer] += 1
            revenue[customer] += Decimal(amount)
    return {c: (orders[c], revenue[c]) for c in orders}


def _verify(settings: Settings) -> tuple[int, int]:
    wh = Warehouse(settings.warehouse_path, settings.published_store_path)
    client = BrazeClient(settings.braze.endpoint, settings.braze.api_key.get())
    from lexer_assets.audiences.spec import load_audiences

    report = verify_braze(wh, client, audiences=synced_audiences(load_audiences(settings.audiences_file)),
                          attribute=settings.braze.attribute_name, array_cap=settings.braze.array_cap)
    return report.checked, len(report.mismatches)


def _sync_changes(settings: Settings, run_id: str) -> list[tuple[str, str, str]]:
    wh = Warehouse(settings.warehouse_path, settings.published_store_path)
    with wh.connect() as conn:
        return conn.execute("SELECT customer_id, op, value FROM sync.braze_sync_log WHERE run_id = ? "
                            "ORDER BY ALL", [run_id]).fetchall()


@pytest.mark.skipif(not CDNOW_FILE.exists(), reason=f"CDNOW data not found at {CDNOW_FILE}")
def test_cdnow_loop_end_to_end(served_emulator, audiences_file: Path) -> None:
    server, home = served_emulator
    with audiences_file.open("a") as fh:
        fh.write(TEST_AUDIENCE.format(threshold=OLD_THRESHOLD))
    settings = http_settings(home, server, LEXER_AUDIENCES_FILE=str(audiences_file))
    expected = cdnow_totals()
    assert len(expected) == 23_570

    prepare_inputs(settings, orders_file=CDNOW_FILE, customers=0, seed=7, say=lambda _m: None)
    first = run_loop(settings, quiet=True)
    assert first.success

    wh = Warehouse(settings.warehouse_path, settings.published_store_path)
    with wh.connect() as conn:
        rows = conn.sql("SELECT customer_id, orders, revenue FROM lexer.customer_profiles").fetchall()
        rejects = conn.sql("SELECT count(*) FROM braze.export_rejects").fetchall()[0][0]
    assert len(rows) == 23_570
    assert rejects == 0
    got = {c: (n, rev) for c, n, rev in rows}
    assert set(got) == set(expected)
    for customer, (n, revenue) in expected.items():
        assert got[customer][0] == n, customer
        assert abs(Decimal(str(got[customer][1])) - revenue) < Decimal("0.001"), customer

    # Braze holds exactly what the hub says, for every user.
    checked, mismatches = _verify(settings)
    assert (checked, mismatches) == (23_570, 0)
    big_spenders = {c for c, (_n, rev) in expected.items() if rev >= OLD_THRESHOLD}
    added = {c for c, op, v in _sync_changes(settings, first.run_id) if v == "Big spenders" and op == "add"}
    assert added == big_spenders

    # Nothing changed: nothing is sent.
    second = run_loop(settings, quiet=True)
    assert second.success
    assert _sync_changes(settings, second.run_id) == []

    # Raise the audience's threshold: exactly the customers between the two thresholds are sent, as removals.
    audiences_file.write_text(audiences_file.read_text().replace(str(OLD_THRESHOLD), str(NEW_THRESHOLD)))
    third = run_loop(settings, quiet=True)
    assert third.success
    leaving = {c for c, (_n, rev) in expected.items() if OLD_THRESHOLD <= rev < NEW_THRESHOLD}
    assert leaving  # the thresholds were chosen so that someone leaves
    assert _sync_changes(settings, third.run_id) == sorted((c, "remove", "Big spenders") for c in leaving)
    assert _verify(settings) == (23_570, 0)
