"""The brand's commerce data: order files into `commerce.orders`."""

import datetime as dt
import json
from pathlib import Path

import dagster as dg

from lexer_assets.commerce.order_files import load_orders
from lexer_assets.defs.policies import (
    DUCKDB_WRITER_POOL,
    numeric_metadata,
    preview_markdown,
    table_definition_metadata,
)
from lexer_assets.defs.resources import PipelineResource, WarehouseResource
from lexer_assets.storage.catalog import ORDER_REJECTS, ORDERS

IMPORT_MANIFEST = "_import.json"


def order_files(orders_dir: Path) -> list[Path]:
    """Order files in the folder, oldest first (then by name); names starting with '.' or '_' are not orders.

    Oldest first because a repeated order_id keeps its first line: an order already loaded stays as it is
    when a newer file repeats its id."""
    if not orders_dir.is_dir():
        return []
    files = [p for p in orders_dir.iterdir() if p.is_file() and not p.name.startswith((".", "_"))]
    return sorted(files, key=lambda p: (p.stat().st_mtime_ns, p.name))


def import_shift_days(orders_dir: Path) -> int:
    """The whole-day date shift recorded when an old order file (e.g. CDNOW's 1997-98) was imported."""
    manifest = orders_dir / IMPORT_MANIFEST
    if not manifest.exists():
        return 0
    return int(json.loads(manifest.read_text())["shift_days"])


@dg.asset(
    key=["commerce", "orders"],
    group_name="commerce",
    kinds={"duckdb"},
    pool=DUCKDB_WRITER_POOL,
    metadata=table_definition_metadata(ORDERS),
)
def orders(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
           pipeline: PipelineResource) -> dg.MaterializeResult:
    """`commerce.orders`: every order line from the brand's order files (`$LEXER_HOME/commerce/orders/`).

    Reads the canonical CSV (order_id, customer_id, email, order_date, units, amount) and the CDNOW format.
    Bad lines go to `commerce.order_rejects` with file, line and reason; the rest loads.
    """
    folder = Path(pipeline.orders_dir)
    files = order_files(folder)
    if not files:
        raise dg.Failure(f"no order files in {folder}: put the brand's order files there "
                         "(or run `lexer-assets demo`, which writes a synthetic one)")
    shift = import_shift_days(folder)
    wh = warehouse.get()
    with wh.transaction(tables=[ORDERS.name, ORDER_REJECTS.name]) as conn:
        # Tomorrow on the clock (not LEXER_AS_OF): a date after it is a typo whatever day the profiles are for.
        tomorrow = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=1)
        report = load_orders(conn, files, shift_days=shift, max_amount=pipeline.max_order_amount, latest=tomorrow)
        rate = report.rejected / report.lines if report.lines else 0.0
        if rate > pipeline.max_order_reject_rate:
            # Raising inside the transaction rolls it back: the previous orders (and profiles) stay as they were.
            # One line per reason (a file in an unknown format gives one reason for every line).
            examples = conn.sql("SELECT any_value(source_file ORDER BY source_file, source_line), min(source_line),"
                                " reason, count(*) FROM commerce.order_rejects GROUP BY reason"
                                " ORDER BY count(*) DESC LIMIT 3").fetchall()
            where = "; ".join(f"{Path(f).name}:{line}: {reason} ({n:,} line(s))" for f, line, reason, n in examples)
            raise dg.Failure(
                f"{report.rejected:,} of {report.lines:,} order lines ({rate:.1%}) were rejected, more than "
                f"LEXER_MAX_ORDER_REJECT_RATE={pipeline.max_order_reject_rate:.1%}; the previous orders were kept. "
                f"First rejects: {where}")
        if report.loaded == 0:
            # Empty files (an export that came out empty) must not leave every profile without orders.
            raise dg.Failure(f"no order line could be loaded from {', '.join(f.name for f in files)} "
                             f"({report.lines:,} line(s), {report.rejected:,} rejected); the previous orders "
                             "were kept")
        preview = preview_markdown(conn, "SELECT * FROM commerce.orders ORDER BY order_date DESC, order_id")
    wh.publish([ORDERS.name, ORDER_REJECTS.name])
    if report.rejected:
        context.log.warning(f"{report.rejected} order line(s) rejected (see commerce.order_rejects)")
    return dg.MaterializeResult(metadata={
        "dagster/row_count": dg.MetadataValue.int(report.loaded),
        "files": dg.MetadataValue.json([f.name for f in files]),
        "newest_orders": dg.MetadataValue.md(preview),
        "date_shift_days": shift,
        "first_order_date": str(report.first_date),
        "last_order_date": str(report.last_date),
        **numeric_metadata({"lines": report.lines, "rejected": report.rejected}),
    })
