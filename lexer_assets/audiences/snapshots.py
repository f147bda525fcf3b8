"""Audiences over time: compute members as of a day, store them, keep membership and history tables right.

A partition for day D is the membership as of D:

* **Profiles as of D.** Orders after D are ignored and every time-dependent value uses D as "today"
  (``build_profiles(as_of=D)``); rule time windows use D too. When the stored ``lexer.customer_profiles`` is
  already as of D and built from the export chosen for D, it is used as is.
* **Braze attributes as of D.** Snapshot attributes (demographics, consent, engagement) come from the Braze
  export that was current on D: the export with the latest ``export_date`` on or before D (then the latest
  landed). Before the first export there is nothing better than the earliest export, and the stats say so.
  ``braze.users`` holds only the newest export; an older one is read back from the hub's raw copy
  (``braze.export_files``) once, kept as Parquet under the cache folder, and swapped in for ``braze.users``
  by attaching an in-memory database whose ``braze.users`` view reads it and making it the default catalog
  while profiles are built (so the profile code is the same code that builds today's table).
* **Reuse.** A past day's profiles are written to the cache as Parquet keyed by (day, export, a fingerprint
  of the orders, thresholds and profile code), so every audience backfilled over the same days builds each
  day's profiles once. Time windows read each customer's first and last order dates from those profiles
  (``create_order_bounds``), not the order lines, and only when the rules have windows.
* **Replacement.** Storing a day deletes that (audience, day) first, in the same transaction: re-running a
  day replaces it, never doubles it; a day with no members is a stored history row of size 0.
* **History.** size / entered / exited of a day are counted against the previous *stored* day; storing a day
  also recounts the next stored day, so backfilling days out of order leaves every row right.
* **Retention.** Member lists are the big table (customers x audiences x days), so only the last
  ``LEXER_MEMBERSHIP_RETENTION_DAYS`` days of each audience, counted back from its newest day, keep theirs
  (``prune_membership``); the day the sync reads is always kept. History rows stay for every day. A day whose
  previous stored day has lost its list gets entered/exited NULL (unknown), never a guess.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import itertools
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb

from lexer_assets.audiences.rules import CompiledAudience, compile_audience
from lexer_assets.audiences.spec import Audience, AudienceError
from lexer_assets.profiles.build import LifecycleThresholds, build_profiles
from lexer_assets.storage.catalog import BRAZE_USERS, CUSTOMER_PROFILES, EXPORT_REJECTS

PROFILE_COLUMNS: dict[str, str] = {c.name: c.type for c in CUSTOMER_PROFILES.columns}
PROFILES_REL = "profiles_asof"
ORDERS_REL = "orders_asof"
# Cache files kept, least recently written first to go. A past day's profiles are ~60 MB at 1,000,000
# customers: 40 days cover a month's backfill of every audience (~2.4 GB); older exports' users likewise.
CACHE_KEEP_FILES = 40
CACHE_KEEP_EXPORTS = 8

NOTE_CURRENT = "current on the day"
NOTE_EARLIEST = "no export on or before the day: the earliest export was used"
NOTE_NONE = "no export has landed: the loaded braze.users was used"


@dataclass(frozen=True)
class ExportChoice:
    """The Braze export whose attributes a day's snapshot uses."""

    object_prefix: str | None
    export_date: dt.date | None
    note: str


@dataclass(frozen=True)
class SnapshotStats:
    snapshot_date: dt.date
    size: int
    entered: int | None  # None: the previous stored day's member list is no longer kept
    exited: int | None
    object_prefix: str | None
    export_date: dt.date | None = None
    export_note: str = NOTE_CURRENT
    profiles_source: str = "stored"  # stored | built | cache


# ------------------------------------------------------------------------------------------------ exports

