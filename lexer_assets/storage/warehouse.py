"""The DuckDB warehouse: one working file that runs write, and a published copy that analysts read.

Runs write ``$LEXER_HOME/warehouse/hub.duckdb`` (one writer at a time: Dagster's ``duckdb_writer`` pool).
After every successful write the whole database is copied into a new file written in an older storage
version (readable by DuckDB 1.x tools) and renamed over ``$LEXER_HOME/store/profile_store.duckdb``. A rename is
atomic, so an analyst session never sees a half-written table and never holds a lock a run needs: an open
session keeps reading the file it opened; a new session sees the newest publish.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from lexer_assets.storage.catalog import SCHEMAS, TABLES

ANALYST_STORAGE_VERSION = "v1.5.0"
_LOCK_RETRY_SECONDS = 120.0


class Warehouse:
    def __init__(self, path: Path, published_path: Path | None = None,
                 storage_version: str = ANALYST_STORAGE_VERSION) -> None:
        self.path = Path(path)
        self.published_path = Path(published_path) if published_path else None
        self.storage_version = storage_version

    def __repr__(self) -> str:
        return f"Warehouse({str(self.path)!r})"

    @contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """Open the working file read-write (waiting for another writer's lock), with every contract table."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + _LOCK_RETRY_SECONDS
        while True:
            try:
                conn = duckdb.connect(str(self.path))
                break
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        try:
            ensure_tables(conn)
            yield conn
        finally:
            conn.close()

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection inside one transaction: everything it writes lands together or not at all."""
        with self.connect() as conn:
            conn.execute("BEGIN TRANSACTION")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def publish(self) -> Path | None:
        """Copy the working database to the analysts' store and swap it in atomically."""
        if self.published_path is None:
            return None
        target = self.published_path
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        with self.connect() as conn:
            source = conn.execute("SELECT current_database()").fetchall()[0][0]
            conn.execute(f"ATTACH '{tmp}' AS publish_target (STORAGE_VERSION '{self.storage_version}')")
            try:
                conn.execute(f'COPY FROM DATABASE "{source}" TO publish_target')
            finally:
                conn.execute("DETACH publish_target")
        os.replace(tmp, target)
        wal = tmp.with_name(tmp.name + ".wal")
        if wal.exists():
            wal.unlink()
        return target

    def read_only(self) -> duckdb.DuckDBPyConnection:
        """A read-only connection to the published store (what analysts and `lexer-assets query` use)."""
        path = self.published_path or self.path
        if not path.exists():
            raise FileNotFoundError(f"no profile store at {path} yet: run `make demo` or materialise the assets")
        return duckdb.connect(str(path), read_only=True)


def ensure_tables(conn: duckdb.DuckDBPyConnection) -> None:
    for schema in SCHEMAS:
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    for table in TABLES:
        conn.execute(table.ddl())
