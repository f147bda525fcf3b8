"""The named RFM segment mapping, checked cell by cell against the documented grid."""

from __future__ import annotations

import duckdb
import pytest

from lexer_assets.profiles.rfm import SEGMENTS, fm_score, segment_for, segment_sql


@pytest.mark.parametrize(("r", "f", "m", "expected"), [
    (5, 5, 5, "Champions"),
    (5, 1, 1, "New"),               # FM = 1
    (5, 2, 3, "Potential loyalist"),  # FM = (2+3+1)//2 = 3
    (4, 1, 1, "Promising"),
    (4, 3, 4, "Loyal"),             # FM = 4
    (4, 5, 4, "Champions"),         # FM = 5
    (3, 1, 2, "Needs attention"),   # FM = 2
    (3, 1, 1, "About to sleep"),
    (2, 4, 5, "Can't lose them"),   # FM = 5
    (2, 3, 3, "At risk"),
    (2, 2, 1, "Hibernating"),       # FM = 2
    (1, 1, 2, "Lost"),              # FM = 2
    (1, 4, 3, "Can't lose them"),   # FM = 4
    (1, 3, 2, "At risk"),           # FM = 3
    (None, None, None, "No purchases"),
])
def test_segment_cells(r: int | None, f: int | None, m: int | None, expected: str) -> None:
    assert segment_for(r, f, m) == expected


def test_fm_rounds_halves_up() -> None:
    assert [fm_score(1, 2), fm_score(2, 2), fm_score(4, 5), fm_score(1, 1)] == [2, 2, 5, 1]


def test_every_named_segment_is_reachable_and_sql_agrees_with_python() -> None:
    conn = duckdb.connect()
    expr = segment_sql("r", "f", "m")
    grid = conn.sql(
        f"SELECT r, f, m, {expr} FROM range(1, 6) a(r), range(1, 6) b(f), range(1, 6) c(m)"
    ).fetchall()
    assert len(grid) == 125
    for r, f, m, name in grid:
        assert name == segment_for(r, f, m)
    assert {row[3] for row in grid} == set(SEGMENTS)
    assert conn.sql(f"SELECT {expr} FROM (SELECT NULL::INT r, NULL::INT f, NULL::INT m)").fetchall() == [
        ("No purchases",)
    ]
