"""Project-wide Dagster policies, applied in one spot: the DuckDB writers' pool, table metadata, owners."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dagster as dg
import duckdb

from lexer_assets.storage.catalog import Table

# Every asset that writes the DuckDB working file runs in this pool; the local dagster.yaml limits it to 1,
# so writers from different runs queue instead of failing on DuckDB's file lock.
DUCKDB_WRITER_POOL = "duckdb_writer"


def table_schema(table: Table) -> dg.TableSchema:
    return dg.TableSchema(columns=[dg.TableColumn(c.name, c.type, description=c.description)
                                   for c in table.columns])


def table_definition_metadata(table: Table) -> dict[str, Any]:
    """Metadata on the asset definition: column schema and where analysts find the table."""
    return {
        "dagster/column_schema": table_schema(table),
        "dagster/table_name": table.name,
        "grain": f"one row per {table.grain}",
    }


def preview_markdown(conn: duckdb.DuckDBPyConnection, sql: str, params: list | None = None, limit: int = 10) -> str:
    """A markdown table of the first rows of a query (shown in the UI's materialization view)."""
    rel = conn.execute(f"SELECT * FROM ({sql}) LIMIT {int(limit)}", params or [])
    names = [d[0] for d in rel.description]
    rows = rel.fetchall()
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    for row in rows:
        lines.append("| " + " | ".join("" if v is None else str(v).replace("|", "\\|")[:60] for v in row) + " |")
    return "\n".join(lines)


def numeric_metadata(values: Mapping[str, int | float]) -> dict[str, dg.MetadataValue]:
    return {k: (dg.MetadataValue.int(v) if isinstance(v, int) else dg.MetadataValue.float(float(v)))
            for k, v in values.items()}
