"""Publishing the analysts' store: full and incremental copies, unpublished writes, views, DuckDB 1.x readers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from lexer_assets.storage.warehouse import RowScope, Warehouse

# A Python with duckdb 1.x (e.g. `python3 -m venv /tmp/oldduck && /tmp/oldduck/bin/pip install 'duckdb==1.5.*'`).
OLD_DUCKDB_PYTHON = os.environ.get("LEXER_OLD_DUCKDB_PYTHON", "/tmp/oldduck/bin/python")


def _rows(path: Path, sql: str) -> list[tuple]:
    conn = duckdb.connect()  # a new instance: sees the file as it is now
    try:
        conn.execute(f"ATTACH '{path}' AS s (READ_ONLY)")
        conn.execute("USE s")
        return conn.sql(sql).fetchall()
    finally:
        conn.close()


@pytest.fixture
def wh(tmp_path: Path) -> Warehouse:
    w = Warehouse(tmp_path / "warehouse" / "hub.duckdb", tmp_path / "store" / "profile_store.duckdb")
    with w.transaction() as conn:
        conn.execute("INSERT INTO commerce.orders (order_id, customer_id, order_date, units, amount) "
                     "VALUES ('o1', 'c1', DATE '2026-01-01', 1, 10)")
        conn.execute("INSERT INTO lexer.audience_history (audience_slug, audience_name, snapshot_date, size) "
                     "VALUES ('vip', 'VIP', DATE '2026-01-01', 1)")
        conn.execute("CREATE VIEW lexer.sizes AS SELECT audience_slug, size FROM lexer.audience_history")
    w.publish()
    assert w.last_publish == "full"
    return w


def test_incremental_publish_replaces_only_the_named_tables(wh: Warehouse) -> None:
    assert wh.published_path is not None
    with wh.transaction(tables=["lexer.audience_history"]) as conn:
        conn.execute("UPDATE lexer.audience_history SET size = 5")
    with wh.connect() as conn:  # an unnamed write that is not published (orders keep their published copy)
        conn.execute("INSERT INTO commerce.orders (order_id, customer_id, order_date, units, amount) "
                     "VALUES ('o2', 'c1', DATE '2026-01-02', 1, 10)")
    wh.publish(["lexer.audience_history"])
    assert wh.last_publish == "tables"
    store = wh.published_path
    assert _rows(store, "SELECT size FROM lexer.audience_history") == [(5,)]
    assert _rows(store, "SELECT size FROM lexer.sizes") == [(5,)]  # views still there, reading the new table
    assert _rows(store, "SELECT count(*) FROM commerce.orders") == [(1,)]
    wh.publish()
    assert _rows(store, "SELECT count(*) FROM commerce.orders") == [(2,)]


def test_a_table_new_to_the_store_is_copied_with_its_view(wh: Warehouse) -> None:
    assert wh.published_path is not None
    with wh.transaction(tables=["lexer.audience_history"]) as conn:
        conn.execute("CREATE TABLE lexer.extra AS SELECT 42 AS answer")
        conn.execute("CREATE VIEW lexer.extra_view AS SELECT answer + 1 AS next FROM lexer.extra")
    wh.publish(["lexer.audience_history"])
    assert wh.last_publish == "tables"  # the table missing from the old copy was added to the copy list
    assert _rows(wh.published_path, "SELECT next FROM lexer.extra_view") == [(43,)]


def test_row_scoped_publish_copies_only_those_rows_even_after_a_crash(wh: Warehouse) -> None:
    assert wh.published_path is not None
    with wh.connect() as conn:
        conn.execute("INSERT INTO lexer.audience_membership VALUES ('vip', 'VIP', DATE '2026-01-01', 'c1'), "
                     "('new', 'New', DATE '2026-01-01', 'c2')")
    wh.publish()
    day_scope = "audience_slug = ? AND snapshot_date BETWEEN ?::DATE AND ?::DATE"
    with wh.transaction([], rows=[RowScope("lexer.audience_membership", day_scope,
                                           ["vip", "2026-01-01", "2026-01-02"])]) as conn:
        conn.execute("INSERT INTO lexer.audience_membership VALUES ('vip', 'VIP', DATE '2026-01-02', 'c3')")
    # that step died before publishing; the next step changes the 'new' audience and publishes its rows
    with wh.transaction([], rows=[RowScope("lexer.audience_membership", day_scope,
                                           ["new", "2026-01-01", "2026-01-01"])]) as conn:
        conn.execute("DELETE FROM lexer.audience_membership WHERE audience_slug = 'new'")
        conn.execute("INSERT INTO lexer.audience_membership VALUES ('new', 'New', DATE '2026-01-01', 'c9')")
        # a change outside any declared scope stays unpublished (proves only the scoped rows are copied)
        conn.execute("INSERT INTO lexer.audience_membership VALUES ('old', 'Old', DATE '2026-01-01', 'cx')")
    wh.publish([])
    assert wh.last_publish == "tables"
    assert _rows(wh.published_path, "SELECT audience_slug, snapshot_date::VARCHAR, customer_id "
                                    "FROM lexer.audience_membership ORDER BY ALL") == [
        ("new", "2026-01-01", "c9"), ("vip", "2026-01-01", "c1"), ("vip", "2026-01-02", "c3")]


def test_a_write_never_published_is_copied_by_the_next_publish(wh: Warehouse) -> None:
    assert wh.published_path is not None
    with wh.transaction(tables=["commerce.orders"]) as conn:
        conn.execute("DELETE FROM commerce.orders")
    # the run dies here, before its publish; a later run writes and publishes another table
    with wh.transaction(tables=["lexer.audience_history"]) as conn:
        conn.execute("UPDATE lexer.audience_history SET size = 7")
    wh.publish(["lexer.audience_history"])
    assert wh.last_publish == "tables"
    assert _rows(wh.published_path, "SELECT count(*) FROM commerce.orders") == [(0,)]
    assert _rows(wh.published_path, "SELECT size FROM lexer.audience_history") == [(7,)]


def test_an_undeclared_transaction_makes_the_next_publish_full(wh: Warehouse) -> None:
    with wh.transaction() as conn:
        conn.execute("DELETE FROM commerce.orders")
    wh.publish(["lexer.audience_history"])
    assert wh.last_publish == "full"
    assert wh.published_path is not None
    assert _rows(wh.published_path, "SELECT count(*) FROM commerce.orders") == [(0,)]


def test_publish_leaves_no_temporary_files_and_a_held_reader_keeps_its_file(wh: Warehouse) -> None:
    assert wh.published_path is not None
    reader = duckdb.connect(str(wh.published_path), read_only=True)
    try:
        with wh.transaction(tables=["lexer.audience_history"]) as conn:
            conn.execute("UPDATE lexer.audience_history SET size = 9")
        wh.publish(["lexer.audience_history"])
        assert reader.sql("SELECT size FROM lexer.audience_history").fetchall() == [(1,)]
    finally:
        reader.close()
    assert _rows(wh.published_path, "SELECT size FROM lexer.audience_history") == [(9,)]
    leftovers = [p.name for p in wh.published_path.parent.iterdir() if p.name != wh.published_path.name]
    assert leftovers == []


@pytest.mark.skipif(not (shutil.which(OLD_DUCKDB_PYTHON) or Path(OLD_DUCKDB_PYTHON).exists()),
                    reason="no Python with duckdb 1.x (set LEXER_OLD_DUCKDB_PYTHON)")
def test_the_published_store_opens_in_duckdb_1(wh: Warehouse) -> None:
    assert wh.published_path is not None
    with wh.transaction(tables=["lexer.audience_history"]) as conn:
        conn.execute("UPDATE lexer.audience_history SET size = 3")
    wh.publish(["lexer.audience_history"])  # the incremental path must keep the old storage version too
    script = ("import duckdb, json, sys; c = duckdb.connect(sys.argv[1], read_only=True); "
              "print(json.dumps([duckdb.__version__, c.sql('SELECT size FROM lexer.sizes').fetchall(), "
              "c.sql('SELECT count(*) FROM commerce.orders').fetchall()]))")
    out = subprocess.run([OLD_DUCKDB_PYTHON, "-c", script, str(wh.published_path)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    version, sizes, orders = json.loads(out.stdout)
    assert version.startswith("1.")
    assert sizes == [[3]] and orders == [[1]]


def test_a_session_that_wrote_to_the_store_cannot_break_it_for_the_readers(wh: Warehouse) -> None:
    """Someone opened the store for writing and their process died: a WAL is left next to it that no later
    store can replay. The store is published read-only, and the next publish removes such a WAL."""
    store = wh.published_path
    assert store is not None
    assert store.stat().st_mode & 0o777 == 0o444
    script = ("import duckdb, os, sys; c = duckdb.connect(sys.argv[1]); "
              "c.execute(\"SET checkpoint_threshold = '1TB'\"); c.execute('CREATE TABLE main.scratch AS SELECT 1'); "
              "os._exit(0)")  # dies without a checkpoint: the WAL stays
    subprocess.run([sys.executable, "-c", script, str(store)], check=True, timeout=60)
    wal = store.with_name(store.name + ".wal")
    assert wal.exists()
    with wh.transaction(tables=["lexer.audience_history"]) as conn:
        conn.execute("UPDATE lexer.audience_history SET size = 4")
    wh.publish(["lexer.audience_history"])
    assert not wal.exists()
    assert _rows(store, "SELECT size FROM lexer.audience_history") == [(4,)]
    assert store.stat().st_mode & 0o777 == 0o444


def test_a_hub_made_by_an_older_version_gets_the_new_trailing_columns(tmp_path: Path) -> None:
    from lexer_assets.storage.warehouse import ensure_tables

    conn = duckdb.connect(str(tmp_path / "old.duckdb"))
    ensure_tables(conn)
    conn.execute("ALTER TABLE sync.braze_sync_runs DROP COLUMN audience_slug")  # as the previous version made it
    conn.execute("INSERT INTO sync.braze_sync_runs VALUES ('r1', 'VIP', DATE '2026-12-01', 3, 3, 0, 3, 0, now())")
    ensure_tables(conn)
    assert conn.sql("SELECT run_id, audience_slug FROM sync.braze_sync_runs").fetchall() == [("r1", None)]
    conn.execute("ALTER TABLE sync.braze_sync_runs DROP COLUMN run_id")  # not an older version: refused, named
    with pytest.raises(RuntimeError, match="sync.braze_sync_runs in old has columns"):
        ensure_tables(conn)
    conn.close()
