"""The generated data dictionary is current and documents every real profile column."""

from __future__ import annotations

from datetime import date

import duckdb

from lexer_assets.profiles import data_dictionary
from lexer_assets.profiles.build import build_profiles
from lexer_assets.profiles.views import ANALYST_VIEWS
from lexer_assets.storage.catalog import TABLES
from lexer_assets.storage.warehouse import ensure_tables


def test_committed_dictionary_is_not_stale() -> None:
    committed = data_dictionary.DEFAULT_PATH.read_text()
    assert committed == data_dictionary.render(), (
        f"docs/data-dictionary.md is stale: run `{data_dictionary.COMMAND}`"
    )


def test_every_column_of_the_built_table_is_documented() -> None:
    conn = duckdb.connect()
    ensure_tables(conn)
    conn.execute("INSERT INTO braze.users (customer_id, external_id) VALUES ('A', 'A')")
    build_profiles(conn, as_of=date(2026, 6, 30), target="built")
    real_columns = {r[0] for r in conn.sql("DESCRIBE built").fetchall()}
    documented = data_dictionary.documented_profile_columns(data_dictionary.render())
    assert real_columns - documented == set(), "undocumented profile columns"
    assert {"rfm_segment", "lifecycle_stage", "predicted_clv"} <= documented


def test_undocumented_column_is_detected() -> None:
    lines = data_dictionary.render().splitlines()
    row = next(i for i, line in enumerate(lines) if line.startswith("| `predicted_clv` | DOUBLE |"))
    lines[row] = "| `predicted_clv` | DOUBLE |  |"  # description removed
    assert "predicted_clv" not in data_dictionary.documented_profile_columns("\n".join(lines))
    del lines[row]  # column missing altogether
    assert "predicted_clv" not in data_dictionary.documented_profile_columns("\n".join(lines))


def test_every_table_view_and_example_is_in_the_dictionary() -> None:
    text = data_dictionary.render()
    for table in TABLES:
        assert f"### `{table.name}`" in text
    for view in ANALYST_VIEWS:
        assert f"### `{view.name}`" in text and view.example in text


def test_check_mode_reports_staleness(tmp_path) -> None:
    path = tmp_path / "dd.md"
    path.write_text("old\n")
    assert data_dictionary.main(["--check", "--path", str(path)]) == 1
    assert data_dictionary.main(["--path", str(path)]) == 0
    assert data_dictionary.main(["--check", "--path", str(path)]) == 0
