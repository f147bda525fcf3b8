"""How the sync names a customer to Braze, and recognises the users Braze sends back.

The hub's customer key is the external_id; for users without one, ``braze:<braze_id>``, else
``alias:<alias_label>:<alias_name>`` (see ``storage/catalog.IDENTITY``). Customers no longer in the export are
addressed from that key alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

IDENTITY_COLUMNS = ("customer_id", "external_id", "braze_id", "alias_name", "alias_label")


class ProfileReader(Protocol):
    """What reading users back needs of a Braze client (/users/export/ids)."""

    def export_ids(self, *, external_ids: Sequence[str] = (), user_aliases: Sequence[dict] = (),
                   braze_ids: Sequence[str] = (), fields_to_export: Sequence[str] | None = None
                   ) -> list[dict]: ...


def fill_from_key(row: dict) -> dict:
    """Fill the identity columns of a customer missing from the export from the hub's customer key."""
    if any(row.get(k) for k in ("external_id", "braze_id", "alias_name")):
        return row
    key: str = row["customer_id"]
    if key.startswith("braze:"):
        row["braze_id"] = key[len("braze:"):]
    elif key.startswith("alias:") and key.count(":") >= 2:
        _, label, name = key.split(":", 2)
        row["alias_label"], row["alias_name"] = label, name
    else:
        row["external_id"] = key
    return row


def track_identity(row: dict) -> dict:
    """The identifier part of a /users/track object: external_id, else the alias, else braze_id."""
    if row.get("external_id"):
        return {"external_id": row["external_id"]}
    if row.get("alias_name") and row.get("alias_label"):
        return {"user_alias": {"alias_name": row["alias_name"], "alias_label": row["alias_label"]}}
    if row.get("braze_id"):
        return {"braze_id": row["braze_id"]}
    return {}


def lookup_key(row: dict) -> str:
    """The key a row is looked up by (matches one of ``keys_of`` for the Braze user it names)."""
    if row.get("external_id"):
        return f"external:{row['external_id']}"
    if row.get("alias_name") and row.get("alias_label"):
        return f"alias:{row['alias_label']}:{row['alias_name']}"
    return f"braze:{row.get('braze_id')}"


def keys_of(user: dict) -> list[str]:
    """Every key a user from /users/export/ids can be recognised by."""
    keys = []
    if user.get("external_id"):
        keys.append(f"external:{user['external_id']}")
    if user.get("braze_id"):
        keys.append(f"braze:{user['braze_id']}")
    aliases = user.get("user_aliases") or []
    if isinstance(aliases, dict):
        aliases = [aliases]
    for alias in aliases:
        if isinstance(alias, dict) and alias.get("alias_name") and alias.get("alias_label"):
            keys.append(f"alias:{alias['alias_label']}:{alias['alias_name']}")
    return keys


def read_back(reader: ProfileReader, rows: Iterable[dict], attribute: str) -> dict[str, list[str] | None]:
    """customer_id -> the values Braze holds in ``attribute`` (None: Braze has no such user)."""
    rows = list(rows)
    by_external = [r["external_id"] for r in rows if r.get("external_id")]
    by_alias = [{"alias_name": r["alias_name"], "alias_label": r["alias_label"]} for r in rows
                if not r.get("external_id") and r.get("alias_name") and r.get("alias_label")]
    by_braze = [r["braze_id"] for r in rows
                if not r.get("external_id") and not (r.get("alias_name") and r.get("alias_label"))
                and r.get("braze_id")]
    found = reader.export_ids(external_ids=by_external, user_aliases=by_alias, braze_ids=by_braze,
                              fields_to_export=["external_id", "braze_id", "user_aliases", "custom_attributes"])
    held: dict[str, list[str]] = {}
    for user in found:
        values = (user.get("custom_attributes") or {}).get(attribute)
        values = [] if values is None else (list(values) if isinstance(values, list) else [values])
        for key in keys_of(user):
            held[key] = [str(v) for v in values]
    return {r["customer_id"]: held.get(lookup_key(r)) for r in rows}
