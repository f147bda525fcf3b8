"""The emulator's workspace: users, segments, API keys and running exports, in one SQLite file.

SQLite in WAL mode with a busy timeout, so the state survives restarts and several processes (a served
emulator, Dagster step processes using it in-process, tests) can share it. Users are stored as Braze's export
object, split in two JSON columns (profile and custom_attributes) because /users/track rewrites only the
latter, which keeps the hot path cheap.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lexer_assets.braze.emulator.track_semantics import (
    STANDARD_ATTRIBUTES,
    AttributeOps,
    InvalidObject,
    collect_ops,
    identity_of,
)

ALL_PERMISSIONS = ("users.track", "users.export.segment", "users.export.ids", "segments.list")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY,
    external_id TEXT UNIQUE,
    braze_id TEXT UNIQUE NOT NULL,
    email TEXT,
    phone TEXT,
    profile TEXT NOT NULL,
    custom TEXT
);
CREATE INDEX IF NOT EXISTS users_email ON users(email);
CREATE INDEX IF NOT EXISTS users_phone ON users(phone);
CREATE TABLE IF NOT EXISTS user_aliases (
    alias_label TEXT NOT NULL,
    alias_name TEXT NOT NULL,
    user_id INTEGER NOT NULL,
    PRIMARY KEY (alias_label, alias_name)
);
CREATE TABLE IF NOT EXISTS segments (
    seq INTEGER PRIMARY KEY,
    id TEXT UNIQUE NOT NULL,
    name TEXT NOT NULL,
    rule TEXT NOT NULL,
    analytics_tracking_enabled INTEGER NOT NULL DEFAULT 0,
    tags TEXT NOT NULL DEFAULT '[]',
    archived INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS api_keys (
    key_hash TEXT PRIMARY KEY,
    permissions TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS exports (
    object_prefix TEXT PRIMARY KEY,
    segment_id TEXT NOT NULL,
    status TEXT NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL,
    files INTEGER,
    users INTEGER,
    error TEXT
);
"""


def _key_hash(key: str) -> str:
    # Only a hash is stored, so the state file never holds a usable key.
    return hashlib.sha256(key.encode()).hexdigest()


def _braze_id_for(seed: str) -> str:
    return hashlib.md5(seed.encode()).hexdigest()[:24]


def identity_key(user: Mapping) -> str:
    """The hub's customer key for a Braze user: external_id, else 'braze:<id>', else 'alias:<label>:<name>'."""
    if user.get("external_id"):
        return str(user["external_id"])
    if user.get("braze_id"):
        return f"braze:{user['braze_id']}"
    aliases = _aliases_of(user)
    if aliases:
        return f"alias:{aliases[0][0]}:{aliases[0][1]}"
    return ""


def _aliases_of(user: Mapping) -> list[tuple[str, str]]:
    raw = user.get("user_aliases")
    if isinstance(raw, Mapping):
        raw = [raw]
    out = []
    for a in raw or ():
        if isinstance(a, Mapping) and a.get("alias_label") and a.get("alias_name"):
            out.append((str(a["alias_label"]), str(a["alias_name"])))
    return out


def _merge(profile_json: str, custom_json: str | None) -> dict:
    user = json.loads(profile_json)
    if custom_json:
        user["custom_attributes"] = json.loads(custom_json)
    return user


@dataclass(frozen=True)
class TrackOutcome:
    processed: int
    errors: list[dict]  # Braze partial errors: {"type", "input_array", "index"}
    # (user identity key, attribute, value) for every array add of a value the user already held
    readds: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)


def segment_matches(rule: str, user: Mapping) -> bool:
    """Whether ``user`` is in a segment with ``rule`` (the emulator's small rule language)."""
    if rule == "all":
        return True
    if rule == "has_email":
        return bool(user.get("email"))
    if rule == "email_opted_in":
        return user.get("email_subscribe") == "opted_in"
    if rule.startswith("attribute_includes:"):
        _, attr, value = rule.split(":", 2)
        current = (user.get("custom_attributes") or {}).get(attr)
        return isinstance(current, list) and value in current
    raise ValueError(f"unknown segment rule {rule!r}")


