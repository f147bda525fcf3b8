"""Rules → SQL, run on a small real DuckDB file; every expected member set is worked out by hand below."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import duckdb
import pytest

from lexer_assets.audiences.rules import AsOfDate, AudiencePreview, compile_audience, describe_rules, preview
from lexer_assets.audiences.spec import Audience, AudienceError, load_audiences
from lexer_assets.storage.catalog import CUSTOMER_PROFILES

AS_OF = dt.date(2024, 6, 30)

# the real profile contract plus a list and a boolean column, so every kind of column is exercised
COLUMNS: dict[str, str] = {c.name: c.type for c in CUSTOMER_PROFILES.columns}
COLUMNS["tags"] = "VARCHAR[]"
COLUMNS["is_staff"] = "BOOLEAN"

# c6 is a Braze user with nothing known but the id: it shows how nulls behave
PROFILES: list[dict[str, Any]] = [
    dict(customer_id="c1", country="AU", revenue=1000.0, orders=5, rfm_segment="Champions",
         lifecycle_stage="active", predicted_clv=800.0, email_subscribe="opted_in", email_opens_90d=5,
         dob=dt.date(1980, 5, 1), braze_created_at=dt.datetime(2023, 1, 1, 10, 0),
         custom_attributes='{"tier": "gold", "tags": ["a"]}', tags=["vip", "sale"], is_staff=False,
         home_city="Melbourne"),
    dict(customer_id="c2", country="NZ", revenue=50.5, orders=1, rfm_segment="New", lifecycle_stage="new",
         predicted_clv=60.0, email_subscribe="subscribed", email_opens_90d=0, dob=None,
         braze_created_at=dt.datetime(2024, 6, 20, 8, 0), custom_attributes='["x", 1]', tags=[],
         is_staff=True, home_city="Auckland"),
    dict(customer_id="c3", country=None, revenue=300.0, orders=2, rfm_segment="At risk",
         lifecycle_stage="lapsing", predicted_clv=120.0, email_subscribe="unsubscribed", email_opens_90d=1,
         dob=dt.date(1999, 12, 31), braze_created_at=dt.datetime(2022, 3, 3), custom_attributes=None,
         tags=None, is_staff=None, home_city="North Melbourne"),
    dict(customer_id="c4", country="AU", revenue=0.0, orders=0, rfm_segment="No purchases",
         lifecycle_stage="never purchased", predicted_clv=0.0, email_subscribe=None, email_opens_90d=None,
         dob=dt.date(2001, 1, 1), braze_created_at=dt.datetime(2024, 6, 30, 23, 59), custom_attributes="{}",
         tags=["sale"], is_staff=False, home_city=None),
    dict(customer_id="c5", country="US", revenue=299.99, orders=3, rfm_segment="Can't lose them",
         lifecycle_stage="lapsed", predicted_clv=200.0, email_subscribe="opted_in", email_opens_90d=3,
         dob=dt.date(1970, 1, 1), braze_created_at=dt.datetime(2020, 1, 1),
         custom_attributes='{"tier": "silver"}', tags=["vip"], is_staff=False,
         home_city="O'Brien'; DROP TABLE orders_asof; --"),
    dict(customer_id="c6"),
]
ORDERS = [
    ("c1", "o1", dt.date(2023, 1, 15)), ("c1", "o2", dt.date(2024, 5, 1)), ("c1", "o3", dt.date(2024, 6, 30)),
    ("c2", "o4", dt.date(2024, 6, 20)),
    ("c3", "o5", dt.date(2023, 6, 30)), ("c3", "o6", dt.date(2024, 1, 1)),
    ("c5", "o7", dt.date(2022, 1, 1)), ("c5", "o8", dt.date(2024, 4, 1)),
    # after the as-of day: a caller's orders relation should not hold it, but the SQL must ignore it anyway
    ("c4", "o9", dt.date(2024, 7, 5)),
]
EVERYONE = {p["customer_id"] for p in PROFILES}


@pytest.fixture(scope="module")
def conn(tmp_path_factory: pytest.TempPathFactory) -> duckdb.DuckDBPyConnection:
    path = tmp_path_factory.mktemp("audiences") / "rules.duckdb"
    con = duckdb.connect(str(path))
    cols = ", ".join(f'"{name}" {typ}' for name, typ in COLUMNS.items())
    con.execute(f"CREATE TABLE profiles_asof ({cols})")
    for row in PROFILES:
        names = list(row)
        marks = ", ".join("?" for _ in names)
        con.execute(f"INSERT INTO profiles_asof ({', '.join(names)}) VALUES ({marks})",
                    [row[n] for n in names])
    con.execute("CREATE TABLE orders_asof (customer_id VARCHAR, order_id VARCHAR, order_date DATE, "
                "units INTEGER, amount DOUBLE)")
    con.executemany("INSERT INTO orders_asof VALUES (?, ?, ?, 1, 10.0)", ORDERS)
    yield con
    con.close()


def audience(rules: Mapping | list, slug: str = "t", name: str | None = None) -> Audience:
    return Audience(name=name or slug.upper(), slug=slug, description="d", owner="o",
                    rules={"all": rules} if isinstance(rules, list) else rules)


def members(con: duckdb.DuckDBPyConnection, target: Audience, others: list[Audience] | None = None,
            as_of: dt.date = AS_OF) -> set[str]:
    compiled = compile_audience(target, [target, *(others or [])], COLUMNS, as_of=as_of)
    assert compiled.sql.count("?") == len(compiled.params)
    return {row[0] for row in con.execute(compiled.sql, compiled.params).fetchall()}


def cond(column: str, op: str, value: Any = ...) -> dict[str, Any]:
    rule = {"column": column, "op": op}
    if value is not ...:
        rule["value"] = value
    return rule


OPERATOR_CASES = [
    (cond("revenue", "=", 300), {"c3"}),
    (cond("revenue", "!=", 300), {"c1", "c2", "c4", "c5"}),  # c6 has no revenue: a condition on null is false
    (cond("revenue", "<", 300), {"c2", "c4", "c5"}),
    (cond("revenue", "<=", 300), {"c2", "c3", "c4", "c5"}),
    (cond("revenue", ">", 300), {"c1"}),
    (cond("revenue", ">=", 299.99), {"c1", "c3", "c5"}),
    (cond("orders", "==", 1), {"c2"}),
    (cond("orders", "<>", 0), {"c1", "c2", "c3", "c5"}),
    (cond("country", "in", ["AU", "NZ"]), {"c1", "c2", "c4"}),
    (cond("country", "not in", ["AU"]), {"c2", "c5"}),
    (cond("revenue", "between", [50.5, 300]), {"c2", "c3", "c5"}),
    (cond("country", "is null"), {"c3", "c6"}),
    (cond("country", "IS NOT  NULL"), {"c1", "c2", "c4", "c5"}),
    (cond("home_city", "contains", "Melbourne"), {"c1", "c3"}),
    (cond("home_city", "contains", "melbourne"), set()),
    (cond("tags", "contains", "vip"), {"c1", "c5"}),
    (cond("custom_attributes", "contains", "tier"), {"c1", "c5"}),  # key of a JSON object
    (cond("custom_attributes", "contains", "x"), {"c2"}),  # element of a JSON array
    (cond("custom_attributes", "contains", 1), {"c2"}),
    (cond("custom_attributes", "contains", "gold"), set()),  # a value, not a key
    (cond("dob", "<", "1990-01-01"), {"c1", "c5"}),
    (cond("dob", "=", dt.date(1999, 12, 31)), {"c3"}),
    (cond("dob", "between", ["1975-01-01", "2000-01-01"]), {"c1", "c3"}),
    (cond("braze_created_at", ">=", dt.date(2024, 6, 20)), {"c2", "c4"}),
    (cond("braze_created_at", ">=", "2024-06-20T09:00:00"), {"c4"}),
    (cond("is_staff", "=", True), {"c2"}),
    (cond("is_staff", "!=", True), {"c1", "c4", "c5"}),
    (cond("rfm_segment", "=", "Can't lose them"), {"c5"}),
    (cond("lifecycle_stage", "in", ["never purchased", "lapsed"]), {"c4", "c5"}),
    # SQL written into a value is only ever data
    (cond("home_city", "=", "O'Brien'; DROP TABLE orders_asof; --"), {"c5"}),
    (cond("country", "=", "AU' OR '1'='1"), set()),
]


@pytest.mark.parametrize(("rule", "expected"), OPERATOR_CASES, ids=[f"{r['column']} {r['op']}" for r, _ in
                                                                   OPERATOR_CASES])
def test_every_operator_selects_the_hand_computed_members(conn, rule, expected) -> None:
    assert members(conn, audience(rule)) == expected
    # the tables survive whatever the values said
    assert conn.sql("SELECT count(*) FROM orders_asof").fetchall() == [(len(ORDERS),)]


# as of 2024-06-30; "last N days" = (as_of - N, as_of]
WINDOW_CASES = [
    ({"ordered_in_last_days": 1}, {"c1"}),  # only the as-of day itself
    ({"ordered_in_last_days": 10}, {"c1"}),  # c2's 2024-06-20 is exactly 10 days back: outside
    ({"ordered_in_last_days": 11}, {"c1", "c2"}),
    ({"ordered_in_last_days": 90}, {"c1", "c2"}),  # c5's 2024-04-01 is exactly 90 days back
    ({"ordered_in_last_days": 91}, {"c1", "c2", "c5"}),
    ({"ordered_in_last_days": 182}, {"c1", "c2", "c3", "c5"}),  # c3's 2024-01-01 is 181 days back
    ({"no_order_in_last_days": 90}, {"c3", "c4", "c5", "c6"}),  # never-ordered customers qualify too
    ({"no_order_in_last_days": 1}, {"c2", "c3", "c4", "c5", "c6"}),
    ({"first_order_within_days": 30}, {"c2"}),  # c4's only order is after the as-of day
    ({"first_order_within_days": 10}, set()),
    ({"first_order_within_days": 11}, {"c2"}),
    ({"first_order_within_days": 1000}, {"c1", "c2", "c3", "c5"}),  # 1000 days back is 2021-10-04
    ({"first_order_within_days": 366}, {"c2"}),  # c3's first order 2023-06-30 is 366 days back (leap year)
    ({"first_order_within_days": 367}, {"c2", "c3"}),
]


@pytest.mark.parametrize(("rule", "expected"), WINDOW_CASES, ids=[f"{k}={v}" for r, _ in WINDOW_CASES
                                                                 for k, v in r.items()])
def test_time_windows_count_back_from_the_as_of_day(conn, rule, expected) -> None:
    assert members(conn, audience(rule)) == expected


def test_placeholders_are_bound_per_day_for_backfills(conn) -> None:
    compiled = compile_audience(audience({"ordered_in_last_days": 1}), [], COLUMNS)
    assert compiled.needs_as_of
    assert all(isinstance(p, AsOfDate) for p in compiled.params)
    by_day = {day: {r[0] for r in conn.execute(compiled.sql, compiled.bind(day)).fetchall()}
              for day in (AS_OF, dt.date(2024, 6, 20), dt.date(2024, 5, 1), dt.date(2024, 5, 2))}
    assert by_day == {dt.date(2024, 6, 30): {"c1"}, dt.date(2024, 6, 20): {"c2"},
                      dt.date(2024, 5, 1): {"c1"}, dt.date(2024, 5, 2): set()}
    # compiling with as_of gives the same list bind() gives
    assert compile_audience(audience({"ordered_in_last_days": 1}), [], COLUMNS,
                            as_of=AS_OF).params == compiled.bind(AS_OF)


def test_nested_all_any_not(conn) -> None:
    rule = {"all": [cond("country", "=", "AU"),
                    {"any": [cond("revenue", ">", 500), cond("tags", "contains", "sale")]}]}
    assert members(conn, audience(rule)) == {"c1", "c4"}
    # not of a true/false rule includes the customers the inner conditions were false for because of nulls
    rule = {"not": {"any": [cond("country", "=", "AU"), cond("revenue", ">=", 300)]}}
    assert members(conn, audience(rule)) == {"c2", "c5", "c6"}
    rule = {"any": [{"all": [cond("orders", ">", 1), {"not": {"ordered_in_last_days": 90}}]},
                    {"all": [cond("is_staff", "=", True), {"not": cond("country", "is null")}]}]}
    # orders > 1 and no order in 90 days: c3, c5; staff with a country: c2
    assert members(conn, audience(rule)) == {"c2", "c3", "c5"}
    # a bare list means all
    assert members(conn, audience([cond("country", "=", "AU"), cond("orders", "=", 0)])) == {"c4"}


def test_audiences_include_and_exclude_each_other(conn) -> None:
    au = audience(cond("country", "=", "AU"), slug="au")  # c1, c4
    big = audience(cond("revenue", ">=", 300), slug="big")  # c1, c3
    au_small = audience({"all": [{"in_audience": "au"}, {"not_in_audience": "big"}]}, slug="au_small")
    not_big = audience({"not_in_audience": "big"}, slug="not_big")
    chained = audience({"any": [{"in_audience": "au_small"}, {"in_audience": "big"}]}, slug="chained")
    everyone = [au, big, au_small, not_big, chained]
    assert members(conn, au_small, everyone) == {"c4"}
    assert members(conn, not_big, everyone) == EVERYONE - {"c1", "c3"}
    assert members(conn, chained, everyone) == {"c1", "c3", "c4"}


def test_sql_never_contains_yaml_text() -> None:
    rule = {"all": [cond("home_city", "=", "Robert'); DROP TABLE profiles_asof;--"),
                    cond("country", "in", ["AU", "x\" OR 1=1 --"]), {"ordered_in_last_days": 30}]}
    compiled = compile_audience(audience(rule), [], COLUMNS, as_of=AS_OF)
    assert "DROP" not in compiled.sql and "1=1" not in compiled.sql and "30" not in compiled.sql
    assert compiled.params == ["Robert'); DROP TABLE profiles_asof;--", "AU", "x\" OR 1=1 --",
                               dt.date(2024, 5, 31), dt.date(2024, 6, 30)]


@pytest.mark.parametrize("column", [
    "revenue; DROP TABLE profiles_asof; --",
    'revenue" OR 1=1 --',
    "p.revenue",
    "Revenue",
])
def test_sql_or_a_near_miss_as_a_column_name_is_rejected(conn, column) -> None:
    with pytest.raises(AudienceError) as caught:
        compile_audience(audience(cond(column, "=", 1)), [], COLUMNS)
    assert f"unknown column {column!r}" in str(caught.value)
    assert conn.sql("SELECT count(*) FROM profiles_asof").fetchall() == [(len(PROFILES),)]


@pytest.mark.parametrize("name", ["profiles; DROP TABLE x", "a b", '"quoted"', ""])
def test_relation_names_must_be_plain_identifiers(name) -> None:
    with pytest.raises(ValueError, match="plain identifier"):
        compile_audience(audience(cond("orders", "=", 1)), [], COLUMNS, profiles=name)


def test_problems_name_file_line_audience_and_field(tmp_path: Path) -> None:
    path = tmp_path / "audiences.yaml"
    path.write_text(
        "- name: VIP\n"                                     # 1
        "  slug: vip\n"                                     # 2
        "  description: d\n"                                # 3
        "  owner: o\n"                                      # 4
        "  rules:\n"                                        # 5
        "    all:\n"                                        # 6
        "      - {column: orders, op: '>', value: 1}\n"     # 7
        "      - column: revnue\n"                          # 8
        "        op: '>'\n"                                 # 9
        "        value: 500\n"                              # 10
        "      - {column: country, op: '=', value: yes}\n"  # 11
    )
    audiences = load_audiences(path)
    with pytest.raises(AudienceError) as caught:
        compile_audience(audiences[0], audiences, COLUMNS)
    problems = caught.value.problems
    assert [(p.line, p.audience, p.field) for p in problems] == [
        (8, "VIP", "rules.all[1].column"), (11, "VIP", "rules.all[2].value")]
    text = str(problems[0])
    assert text.startswith(f"{path}:8: audience 'VIP' field rules.all[1].column: unknown column 'revnue' "
                           f"(did you mean 'revenue'?) (known: customer_id, external_id,")
    assert "column is text; got boolean true (quote it in the YAML" in str(problems[1])
    # str() of the error lists every problem
    assert str(problems[0]) in str(caught.value) and str(problems[1]) in str(caught.value)


TYPE_MISMATCHES = [
    (cond("revenue", ">", "a lot"), "column is numeric; got text 'a lot'"),
    (cond("revenue", ">", True), "column is numeric; got boolean true"),
    (cond("country", "=", 61), "column is text; got number 61"),
    (cond("dob", "<", "1990-13-01"), "column is a date; got text '1990-13-01' (write YYYY-MM-DD)"),
    (cond("dob", "<", "1990"), "column is a date; got text '1990'"),
    (cond("dob", "=", dt.datetime(1990, 1, 1, 12)), "got a date-time"),
    (cond("braze_created_at", ">", "yesterday"), "column is a timestamp; got text 'yesterday'"),
    (cond("is_staff", "=", "yes"), "column is true/false; got text 'yes'"),
    (cond("tags", "contains", 3), "column is text; got number 3"),
    (cond("country", "in", ["AU", 3]), "column is text; got number 3"),
    (cond("revenue", "=", None), "use op: is null"),
    (cond("revenue", "=", float("nan")), "must be finite"),
    (cond("revenue", "in", []), "'in' needs a non-empty list"),
    (cond("revenue", "in", 5), "'in' needs a non-empty list"),
    (cond("revenue", "between", [1]), "'between' needs [low, high]"),
    (cond("revenue", "between", [10, 1]), "needs low <= high"),
    (cond("revenue", "is null", 0), "'is null' takes no value"),
    (cond("revenue", ">"), "missing; '>' needs a value"),
    (cond("revenue", "contains", 5), "'contains' does not apply to column 'revenue' (DOUBLE)"),
    (cond("custom_attributes", "=", "x"), "'=' does not apply to column 'custom_attributes' (JSON)"),
    (cond("custom_attributes", "contains", ["x"]), "'contains' on a JSON column needs"),
    (cond("home_city", "contains", ""), "needs non-empty text"),
    (cond("revenue", "like", "x"), "unknown operator text 'like'"),
    (cond("revenue", "> 0 OR 1=1 --", 1), "unknown operator text '> 0 OR 1=1 --'"),
    ({"in_audience": "vip'; DROP TABLE profiles_asof; --"}, 'no audience with slug text "vip\'; DROP TABLE'),
    ({"column": "revenue", "value": 1}, "rules.op: missing"),
    ({"column": "revenue", "op": "=", "value": 1, "values": 2}, "unknown key in a condition"),
    ({"ordered_in_last_days": 0}, "whole number of days from 1 to 36500; got number 0"),
    ({"ordered_in_last_days": "30"}, "got text '30'"),
    ({"no_order_in_last_days": True}, "got boolean true"),
    ({"all": []}, "rules.all: must be a non-empty list"),
    ({"not": [cond("revenue", ">", 1)]}, "takes one rule, not a list"),
    ({"everyone": True}, "unknown rule key 'everyone'"),
    ({"any": [{"ordered_in_last_days": 3, "in_audience": "x"}]}, "one rule per mapping"),
    ({"all": ["revenue > 5"]}, "rules.all[0]: a rule must be a mapping"),
]


@pytest.mark.parametrize(("rule", "message"), TYPE_MISMATCHES, ids=[m for _, m in TYPE_MISMATCHES])
def test_type_mismatches_and_malformed_rules_are_reported(rule, message) -> None:
    with pytest.raises(AudienceError) as caught:
        compile_audience(audience(rule), [], COLUMNS)
    assert message in str(caught.value)


def test_every_problem_in_one_audience_is_reported_at_once() -> None:
    rule = {"all": [cond("revnue", ">", 1), cond("country", "=", 5), {"ordered_in_last_days": -1}]}
    with pytest.raises(AudienceError) as caught:
        compile_audience(audience(rule), [], COLUMNS)
    assert [p.field for p in caught.value.problems] == [
        "rules.all[0].column", "rules.all[1].value", "rules.all[2].ordered_in_last_days"]


def test_cycles_are_rejected_with_their_path() -> None:
    a = audience({"in_audience": "b"}, slug="a")
    b = audience({"all": [cond("orders", ">", 0), {"not_in_audience": "a"}]}, slug="b")
    me = audience({"any": [cond("orders", ">", 0), {"in_audience": "me"}]}, slug="me")
    user = audience({"in_audience": "a"}, slug="user")  # not in the cycle, but depends on it
    everyone = [a, b, me, user]
    for target, expected in ((a, "cycle: a -> b -> a"), (b, "cycle: b -> a -> b"), (me, "cycle: me -> me")):
        with pytest.raises(AudienceError) as caught:
            compile_audience(target, everyone, COLUMNS)
        assert expected in str(caught.value)
    with pytest.raises(AudienceError) as caught:
        compile_audience(user, everyone, COLUMNS)
    assert "audience 'a' has rule problems of its own" in str(caught.value)


def test_unknown_audience_reference_suggests_the_slug() -> None:
    vip = audience(cond("orders", ">", 3), slug="vip", name="VIP customers")
    for ref, hint in (("VIP customers", "that is the name of audience 'vip'"), ("vpi", "did you mean 'vip'")):
        with pytest.raises(AudienceError) as caught:
            compile_audience(audience({"in_audience": ref}), [vip], COLUMNS)
        assert hint in str(caught.value)


def test_json_contains_binds_json_text() -> None:
    compiled = compile_audience(audience(cond("custom_attributes", "contains", "gold")), [], COLUMNS)
    assert compiled.params == [json.dumps("gold"), "gold"]


def test_count_and_sample_helpers(conn) -> None:
    compiled = compile_audience(audience(cond("orders", ">", 0)), [], COLUMNS, as_of=AS_OF)
    assert conn.execute(compiled.count_sql(), compiled.params).fetchall() == [(4,)]
    assert conn.execute(compiled.sample_sql(), [*compiled.params, 2]).fetchall() == [("c1",), ("c2",)]


RELATIVE_DATE_CASES = [
    # as of 2024-06-30: 10 days ago is 2024-06-20
    (cond("braze_created_at", ">=", {"days_ago": 10}), {"c2", "c4"}),
    (cond("braze_created_at", ">", {"days_ago": 0}), {"c4"}),  # after midnight of the as-of day
    # born more than 18 * 365 days before the as-of day (2006-07-06): everyone with a dob
    (cond("dob", "<", {"days_ago": 18 * 365}), {"c1", "c3", "c4", "c5"}),
    # 2024-06-30 minus 8766 days (24 years incl. 6 leap days) is 2000-06-30
    (cond("dob", "between", [{"days_ago": 20000}, {"days_ago": 8766}]), {"c1", "c3", "c5"}),
]


@pytest.mark.parametrize(("rule", "expected"), RELATIVE_DATE_CASES,
                         ids=[str(r["value"]) for r, _ in RELATIVE_DATE_CASES])
def test_dates_relative_to_the_as_of_day(conn, rule, expected) -> None:
    assert members(conn, audience(rule)) == expected


def test_relative_dates_move_with_the_day(conn) -> None:
    compiled = compile_audience(audience(cond("braze_created_at", ">=", {"days_ago": 10})), [], COLUMNS)
    run = {r[0] for r in conn.execute(compiled.sql, compiled.bind(dt.date(2023, 1, 5))).fetchall()}
    # created on or after 2022-12-26: c1 (2023-01-01), c2, c4
    assert run == {"c1", "c2", "c4"}


@pytest.mark.parametrize(("rule", "message"), [
    (cond("dob", ">", {"days_ago": -1}), "a relative date is written {days_ago: N}"),
    (cond("dob", ">", {"days": 3}), "a relative date is written {days_ago: N}"),
    (cond("revenue", ">", {"days_ago": 3}), "expected a single value; got a mapping"),
    (cond("dob", "between", [{"days_ago": 5}, {"days_ago": 10}]), "needs low <= high"),
])
def test_bad_relative_dates(rule, message) -> None:
    with pytest.raises(AudienceError, match=re.escape(message)):
        compile_audience(audience(rule), [], COLUMNS)


@pytest.mark.parametrize(("rule", "message"), [
    (cond("rfm_segment", "=", "Champion"),
     "'Champion' is not a value rfm_segment takes (did you mean 'Champions'?)"),
    (cond("lifecycle_stage", "in", ["active", "Lapsing"]), "'Lapsing' is not a value lifecycle_stage takes"),
    (cond("email_subscribe", "!=", "unsubscribe"), "(did you mean 'unsubscribed'?)"),
    (cond("age_band", "not in", ["18 - 24"]), "values: 18-24, 25-34,"),
])
def test_values_a_categorical_column_never_holds_are_rejected(rule, message) -> None:
    with pytest.raises(AudienceError) as caught:
        compile_audience(audience(rule), [], COLUMNS)
    assert message in str(caught.value)


def test_known_values_can_be_given_or_switched_off(conn) -> None:
    rule = cond("country", "=", "Atlantis")
    with pytest.raises(AudienceError, match="'Atlantis' is not a value country takes"):
        compile_audience(audience(rule), [], COLUMNS, known_values={"country": {"AU", "NZ"}})
    assert compile_audience(audience(cond("rfm_segment", "=", "Someday")), [], COLUMNS, known_values={})
    # contains and ordering comparisons are free text
    assert members(conn, audience(cond("rfm_segment", "contains", "lose"))) == {"c5"}


def test_describe_rules_in_plain_words() -> None:
    rules = {"all": [{"any": [cond("rfm_segment", "=", "Champions"), cond("predicted_clv", ">=", 500)]},
                     {"ordered_in_last_days": 365}, {"not": {"in_audience": "staff"}},
                     cond("country", "is null"), cond("dob", "<", {"days_ago": 30}),
                     cond("country", "in", ["AU", "NZ"]), cond("is_staff", "=", False)]}
    assert describe_rules(rules) == (
        "(rfm_segment = 'Champions' or predicted_clv >= 500) and ordered in the last 365 days and "
        "not (in audience 'staff') and country is null and dob < 30 days before the as-of day and "
        "country in ['AU', 'NZ'] and is_staff = false")
    assert describe_rules([{"first_order_within_days": 7}]) == "first order within the last 7 days"
    assert describe_rules({"bogus": 1}) == "<invalid rule>"


def test_preview_counts_and_samples(conn) -> None:
    compiled = compile_audience(audience({"no_order_in_last_days": 90}), [], COLUMNS, as_of=AS_OF)
    assert preview(conn, compiled, sample_size=2) == AudiencePreview(size=4, sample=["c3", "c4"])
    with pytest.raises(ValueError, match="bind the as-of day"):
        preview(conn, compile_audience(audience({"no_order_in_last_days": 90}), [], COLUMNS))
