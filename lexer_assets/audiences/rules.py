"""Audience rules → one parameterised DuckDB query.

Rule reference (what may appear under ``rules:``; a list there means ``all:`` of its items)::

    all: [rule, ...]                          every rule holds
    any: [rule, ...]                          at least one rule holds
    not: rule                                 the rule does not hold
    {column: C, op: OP, value: V}             a condition on a profile column
    ordered_in_last_days: N                   an order dated in the N days ending on the as-of day
    no_order_in_last_days: N                  no such order (customers who never ordered qualify too)
    first_order_within_days: N                the customer's first order falls in the N days ending on as-of
    in_audience: SLUG                         a member of that audience (same day)
    not_in_audience: SLUG                     not a member of that audience

"The N days ending on the as-of day" is ``as_of - N < order_date <= as_of``: N=1 is the as-of day alone,
matching the profile column ``orders_last_90_days``.

Operators: ``=  !=  <  <=  >  >=`` (numbers, text, dates, timestamps; ``=``/``!=`` also booleans),
``in`` / ``not in`` (a non-empty list), ``between`` (``[low, high]``, both ends included), ``is null`` /
``is not null`` (no value), ``contains`` (text: substring, case-sensitive; ``TYPE[]`` lists: element; JSON:
an element of a JSON array or a key of a JSON object; numbers match as JSON text, so 1 and 1.0 differ).
``in_audience`` uses the other audience's rules for the same day, whether or not that audience is enabled.

Null semantics (the one thing to know): a condition on a column that is null is *false*, except ``is null``.
So ``{column: country, op: '!=', value: AU}`` leaves out customers with no country, while
``not: {column: country, op: '=', value: AU}`` includes them. ``not`` is plain negation of a true/false rule.

Values must match the column's type: numbers for numeric columns, text for text columns (quote YAML words
like ``yes``/``no``/``on``, which YAML reads as booleans), ``YYYY-MM-DD`` dates for DATE columns, dates or ISO
date-times for TIMESTAMP columns, true/false for BOOLEAN columns. A date or timestamp value may also be
relative to the as-of day: ``{days_ago: N}`` is the date N days before it, so
``{column: dob, op: '>', value: {days_ago: 6570}}`` and ``{column: braze_created_at, op: '>=', value:
{days_ago: 7}}`` work for any partition day (a timestamp is compared with midnight of that date).
Text values of categorical columns (rfm_segment, lifecycle_stage, email_subscribe, ...) must be values
the profile build really produces (:data:`PROFILE_VALUE_SETS`).

Safety: column names are looked up in the known-column mapping and only the mapping's own key is written into
the SQL, as a quoted identifier; every value (including N and the as-of day) is a bound ``?`` parameter. An
unknown column is an error; a value is only ever data, so SQL written into a value matches nothing.

The as-of day: the SQL uses it as parameters. ``compile_audience(..., as_of=day)`` returns parameters ready to
execute; without ``as_of`` the parameter list holds :class:`AsOfDate` placeholders and
``CompiledAudience.bind(day)`` fills them in (compile once, run for many days of a backfill).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lexer_assets.audiences.spec import (
    Audience,
    AudienceError,
    AudienceProblem,
    _suggest,
    _type_name,
    line_of,
)
from lexer_assets.profiles import rfm

COMBINATORS = ("all", "any", "not")
WINDOWS = ("ordered_in_last_days", "no_order_in_last_days", "first_order_within_days")
REFERENCES = ("in_audience", "not_in_audience")
RULE_KEYS = (*COMBINATORS, *WINDOWS, *REFERENCES)
CONDITION_KEYS = ("column", "op", "value")
OPERATORS = ("=", "!=", "<", "<=", ">", ">=", "in", "not in", "between", "is null", "is not null", "contains")
_OP_ALIASES = {"==": "=", "<>": "!="}
MAX_WINDOW_DAYS = 36_500  # a century: anything longer is a typo
# Values the profile build writes into categorical columns: a typo here would give an empty audience (and
# for a maintain audience, remove the value from everyone in Braze), so such a value is an error.
PROFILE_VALUE_SETS: dict[str, frozenset[str]] = {
    "rfm_segment": frozenset((*rfm.SEGMENTS, rfm.NO_PURCHASES)),
    "lifecycle_stage": frozenset(("new", "active", "lapsing", "lapsed", "never purchased")),
    "email_subscribe": frozenset(("opted_in", "subscribed", "unsubscribed")),
    "push_subscribe": frozenset(("opted_in", "subscribed", "unsubscribed")),
    "gender": frozenset(("M", "F", "O", "N", "P")),
    "age_band": frozenset(("under 18", "18-24", "25-34", "35-44", "45-54", "55-64", "65+", "unknown")),
}
_RELATION = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?")

_NUMERIC = {"TINYINT", "SMALLINT", "INTEGER", "INT", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER",
            "UBIGINT", "UHUGEINT", "FLOAT", "REAL", "DOUBLE", "DECIMAL", "NUMERIC", "INT1", "INT2", "INT4",
            "INT8", "FLOAT4", "FLOAT8"}
_TEXT = {"VARCHAR", "TEXT", "STRING", "CHAR", "BPCHAR"}
_TIMESTAMP = {"TIMESTAMP", "DATETIME", "TIMESTAMPTZ", "TIMESTAMP WITH TIME ZONE", "TIMESTAMP_S",
              "TIMESTAMP_MS", "TIMESTAMP_NS"}
_ORDERED_KINDS = ("number", "text", "date", "timestamp")
_KIND_OPS: dict[str, tuple[str, ...]] = {
    "number": ("=", "!=", "<", "<=", ">", ">=", "in", "not in", "between", "is null", "is not null"),
    "date": ("=", "!=", "<", "<=", ">", ">=", "in", "not in", "between", "is null", "is not null"),
    "timestamp": ("=", "!=", "<", "<=", ">", ">=", "in", "not in", "between", "is null", "is not null"),
    "text": OPERATORS,
    "boolean": ("=", "!=", "in", "not in", "is null", "is not null"),
    "json": ("contains", "is null", "is not null"),
    "list": ("contains", "is null", "is not null"),
    "other": ("is null", "is not null"),
}


@dataclass(frozen=True)
class AsOfDate:
    """Placeholder parameter: the as-of day minus ``days_before`` days, filled in by ``bind``."""

    days_before: int = 0

    def resolve(self, as_of: dt.date) -> dt.date:
        return as_of - dt.timedelta(days=self.days_before)


@dataclass(frozen=True)
class CompiledAudience:
    """``SELECT DISTINCT p."customer_id" FROM <profiles> AS p WHERE ...`` with positional ``?`` params.

    ``params`` may hold :class:`AsOfDate` placeholders (when compiled without ``as_of``); use ``bind``.
    """

    sql: str
    params: list

    @property
    def needs_as_of(self) -> bool:
        return any(isinstance(p, AsOfDate) for p in self.params)

    def bind(self, as_of: dt.date) -> list:
        """The parameters with every as-of placeholder replaced by a real date (a new list)."""
        return [p.resolve(as_of) if isinstance(p, AsOfDate) else p for p in self.params]

    def count_sql(self) -> str:
        """Query giving the member count (same parameters as ``sql``)."""
        return f"SELECT count(*) AS members FROM ({self.sql}) AS audience"

    def sample_sql(self) -> str:
        """Query giving members in customer_id order; takes one extra trailing parameter: the limit."""
        return f"SELECT customer_id FROM ({self.sql}) AS audience ORDER BY customer_id LIMIT ?"


def column_kind(duckdb_type: str) -> str:
    """number, text, date, timestamp, boolean, json, list or other, from a DuckDB type name."""
    t = " ".join(duckdb_type.upper().split())
    if t.endswith("]"):
        return "list"
    base = t.split("(")[0].strip()
    if base in _NUMERIC:
        return "number"
    if base in _TEXT:
        return "text"
    if base == "DATE":
        return "date"
    if base in _TIMESTAMP:
        return "timestamp"
    if base in ("BOOLEAN", "BOOL", "LOGICAL"):
        return "boolean"
    if base == "JSON":
        return "json"
    return "other"


def _element_kind(duckdb_type: str) -> str:
    t = duckdb_type.strip()
    inner = t[: t.rindex("[")] if t.endswith("]") else t
    return column_kind(inner)


def quote_identifier(name: str) -> str:
    """A DuckDB quoted identifier (only ever applied to names from the known-column mapping)."""
    return '"' + name.replace('"', '""') + '"'


class _NotCoercible(ValueError):
    pass


def _coerce(value: Any, kind: str) -> Any:
    """The Python value to bind for a column of this kind; raises _NotCoercible with a reason."""
    if value is None:
        raise _NotCoercible("null is not a value here (use op: is null / is not null)")
    if isinstance(value, dict) and kind in ("date", "timestamp"):
        return _relative_date(value)
    if isinstance(value, list | dict):
        raise _NotCoercible(f"expected a single value; got {_type_name(value)}")
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _NotCoercible(f"column is numeric; got {_type_name(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise _NotCoercible(f"number must be finite; got {value!r}")
        return value
    if kind == "text":
        if not isinstance(value, str):
            hint = " (quote it in the YAML to mean the text)" if isinstance(value, bool | int | float) else ""
            raise _NotCoercible(f"column is text; got {_type_name(value)}{hint}")
        return value
    if kind == "boolean":
        if not isinstance(value, bool):
            raise _NotCoercible(f"column is true/false; got {_type_name(value)}")
        return value
    if kind == "date":
        if isinstance(value, dt.datetime):
            raise _NotCoercible(f"column is a date; got a date-time {value.isoformat()} (drop the time)")
        if isinstance(value, dt.date):
            return value
        if isinstance(value, str):
            try:
                return dt.date.fromisoformat(value.strip()) if len(value.strip()) == 10 else _bad_date(value)
            except ValueError:
                raise _NotCoercible(f"column is a date; got text {value!r} (write YYYY-MM-DD)") from None
        raise _NotCoercible(f"column is a date; got {_type_name(value)} (write YYYY-MM-DD)")
    if kind == "timestamp":
        if isinstance(value, dt.datetime):
            return _naive_utc(value)
        if isinstance(value, dt.date):
            return dt.datetime(value.year, value.month, value.day)
        if isinstance(value, str):
            try:
                return _naive_utc(dt.datetime.fromisoformat(value.strip()))
            except ValueError:
                raise _NotCoercible(f"column is a timestamp; got text {value!r} (write YYYY-MM-DD or "
                                    f"YYYY-MM-DDTHH:MM:SS)") from None
        raise _NotCoercible(f"column is a timestamp; got {_type_name(value)}")
    raise _NotCoercible("this column's type cannot be compared with a value")


def _after(low: Any, high: Any) -> bool:
    """low > high, where a relative date is compared with another relative date only."""
    if isinstance(low, AsOfDate) and isinstance(high, AsOfDate):
        return low.days_before < high.days_before
    if isinstance(low, AsOfDate) or isinstance(high, AsOfDate):
        return False
    return bool(low > high)


def _relative_date(value: dict) -> AsOfDate:
    days = value.get("days_ago")
    if set(value) != {"days_ago"} or isinstance(days, bool) or not isinstance(days, int) \
            or not 0 <= days <= MAX_WINDOW_DAYS:
        raise _NotCoercible(f"a relative date is written {{days_ago: N}} with N from 0 to {MAX_WINDOW_DAYS}; "
                            f"got {dict(value)!r}")
    return AsOfDate(days)


def _bad_date(value: str) -> dt.date:
    raise ValueError(value)


def _naive_utc(value: dt.datetime) -> dt.datetime:
    # profile timestamps are naive UTC; an explicit offset in the YAML is honoured by converting to UTC
    if value.tzinfo is None:
        return value
    return value.astimezone(dt.UTC).replace(tzinfo=None)


class _Compiler:
    """Walks a rule tree, emitting SQL text and params in the same left-to-right order."""

    def __init__(self, audiences: Sequence[Audience], columns: Mapping[str, str], orders: str,
                 known_values: Mapping[str, Collection[str]]) -> None:
        self.columns = dict(columns)
        self.known_values = known_values
        self.orders = orders
        self.by_slug: dict[str, Audience] = {}
        for a in audiences:
            self.by_slug.setdefault(a.slug, a)
        self.params: list = []
        self.problems: list[AudienceProblem] = []
        self._refs: dict[str, list[str]] = {}

    # ---- helpers ----
    def problem(self, audience: Audience, line: int, fld: str | None, message: str) -> None:
        self.problems.append(AudienceProblem(audience.file, line, audience.label(), fld, message))

    def column_sql(self, name: str) -> str:
        # the identifier comes from the known-column mapping's own key, never from the YAML string
        known = next(k for k in self.columns if k == name)
        return f"p.{quote_identifier(known)}"

    def references_of(self, slug: str) -> list[str]:
        """Slugs that audience's rules refer to (well-formed references only), cached."""
        if slug not in self._refs:
            found: list[str] = []
            _collect_references(self.by_slug[slug].rules, found)
            self._refs[slug] = [s for s in found if s in self.by_slug]
        return self._refs[slug]

    def cycle_through(self, start: str, via: str) -> tuple[str, ...] | None:
        """The path start -> via -> ... -> start when ``via`` leads back to ``start``, else None."""
        paths: dict[str, tuple[str, ...]] = {via: (start, via)}
        queue = [via]
        while queue:
            current = queue.pop(0)
            if current == start:
                return paths[current]
            for nxt in self.references_of(current):
                if nxt not in paths:
                    paths[nxt] = (*paths[current], nxt)
                    queue.append(nxt)
        return None

    # ---- audiences ----
    def audience_predicate(self, audience: Audience, stack: tuple[str, ...]) -> str:
        rules = audience.rules
        if not isinstance(rules, Mapping) or not rules:
            if any(p.field == "rules" for p in audience.problems):
                return "FALSE"  # already reported when the file was read
            self.problem(audience, line_of(rules, None, audience.line) if isinstance(rules, Mapping)
                         else audience.line, "rules", "no rules: say who is in the audience")
            return "FALSE"
        return self.rule(rules, audience, "rules", getattr(rules, "line", audience.line), stack)

    # ---- one rule ----
    def rule(self, node: Any, audience: Audience, path: str, line: int, stack: tuple[str, ...]) -> str:
        if not isinstance(node, Mapping):
            self.problem(audience, line, path, f"a rule must be a mapping (all/any/not, a condition with "
                         f"column/op/value, a time window or an audience reference); got {_type_name(node)}")
            return "FALSE"
        line = getattr(node, "line", line)
        keys = list(node)
        if any(k in CONDITION_KEYS for k in keys):
            return self.condition(node, audience, path, line)
        if len(keys) != 1:
            if not keys:
                message = "empty rule"
            else:
                unknown = [str(k) for k in keys if k not in RULE_KEYS]
                suggestion = _suggest(unknown[0], RULE_KEYS + CONDITION_KEYS) if unknown else ""
                message = (f"unknown rule key {unknown[0]!r}{suggestion}" if unknown else
                           f"one rule per mapping; found {', '.join(map(str, keys))} together "
                           f"(wrap them in all:)")
            self.problem(audience, line, path, message + f"; a rule is one of: {', '.join(RULE_KEYS)}, "
                         f"or a condition with {', '.join(CONDITION_KEYS)}")
            return "FALSE"
        key = keys[0]
        value = node[key]
        value_line = line_of(node, key, line)
        sub = f"{path}.{key}"
        if key in ("all", "any"):
            if not isinstance(value, list) or not value:
                self.problem(audience, value_line, sub, f"must be a non-empty list of rules; got "
                             f"{_type_name(value)}")
                return "FALSE"
            parts = [self.rule(item, audience, f"{sub}[{i}]", line_of(value, i, value_line), stack)
                     for i, item in enumerate(value)]
            joiner = " AND " if key == "all" else " OR "
            return "(" + joiner.join(parts) + ")"
        if key == "not":
            if isinstance(value, list):
                self.problem(audience, value_line, sub, "takes one rule, not a list (use not: {any: [...]} "
                             "for none of several)")
                return "FALSE"
            return f"(NOT {self.rule(value, audience, sub, value_line, stack)})"
        if key in WINDOWS:
            return self.window(key, value, audience, sub, value_line)
        if key in REFERENCES:
            return self.reference(key, value, audience, sub, value_line, stack)
        self.problem(audience, line, path, f"unknown rule key {key!r}{_suggest(str(key), RULE_KEYS)}; a rule "
                     f"is one of: {', '.join(RULE_KEYS)}, or a condition with {', '.join(CONDITION_KEYS)}")
        return "FALSE"

    def window(self, key: str, days: Any, audience: Audience, path: str, line: int) -> str:
        if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_WINDOW_DAYS:
            self.problem(audience, line, path, f"must be a whole number of days from 1 to {MAX_WINDOW_DAYS}; "
                         f"got {_type_name(days)}")
            return "FALSE"
        in_window = (f"SELECT 1 FROM {self.orders} AS o WHERE o.customer_id = p.\"customer_id\" "
                     f"AND o.order_date > ? AND o.order_date <= ?")
        if key == "ordered_in_last_days":
            self.params += [AsOfDate(days), AsOfDate(0)]
            return f"EXISTS ({in_window})"
        if key == "no_order_in_last_days":
            self.params += [AsOfDate(days), AsOfDate(0)]
            return f"(NOT EXISTS ({in_window}))"
        # first order within the window: an order in it, and none on or before its start
        self.params += [AsOfDate(days), AsOfDate(0), AsOfDate(days)]
        before = (f"SELECT 1 FROM {self.orders} AS o WHERE o.customer_id = p.\"customer_id\" "
                  f"AND o.order_date <= ?")
        return f"(EXISTS ({in_window}) AND NOT EXISTS ({before}))"

    def reference(self, key: str, slug: Any, audience: Audience, path: str, line: int,
                  stack: tuple[str, ...]) -> str:
        if not isinstance(slug, str) or slug not in self.by_slug:
            hint = ""
            if isinstance(slug, str):
                named = [a.slug for a in self.by_slug.values() if a.name == slug]
                hint = (f" (that is the name of audience {named[0]!r}; refer to it by slug)" if named
                        else _suggest(slug, list(self.by_slug)))
            self.problem(audience, line, path, f"no audience with slug {_type_name(slug)}{hint}")
            return "FALSE"
        cycle = self.cycle_through(audience.slug, slug) if audience.slug in self.by_slug else None
        if slug in stack or cycle:
            text = " -> ".join(cycle or (*stack[stack.index(slug):], slug))
            self.problem(audience, line, path, f"audiences refer to each other in a cycle: {text}")
            return "FALSE"
        target = self.by_slug[slug]
        inner = _Compiler(list(self.by_slug.values()), self.columns, self.orders, self.known_values)
        predicate = inner.audience_predicate(target, (*stack, slug))
        if inner.problems:
            # the target's rule problems are reported against the target itself; here only point at it
            self.problem(audience, line, path,
                         f"audience {slug!r} has rule problems of its own; fix those first")
            return "FALSE"
        self.params.extend(inner.params)
        # one profile row per customer, so membership of the other audience is its predicate on this row
        return predicate if key == "in_audience" else f"(NOT {predicate})"

    def condition(self, node: Mapping, audience: Audience, path: str, line: int) -> str:
        before = len(self.problems)
        for key in node:
            if key not in CONDITION_KEYS:
                self.problem(audience, line_of(node, key, line), f"{path}.{key}",
                             f"unknown key in a condition{_suggest(str(key), CONDITION_KEYS)}; a condition "
                             f"has column, op and (except for is null / is not null) value")
        column = node.get("column")
        col_line = line_of(node, "column", line)
        kind = None
        if column is None:
            self.problem(audience, line, f"{path}.column", "missing; which profile column is this about?")
        elif not isinstance(column, str) or column not in self.columns:
            shown = column if isinstance(column, str) else _type_name(column)
            self.problem(audience, col_line, f"{path}.column",
                         f"unknown column {shown!r}{_suggest(str(column), list(self.columns))} "
                         f"(known: {', '.join(self.columns)})")
        else:
            kind = column_kind(self.columns[column])

        raw_op = node.get("op")
        op_line = line_of(node, "op", line)
        op = None
        if raw_op is None:
            self.problem(audience, line, f"{path}.op", f"missing; one of: {', '.join(OPERATORS)}")
        elif not isinstance(raw_op, str) or (
                " ".join(raw_op.lower().split()) not in OPERATORS
                and raw_op.strip() not in _OP_ALIASES):
            self.problem(audience, op_line, f"{path}.op", f"unknown operator {_type_name(raw_op)}; one of: "
                         f"{', '.join(OPERATORS)}")
        else:
            op = _OP_ALIASES.get(raw_op.strip(), " ".join(raw_op.lower().split()))
        if kind is None or op is None:
            return "FALSE"
        if op not in _KIND_OPS[kind]:
            self.problem(audience, op_line, f"{path}.op", f"{op!r} does not apply to column {column!r} "
                         f"({self.columns[column]}); use one of: {', '.join(_KIND_OPS[kind])}")
            return "FALSE"

        value_line = line_of(node, "value", line)
        has_value = "value" in node
        value = node.get("value")
        col = self.column_sql(column)
        vpath = f"{path}.value"

        def bad(message: str) -> str:
            self.problem(audience, value_line, vpath, message)
            return "FALSE"

        if op in ("is null", "is not null"):
            if has_value:
                return bad(f"'{op}' takes no value; remove it")
            return f"({col} IS NULL)" if op == "is null" else f"({col} IS NOT NULL)"
        if not has_value:
            return bad(f"missing; '{op}' needs a value")

        try:
            if op in ("in", "not in"):
                if not isinstance(value, list) or not value:
                    return bad(f"'{op}' needs a non-empty list like [a, b]; got {_type_name(value)}")
                items = [_coerce(v, kind) for v in value]
                for item in items:
                    self.check_known(column, item, bad)
                marks = ", ".join("?" for _ in items)
                if len(self.problems) > before:
                    return "FALSE"
                self.params.extend(items)
                sql_op = "IN" if op == "in" else "NOT IN"
                return f"COALESCE({col} {sql_op} ({marks}), FALSE)"
            if op == "between":
                if not isinstance(value, list) or len(value) != 2:
                    return bad(f"'between' needs [low, high]; got {_type_name(value)}")
                low, high = (_coerce(v, kind) for v in value)
                if _after(low, high):
                    return bad(f"'between' needs low <= high; got [{value[0]}, {value[1]}]")
                if len(self.problems) > before:
                    return "FALSE"
                self.params += [low, high]
                return f"COALESCE({col} BETWEEN ? AND ?, FALSE)"
            if op == "contains":
                return self.contains(col, kind, column, value, bad, before)
            bound = _coerce(value, kind)
            if op in ("=", "!="):
                self.check_known(column, bound, bad)
        except _NotCoercible as exc:
            return bad(f"{exc}")
        if len(self.problems) > before:
            return "FALSE"
        self.params.append(bound)
        sql_op = {"=": "=", "!=": "<>"}.get(op, op)
        return f"COALESCE({col} {sql_op} ?, FALSE)"

    def check_known(self, column: str, value: Any, bad: Any) -> None:
        allowed = self.known_values.get(column)
        if allowed is not None and isinstance(value, str) and value not in allowed:
            bad(f"{value!r} is not a value {column} takes{_suggest(value, sorted(allowed))}; "
                f"values: {', '.join(sorted(allowed))}")

    def contains(self, col: str, kind: str, column: str, value: Any, bad: Any, before: int) -> str:
        if kind == "text":
            text = _coerce(value, "text")
            if text == "":
                return bad("'contains' needs non-empty text")
            if len(self.problems) > before:
                return "FALSE"
            self.params.append(text)
            return f"COALESCE(strpos({col}, ?) > 0, FALSE)"
        if kind == "list":
            element = _coerce(value, _element_kind(self.columns[column]))
            if len(self.problems) > before:
                return "FALSE"
            self.params.append(element)
            return f"COALESCE(list_contains({col}, ?), FALSE)"
        # JSON: an element of an array, or a key of an object
        if value is None or isinstance(value, list | dict):
            return bad(f"'contains' on a JSON column needs text, a number or true/false; "
                       f"got {_type_name(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            return bad(f"number must be finite; got {value!r}")
        if isinstance(value, dt.date):
            value = value.isoformat()
        if len(self.problems) > before:
            return "FALSE"
        self.params += [json.dumps(value, ensure_ascii=False), value if isinstance(value, str) else None]
        return (f"COALESCE(CASE json_type({col}) "
                f"WHEN 'ARRAY' THEN list_contains(json_extract({col}, '$[*]'), json(?)) "
                f"WHEN 'OBJECT' THEN list_contains(json_keys({col}), CAST(? AS VARCHAR)) "
                f"ELSE FALSE END, FALSE)")


def _collect_references(node: Any, found: list[str]) -> None:
    if isinstance(node, Mapping):
        for key, value in node.items():
            if key in REFERENCES and isinstance(value, str):
                found.append(value)
            elif key in COMBINATORS:
                _collect_references(value, found)
    elif isinstance(node, list):
        for item in node:
            _collect_references(item, found)


def _check_relation(name: str, what: str) -> None:
    if not _RELATION.fullmatch(name):
        raise ValueError(f"{what} relation must be a plain identifier like profiles_asof; got {name!r}")


def _compile(audience: Audience, audiences: Sequence[Audience], columns: Mapping[str, str],
             profiles: str, orders: str, known_values: Mapping[str, Collection[str]] | None = None,
             ) -> tuple[CompiledAudience | None, list[AudienceProblem]]:
    _check_relation(profiles, "profiles")
    _check_relation(orders, "orders")
    if known_values is None:
        known_values = {column: values for column, values in PROFILE_VALUE_SETS.items()
                        if column_kind(columns.get(column, "")) == "text"}
    compiler = _Compiler(audiences, columns, orders, known_values)
    problems = list(audience.problems)
    if "customer_id" not in columns:
        problems.append(AudienceProblem(audience.file, audience.line, audience.label(), None,
                                        "the profile columns have no customer_id"))
    known_slugs = {a.slug for a in audiences}
    # compile against the given list even if this audience is not in it (e.g. a draft being previewed)
    if audience.slug not in known_slugs:
        compiler.by_slug.setdefault(audience.slug, audience)
    predicate = compiler.audience_predicate(audience, (audience.slug,))
    problems.extend(compiler.problems)
    if problems:
        return None, list(dict.fromkeys(problems))
    sql = f'SELECT DISTINCT p."customer_id" AS customer_id FROM {profiles} AS p WHERE {predicate}'
    return CompiledAudience(sql=sql, params=compiler.params), []


def compile_audience(
    audience: Audience,
    audiences: Sequence[Audience],
    columns: Mapping[str, str],
    *,
    profiles: str = "profiles_asof",
    orders: str = "orders_asof",
    as_of: dt.date | None = None,
    known_values: Mapping[str, Collection[str]] | None = None,
) -> CompiledAudience:
    """Compile one audience's rules to ``SELECT DISTINCT customer_id FROM <profiles> p WHERE ...``.

    ``audiences``: the whole file, for ``in_audience``/``not_in_audience``. ``columns``: profile column name →
    DuckDB type. ``profiles``/``orders``: relation names the caller created (plain identifiers chosen by code;
    ``orders`` has customer_id, order_date DATE, ... already limited to the as-of day).

    As-of day: pass ``as_of`` to get parameters ready for ``conn.execute(c.sql, c.params)``; or leave it out
    and call ``c.bind(day)`` per day (the params then hold :class:`AsOfDate` placeholders).

    ``known_values``: column → the only values it holds; ``=``, ``!=``, ``in``, ``not in`` with any other
    value is a problem (a typo would silently empty the audience). Default: :data:`PROFILE_VALUE_SETS`.

    Raises :class:`AudienceError` listing every problem (file, line, audience, field, message), including
    the audience's own field problems; a referenced audience that is broken is reported as one pointer.
    """
    compiled, problems = _compile(audience, audiences, columns, profiles, orders, known_values)
    if compiled is None:
        raise AudienceError(problems)
    if as_of is not None:
        return CompiledAudience(sql=compiled.sql, params=compiled.bind(as_of))
    return compiled


def rule_problems(audience: Audience, audiences: Sequence[Audience],
                  columns: Mapping[str, str]) -> list[AudienceProblem]:
    """Problems compiling this audience (its own field problems included); empty when it compiles."""
    return _compile(audience, audiences, columns, "profiles_asof", "orders_asof")[1]


def describe_rules(rules: Any) -> str:
    """The rules in plain words, for asset descriptions and `audiences preview` (not SQL, never executed)."""
    return _describe(rules, top=True)


def _describe(node: Any, top: bool = False) -> str:
    if isinstance(node, list):
        node = {"all": node}
    if not isinstance(node, Mapping) or not node:
        return "<invalid rule>"
    if "column" in node:
        op = node.get("op")
        text = f"{node.get('column')} {op}"
        if "value" in node:
            text += f" {_describe_value(node['value'])}"
        return text
    if len(node) != 1:
        return "<invalid rule>"
    ((key, value),) = node.items()
    if key in ("all", "any") and isinstance(value, list) and value:
        joined = f" {'and' if key == 'all' else 'or'} ".join(_describe(v) for v in value)
        return joined if top or len(value) == 1 else f"({joined})"
    if key == "not":
        return f"not ({_describe(value, top=True)})"
    phrases = {"ordered_in_last_days": "ordered in the last {} days",
               "no_order_in_last_days": "no order in the last {} days",
               "first_order_within_days": "first order within the last {} days",
               "in_audience": "in audience {!r}", "not_in_audience": "not in audience {!r}"}
    if key in phrases:
        return phrases[key].format(value)
    return "<invalid rule>"


def _describe_value(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_describe_value(v) for v in value) + "]"
    if isinstance(value, Mapping) and set(value) == {"days_ago"}:
        return f"{value['days_ago']} days before the as-of day"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    return json.dumps(value) if isinstance(value, bool | None) else str(value)


@dataclass(frozen=True)
class AudiencePreview:
    size: int
    sample: list[str]


def preview(conn: Any, compiled: CompiledAudience, *, sample_size: int = 10) -> AudiencePreview:
    """Member count and the first ``sample_size`` customer ids (by id) on a DuckDB connection.

    ``compiled`` must have its as-of day bound (``compile_audience(..., as_of=day)``) and the profiles and
    orders relations it names must exist in ``conn``.
    """
    if compiled.needs_as_of:
        raise ValueError("bind the as-of day first: compile_audience(..., as_of=day)")
    size = conn.execute(compiled.count_sql(), compiled.params).fetchall()[0][0]
    rows = conn.execute(compiled.sample_sql(), [*compiled.params, sample_size]).fetchall()
    sample = [row[0] for row in rows]
    return AudiencePreview(size=int(size), sample=sample)
