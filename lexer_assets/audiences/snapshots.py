"""One audience, one day: compute its members as of that day and keep membership and history tables right.

A partition for day D is the membership as of D: profiles are recomputed as of D (orders after D ignored)
unless the stored profile table is already as of D, and rule time windows use D as "today". Re-running a day
replaces it; a day with no members is stored as a history row of size 0.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import duckdb

from lexer_assets.audiences.rules import compile_audience
from lexer_assets.audiences.spec import Audience
from lexer_assets.profiles.build import LifecycleThresholds, build_profiles, create_attributed_orders
from lexer_assets.storage.catalog import CUSTOMER_PROFILES

PROFILE_COLUMNS: dict[str, str] = {c.name: c.type for c in CUSTOMER_PROFILES.columns}
_PROFILES_REL = "profiles_asof"
_ORDERS_REL = "orders_asof"


@dataclass(frozen=True)
class SnapshotStats:
    snapshot_date: dt.date
    size: int
    entered: int
    exited: int
    object_prefix: str | None


def prepare_day(conn: duckdb.DuckDBPyConnection, as_of: dt.date, thresholds: LifecycleThresholds) -> None:
    """Create the relations rules run on (profiles and attributed orders as of the day) in this connection."""
    stored_as_of = conn.sql("SELECT max(as_of_date) FROM lexer.customer_profiles").fetchall()[0][0]
    if stored_as_of == as_of:
        conn.execute(f"CREATE OR REPLACE TEMP VIEW {_PROFILES_REL} AS SELECT * FROM lexer.customer_profiles")
    else:
        conn.execute(f"DROP VIEW IF EXISTS {_PROFILES_REL}")
        build_profiles(conn, as_of=as_of, thresholds=thresholds, target=_PROFILES_REL)
    create_attributed_orders(conn, as_of=as_of, name=_ORDERS_REL)


def store_snapshot(conn: duckdb.DuckDBPyConnection, audience: Audience, audiences: Sequence[Audience],
                   as_of: dt.date) -> SnapshotStats:
    """Replace the audience's membership for ``as_of`` (relations from ``prepare_day`` must exist)."""
    compiled = compile_audience(audience, audiences, PROFILE_COLUMNS, profiles=_PROFILES_REL,
                                orders=_ORDERS_REL, as_of=as_of)
    conn.execute("DELETE FROM lexer.audience_membership WHERE audience_slug = ? AND snapshot_date = ?",
                 [audience.slug, as_of])
    conn.execute(
        f"INSERT INTO lexer.audience_membership SELECT DISTINCT ?, ?, ?::DATE, customer_id FROM ({compiled.sql})",
        [audience.slug, audience.name, as_of, *compiled.params],
    )
    object_prefix = conn.sql("SELECT any_value(object_prefix) FROM braze.users").fetchall()[0][0]
    stats = refresh_history(conn, audience, as_of, object_prefix)
    # The next stored day's entered/exited were counted against the previous day, which may just have changed.
    following = conn.execute(
        "SELECT min(snapshot_date) FROM lexer.audience_history WHERE audience_slug = ? AND snapshot_date > ?",
        [audience.slug, as_of]).fetchall()[0][0]
    if following is not None:
        kept = conn.execute("SELECT object_prefix FROM lexer.audience_history WHERE audience_slug = ? "
                            "AND snapshot_date = ?", [audience.slug, following]).fetchall()[0][0]
        refresh_history(conn, audience, following, kept)
    return stats


def refresh_history(conn: duckdb.DuckDBPyConnection, audience: Audience, day: dt.date,
                    object_prefix: str | None) -> SnapshotStats:
    """Recount size/entered/exited of one stored day against the previous stored day."""
    previous = conn.execute(
        "SELECT max(snapshot_date) FROM lexer.audience_history WHERE audience_slug = ? AND snapshot_date < ?",
        [audience.slug, day]).fetchall()[0][0]
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
    conn.execute("DELETE FROM lexer.audience_history WHERE audience_slug = ? AND snapshot_date = ?",
                 [audience.slug, day])
    conn.execute("INSERT INTO lexer.audience_history VALUES (?, ?, ?, ?, ?, ?, ?, now()::TIMESTAMP)",
                 [audience.slug, audience.name, day, size, entered, exited, object_prefix])
    return SnapshotStats(day, int(size), int(entered), int(exited), object_prefix)
