"""The audience model: what one entry of ``data/audiences.yaml`` means, and reading that file.

An audiences file is a YAML list; each item is one audience::

    - name: VIP                        # the value written to Braze (unique, 1-255 characters, no edge spaces)
      slug: vip                        # asset key part audiences/<slug>: lowercase [a-z0-9_]+, unique, stable
      description: Champions and high predicted value.
      owner: crm-team@example.com
      enabled: true                    # optional, default true
      activation:                      # optional
        braze: true                    # write membership to Braze (default false)
        list_action: maintain          # maintain: retiring removes the value from Braze; append: left alone
        priority: 10                   # smaller = more important when a customer exceeds Braze's array cap
      rules:                           # one rule; a list is shorthand for `all:` of its items
        all:
          - {column: rfm_segment, op: in, value: [Champions, Loyal]}
          - {ordered_in_last_days: 90}
          - not: {in_audience: staff}

The rule language (``all`` / ``any`` / ``not``, conditions, time windows, audience references) is compiled
and checked in :mod:`lexer_assets.audiences.rules`; its module docstring is the reference.

Reading is split in two on purpose. :func:`load_audiences` raises only for problems that make the file as a
whole unusable (unreadable YAML, not a list, an entry that is not a mapping, a missing/invalid/duplicate slug,
a duplicate name), because those change which assets exist. Anything wrong inside one audience (a bad rule, a
256-character name, a wrong activation value) is kept on that audience (``Audience.problems``) and reported by
:func:`validate_audience`, so one bad audience never stops the others and is never mistaken for a removed one.
"""

from __future__ import annotations

import datetime as dt
import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml

MAX_NAME_LENGTH = 255  # Braze's limit for a string in an array attribute
SLUG_PATTERN = re.compile(r"[a-z0-9_]+")
AUDIENCE_KEYS = ("name", "slug", "description", "owner", "rules", "activation", "enabled")
ACTIVATION_KEYS = ("braze", "list_action", "priority")
LIST_ACTIONS = ("maintain", "append")
DEFAULT_PRIORITY = 100


# ---- located YAML: containers that remember the line of each key / item ----------------------------------


class LocatedDict(dict):
    """A YAML mapping that remembers where it, each key and each value started (1-based lines)."""

    line: int
    key_lines: dict[Any, int]
    value_lines: dict[Any, int]

    def line_of(self, key: Any, default: int | None = None) -> int:
        """Line of the value under ``key`` (falling back to the key's line, then the mapping's)."""
        return self.value_lines.get(key) or self.key_lines.get(key) or default or self.line


class LocatedList(list):
    """A YAML sequence that remembers where it and each item started (1-based lines)."""

    line: int
    item_lines: list[int]

    def line_of(self, index: int, default: int | None = None) -> int:
        if 0 <= index < len(self.item_lines):
            return self.item_lines[index]
        return default or self.line


def line_of(container: Any, key: Any, default: int) -> int:
    """Line of ``container[key]`` when the container came from the located loader, else ``default``."""
    if isinstance(container, LocatedDict | LocatedList):
        return container.line_of(key, default)
    return default


