"""The DuckDB warehouse: one working file that runs write, and a published copy that analysts read.

Runs write ``$LEXER_HOME/warehouse/hub.duckdb`` (one writer at a time: Dagster's ``duckdb_writer`` pool, and
``connect`` waits for another process's lock). After a write, ``publish`` builds a complete new file in an
older storage version (readable by DuckDB 1.x tools) next to ``$LEXER_HOME/store/profile_store.duckdb`` and
renames it over the old one. A rename is atomic, so an analyst session never sees a half-written table and
never holds a lock a run needs: an open session keeps reading the file it opened (its inode stays alive);
a new session sees the newest publish.

Publishing cost: copying the whole database re-encodes every table (about 30 s for 1,000,000 profiles and
10,000,000 order lines on 2 cores). A writer that says which tables it wrote (``transaction(tables=...)``,
then ``publish(tables=...)``) gets an incremental publish: the previous published file is copied as bytes and
only those tables are replaced in the copy (a few seconds for the profile table, under a second for an
audience). Tables written but never published (a run that died between commit and publish) are remembered
in a small pending file beside the store and copied by the next publish.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from lexer_assets.storage.catalog import SCHEMAS, TABLES

ANALYST_STORAGE_VERSION = "v1.5.0"
_LOCK_RETRY_SECONDS = 120.0
_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class Warehouse:
    def __init__(self, path: Path, published_path: Path | None = None,
                 storage_version: str = ANALYST_STORAGE_VERSION) -> None:
        self.path = Path(path)
        self.published_path = Path(published_path) if published_path else None
        self.storage_version = storage_version
        self.last_publish: str | None = None  # "full" or "tables": how the last publish copied (for metadata)

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
    def transaction(self, tables: Iterable[str] | None = None,
                    rows: Iterable[RowScope] = ()) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection inside one transaction: everything it writes lands together or not at all.

        ``tables``: the tables this transaction may write (``schema.table``). They are recorded as not yet
        published before the commit, so ``publish(tables)`` after it (or any later publish, should this run
        die first) copies them; ``rows`` narrows that to rows of a table (see ``mark_unpublished``).
        Without ``tables`` the next publish copies the whole database.
        """
        with self.connect() as conn:
            self.mark_unpublished(["*"] if tables is None else list(tables), rows)
            conn.execute("BEGIN TRANSACTION")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    # ---------------------------------------------------------------------------------------------- publish

    @property
    def _pending_path(self) -> Path | None:
        if self.published_path is None:
            return None
        return self.published_path.with_name(f".{self.published_path.name}.pending.json")

    def _read_pending(self) -> tuple[set[str], list[RowScope]]:
        path = self._pending_path
        if path is None or not path.exists():
            return set(), []
        try:
            data = json.loads(path.read_text())
            return set(data["tables"]), [RowScope(r["table"], r["where"], list(r["params"])) for r in data["rows"]]
        except (OSError, ValueError, KeyError, TypeError):
            return {"*"}, []  # unreadable: be safe, copy everything

    def mark_unpublished(self, tables: Iterable[str], rows: Iterable[RowScope] = ()) -> None:
        """Record what was written but not yet published (call while holding the working file's lock).

        ``tables``: whole tables. ``rows``: only these rows of a table changed (the publish replaces just
        them in the copy, e.g. one audience's days of ``lexer.audience_membership``).
        """
        path = self._pending_path
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        pending_tables, pending_rows = self._read_pending()
        pending_tables |= {str(t) for t in tables}
        pending_rows += [r for r in rows if r not in pending_rows]
        data = {"tables": sorted(pending_tables),
                "rows": [{"table": r.table, "where": r.where, "params": r.params} for r in pending_rows]}
        tmp = path.with_name(path.name + f".{uuid.uuid4().hex}.tmp")
        tmp.write_text(json.dumps(data, default=str))
        os.replace(tmp, path)

    def publish(self, tables: Iterable[str] | None = None) -> Path | None:
        """Copy the working database to the analysts' store and swap it in atomically (a rename).

        ``tables`` None: the whole database is copied (``COPY FROM DATABASE``, storage version
        ``storage_version``). ``tables`` given: the previous published file is copied as a file and only
        those tables, plus any recorded as written but unpublished, are replaced in the copy; views are
        recreated. Falls back to a full copy when there is no previous file, when an unknown write is
        pending, or when the copy has grown past twice the working file (space freed by replaced tables).
        Either way the new file is complete before the rename, so a reader sees the old or the new store.
        """
        if self.published_path is None:
            return None
        target = self.published_path
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        with self.connect() as conn:
            pending_tables, pending_rows = self._read_pending()
            wanted = pending_tables | (set(tables) if tables is not None else {"*"})
            incremental = ("*" not in wanted and target.exists()
                           and target.stat().st_size <= 2 * max(self.path.stat().st_size, 1 << 20))
            try:
                if incremental:
                    try:
                        self._publish_tables(conn, tmp, sorted(wanted), pending_rows)
                    except duckdb.Error:
                        # e.g. a new view on a table the old copy lacks: a full copy is always right
                        tmp.unlink(missing_ok=True)
                        incremental = False
                if not incremental:
                    self._publish_all(conn, tmp)
                # Read-only on disk: an analyst's session cannot open it for writing by mistake (a writing
                # session leaves a WAL that no later store can replay).
                tmp.chmod(0o444)
                os.replace(tmp, target)
                # A WAL next to the store belongs to a file that was just replaced (someone opened the old
                # one for writing): the new store is complete without it, and readers could not replay it.
                target.with_name(target.name + ".wal").unlink(missing_ok=True)
            finally:
                for leftover in (tmp, tmp.with_name(tmp.name + ".wal")):
                    leftover.unlink(missing_ok=True)
            pending = self._pending_path
            if pending is not None:
                pending.unlink(missing_ok=True)
        self.last_publish = "tables" if incremental else "full"
        return target

    def _publish_all(self, conn: duckdb.DuckDBPyConnection, tmp: Path) -> None:
        source = conn.execute("SELECT current_database()").fetchall()[0][0]
        conn.execute(f"ATTACH {_sql_string(str(tmp))} AS publish_target "
                     f"(STORAGE_VERSION {_sql_string(self.storage_version)})")
        try:
            conn.execute(f'COPY FROM DATABASE "{source}" TO publish_target')
        finally:
            conn.execute("DETACH publish_target")

    def _publish_tables(self, conn: duckdb.DuckDBPyConnection, tmp: Path, tables: list[str],
                        rows: Sequence[RowScope] = ()) -> None:
        assert self.published_path is not None
        shutil.copyfile(self.published_path, tmp)
        source = conn.execute("SELECT current_database()").fetchall()[0][0]
        existing = {f"{s}.{t}" for s, t in conn.execute(
            "SELECT schema_name, table_name FROM duckdb_tables() WHERE database_name = ?", [source]).fetchall()}
        views = conn.execute(
            "SELECT schema_name, view_name, sql FROM duckdb_views() WHERE database_name = ? AND NOT internal",
            [source]).fetchall()
        conn.execute(f"ATTACH {_sql_string(str(tmp))} AS publish_target")
        try:
            old_views = conn.execute(
                "SELECT schema_name, view_name FROM duckdb_views() WHERE database_name = 'publish_target' "
                "AND NOT internal").fetchall()
            published = {f"{s}.{t}" for s, t in conn.execute(
                "SELECT schema_name, table_name FROM duckdb_tables() WHERE database_name = 'publish_target'"
            ).fetchall()}
            tables = sorted(set(tables) | (existing - published))  # tables the old copy does not have yet
            conn.execute("BEGIN TRANSACTION")
            for schema, view in old_views:
                conn.execute(f'DROP VIEW IF EXISTS publish_target."{schema}"."{view}"')
            for name in tables:
                schema, _, table = _split(name)
                conn.execute(f'DROP TABLE IF EXISTS publish_target."{schema}"."{table}"')
                if name in existing:
                    conn.execute(f'CREATE SCHEMA IF NOT EXISTS publish_target."{schema}"')
                    conn.execute(f'CREATE TABLE publish_target."{schema}"."{table}" AS '
                                 f'SELECT * FROM "{source}"."{schema}"."{table}"')
            for scope in rows:
                if scope.table in tables:
                    continue  # the whole table is copied anyway
                schema, _, table = _split(scope.table)
                conn.execute(f'DELETE FROM publish_target."{schema}"."{table}" WHERE {scope.where}', scope.params)
                conn.execute(f'INSERT INTO publish_target."{schema}"."{table}" '
                             f'SELECT * FROM "{source}"."{schema}"."{table}" WHERE {scope.where}', scope.params)
            conn.execute("USE publish_target")
            try:
                for schema, _, sql in views:
                    conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
                    conn.execute(sql)
            finally:
                conn.execute(f'USE "{source}"')
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(duckdb.Error):  # nothing to roll back if it failed before BEGIN
                conn.execute("ROLLBACK")
            raise
        finally:
            conn.execute("DETACH publish_target")

    def read_only(self) -> duckdb.DuckDBPyConnection:
        """A read-only connection to the published store (what analysts and `lexer-assets query` use)."""
        path = self.published_path or self.path
        if not path.exists():
            raise FileNotFoundError(f"no profile store at {path} yet: run `make demo` or materialise the assets")
        return duckdb.connect(str(path), read_only=True)