def export_for_day(conn: duckdb.DuckDBPyConnection, day: dt.date) -> ExportChoice:
    """The export current on ``day``: latest ``export_date`` on or before it, then latest landed."""
    rows = conn.execute(
        """SELECT object_prefix, export_date FROM (
             SELECT object_prefix, max(export_date) AS export_date, max(landed_at) AS landed_at
             FROM braze.export_files GROUP BY object_prefix)
           ORDER BY (export_date <= ?) DESC,
                    CASE WHEN export_date <= ? THEN export_date END DESC NULLS LAST,
                    export_date ASC, landed_at DESC
           LIMIT 1""", [day, day]).fetchall()
    if not rows:
        loaded = conn.sql("SELECT any_value(object_prefix) FROM braze.users").fetchall()[0][0]
        return ExportChoice(loaded, None, NOTE_NONE)
    prefix, export_date = rows[0]
    return ExportChoice(prefix, export_date, NOTE_CURRENT if export_date <= day else NOTE_EARLIEST)


def loaded_export(conn: duckdb.DuckDBPyConnection) -> str | None:
    """The object_prefix of the export now in ``braze.users`` (None when it is empty)."""
    return conn.sql("SELECT any_value(object_prefix) FROM braze.users").fetchall()[0][0]


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)[:80] + "-" + hashlib.sha256(text.encode()).hexdigest()[:10]


