"""Pure helpers for /users/track: identifier validation and cutting objects into capped batches."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

IDENTIFIER_FIELDS = ("external_id", "user_alias", "braze_id", "email", "phone")
BATCH_MODES = ("total", "per_array")


def _nonblank_str(value: object) -> bool:
    return isinstance(value, str) and value.strip() != ""


def identifier_problem(obj: object) -> str | None:
    """Why ``obj`` cannot be sent to /users/track as an attributes object, or None if it can.

    Braze needs one of external_id, user_alias {alias_name, alias_label}, braze_id, email or phone; a
    blank or wrongly typed identifier counts as missing (Braze would refuse it anyway, after a round trip).
    """
    if type(obj) is dict and "user_alias" not in obj:  # fast path for the common case (hot loop)
        external_id = obj.get("external_id")
        if type(external_id) is str and external_id.strip():
            return None
    if not isinstance(obj, Mapping):
        return f"not a JSON object (got {type(obj).__name__})"
    alias = obj.get("user_alias")
    if alias is not None and not (
        isinstance(alias, Mapping)
        and _nonblank_str(alias.get("alias_name"))
        and _nonblank_str(alias.get("alias_label"))
    ):
        return "user_alias must be an object with non-empty alias_name and alias_label"
    if any(_nonblank_str(obj.get(f)) for f in ("external_id", "braze_id", "email", "phone")) or alias:
        return None
    present = [f for f in IDENTIFIER_FIELDS if f in obj]
    if present:
        return f"identifier {', '.join(present)} is empty or not a string"
    return "no identifier: needs one of external_id, user_alias, braze_id, email, phone"


def serialisation_problem(obj: Mapping) -> str | None:
    """Why ``obj`` cannot be encoded as JSON, or None."""
    try:
        json.dumps(obj, allow_nan=False)
    except (TypeError, ValueError) as exc:
        return f"not JSON-serialisable: {exc}"
    return None


@dataclass(frozen=True)
class Batch:
    """Positions (into the caller's input sequence) of the objects that travel in one request."""

    number: int
    indices: tuple[int, ...]


def plan_batches(indices: Sequence[int], cap: int, *, first_number: int = 0) -> Iterator[Batch]:
    """Cut ``indices`` into consecutive batches of at most ``cap`` (the last one may be shorter).

    Attribute-only requests carry a single array, so "total" and "per_array" caps coincide here.
    """
    if cap < 1:
        raise ValueError(f"batch cap must be >= 1, got {cap}")
    for n, start in enumerate(range(0, len(indices), cap)):
        yield Batch(first_number + n, tuple(indices[start : start + cap]))


def request_count(pending: int, cap: int) -> int:
    """How many requests ``pending`` objects need at ``cap`` per request (ceil division)."""
    return -(-pending // cap)
