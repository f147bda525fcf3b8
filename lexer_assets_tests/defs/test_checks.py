"""Data checks on a real DuckDB file with hand-made rows; expected numbers are counted by hand in each test."""

from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from lexer_assets.defs.checks import (
    export_reject_rate,
    profile_coverage,
    sync_failure_rate,
    unique_customer_ids,
)
from lexer_assets.storage.warehouse import ensure_tables


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    c = duckdb.connect(str(tmp_path / "hub.duckdb"))
    ensure_tables(c)
    yield c
    c.close()


def add_users(conn: duckdb.DuckDBPyConnection, ids: list[str | None], prefix: str = "exp-1") -> None:
    for cid in ids:
        conn.execute("INSERT INTO braze.users (customer_id, external_id, object_prefix) VALUES (?, ?, ?)",
                     [cid, cid, prefix])


def add_profiles(conn: duckdb.DuckDBPyConnection, ids: list[str]) -> None:
    for cid in ids:
        conn.execute("INSERT INTO lexer.customer_profiles (customer_id) VALUES (?)", [cid])


def add_rejects(conn: duckdb.DuckDBPyConnection, n: int, reason: str, prefix: str = "exp-1") -> None:
    for i in range(n):
        conn.execute("INSERT INTO braze.export_rejects (object_prefix, export_file, export_line, reason) "
                     "VALUES (?, 'a.zip', ?, ?)", [prefix, i + 1, reason])


def add_log(conn: duckdb.DuckDBPyConnection, run_id: str, statuses: list[str], minute: int = 0) -> None:
    for i, status in enumerate(statuses):
        conn.execute("INSERT INTO sync.braze_sync_log (run_id, customer_id, attribute, op, value, status, error, "
                     "queued_at) VALUES (?, ?, 'lexer_audience', 'add', 'VIP', ?, ?, "
                     "TIMESTAMP '2026-12-03 06:00:00' + to_minutes(?))",
                     [run_id, f"c{i}", status, "bad id" if status == "failed" else None, minute])


def test_unique_ids_pass_and_fail(conn: duckdb.DuckDBPyConnection) -> None:
    add_users(conn, ["a", "b", "c"])
    ok = unique_customer_ids(conn, "braze.users")
    assert ok.passed and ok.metadata["rows"] == 3 and ok.metadata["duplicate_rows"] == 0

    add_users(conn, ["b", "b", None])  # b three times, one null: 6 rows, 3 distinct ids
    bad = unique_customer_ids(conn, "braze.users")
    assert not bad.passed
    assert bad.metadata == {"rows": 6, "distinct_customer_ids": 3, "duplicate_rows": 2, "null_customer_ids": 1}
    assert "e.g. b" in bad.description


def test_reject_rate_counts_only_the_newest_export(conn: duckdb.DuckDBPyConnection) -> None:
    add_users(conn, [f"u{i}" for i in range(99)], prefix="exp-2")
    add_rejects(conn, 50, "invalid JSON", prefix="exp-1")  # an older export's rejects do not count
    add_rejects(conn, 1, "no identifier", prefix="exp-2")
    outcome = export_reject_rate(conn, max_rate=0.01)
    assert outcome.metadata["rejected"] == 1 and outcome.metadata["loaded"] == 99
    assert outcome.metadata["rate"] == pytest.approx(0.01)  # 1 of 100 lines: at the limit, passes
    assert outcome.passed
    add_rejects(conn, 1, "too long", prefix="exp-2")  # 2 of 101
    worse = export_reject_rate(conn, max_rate=0.01)
    assert not worse.passed and worse.metadata["rate"] == pytest.approx(2 / 101)
    assert "no identifier (1)" in worse.description and "too long (1)" in worse.description


def test_reject_rate_fails_when_nothing_is_loaded(conn: duckdb.DuckDBPyConnection) -> None:
    assert not export_reject_rate(conn, max_rate=1.0).passed


def test_profile_coverage(conn: duckdb.DuckDBPyConnection) -> None:
    add_users(conn, ["a", "b", "c", "d"])
    add_profiles(conn, ["a", "b", "c", "d", "orders-only"])  # a profile without export row does not count
    assert profile_coverage(conn, min_coverage=1.0).passed
    conn.execute("DELETE FROM lexer.customer_profiles WHERE customer_id = 'c'")
    outcome = profile_coverage(conn, min_coverage=1.0)
    assert not outcome.passed
    assert outcome.metadata["coverage"] == pytest.approx(0.75) and "missing e.g. c" in outcome.description
    assert profile_coverage(conn, min_coverage=0.75).passed


def test_sync_failure_rate_of_the_run(conn: duckdb.DuckDBPyConnection) -> None:
    assert sync_failure_rate(conn, 0.01).passed  # nothing sent yet
    add_log(conn, "run-old", ["failed"] * 10, minute=0)
    add_log(conn, "run-new", ["done"] * 97 + ["failed", "rejected", "superseded"], minute=5)
    outcome = sync_failure_rate(conn, max_rate=0.05, run_id="run-new")
    assert outcome.metadata["changes"] == 100 and outcome.metadata["failed"] == 2
    assert outcome.passed and "bad id (1)" in outcome.description
    assert not sync_failure_rate(conn, max_rate=0.01, run_id="run-new").passed
    # a check run on its own (no sync in this run) judges the newest sync run
    alone = sync_failure_rate(conn, max_rate=0.05, run_id="a-run-without-changes")
    assert alone.metadata["run_id"] == "run-new"
    assert alone.description.startswith("this run sent no change; the newest run that did (run-new): 2 of 100")
    assert "this run" not in outcome.description


def test_checks_are_attached_to_the_right_assets(tmp_path: Path) -> None:
    from lexer_assets.definitions import build_definitions
    from lexer_assets_tests.conftest import local_settings

    graph = build_definitions(local_settings(tmp_path)).resolve_asset_graph()
    found = {(k.asset_key.to_user_string(), k.name, graph.get(k).blocking) for k in graph.asset_check_keys}
    assert {("braze/users", "unique_customer_ids", True), ("braze/users", "export_reject_rate", True),
            ("lexer/customer_profiles", "unique_customer_ids", True),
            ("lexer/customer_profiles", "export_coverage", True),
            ("braze/audience_sync", "failure_rate", False),
            ("braze/audience_sync", "braze_matches_hub_sample", False)} <= found


class RecordingReader:
    """Braze as seen by verify: every user exists and holds no audience value; asked ids are recorded."""

    def __init__(self) -> None:
        self.asked: list[list[str]] = []

    def export_ids(self, *, external_ids=(), user_aliases=(), braze_ids=(), fields_to_export=None) -> list[dict]:
        self.asked.append(sorted(external_ids))
        return [{"external_id": e, "custom_attributes": {}} for e in external_ids]


def test_verify_reads_back_a_fixed_sample(tmp_path: Path) -> None:
    from lexer_assets.storage.warehouse import Warehouse
    from lexer_assets.sync.verify import verify_braze

    wh = Warehouse(tmp_path / "hub.duckdb")
    with wh.transaction() as c:
        add_users(c, [f"u{i:03d}" for i in range(120)])
    reader = RecordingReader()
    for _ in range(2):
        report = verify_braze(wh, reader, audiences=[], attribute="lexer_audience", array_cap=100, sample=25)
        assert report.checked == 25 and report.mismatches == []
    assert len(reader.asked[0]) == 25 and reader.asked[0] == reader.asked[1]  # the same users each time
    assert len(set(reader.asked[0])) == 25
    full = verify_braze(wh, RecordingReader(), audiences=[], attribute="lexer_audience", array_cap=100)
    assert full.checked == 120