def _sql_path(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def export_users_parquet(conn: duckdb.DuckDBPyConnection, object_prefix: str, *, home: Path,
                         cache_dir: Path) -> Path:
    """A Parquet file of ``braze.users`` as loaded from export ``object_prefix`` (built once from the raw copy).

    Uses the same loader as ``braze/users`` (same dedupe, same rejects) inside a throwaway in-memory database,
    so the hub's own ``braze.users`` and ``braze.export_rejects`` are not touched. Must run outside a
    transaction that wrote to the hub (DuckDB writes one database per transaction).
    """
    from lexer_assets.braze.export_load import load_export  # the loader pulls pyarrow; only needed here

    target = cache_dir / "braze-users" / f"{_safe(object_prefix)}.parquet"
    if target.exists():
        return target
    raw = [home / r[0] for r in conn.execute(
        "SELECT raw_path FROM braze.export_files WHERE object_prefix = ? ORDER BY bucket_key",
        [object_prefix]).fetchall()]
    missing = [str(p) for p in raw if not p.exists()]
    if not raw or missing:
        raise FileNotFoundError(f"export {object_prefix!r} cannot be read back: raw files missing "
                                f"{missing or '(none listed in braze.export_files)'}")
    target.parent.mkdir(parents=True, exist_ok=True)
    current = conn.sql("SELECT current_database()").fetchall()[0][0]
    conn.execute("ATTACH ':memory:' AS export_reload")
    try:
        conn.execute("USE export_reload")
        conn.execute("CREATE SCHEMA braze")
        conn.execute(BRAZE_USERS.ddl())
        conn.execute(EXPORT_REJECTS.ddl())
        load_export(conn, raw, object_prefix=object_prefix)
        tmp = target.with_name(target.name + ".tmp")
        conn.execute(f"COPY braze.users TO {_sql_path(tmp)} (FORMAT parquet)")
        tmp.replace(target)
        _prune_cache(target.parent, CACHE_KEEP_EXPORTS)
    finally:
        conn.execute(f'USE "{current}"')
        conn.execute("DETACH export_reload")
    return target


@dataclass
class DaySource:
    """Where one group of days reads Braze users from: the hub's own table, or an attached older export."""

    choice: ExportChoice
    catalog: str | None  # attached in-memory database whose braze.users is the older export; None = the hub


def attach_export(conn: duckdb.DuckDBPyConnection, choice: ExportChoice, *, home: Path,
                  cache_dir: Path) -> DaySource:
    """Make the chosen export readable as ``braze.users`` for ``use_source``; outside any transaction."""
    if choice.object_prefix is None or choice.object_prefix == loaded_export(conn):
        return DaySource(choice, None)
    parquet = export_users_parquet(conn, choice.object_prefix, home=home, cache_dir=cache_dir)
    hub = conn.sql("SELECT current_database()").fetchall()[0][0]
    catalog = "export_" + hashlib.sha256(choice.object_prefix.encode()).hexdigest()[:12]
    conn.execute(f"ATTACH IF NOT EXISTS ':memory:' AS {catalog}")
    conn.execute(f"CREATE SCHEMA IF NOT EXISTS {catalog}.braze")
    # A view has no rowid, and the profile build keys users by it: the file's row number stands in.
    conn.execute(f"CREATE OR REPLACE VIEW {catalog}.braze.users AS SELECT * EXCLUDE (file_row_number), "
                 f"file_row_number AS rowid FROM read_parquet({_sql_path(parquet)}, file_row_number = true)")
    conn.execute(f"CREATE SCHEMA IF NOT EXISTS {catalog}.commerce")
    conn.execute(f'CREATE OR REPLACE VIEW {catalog}.commerce.orders AS SELECT * FROM "{hub}".commerce.orders')
    return DaySource(choice, catalog)


def detach_source(conn: duckdb.DuckDBPyConnection, source: DaySource) -> None:
    if source.catalog is not None:
        conn.execute(f"DETACH DATABASE IF EXISTS {source.catalog}")


# ------------------------------------------------------------------------------------------------ profiles

def inputs_fingerprint(conn: duckdb.DuckDBPyConnection, thresholds: LifecycleThresholds) -> str:
    """Changes when anything a past day's profiles depend on changes (besides the export, keyed separately):
    the orders, the thresholds and the profile code."""
    count, digest = conn.sql(
        "SELECT count(*), coalesce(sum(hash(order_id, customer_id, email, order_date, units, amount)), 0) "
        "FROM commerce.orders").fetchall()[0]
    from lexer_assets import profiles

    code = hashlib.sha256()
    for source in sorted(Path(profiles.__file__).parent.glob("*.py")):
        code.update(source.read_bytes())
    text = f"{count}|{digest}|{thresholds}|{code.hexdigest()}|{[c.type for c in CUSTOMER_PROFILES.columns]}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _prune_cache(folder: Path, keep: int) -> None:
    files = sorted(folder.glob("*.parquet"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in files[keep:]:
        old.unlink(missing_ok=True)


def _drop_temp(conn: duckdb.DuckDBPyConnection, name: str) -> None:
    """Drop the temp table or view ``name`` (a day may have left either)."""
    kinds = conn.execute(
        "SELECT 'TABLE' FROM duckdb_tables() WHERE database_name = 'temp' AND table_name = $n "
        "UNION ALL SELECT 'VIEW' FROM duckdb_views() WHERE database_name = 'temp' AND view_name = $n",
        {"n": name}).fetchall()
    for (kind,) in kinds:
        conn.execute(f"DROP {kind} temp.main.{name}")


def prepare_day(conn: duckdb.DuckDBPyConnection, as_of: dt.date, thresholds: LifecycleThresholds, *,
                source: DaySource | None = None, cache_dir: Path | None = None,
                fingerprint: str | Callable[[], str] | None = None, with_orders: bool = True) -> str:
    """Create ``profiles_asof`` (and ``orders_asof`` when ``with_orders``) as of the day in this connection.

    Returns where the profiles came from: ``stored`` (the table is already as of the day and from this
    export), ``cache`` (a Parquet file another audience built for this day) or ``built``.
    """
    catalog = source.catalog if source else None
    hub = conn.sql("SELECT current_database()").fetchall()[0][0]
    stored_as_of = conn.sql("SELECT max(as_of_date) FROM lexer.customer_profiles").fetchall()[0][0]
    how = "built"
    if stored_as_of == as_of and catalog is None:
        _drop_temp(conn, PROFILES_REL)
        conn.execute(f"CREATE TEMP VIEW {PROFILES_REL} AS SELECT * FROM lexer.customer_profiles")
        how = "stored"
    else:
        cached: Path | None = None
        if cache_dir is not None and fingerprint is not None:
            if callable(fingerprint):  # computed only when a day is actually built or read from the cache
                fingerprint = fingerprint()
            prefix = source.choice.object_prefix if source else loaded_export(conn)
            cached = (cache_dir / "profiles-asof" /
                      f"{as_of.isoformat()}-{_safe(f'{prefix}|{fingerprint}')}.parquet")
        _drop_temp(conn, PROFILES_REL)
        if cached is not None and cached.exists():
            os.utime(cached)  # recently used: pruned last
            conn.execute(f"CREATE TEMP VIEW {PROFILES_REL} AS SELECT * FROM read_parquet({_sql_path(cached)})")
            how = "cache"
        else:
            if catalog:
                conn.execute(f"USE {catalog}")
            try:
                build_profiles(conn, as_of=as_of, thresholds=thresholds, target=PROFILES_REL)
            finally:
                if catalog:
                    conn.execute(f'USE "{hub}"')
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                tmp = cached.with_name(cached.name + ".tmp")
                conn.execute(f"COPY {PROFILES_REL} TO {_sql_path(tmp)} (FORMAT parquet)")
                tmp.replace(cached)
                _prune_cache(cached.parent, CACHE_KEEP_FILES)
    if with_orders:
        create_order_bounds(conn)
    return how


def create_order_bounds(conn: duckdb.DuckDBPyConnection) -> None:
    """``orders_asof`` for the rule windows: each customer's first and last order date as of the day.

    Every window the rules offer (:data:`~lexer_assets.audiences.rules.WINDOWS`) asks only whether an order
    falls in ``(day - N, day]`` or on/before ``day - N``; with no order after the day, the answer from the
    first and last order dates equals the answer from every order line. Two rows per customer from the
    profiles instead of attributing millions of order lines again for every audience and day.
    """
    _drop_temp(conn, ORDERS_REL)
    conn.execute(f"""CREATE TEMP TABLE {ORDERS_REL} AS
        SELECT customer_id, first_order_date AS order_date FROM {PROFILES_REL} WHERE first_order_date IS NOT NULL
        UNION ALL
        SELECT customer_id, last_order_date FROM {PROFILES_REL}
        WHERE last_order_date IS NOT NULL AND last_order_date <> first_order_date""")


def compile_for(audience: Audience, audiences: Sequence[Audience]) -> CompiledAudience:
    """The audience's rules compiled once (as-of placeholders bound per day)."""
    return compile_audience(audience, audiences, PROFILE_COLUMNS, profiles=PROFILES_REL, orders=ORDERS_REL)


def membership_version(audience: Audience, audiences: Sequence[Audience]) -> str:
    """A short hash of everything that decides the audience's stored rows: its name and its compiled rules
    (nested ``in_audience`` rules included). Editing a rule changes it; editing a description does not.
    Rules that do not compile hash as written (the asset then fails and says why)."""
    try:
        compiled = compile_for(audience, audiences)
        decided = [compiled.sql, [repr(p) for p in compiled.params]]
    except AudienceError:
        decided = ["uncompiled", repr(audience.rules)]
    text = repr([audience.name, audience.slug, decided])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def uses_orders(compiled: CompiledAudience) -> bool:
    """Whether the rules read order lines (time windows), i.e. whether ``orders_asof`` must be built."""
    return re.search(rf"\b{ORDERS_REL}\b", compiled.sql) is not None


# ------------------------------------------------------------------------------------------------ storing

def store_snapshot(conn: duckdb.DuckDBPyConnection, audience: Audience, audiences: Sequence[Audience],
                   as_of: dt.date, export: ExportChoice | None = None,
                   compiled: CompiledAudience | None = None) -> SnapshotStats:
    """Replace the audience's membership for ``as_of`` (relations from ``prepare_day`` must exist)."""
    compiled = compiled or compile_for(audience, audiences)
    if export is None:
        export = ExportChoice(loaded_export(conn), None, NOTE_CURRENT)
    conn.execute("DELETE FROM lexer.audience_membership WHERE audience_slug = ? AND snapshot_date = ?",
                 [audience.slug, as_of])
    conn.execute(
        f"INSERT INTO lexer.audience_membership SELECT DISTINCT ?, ?, ?::DATE, customer_id FROM ({compiled.sql})",
        [audience.slug, audience.name, as_of, *compiled.bind(as_of)],
    )
    stats = refresh_history(conn, audience, as_of, export.object_prefix)
    # The next stored day's entered/exited were counted against the previous day, which may just have changed.
    following = conn.execute(
        "SELECT min(snapshot_date) FROM lexer.audience_history WHERE audience_slug = ? AND snapshot_date > ?",
        [audience.slug, as_of]).fetchall()[0][0]
    if following is not None:
        kept = conn.execute("SELECT object_prefix FROM lexer.audience_history WHERE audience_slug = ? "
                            "AND snapshot_date = ?", [audience.slug, following]).fetchall()[0][0]
        refresh_history(conn, audience, following, kept, recount_only=True)
    return SnapshotStats(stats.snapshot_date, stats.size, stats.entered, stats.exited, export.object_prefix,
                         export.export_date, export.note)


def _list_pruned(conn: duckdb.DuckDBPyConnection, slug: str, day: dt.date | None) -> bool:
    """Whether a stored day had members but its member list was pruned (retention)."""
    if day is None:
        return False
    return conn.execute(
        """SELECT coalesce(max(size), 0) > 0 AND NOT EXISTS (SELECT 1 FROM lexer.audience_membership
                                                              WHERE audience_slug = $slug AND snapshot_date = $day)
           FROM lexer.audience_history WHERE audience_slug = $slug AND snapshot_date = $day""",
        {"slug": slug, "day": day}).fetchall()[0][0]


def refresh_history(conn: duckdb.DuckDBPyConnection, audience: Audience, day: dt.date,
                    object_prefix: str | None, *, recount_only: bool = False) -> SnapshotStats:
    """Recount size/entered/exited of one stored day against the previous stored day.

    ``recount_only``: the day's members were not recomputed (only the day before them was), so its
    ``materialized_at`` stays when the members were computed; if its own member list was pruned, its size
    stays and entered/exited become NULL (the day before it changed and cannot be compared any more)."""
    previous = conn.execute(
        "SELECT max(snapshot_date) FROM lexer.audience_history WHERE audience_slug = ? AND snapshot_date < ?",
        [audience.slug, day]).fetchall()[0][0]
    if recount_only and _list_pruned(conn, audience.slug, day):
        conn.execute("UPDATE lexer.audience_history SET entered = NULL, exited = NULL "
                     "WHERE audience_slug = ? AND snapshot_date = ?", [audience.slug, day])
        size = conn.execute("SELECT size FROM lexer.audience_history WHERE audience_slug = ? AND snapshot_date = ?",
                            [audience.slug, day]).fetchall()[0][0]
        return SnapshotStats(day, int(size), None, None, object_prefix)
    size, entered, exited = conn.execute(
        """
        WITH today AS (SELECT customer_id FROM lexer.audience_membership
                       WHERE audience_slug = $slug AND snapshot_date = $day),
             before AS (SELECT customer_id FROM lexer.audience_membership
                        WHERE audience_slug = $slug AND snapshot_date = $previous)
        SELECT (SELECT count(*) FROM today),
               (SELECT count(*) FROM (SELECT * FROM today EXCEPT SELECT * FROM before)),
               (SELECT count(*) FROM (SELECT * FROM before EXCEPT SELECT * FROM today))
        """, {"slug": audience.slug, "day": day, "previous": previous}).fetchall()[0]
    computed_at = conn.execute(
        "SELECT max(materialized_at) FROM lexer.audience_history WHERE audience_slug = ? AND snapshot_date = ?",
        [audience.slug, day]).fetchall()[0][0] if recount_only else None
    conn.execute("DELETE FROM lexer.audience_history WHERE audience_slug = ? AND snapshot_date = ?",
                 [audience.slug, day])
    if _list_pruned(conn, audience.slug, previous):
        entered = exited = None
    conn.execute("INSERT INTO lexer.audience_history VALUES (?, ?, ?, ?, ?, ?, ?, coalesce(?, now()::TIMESTAMP))",
                 [audience.slug, audience.name, day, size, entered, exited, object_prefix, computed_at])
    return SnapshotStats(day, int(size), None if entered is None else int(entered),
                         None if exited is None else int(exited), object_prefix)


# ------------------------------------------------------------------------------------------------ retention

def sync_day(conn: duckdb.DuckDBPyConnection, slug: str, today: dt.date) -> dt.date | None:
    """The stored day the sync reads for an audience: its newest day not after ``today`` (a later day is a
    mistyped backfill and never reaches Braze); None before the first partition."""
    return conn.execute(
        "SELECT max(snapshot_date) FROM lexer.audience_history WHERE audience_slug = ? AND snapshot_date <= ?",
        [slug, today]).fetchall()[0][0]


def membership_cutoff(conn: duckdb.DuckDBPyConnection, slug: str, retention_days: int,
                      computing: Sequence[dt.date] = ()) -> dt.date | None:
    """The first day whose member list is kept: ``retention_days`` back from the audience's newest day
    (stored, or among ``computing``, the days about to be stored). None when it has no day at all."""
    newest = conn.execute("SELECT max(snapshot_date) FROM lexer.audience_history WHERE audience_slug = ?",
                          [slug]).fetchall()[0][0]
    newest = max([d for d in (newest, *computing) if d is not None], default=None)
    return None if newest is None else newest - dt.timedelta(days=retention_days - 1)


def prune_membership(conn: duckdb.DuckDBPyConnection, slug: str, *, cutoff: dt.date, today: dt.date) -> int:
    """Delete the audience's member lists of days before ``cutoff``, except the day the sync reads
    (``sync_day``); history rows stay. Returns the member rows deleted."""
    keep = sync_day(conn, slug, today)
    return conn.execute(
        "DELETE FROM lexer.audience_membership WHERE audience_slug = ? AND snapshot_date < ? "
        "AND snapshot_date IS DISTINCT FROM ?", [slug, cutoff, keep]).fetchall()[0][0]


def materialize_days(conn: duckdb.DuckDBPyConnection, audience: Audience, audiences: Sequence[Audience],
                     days: Sequence[dt.date], thresholds: LifecycleThresholds, *, home: Path,
                     cache_dir: Path | None) -> list[SnapshotStats]:
    """Compute and store ``days`` of one audience on an open hub connection (not inside a transaction).

    Days are grouped by the export they use; each group is one transaction (a day is never half stored).
    Raises AudienceError before writing anything when the rules do not compile.
    """
    compiled = compile_for(audience, audiences)
    need_orders = uses_orders(compiled)
    days = sorted(set(days))
    plan = [(day, export_for_day(conn, day)) for day in days]
    computed: list[str] = []

    def fingerprint() -> str:
        if not computed:
            computed.append(inputs_fingerprint(conn, thresholds))
        return computed[0]

    results: list[SnapshotStats] = []
    for choice, group in itertools.groupby(plan, key=lambda item: item[1]):
        source = attach_export(conn, choice, home=home, cache_dir=cache_dir or home / "cache")
        try:
            conn.execute("BEGIN TRANSACTION")
            try:
                for day, _ in group:
                    how = prepare_day(conn, day, thresholds, source=source, cache_dir=cache_dir,
                                      fingerprint=fingerprint if cache_dir is not None else None,
                                      with_orders=need_orders)
                    s = store_snapshot(conn, audience, audiences, day, choice, compiled)
                    results.append(dataclasses.replace(s, profiles_source=how))
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            detach_source(conn, source)
    return results
