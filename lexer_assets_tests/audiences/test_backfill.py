"""Backfilling audience partitions over CDNOW dates, checked against plain Python over the CDNOW file.

The hub holds the CDNOW orders unshifted and one Braze user per CDNOW customer (loaded directly: the export
path has its own tests, this one is about days); today's profiles are as of 1998-07-01. Three audiences are
backfilled over 30 days of March 1998 in two runs, the later days first: "ordered in the last 30 days",
"revenue as of the day >= 100" and one that nobody is in. Every day's members, size, entered and exited are
compared with sets computed here from the raw file.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from decimal import Decimal
from pathlib import Path

import dagster as dg
import pytest

from lexer_assets.commerce.order_files import load_orders
from lexer_assets.defs.audiences import backfill_audiences
from lexer_assets.profiles.build import build_profiles
from lexer_assets.storage.warehouse import Warehouse
from lexer_assets_tests.conftest import CDNOW_FILE, local_settings

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not CDNOW_FILE.exists(), reason=f"CDNOW data not found at {CDNOW_FILE}")]

AS_OF = dt.date(1998, 7, 1)  # CDNOW's last order is 1998-06-30: the demo's shift is then 0 days
FIRST, LAST = dt.date(1998, 3, 1), dt.date(1998, 3, 30)
SPLIT = dt.date(1998, 3, 16)  # days SPLIT..LAST are backfilled first, FIRST..SPLIT-1 afterwards
THRESHOLD = Decimal("100.005")  # amounts have cents: no running total sits within half a cent of it

AUDIENCES = """
- name: Recent buyers
  slug: recent_buyers
  description: Ordered in the last 30 days.
  owner: tests@example.com
  activation: {braze: false}
  rules:
    - ordered_in_last_days: 30
- name: Spent 100
  slug: spent_100
  description: Revenue of 100 or more as of the day.
  owner: tests@example.com
  activation: {braze: false}
  rules:
    - {column: revenue, op: '>=', value: 100.005}
- name: Nobody
  slug: nobody
  description: A rule nobody meets (an empty audience).
  owner: tests@example.com
  activation: {braze: false}
  rules:
    - {column: orders, op: '>', value: 1000000}
"""


def cdnow_orders() -> dict[str, list[tuple[dt.date, Decimal]]]:
    by_customer: dict[str, list[tuple[dt.date, Decimal]]] = defaultdict(list)
    with CDNOW_FILE.open() as fh:
        next(fh)
        for line in fh:
            customer, day, _cds, amount = line.split()
            by_customer[customer].append((dt.datetime.strptime(day, "%Y%m%d").date(), Decimal(amount)))
    return by_customer


def expected_members(history: dict[str, list[tuple[dt.date, Decimal]]], day: dt.date) -> dict[str, set[str]]:
    """Each audience's members on ``day``, by hand: windows are (day - 30, day]; revenue counts orders <= day."""
    recent = {c for c, rows in history.items() if any(day - dt.timedelta(days=30) < d <= day for d, _ in rows)}
    spent = {c for c, rows in history.items() if sum((a for d, a in rows if d <= day), Decimal(0)) >= THRESHOLD}
    return {"recent_buyers": recent, "spent_100": spent, "nobody": set()}


def _days(first: dt.date, last: dt.date) -> list[dt.date]:
    return [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]


def test_thirty_day_backfill_matches_plain_python(tmp_path: Path) -> None:
    audiences_file = tmp_path / "audiences.yaml"
    audiences_file.write_text(AUDIENCES)
    settings = local_settings(tmp_path / "home", LEXER_AUDIENCES_FILE=str(audiences_file),
                              LEXER_AS_OF=AS_OF.isoformat(), LEXER_PARTITIONS_START="1997-01-01")
    wh = Warehouse(settings.warehouse_path, settings.published_store_path)
    with wh.transaction() as conn:
        load_orders(conn, [CDNOW_FILE])
        conn.execute("INSERT INTO braze.users (customer_id, external_id, object_prefix) "
                     "SELECT DISTINCT customer_id, customer_id, 'test-export' FROM commerce.orders")
        build_profiles(conn, as_of=AS_OF)
    wh.publish()

    instance = dg.DagsterInstance.ephemeral()
    later = backfill_audiences(settings, SPLIT, LAST, instance=instance)
    assert later.success
    earlier = backfill_audiences(settings, FIRST, SPLIT - dt.timedelta(days=1), instance=instance)
    assert earlier.success
    # one step per audience per run, each covering its whole range
    assert sorted(e.step_key for e in earlier.all_events if e.is_step_success) == [
        "audiences__nobody", "audiences__recent_buyers", "audiences__spent_100"]

    history = cdnow_orders()
    expected = {day: expected_members(history, day) for day in _days(FIRST, LAST)}
    conn = wh.read_only()  # what analysts see: the published store
    try:
        members: dict[tuple[str, dt.date], set[str]] = defaultdict(set)
        for slug, day, customer in conn.sql("SELECT audience_slug, snapshot_date, customer_id "
                                            "FROM lexer.audience_membership").fetchall():
            members[(slug, day)].add(customer)
        rows = conn.sql("SELECT audience_slug, snapshot_date, size, entered, exited "
                        "FROM lexer.audience_history ORDER BY 1, 2").fetchall()
        copies = conn.sql("SELECT count(*), count(DISTINCT (audience_slug, snapshot_date, customer_id)) "
                          "FROM lexer.audience_membership").fetchall()[0]
    finally:
        conn.close()
    assert copies[0] == copies[1]
    assert len(rows) == 3 * 30  # every day stored, the empty audience included
    for slug, day, size, entered, exited in rows:
        want = expected[day][slug]
        assert members[(slug, day)] == want, (slug, day)
        before = expected[day - dt.timedelta(days=1)][slug] if day > FIRST else set()
        assert (size, entered, exited) == (len(want), len(want - before), len(before - want)), (slug, day)
    assert all(expected[d]["recent_buyers"] for d in expected)  # the windows are not trivially empty
    assert len({len(expected[d]["spent_100"]) for d in expected}) > 1  # revenue grows through March

    # Per-partition metadata: the latest materialization of each day carries that day's size.
    records = instance.fetch_materializations(dg.AssetKey(["audiences", "spent_100"]), limit=1000).records
    newest = {r.partition_key: r for r in sorted(records, key=lambda r: r.storage_id)}
    sizes = {day: r.asset_materialization.metadata["size"].value for day, r in newest.items()}
    assert sizes == {d.isoformat(): len(expected[d]["spent_100"]) for d in expected}

    # Re-running one day (twice) replaces it: one copy, same numbers, next day's counts untouched.
    day = dt.date(1998, 3, 10)
    for _ in range(2):
        assert backfill_audiences(settings, day, day, ["spent_100"], instance=instance).success
    with wh.connect() as conn:
        count, distinct = conn.execute(
            "SELECT count(*), count(DISTINCT customer_id) FROM lexer.audience_membership "
            "WHERE audience_slug = 'spent_100' AND snapshot_date = ?", [day]).fetchall()[0]
        history_rows = conn.execute("SELECT size FROM lexer.audience_history WHERE audience_slug = 'spent_100' "
                                    "AND snapshot_date = ?", [day]).fetchall()
    assert count == distinct == len(expected[day]["spent_100"])
    assert history_rows == [(len(expected[day]["spent_100"]),)]
