"""Braze's /users/track attribute semantics as pure functions (the emulator's state layer applies them).

- Arrays hold unique values; adding a present value moves it to the end; past the maximum length the oldest
  values are dropped silently.
- Within one request, for one user and one attribute: all ``add`` first, then all ``remove``, then a set
  (a whole array, a scalar or null), whichever objects they came in.
- Keys longer than 255 characters make the object invalid; string values are cut to 255 characters.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

MAX_STRING = 255
IDENTIFIER_KEYS = ("external_id", "user_alias", "braze_id", "email", "phone")
# Keys of an attributes object that steer processing rather than set an attribute.
CONTROL_KEYS = frozenset({"_update_existing_only", "_merge_objects", "push_token_import"})
# Standard (non-custom) attributes: they live at the top level of the exported user object.
STANDARD_ATTRIBUTES = frozenset(
    {
        "first_name",
        "last_name",
        "email",
        "phone",
        "dob",
        "gender",
        "country",
        "home_city",
        "language",
        "time_zone",
        "email_subscribe",
        "push_subscribe",
        "bio",
        "image_url",
        "current_location",
        "date_of_first_session",
        "date_of_last_session",
        "email_open_tracking_disabled",
        "email_click_tracking_disabled",
    }
)
_UNSET = object()


class InvalidObject(ValueError):
    """The attributes object cannot be applied; ``str()`` is the error ``type`` Braze-style."""


def identity_of(obj: Mapping) -> tuple[str, Any]:
    """The identifier Braze resolves the object by: (kind, value). Raises InvalidObject when missing."""
    for kind in ("external_id", "braze_id"):
        value = obj.get(kind)
        if value is not None:
            if not isinstance(value, str) or not value.strip():
                raise InvalidObject(f"'{kind}' must be a non-empty string")
            return kind, value
    alias = obj.get("user_alias")
    if alias is not None:
        if not (
            isinstance(alias, Mapping)
            and isinstance(alias.get("alias_name"), str)
            and isinstance(alias.get("alias_label"), str)
            and alias["alias_name"]
            and alias["alias_label"]
        ):
            raise InvalidObject("'user_alias' must have non-empty 'alias_name' and 'alias_label'")
        return "user_alias", (alias["alias_label"], alias["alias_name"])
    for kind in ("email", "phone"):
        value = obj.get(kind)
        if isinstance(value, str) and value.strip():
            return kind, (value.strip().lower() if kind == "email" else value.strip())
    raise InvalidObject(
        "Missing identifier: one of 'external_id', 'user_alias', 'braze_id', 'email' or 'phone' is required"
    )


def clip(value: Any) -> Any:
    """Cut strings (also inside arrays) to Braze's 255 characters."""
    if isinstance(value, str):
        return value[:MAX_STRING]
    if isinstance(value, list):
        return [clip(v) for v in value]
    return value


def add_values(current: list, values: list, cap: int) -> list:
    """Append ``values`` uniquely (a present value moves to the end), then drop the oldest past ``cap``."""
    result = list(current)
    for v in values:
        if v in result:
            result.remove(v)
        result.append(v)
    return result[-cap:] if len(result) > cap else result


def remove_values(current: list, values: list) -> list:
    return [v for v in current if v not in values]


@dataclass
class AttributeOps:
    """What one request does to one attribute of one user, in Braze's order: add, remove, then set."""

    adds: list = field(default_factory=list)
    removes: list = field(default_factory=list)
    set_value: Any = _UNSET
    increment: float = 0

    def merge(self, later: AttributeOps) -> None:
        """Fold the ops of a later object of the same request into these."""
        self.adds.extend(later.adds)
        self.removes.extend(later.removes)
        self.increment += later.increment
        if later.set_value is not _UNSET:
            self.set_value = later.set_value

    def apply(self, current: Any, cap: int) -> Any:
        """New value of the attribute (``None`` means remove it)."""
        value = current
        if self.increment:
            value = value if isinstance(value, int | float) and not isinstance(value, bool) else 0
            value = value + self.increment
        if self.adds or self.removes:
            array = value if isinstance(value, list) else ([] if value is None else [value])
            array = add_values(array, self.adds, cap)
            value = remove_values(array, self.removes)
        if self.set_value is not _UNSET:
            value = self.set_value
            if isinstance(value, list):
                value = add_values([], value, cap) if value else None
        return value


def collect_ops(obj: Mapping, into: dict[str, AttributeOps]) -> None:
    """Fold one attributes object's updates into ``into`` (attribute name -> ops). Raises InvalidObject."""
    updates: list[tuple[str, Any]] = []
    for key, value in obj.items():
        if key in IDENTIFIER_KEYS or key in CONTROL_KEYS:
            continue
        if not isinstance(key, str) or not key or len(key) > MAX_STRING:
            raise InvalidObject(f"Invalid attribute key (must be 1-{MAX_STRING} characters): {str(key)[:40]!r}")
        updates.append((key, value))
    # Validate everything before recording anything: an invalid object changes nothing.
    parsed: list[tuple[str, str, Any]] = []
    for key, value in updates:
        if isinstance(value, Mapping):
            if value and set(value) <= {"add", "remove"}:
                adds, removes = value.get("add", []), value.get("remove", [])
                if not isinstance(adds, list) or not isinstance(removes, list):
                    raise InvalidObject(f"'{key}': 'add' and 'remove' must be arrays")
                parsed.append(("ops", key, (clip(adds), clip(removes))))
            elif set(value) == {"inc"} and isinstance(value["inc"], int | float):
                parsed.append(("inc", key, value["inc"]))
            elif set(value) == {"$time"}:
                parsed.append(("set", key, clip(value["$time"])))
            else:
                parsed.append(("set", key, dict(value)))  # nested custom attribute object
        else:
            parsed.append(("set", key, clip(value)))
    for kind, key, payload in parsed:
        ops = into.setdefault(key, AttributeOps())
        if kind == "ops":
            ops.adds.extend(payload[0])
            ops.removes.extend(payload[1])
        elif kind == "inc":
            ops.increment += payload
        else:
            ops.set_value = payload
