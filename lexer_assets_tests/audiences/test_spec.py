"""Reading data/audiences.yaml: structure, file-level vs per-audience problems, lines, the shipped file."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from lexer_assets.audiences.rules import compile_audience
from lexer_assets.audiences.spec import (
    Activation,
    AudienceError,
    AudienceProblem,
    find_audience,
    load_audiences,
    validate_all,
    validate_audience,
)
from lexer_assets.storage.catalog import CUSTOMER_PROFILES

COLUMNS = {c.name: c.type for c in CUSTOMER_PROFILES.columns}
REPO_FILE = Path(__file__).resolve().parents[2] / "data" / "audiences.yaml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "audiences.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def entry(name: str, slug: str, rules: str = "{column: orders, op: '>', value: 0}", extra: str = "") -> str:
    return (f"- name: {name}\n  slug: {slug}\n  description: d\n  owner: o\n  rules: {rules}\n" + extra)


def test_a_full_entry_is_read_with_defaults_and_lines(tmp_path: Path) -> None:
    path = write(tmp_path, """
        # comment line 1
        - name: VIP
          slug: vip
          description: Best customers.
          owner: crm@example.com
          activation: {braze: true, list_action: append, priority: 5}
          rules:
            - {column: rfm_segment, op: '=', value: Champions}
        - name: Plain
          slug: plain
          description: d
          owner: o
          enabled: false
          rules: {ordered_in_last_days: 30}
        """)
    vip, plain = load_audiences(path)
    assert (vip.name, vip.slug, vip.description, vip.owner, vip.line, vip.file, vip.enabled) == (
        "VIP", "vip", "Best customers.", "crm@example.com", 2, str(path), True)
    assert vip.activation == Activation(braze=True, list_action="append", priority=5)
    assert vip.rules == {"all": [{"column": "rfm_segment", "op": "=", "value": "Champions"}]}
    assert (plain.line, plain.enabled, plain.activation) == (9, False, Activation(False, "maintain", 100))
    assert vip.problems == () and plain.problems == ()


@pytest.mark.parametrize(("text", "line", "message"), [
    # an unclosed bracket: the line it was opened on, where YAML noticed it too
    ("- name: a\n  slug: [unclosed\n", 2, "not valid YAML"),
    ("- name: a\n  slug: [unclosed\n- name: b\n  slug: b\n", 2, "(noticed at line 3)"),
    ("", 1, "the file is empty; write [] for no audiences"),
    ("name: VIP\nslug: vip\n", 1, "must be a list of audiences"),
    ("- just a string\n", 1, "each audience must be a mapping"),
])
def test_file_level_problems_raise(tmp_path: Path, text: str, line: int, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(AudienceError) as caught:
        load_audiences(path)
    assert caught.value.problems[0].line == line
    assert message in str(caught.value)
    assert validate_all(path, COLUMNS) == caught.value.problems


def test_an_explicit_empty_list_is_no_audiences(tmp_path: Path) -> None:
    assert load_audiences(write(tmp_path, "[]\n")) == []


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(AudienceError, match="cannot read the audiences file"):
        load_audiences(tmp_path / "missing.yaml")


def test_duplicate_name_and_slug_are_file_level(tmp_path: Path) -> None:
    path = write(tmp_path, entry("VIP", "vip") + entry("VIP", "vip_two") + entry("Other", "vip"))
    with pytest.raises(AudienceError) as caught:
        load_audiences(path)
    assert sorted((p.line, p.field, p.message) for p in caught.value.problems) == [
        (6, "name", "duplicate name 'VIP': already used by the audience at line 1"),
        (11, "slug", "duplicate slug 'vip': already used by the audience at line 1"),
    ]
    text = str(caught.value)
    assert text.startswith("2 audience problems:\n")
    assert f"{path}:6: audience 'VIP' field name: duplicate name 'VIP'" in text


@pytest.mark.parametrize(("slug", "message"), [
    ("VIP", "must be lowercase letters, digits and _ only"),
    ("lapsing-vip", "must be lowercase letters, digits and _ only"),
    ("'12'", "must be lowercase letters, digits and _ only"),  # quoted: fine as text, and digits are allowed
    ("12", "got number 12"),
])
def test_slug_problems_are_file_level_because_they_decide_asset_keys(tmp_path, slug, message) -> None:
    path = write(tmp_path, entry("A", slug))
    if slug == "'12'":
        assert load_audiences(path)[0].slug == "12"
        return
    with pytest.raises(AudienceError, match="field slug"):
        load_audiences(path)
    assert message in str(validate_all(path, COLUMNS)[0])


def test_missing_slug(tmp_path: Path) -> None:
    path = write(tmp_path, "- name: A\n  description: d\n  owner: o\n  rules: {ordered_in_last_days: 1}\n")
    with pytest.raises(AudienceError, match="slug: missing"):
        load_audiences(path)


def test_name_length_limit_is_255_characters(tmp_path: Path) -> None:
    long_name, limit_name = "x" * 256, "é" * 255
    path = write(tmp_path, entry(long_name, "too_long") + entry(limit_name, "at_limit")
                 + entry("Fine", "fine"))
    audiences = load_audiences(path)  # a bad name never stops the others from loading
    too_long, at_limit, fine = audiences
    problems = validate_audience(too_long, audiences, COLUMNS)
    assert [(p.line, p.field, p.message) for p in problems] == [
        (1, "name", "is 256 characters; Braze accepts at most 255")]
    assert validate_audience(at_limit, audiences, COLUMNS) == []
    assert validate_audience(fine, audiences, COLUMNS) == []
    with pytest.raises(AudienceError, match="is 256 characters"):
        compile_audience(too_long, audiences, COLUMNS)
    compile_audience(fine, audiences, COLUMNS)


@pytest.mark.parametrize(("name_yaml", "message"), [
    ("' VIP'", "must not start or end with whitespace: ' VIP'"),
    ("'VIP '", "must not start or end with whitespace"),
    ("''", "must not be empty"),
    ("'  '", "must not be empty"),
    ('"VIP\\nlist"', "must not contain control characters"),
    ("2024", "must be text; got number 2024 (quote it in the YAML)"),
])
def test_name_rules(tmp_path: Path, name_yaml: str, message: str) -> None:
    path = write(tmp_path, entry(name_yaml, "a"))
    (a,) = load_audiences(path)
    assert message in "\n".join(str(p) for p in validate_audience(a, [a], COLUMNS))


def test_missing_name_description_owner_rules(tmp_path: Path) -> None:
    path = write(tmp_path, "- slug: bare\n")
    (bare,) = load_audiences(path)
    fields = [p.field for p in validate_audience(bare, [bare], COLUMNS)]
    assert fields == ["name", "description", "owner", "rules"]


def test_unknown_keys_and_bad_activation(tmp_path: Path) -> None:
    path = write(tmp_path, entry("A", "a", extra=(
        "  enable: false\n"
        "  activation:\n"
        "    braze: 'yes'\n"
        "    list_action: replace\n"
        "    priority: high\n"
        "    prio: 1\n")))
    (a,) = load_audiences(path)
    problems = {p.field: (p.line, p.message) for p in validate_audience(a, [a], COLUMNS)}
    assert problems["enable"] == (6, "unknown key (did you mean 'enabled'?); expected one of name, slug, "
                                     "description, owner, rules, activation, enabled")
    assert problems["activation.braze"] == (8, "must be true or false; got text 'yes'")
    assert problems["activation.list_action"] == (9, "must be maintain or append; got text 'replace'")
    assert problems["activation.priority"][0] == 10
    assert problems["activation.prio"][0] == 11
    # a malformed switch never sends to Braze and never removes from it
    assert a.activation == Activation(braze=False, list_action="append", priority=100)


def test_enabled_must_be_boolean(tmp_path: Path) -> None:
    (a,) = load_audiences(write(tmp_path, entry("A", "a", extra="  enabled: maybe\n")))
    assert a.enabled is False
    assert "must be true or false; got text 'maybe'" in str(validate_audience(a, [a], COLUMNS)[0])


def test_a_key_written_twice_is_reported_on_its_audience(tmp_path: Path) -> None:
    path = write(tmp_path, entry("A", "a") + entry("B", "b", rules="\n    column: orders\n    op: '>'\n"
                                                    "    value: 1\n    value: 2\n"))
    a, b = load_audiences(path)
    assert validate_audience(a, [a, b], COLUMNS) == []
    problems = validate_audience(b, [a, b], COLUMNS)
    assert [(p.line, p.audience, p.field) for p in problems] == [(14, "B", "value")]


def test_one_bad_audience_never_stops_the_others(tmp_path: Path) -> None:
    path = write(tmp_path, entry("Good", "good")
                 + entry("Bad", "bad", rules="{column: revnue, op: '>', value: 1}")
                 + entry("Uses bad", "uses_bad", rules="{in_audience: bad}")
                 + entry("Also good", "also_good"))
    audiences = load_audiences(path)
    assert [a.slug for a in audiences] == ["good", "bad", "uses_bad", "also_good"]
    problems = validate_all(path, COLUMNS)
    assert [(p.audience, p.field, p.line) for p in problems] == [
        ("Bad", "rules.column", 10), ("Uses bad", "rules.in_audience", 15)]
    assert "audience 'bad' has rule problems of its own" in problems[1].message
    for good in (audiences[0], audiences[3]):
        assert validate_audience(good, audiences, COLUMNS) == []
        compile_audience(good, audiences, COLUMNS)


def test_validate_all_reports_a_cycle_once_per_audience(tmp_path: Path) -> None:
    path = write(tmp_path, entry("A", "a", rules="{in_audience: b}")
                 + entry("B", "b", rules="{in_audience: a}"))
    problems = validate_all(path, COLUMNS)
    assert [(p.audience, p.line, p.message) for p in problems] == [
        ("A", 5, "audiences refer to each other in a cycle: a -> b -> a"),
        ("B", 10, "audiences refer to each other in a cycle: b -> a -> b"),
    ]


def test_validate_all_combines_file_and_audience_problems(tmp_path: Path) -> None:
    path = write(tmp_path, entry("A", "a") + entry("A", "b", rules="{column: x, op: '=', value: 1}"))
    problems = validate_all(path, COLUMNS)
    assert [(p.line, p.field) for p in problems] == [(6, "name"), (10, "rules.column")]


def test_problem_text_without_audience_or_field() -> None:
    assert str(AudienceProblem("f.yaml", 3, None, None, "bad")) == "f.yaml:3: bad"
    assert str(AudienceProblem("f.yaml", 3, "X", None, "bad")) == "f.yaml:3: audience 'X': bad"
    assert str(AudienceProblem("f.yaml", 3, None, "[2]", "bad")) == "f.yaml:3: field [2]: bad"


def test_find_audience_by_slug_or_name(tmp_path: Path) -> None:
    audiences = load_audiences(write(tmp_path, entry("Lapsing VIP", "lapsing_vip") + entry("New", "new")))
    assert find_audience(audiences, "lapsing_vip").name == "Lapsing VIP"
    assert find_audience(audiences, "Lapsing VIP").slug == "lapsing_vip"
    assert find_audience(audiences, "lapsing vip").slug == "lapsing_vip"
    with pytest.raises(KeyError, match="did you mean 'lapsing_vip'"):
        find_audience(audiences, "lapsng_vip")


# ---- the shipped file ------------------------------------------------------------------------------------

RFM_SEGMENTS = {"Champions", "Loyal", "Potential loyalist", "New", "Promising", "Needs attention",
                "About to sleep", "At risk", "Can't lose them", "Hibernating", "Lost", "No purchases"}
LIFECYCLE_STAGES = {"new", "active", "lapsing", "lapsed", "never purchased"}
EMAIL_STATES = {"opted_in", "subscribed", "unsubscribed"}


def conditions(node: Any) -> Iterator[Mapping]:
    if isinstance(node, Mapping):
        if "column" in node:
            yield node
        for value in node.values():
            yield from conditions(value)
    elif isinstance(node, list):
        for item in node:
            yield from conditions(item)


def test_the_shipped_audiences_file_is_valid_and_realistic() -> None:
    assert validate_all(REPO_FILE, COLUMNS) == []
    audiences = load_audiences(REPO_FILE)
    assert len(audiences) >= 6
    assert sum(a.activation.braze for a in audiences) >= 4
    assert len({a.activation.priority for a in audiences}) == len(audiences)
    for a in audiences:
        assert a.description.strip() and a.owner.strip()
        compile_audience(a, audiences, COLUMNS)
    # every categorical value is one the profile build really produces
    allowed = {"rfm_segment": RFM_SEGMENTS, "lifecycle_stage": LIFECYCLE_STAGES,
               "email_subscribe": EMAIL_STATES}
    used = set()
    for a in audiences:
        for c in conditions(a.rules):
            if c["column"] in allowed:
                values = c["value"] if isinstance(c["value"], list) else [c["value"]]
                assert set(values) <= allowed[c["column"]], (a.slug, values)
                used.add(c["column"])
    assert used == set(allowed)


def test_an_unquoted_yaml_date_for_a_text_column_is_named_as_a_date(tmp_path: Path) -> None:
    path = write(tmp_path, entry("A", "a", rules="{column: home_city, op: '=', value: 2024-01-31}"))
    assert "column is text; got date 2024-01-31" in str(validate_all(path, COLUMNS)[0])


def test_audiences_are_hashable_and_equal_by_content(tmp_path: Path) -> None:
    path = write(tmp_path, entry("A", "a") + entry("B", "b"))
    first, second = load_audiences(path), load_audiences(path)
    assert first == second
    assert len({*first, *second}) == 2