class _LocatingLoader(yaml.SafeLoader):
    """SafeLoader (no arbitrary objects) building LocatedDict/LocatedList and noting duplicate keys."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicate_keys: list[tuple[int, Any]] = []

    def construct_located_mapping(self, node: yaml.MappingNode) -> LocatedDict:
        self.flatten_mapping(node)  # resolves YAML merge keys (<<) like the stock loader
        data = LocatedDict()
        data.line = node.start_mark.line + 1
        data.key_lines, data.value_lines = {}, {}
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                key = repr(key)
            if key in data:
                self.duplicate_keys.append((key_node.start_mark.line + 1, key))
            data[key] = self.construct_object(value_node, deep=True)
            data.key_lines[key] = key_node.start_mark.line + 1
            data.value_lines[key] = value_node.start_mark.line + 1
        return data

    def construct_located_sequence(self, node: yaml.SequenceNode) -> LocatedList:
        data = LocatedList(self.construct_object(child, deep=True) for child in node.value)
        data.line = node.start_mark.line + 1
        data.item_lines = [child.start_mark.line + 1 for child in node.value]
        return data


_LocatingLoader.add_constructor("tag:yaml.org,2002:map", _LocatingLoader.construct_located_mapping)
_LocatingLoader.add_constructor("tag:yaml.org,2002:seq", _LocatingLoader.construct_located_sequence)


# ---- the model ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Activation:
    """How an audience reaches Braze.

    ``priority``: smaller numbers are more important; when a customer is in more activated audiences than
    Braze's array cap, the values with the smallest priority are kept.
    """

    braze: bool = False
    list_action: Literal["maintain", "append"] = "maintain"
    priority: int = DEFAULT_PRIORITY


@dataclass(frozen=True)
class AudienceProblem:
    """One thing wrong with the audiences file, pointing at the line a marketer has to fix."""

    file: str
    line: int
    audience: str | None
    field: str | None
    message: str

    def __str__(self) -> str:
        parts = [f"{self.file}:{self.line}:"]
        if self.audience is not None:
            parts.append(f"audience {self.audience!r}")
        if self.field:
            parts.append(f"field {self.field}")
        head = " ".join(parts) + (":" if len(parts) > 1 else "")
        return f"{head} {self.message}"


class AudienceError(ValueError):
    """Raised with every problem found; ``str()`` lists them all, one per line."""

    def __init__(self, problems: Sequence[AudienceProblem]) -> None:
        self.problems = list(problems)
        super().__init__(self._text())

    def _text(self) -> str:
        if len(self.problems) == 1:
            return str(self.problems[0])
        return f"{len(self.problems)} audience problems:\n" + "\n".join(f"  {p}" for p in self.problems)

    def __str__(self) -> str:
        return self._text()


@dataclass(frozen=True)
class Audience:
    """One audience as written in the file.

    ``rules`` is the rule mapping as parsed (a ``LocatedDict`` when loaded from a file, so the compiler can
    point at lines). ``line`` is where the audience's entry starts. ``problems`` holds what is wrong with the
    entry itself (not its rules); :func:`validate_audience` reports them together with rule problems.
    """

    name: str
    slug: str
    description: str
    owner: str
    rules: Mapping
    activation: Activation = field(default_factory=Activation)
    enabled: bool = True
    file: str = "<memory>"
    line: int = 1
    problems: tuple[AudienceProblem, ...] = ()

    def __hash__(self) -> int:
        # rules is a dict, so the generated hash would fail; file position and keys identify an entry
        return hash((self.file, self.line, self.slug, self.name))

    def label(self) -> str:
        """How problems name the audience: its name, or its slug when the name is unusable."""
        return self.name or self.slug or f"#{self.line}"


# ---- reading the file --------------------------------------------------------------------------------------


def _suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"number {value!r}"
    if isinstance(value, str):
        return f"text {value!r}"
    if isinstance(value, dt.date):  # YAML reads an unquoted 2024-01-31 as a date
        kind = "date-time" if isinstance(value, dt.datetime) else "date"
        return f"{kind} {value.isoformat()}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"{type(value).__name__} {value!r}"


def _parse_entry(entry: LocatedDict, file: str, index_problems: list[AudienceProblem]) -> Audience:
    """Build one Audience: problems inside the entry go on it, slug problems into ``index_problems``."""
    start = entry.line
    raw_name = entry.get("name")
    label = raw_name if isinstance(raw_name, str) and raw_name.strip() else None
    problems: list[AudienceProblem] = []

    def problem(fld: str | None, message: str, line: int | None = None) -> None:
        problems.append(AudienceProblem(file, line or start, label, fld, message))

    for key in entry:
        if key not in AUDIENCE_KEYS:
            problem(str(key), f"unknown key{_suggest(str(key), AUDIENCE_KEYS)}; expected one of "
                    f"{', '.join(AUDIENCE_KEYS)}", entry.key_lines.get(key))

    # slug decides the asset key, so its problems are file-level (they change which assets exist)
    slug = entry.get("slug")
    if slug is None:
        index_problems.append(AudienceProblem(file, start, label, "slug", "missing; every audience needs a "
                                              "stable slug (lowercase letters, digits, _) for its asset key"))
        slug = ""
    elif not isinstance(slug, str) or not SLUG_PATTERN.fullmatch(slug):
        index_problems.append(AudienceProblem(
            file, entry.line_of("slug"), label, "slug",
            f"must be lowercase letters, digits and _ only (like 'lapsing_vip'); got {_type_name(slug)}"))
        slug = slug if isinstance(slug, str) else ""

    name = raw_name
    if name is None:
        problem("name", "missing; the name is the value written to Braze")
        name = ""
    elif not isinstance(name, str):
        problem("name", f"must be text; got {_type_name(name)} (quote it in the YAML)", entry.line_of("name"))
        name = str(name)
    elif not name.strip():
        problem("name", "must not be empty", entry.line_of("name"))
    else:
        if name != name.strip():
            problem("name", f"must not start or end with whitespace: {name!r}", entry.line_of("name"))
        if len(name) > MAX_NAME_LENGTH:
            problem("name", f"is {len(name)} characters; Braze accepts at most {MAX_NAME_LENGTH}",
                    entry.line_of("name"))
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
            problem("name", "must not contain control characters (tabs, line breaks)", entry.line_of("name"))

    texts: dict[str, str] = {}
    for key in ("description", "owner"):
        value = entry.get(key)
        if value is None:
            problem(key, "missing; say " + ("what the audience is for" if key == "description"
                                            else "who to ask about this audience"))
            texts[key] = ""
        elif not isinstance(value, str) or not value.strip():
            problem(key, f"must be non-empty text; got {_type_name(value)}", entry.line_of(key))
            texts[key] = str(value)
        else:
            texts[key] = value

    enabled = entry.get("enabled", True)
    if not isinstance(enabled, bool):
        problem("enabled", f"must be true or false; got {_type_name(enabled)}", entry.line_of("enabled"))
        enabled = False  # a malformed switch never turns an audience on

    activation = _parse_activation(entry, problem)

    rules: Mapping
    raw_rules = entry.get("rules")
    if raw_rules is None:
        problem("rules", "missing; say who is in the audience (see the rules reference)")
        rules = LocatedDict()
        rules.line, rules.key_lines, rules.value_lines = start, {}, {}
    elif isinstance(raw_rules, list):
        # a bare list reads as "all of these", the common case for marketers
        rules = LocatedDict(all=raw_rules)
        rules.line = entry.line_of("rules")
        rules.key_lines = {"all": rules.line}
        rules.value_lines = {"all": rules.line}
    elif isinstance(raw_rules, dict):
        rules = raw_rules
    else:
        problem("rules", f"must be a rule mapping or a list of rules; got {_type_name(raw_rules)}",
                entry.line_of("rules"))
        rules = LocatedDict()
        rules.line, rules.key_lines, rules.value_lines = entry.line_of("rules"), {}, {}

    return Audience(
        name=name, slug=slug, description=texts["description"], owner=texts["owner"], rules=rules,
        activation=activation, enabled=enabled, file=file, line=start, problems=tuple(problems),
    )


def _parse_activation(entry: LocatedDict, problem: Any) -> Activation:
    raw = entry.get("activation")
    if raw is None:
        return Activation()
    if not isinstance(raw, dict):
        problem("activation", f"must be a mapping with {', '.join(ACTIVATION_KEYS)}; got {_type_name(raw)}",
                entry.line_of("activation"))
        return Activation()
    for key in raw:
        if key not in ACTIVATION_KEYS:
            problem(f"activation.{key}", f"unknown key{_suggest(str(key), ACTIVATION_KEYS)}; expected one of "
                    f"{', '.join(ACTIVATION_KEYS)}", line_of(raw, key, entry.line))
    braze = raw.get("braze", False)
    if not isinstance(braze, bool):
        problem("activation.braze", f"must be true or false; got {_type_name(braze)}",
                line_of(raw, "braze", entry.line))
        braze = False  # never push to Braze on a malformed switch
    list_action = raw.get("list_action", "maintain")
    if list_action not in LIST_ACTIONS:
        problem("activation.list_action", f"must be maintain or append; got {_type_name(list_action)}",
                line_of(raw, "list_action", entry.line))
        list_action = "append"  # the choice that never removes anything from Braze
    priority = raw.get("priority", DEFAULT_PRIORITY)
    if isinstance(priority, bool) or not isinstance(priority, int) or priority < 0:
        problem("activation.priority", f"must be a whole number >= 0 (smaller = more important); "
                f"got {_type_name(priority)}", line_of(raw, "priority", entry.line))
        priority = DEFAULT_PRIORITY
    return Activation(braze=braze, list_action=list_action, priority=priority)


def parse_audiences(path: Path) -> tuple[list[Audience], list[AudienceProblem]]:
    """Read the file without raising: the audiences that could be built, and the file-level problems.

    File-level problems are those :func:`load_audiences` raises for; per-audience problems stay on each
    ``Audience.problems``.
    """
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return [], [AudienceProblem(file, 1, None, None, f"cannot read the audiences file: {exc}")]
    loader = _LocatingLoader(text)
    try:
        document = loader.get_single_data()
    except yaml.YAMLError as exc:
        problem_mark, context_mark = getattr(exc, "problem_mark", None), getattr(exc, "context_mark", None)
        mark = problem_mark or context_mark
        line = mark.line + 1 if mark is not None else 1
        reason = " ".join(str(part) for part in (getattr(exc, "context", None), getattr(exc, "problem", None))
                          if part) or str(exc)
        if context_mark is not None and problem_mark is not None and context_mark.line < problem_mark.line:
            # e.g. an unclosed bracket: YAML notices at a later line; the fix belongs where it was opened
            line = context_mark.line + 1
            reason += f" (noticed at line {problem_mark.line + 1})"
        return [], [AudienceProblem(file, line, None, None, f"not valid YAML: {reason}")]
    finally:
        loader.dispose()
    if document is None:
        # an empty file would silently retire every audience; an intentional "none" is written as []
        return [], [AudienceProblem(file, 1, None, None, "the file is empty; write [] for no audiences")]
    if not isinstance(document, list):
        return [], [AudienceProblem(file, getattr(document, "line", 1), None, None,
                                    f"must be a list of audiences (items starting with '- '); "
                                    f"got {_type_name(document)}")]

    file_problems: list[AudienceProblem] = []
    audiences: list[Audience] = []
    for index, entry in enumerate(document):
        if not isinstance(entry, dict):
            file_problems.append(AudienceProblem(
                file, document.line_of(index), None, f"[{index}]",
                f"each audience must be a mapping with name, slug, rules...; got {_type_name(entry)}"))
            continue
        audiences.append(_parse_entry(entry, file, file_problems))

    audiences = _attach_duplicate_keys(audiences, loader.duplicate_keys)
    file_problems.extend(_duplicates(audiences, "slug"))
    file_problems.extend(_duplicates(audiences, "name"))
    return audiences, file_problems


def _attach_duplicate_keys(audiences: list[Audience], duplicates: list[tuple[int, Any]]) -> list[Audience]:
    """A key written twice in one mapping silently wins in YAML; report it on the audience holding it."""
    if not duplicates:
        return audiences
    starts = [a.line for a in audiences]
    extra: dict[int, list[AudienceProblem]] = {}
    for line, key in duplicates:
        owner = max((i for i, start in enumerate(starts) if start <= line), default=None)
        if owner is None:
            continue
        a = audiences[owner]
        extra.setdefault(owner, []).append(AudienceProblem(
            a.file, line, a.label(), str(key), "key written twice in the same mapping; only one can count"))
    return [
        replace(a, problems=a.problems + tuple(extra[i])) if i in extra else a
        for i, a in enumerate(audiences)
    ]


def _duplicates(audiences: Sequence[Audience], attribute: str) -> list[AudienceProblem]:
    first: dict[str, Audience] = {}
    problems = []
    for a in audiences:
        value = getattr(a, attribute)
        if not value:
            continue
        if value in first:
            problems.append(AudienceProblem(
                a.file, a.line, a.label(), attribute,
                f"duplicate {attribute} {value!r}: already used by the audience at line {first[value].line}"))
        else:
            first[value] = a
    return problems


def load_audiences(path: Path) -> list[Audience]:
    """Read and structurally check the audiences file.

    Raises :class:`AudienceError` only for file-level problems (unreadable or invalid YAML, not a list, an
    entry that is not a mapping, a missing/invalid/duplicate slug, a duplicate name). Problems inside one
    audience are on ``Audience.problems`` and reported by :func:`validate_audience` / the compiler.
    """
    audiences, problems = parse_audiences(path)
    if problems:
        raise AudienceError(problems)
    return audiences


def find_audience(audiences: Sequence[Audience], name_or_slug: str) -> Audience:
    """The audience whose slug or name is ``name_or_slug`` (for `audiences preview NAME`), else KeyError."""
    for a in audiences:
        if name_or_slug in (a.slug, a.name):
            return a
    folded = name_or_slug.casefold()
    matches = [a for a in audiences if folded in (a.slug.casefold(), a.name.casefold())]
    if len(matches) == 1:
        return matches[0]
    known = ", ".join(a.slug for a in audiences)
    raise KeyError(f"no audience named {name_or_slug!r}{_suggest(name_or_slug, [a.slug for a in audiences])};"
                   f" known slugs: {known}")


def validate_audience(
    audience: Audience, audiences: Sequence[Audience], columns: Mapping[str, str]
) -> list[AudienceProblem]:
    """Every problem of one audience: its own fields plus its rules compiled against ``columns``.

    ``audiences`` is the whole file (for ``in_audience`` references). Never raises for a bad audience.
    """
    from lexer_assets.audiences.rules import rule_problems  # rules imports this module

    return _unique([*audience.problems, *rule_problems(audience, audiences, columns)])


def validate_all(path: Path, columns: Mapping[str, str]) -> list[AudienceProblem]:
    """Everything wrong with the audiences file, in file order (what `lexer-assets audiences validate` shows).

    An empty list means every audience loads and compiles.
    """
    audiences, problems = parse_audiences(path)
    for audience in audiences:
        problems.extend(validate_audience(audience, audiences, columns))
    return sorted(_unique(problems), key=lambda p: p.line)


def _unique(problems: Sequence[AudienceProblem]) -> list[AudienceProblem]:
    return list(dict.fromkeys(problems))