def ensure_tables(conn: duckdb.DuckDBPyConnection) -> None:
    """Create every catalog table; a table made by an older version gets the columns added since (new columns
    only ever go at the end of a table, so statements that insert by position stay right)."""
    for schema in SCHEMAS:
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    for table in TABLES:
        conn.execute(table.ddl())
    # one read of every table's columns (this runs on every connection)
    columns = {f"{schema}.{name}": names for schema, name, names in conn.execute(
        "SELECT table_schema, table_name, list(column_name ORDER BY ordinal_position) "
        "FROM information_schema.columns WHERE table_catalog = current_database() GROUP BY ALL").fetchall()}
    for table in TABLES:
        present = columns[table.name]
        if present == table.column_names:
            continue
        if present == table.column_names[:len(present)]:
            for column in table.columns[len(present):]:
                conn.execute(f"ALTER TABLE {table.name} ADD COLUMN {column.definition}")
        else:
            raise RuntimeError(f"{table.name} in {conn.execute('SELECT current_database()').fetchall()[0][0]} "
                               f"has columns {present}, not the expected {table.column_names}: it was made by "
                               "another version of lexer-assets")


@dataclass(frozen=True)
class RowScope:
    """Rows of one table that changed: ``where`` is SQL written by this package (never user text), with
    ``?`` parameters (JSON-serialisable; dates as ISO strings cast in ``where``)."""

    table: str
    where: str
    params: list = field(default_factory=list)


def _split(name: str) -> tuple[str, str, str]:
    schema, dot, table = name.partition(".")
    if not _PLAIN.match(schema) or not _PLAIN.match(table):
        raise ValueError(f"not a plain schema.table name: {name!r}")
    return schema, dot, table


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