class EmulatorState:
    """The emulated Braze workspace, persisted under ``state_dir`` (``braze.sqlite``)."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.state_dir / "braze.sqlite"
        self._local = threading.local()
        self._conn().executescript(_SCHEMA)

    def __repr__(self) -> str:
        return f"EmulatorState({str(self.state_dir)!r})"

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
        return conn

    class _Tx:
        def __init__(self, conn: sqlite3.Connection) -> None:
            self.conn = conn

        def __enter__(self) -> sqlite3.Connection:
            self.conn.execute("BEGIN IMMEDIATE")
            return self.conn

        def __exit__(self, exc_type: object, *_: object) -> None:
            self.conn.execute("ROLLBACK" if exc_type else "COMMIT")

    def _tx(self) -> EmulatorState._Tx:
        return EmulatorState._Tx(self._conn())

    # ---- setup -----------------------------------------------------------------------------------------
    def seed(self, users: Iterable[dict], *, segment_id: str, api_key: str) -> int:
        """Replace all users with ``users`` (Braze export-shaped dicts); create segment ``segment_id``
        ("All Users") and a few others, and an API key with every permission. Returns users stored.

        Users repeating an already seen external_id or braze_id are skipped (Braze has one profile each).
        """
        seen_external: set[str] = set()
        seen_braze: set[str] = set()
        alias_rows: list[tuple[str, str, int]] = []

        def rows() -> Iterator[tuple]:
            next_id = 1
            for user in users:
                user = dict(user)
                external_id = user.get("external_id")
                if external_id is not None:
                    external_id = str(external_id)
                    if external_id in seen_external:
                        continue
                braze_id = user.get("braze_id") or _braze_id_for(
                    external_id or json.dumps(user.get("user_aliases"), sort_keys=True) or str(next_id)
                )
                if braze_id in seen_braze:
                    continue
                user["braze_id"] = braze_id
                if external_id is not None:
                    seen_external.add(external_id)
                seen_braze.add(braze_id)
                custom = user.pop("custom_attributes", None)
                for label, name in _aliases_of(user):
                    alias_rows.append((label, name, next_id))
                email = user.get("email")
                yield (
                    next_id,
                    external_id,
                    braze_id,
                    email.strip().lower() if isinstance(email, str) else None,
                    user.get("phone"),
                    json.dumps(user, separators=(",", ":")),
                    json.dumps(custom, separators=(",", ":")) if custom else None,
                )
                next_id += 1

        conn = self._conn()
        conn.execute("PRAGMA synchronous=OFF")
        try:
            with self._tx() as c:
                c.execute("DELETE FROM users")
                c.execute("DELETE FROM user_aliases")
                cur = c.executemany("INSERT INTO users VALUES (?,?,?,?,?,?,?)", rows())
                count = cur.rowcount
                c.executemany("INSERT OR IGNORE INTO user_aliases VALUES (?,?,?)", alias_rows)
                self._seed_segments(c, segment_id)
        finally:
            conn.execute("PRAGMA synchronous=NORMAL")
        self.add_api_key(api_key, ALL_PERMISSIONS)
        return count

    def _seed_segments(self, conn: sqlite3.Connection, segment_id: str) -> None:
        segments = [
            (segment_id, "All Users", "all", 1, ["export"]),
            (str(uuid.uuid5(uuid.NAMESPACE_URL, "emulator/has-email")), "Has email", "has_email", 0, []),
            (
                str(uuid.uuid5(uuid.NAMESPACE_URL, "emulator/email-opted-in")),
                "Email opted in",
                "email_opted_in",
                0,
                ["email"],
            ),
        ]
        for sid, name, rule, tracking, tags in segments:
            conn.execute(
                "INSERT INTO segments (id, name, rule, analytics_tracking_enabled, tags) VALUES (?,?,?,?,?) "
                "ON CONFLICT(id) DO UPDATE SET name=excluded.name, rule=excluded.rule, archived=0",
                (sid, name, rule, tracking, json.dumps(tags)),
            )

    def add_segment(
        self, segment_id: str, name: str, rule: str = "all", *, archived: bool = False, tags: Iterable[str] = ()
    ) -> None:
        """Create or replace a segment (rules: all, has_email, email_opted_in, attribute_includes:A:V)."""
        segment_matches(rule, {})  # validates the rule
        with self._tx() as c:
            c.execute(
                "INSERT INTO segments (id, name, rule, tags, archived) VALUES (?,?,?,?,?) ON CONFLICT(id) "
                "DO UPDATE SET name=excluded.name, rule=excluded.rule, tags=excluded.tags, "
                "archived=excluded.archived",
                (segment_id, name, rule, json.dumps(list(tags)), int(archived)),
            )

    def add_api_key(self, key: str, permissions: Iterable[str]) -> None:
        """Create (or replace) an API key with exactly ``permissions``."""
        perms = sorted(set(permissions))
        unknown = set(perms) - set(ALL_PERMISSIONS)
        if unknown:
            raise ValueError(f"unknown permission(s) {sorted(unknown)}; known: {', '.join(ALL_PERMISSIONS)}")
        with self._tx() as c:
            c.execute("INSERT OR REPLACE INTO api_keys VALUES (?, ?)", (_key_hash(key), json.dumps(perms)))

    def key_permissions(self, key: str) -> frozenset[str] | None:
        """Permissions of ``key``, or None if the key does not exist."""
        row = self._conn().execute("SELECT permissions FROM api_keys WHERE key_hash = ?", (_key_hash(key),)).fetchone()
        return None if row is None else frozenset(json.loads(row[0]))

    # ---- reading ---------------------------------------------------------------------------------------
    def users(self) -> Iterator[dict]:
        """Every stored user as Braze's export object (custom attributes included)."""
        cur = self._conn().execute("SELECT profile, custom FROM users ORDER BY id")
        for profile, custom in cur:
            yield _merge(profile, custom)

    def user_count(self) -> int:
        return self._conn().execute("SELECT count(*) FROM users").fetchone()[0]

    def attribute_values(self, attribute: str) -> dict[str, list]:
        """identity key (see ``identity_key``) -> value of custom attribute ``attribute``, users having it."""
        out: dict[str, Any] = {}
        cur = self._conn().execute("SELECT profile, custom FROM users WHERE custom IS NOT NULL ORDER BY id")
        for profile, custom in cur:
            attrs = json.loads(custom)
            if attribute in attrs and attrs[attribute] is not None:
                out[identity_key(json.loads(profile))] = attrs[attribute]
        return out

    def segments(self) -> list[dict]:
        """Non-archived segments in creation order, shaped like /segments/list entries."""
        cur = self._conn().execute(
            "SELECT id, name, analytics_tracking_enabled, tags FROM segments WHERE archived = 0 ORDER BY seq"
        )
        return [
            {"id": i, "name": n, "analytics_tracking_enabled": bool(a), "tags": json.loads(t)} for i, n, a, t in cur
        ]

    def segment_rule(self, segment_id: str) -> str | None:
        row = self._conn().execute("SELECT rule FROM segments WHERE id = ? AND archived = 0", (segment_id,)).fetchone()
        return None if row is None else row[0]

    def segment_users(self, segment_id: str) -> Iterator[dict]:
        rule = self.segment_rule(segment_id)
        if rule is None:
            raise KeyError(segment_id)
        # A connection of its own: the export may run in a thread while track requests write.
        conn = sqlite3.connect(self.path, timeout=30.0)
        try:
            for profile, custom in conn.execute("SELECT profile, custom FROM users ORDER BY id"):
                user = _merge(profile, custom)
                if segment_matches(rule, user):
                    yield user
        finally:
            conn.close()

    def lookup(
        self,
        *,
        external_ids: Iterable[str] = (),
        aliases: Iterable[tuple[str, str]] = (),
        braze_id: str | None = None,
        email: str | None = None,
        phone: str | None = None,
    ) -> tuple[list[dict], list[str]]:
        """Users for /users/export/ids, and the external ids not found."""
        conn = self._conn()
        found: dict[int, dict] = {}
        missing: list[str] = []
        for eid in external_ids:
            row = conn.execute("SELECT id, profile, custom FROM users WHERE external_id = ?", (eid,)).fetchone()
            if row is None:
                missing.append(eid)
            else:
                found[row[0]] = _merge(row[1], row[2])
        queries = [
            (
                "SELECT u.id, u.profile, u.custom FROM user_aliases a JOIN users u ON u.id = a.user_id "
                "WHERE a.alias_label = ? AND a.alias_name = ?",
                a,
            )
            for a in aliases
        ]
        if braze_id:
            queries.append(("SELECT id, profile, custom FROM users WHERE braze_id = ?", (braze_id,)))
        if email:
            queries.append(("SELECT id, profile, custom FROM users WHERE email = ?", (email.strip().lower(),)))
        if phone:
            queries.append(("SELECT id, profile, custom FROM users WHERE phone = ?", (phone,)))
        for sql, params in queries:
            for uid, profile, custom in conn.execute(sql, params):
                found[uid] = _merge(profile, custom)
        return list(found.values()), missing

    # ---- /users/track ----------------------------------------------------------------------------------
    def _resolve(self, conn: sqlite3.Connection, kind: str, value: Any) -> int | None:
        if kind == "user_alias":
            row = conn.execute(
                "SELECT user_id FROM user_aliases WHERE alias_label = ? AND alias_name = ?", value
            ).fetchone()
        else:
            row = conn.execute(f"SELECT id FROM users WHERE {kind} = ? LIMIT 1", (value,)).fetchone()
        return None if row is None else row[0]

    def _create(self, conn: sqlite3.Connection, kind: str, value: Any) -> int:
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        profile: dict[str, Any] = {"created_at": now}
        external_id = email = phone = None
        if kind == "external_id":
            external_id = profile["external_id"] = value
        elif kind == "user_alias":
            profile["user_aliases"] = [{"alias_name": value[1], "alias_label": value[0]}]
        elif kind == "email":
            email = value
            profile["email"] = value
        elif kind == "phone":
            phone = profile["phone"] = value
        profile["braze_id"] = braze_id = _braze_id_for(f"{kind}:{value}:{uuid.uuid4()}")
        cur = conn.execute(
            "INSERT INTO users (external_id, braze_id, email, phone, profile) VALUES (?,?,?,?,?)",
            (external_id, braze_id, email, phone, json.dumps(profile)),
        )
        uid = cur.lastrowid
        if kind == "user_alias":
            conn.execute("INSERT INTO user_aliases VALUES (?,?,?)", (value[0], value[1], uid))
        return uid  # type: ignore[return-value]

    def apply_track(self, attributes: list, *, max_array_length: int) -> TrackOutcome:
        """Apply one /users/track request's ``attributes`` atomically; invalid objects become errors."""
        errors: list[dict] = []
        per_user: dict[int, dict[str, AttributeOps]] = {}
        processed = 0
        with self._tx() as conn:
            for index, obj in enumerate(attributes):
                try:
                    if not isinstance(obj, dict):
                        raise InvalidObject("Attributes object must be a JSON object")
                    kind, value = identity_of(obj)
                    ops: dict[str, AttributeOps] = {}
                    collect_ops(obj, ops)  # validates before the user is touched or created
                    uid = self._resolve(conn, kind, value)
                    if uid is None:
                        if obj.get("_update_existing_only") is True:
                            raise InvalidObject(
                                f"No existing user for {kind} and _update_existing_only is true; no profile was created"
                            )
                        if kind == "braze_id":
                            raise InvalidObject("No user with this braze_id")
                        uid = self._create(conn, kind, value)
                except InvalidObject as exc:
                    errors.append({"type": str(exc), "input_array": "attributes", "index": index})
                    continue
                target = per_user.setdefault(uid, {})
                for key, op in ops.items():  # request-wide per user: adds, then removes, then set
                    target.setdefault(key, AttributeOps()).merge(op)
                processed += 1
            readds: list[tuple[str, str, str]] = []
            if per_user:
                self._write_ops(conn, per_user, max_array_length, readds)
        return TrackOutcome(processed, errors, readds)

    def _write_ops(
        self,
        conn: sqlite3.Connection,
        per_user: dict[int, dict[str, AttributeOps]],
        cap: int,
        readds: list[tuple[str, str, str]] | None = None,
    ) -> None:
        ids = list(per_user)
        rows: dict[int, tuple[str, str | None]] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for uid, profile, custom in conn.execute(
                f"SELECT id, profile, custom FROM users WHERE id IN ({marks})", chunk
            ):
                rows[uid] = (profile, custom)
        updates = []
        for uid, ops in per_user.items():
            profile_json, custom_json = rows[uid]
            custom = json.loads(custom_json) if custom_json else {}
            profile = None
            for key, op in ops.items():
                if key in STANDARD_ATTRIBUTES:
                    profile = profile if profile is not None else json.loads(profile_json)
                    new = op.apply(profile.get(key), cap)
                    if new is None:
                        profile.pop(key, None)
                    else:
                        profile[key] = new
                else:
                    current = custom.get(key)
                    if readds is not None and op.adds and isinstance(current, list):
                        who = identity_key(json.loads(profile_json))
                        readds.extend((who, key, str(v)) for v in op.adds if v in current)
                    new = op.apply(current, cap)
                    if new is None:
                        custom.pop(key, None)
                    else:
                        custom[key] = new
            new_profile = profile_json if profile is None else json.dumps(profile, separators=(",", ":"))
            email = profile.get("email") if profile is not None else None
            updates.append(
                (
                    new_profile,
                    json.dumps(custom, separators=(",", ":")) if custom else None,
                    profile is not None,
                    email.strip().lower() if isinstance(email, str) else None,
                    uid,
                )
            )
        conn.executemany(
            "UPDATE users SET profile = ?, custom = ?, email = CASE WHEN ? THEN ? ELSE email END WHERE id = ?", updates
        )

    # ---- exports -----------------------------------------------------------------------------------------
    def start_export(self, segment_id: str, object_prefix: str, *, stale_after_s: float = 900.0) -> bool:
        """Record a running export; False if one for this segment is already running."""
        now = time.time()
        with self._tx() as c:
            running = c.execute(
                "SELECT 1 FROM exports WHERE segment_id = ? AND status = 'running' AND started_at > ?",
                (segment_id, now - stale_after_s),
            ).fetchone()
            if running:
                return False
            c.execute(
                "INSERT INTO exports (object_prefix, segment_id, status, started_at) VALUES (?,?,?,?)",
                (object_prefix, segment_id, "running", now),
            )
            return True

    def finish_export(self, object_prefix: str, *, files: int, users: int, error: str | None = None) -> None:
        with self._tx() as c:
            c.execute(
                "UPDATE exports SET status = ?, finished_at = ?, files = ?, users = ?, error = ? "
                "WHERE object_prefix = ?",
                ("failed" if error else "done", time.time(), files, users, error, object_prefix),
            )

    def exports(self) -> list[dict]:
        cur = self._conn().execute(
            "SELECT object_prefix, segment_id, status, started_at, finished_at, files, users, error "
            "FROM exports ORDER BY started_at"
        )
        cols = ("object_prefix", "segment_id", "status", "started_at", "finished_at", "files", "users", "error")
        return [dict(zip(cols, row, strict=True)) for row in cur]
