"""The brand's order files -> ``commerce.orders`` (good lines) and ``commerce.order_rejects`` (bad lines).

Two formats are read, recognised from the first line of the file (never from its name):

* **CDNOW** (the public CDNOW purchase history): whitespace separated, optional leading spaces, CRLF or LF,
  optional header ``customer_id date number_of_cds dollar_value``, then
  ``customer_id YYYYMMDD number_of_cds dollar_value``. It has no order id, so ``order_id`` is
  ``'<file name>:<line number>'``; ``customer_id`` is kept exactly as written (``'00001'``); ``email`` is
  null.
* **Canonical CSV**: a header naming ``order_id, customer_id, email, order_date, units, amount`` (any order,
  case-insensitive, extra columns ignored), ISO dates ``YYYY-MM-DD``. Emails are trimmed and lower-cased; an
  empty order_id falls back to ``'<file name>:<line number>'``.

Python only splits lines into text fields (the csv module, or whitespace for CDNOW); every type check runs as
one SQL statement over the staged text (fast: no per-line Python type checks). A line is rejected, with its
file, 1-based line number, reason and raw text, for: wrong field count, a date that is not a real date,
units that are not a whole number >= 0, an amount that is not a finite number >= 0, neither customer id nor
email, or an order_id already loaded (the first line with that id is kept).
Blank lines and the header are skipped (not rejected). A file whose format is not recognised has every line
rejected (reason names the problem) so the other files still load and nothing is silently dropped.

``shift_days`` moves every order date by a whole number of days: CDNOW's 1997-98 dates can be moved so the
history ends yesterday (see ``auto_shift_days``) and "as of today" profiles look like a live brand's.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Literal

import duckdb
import polars as pl

OrderFormat = Literal["cdnow", "csv"]

CDNOW_HEADER = ("customer_id", "date", "number_of_cds", "dollar_value")
CSV_COLUMNS = ("order_id", "customer_id", "email", "order_date", "units", "amount")
_RAW_LINE_LIMIT = 1000
_CHUNK_LINES = 500_000


class OrderFormatError(ValueError):
    """The file is neither a CDNOW file nor a canonical order CSV; the message names the file and why."""


@dataclass
class OrdersReport:
    files: int
    lines: int  # data lines read (header and blank lines excluded)
    loaded: int
    rejected: int
    first_date: date | None  # after the shift
    last_date: date | None


def _first_line(path: Path) -> str:
    with path.open("r", encoding="utf-8", errors="replace", newline="") as fh:
        for raw in fh:
            line = raw.strip()
            if line:
                return line
    return ""


def _looks_like_cdnow_record(fields: list[str]) -> bool:
    return (len(fields) == 4 and fields[0].isdigit() and len(fields[1]) == 8 and fields[1].isdigit())


def detect_order_format(path: Path) -> OrderFormat:
    """Recognise an order file from its first non-blank line: ``"cdnow"`` or ``"csv"``.

    Raises ``OrderFormatError`` (naming the file) when the file is empty or its first line is neither a CDNOW
    header/record nor a CSV header holding all of order_id, customer_id, email, order_date, units, amount.
    """
    path = Path(path)
    first = _first_line(path)
    if not first:
        raise OrderFormatError(f"{path}: empty order file (no non-blank line)")
    words = first.split()
    if tuple(w.lower() for w in words) == CDNOW_HEADER or _looks_like_cdnow_record(words):
        return "cdnow"
    header = {h.strip().lower() for h in next(csv.reader([first]))}
    missing = [c for c in CSV_COLUMNS if c not in header]
    if not missing:
        return "csv"
    raise OrderFormatError(
        f"{path}: first line is neither a CDNOW header/record nor an order CSV header "
        f"(missing {', '.join(missing)}): {first[:120]!r}"
    )


# --- splitting files into staged text fields ---

_STAGE_SCHEMA = {
    "source_file": pl.String, "file_name": pl.String, "source_line": pl.Int64, "n_fields": pl.Int32,
    "expected_fields": pl.Int32, "order_id": pl.String, "customer_id": pl.String, "email": pl.String,
    "order_date": pl.String, "units": pl.String, "amount": pl.String, "raw_line": pl.String,
    "date_format": pl.String, "problem": pl.String,
}


class _Chunk:
    """Column lists for one batch of staged lines (a DataFrame is built from them once per batch)."""

    def __init__(self) -> None:
        self.cols: dict[str, list[object]] = {k: [] for k in _STAGE_SCHEMA}

    def add(self, **values: object) -> None:
        for k, col in self.cols.items():
            col.append(values.get(k))

    def __len__(self) -> int:
        return len(self.cols["source_line"])

    def frame(self) -> pl.DataFrame:
        return pl.DataFrame(self.cols, schema=_STAGE_SCHEMA)


def _clip(line: str) -> str:
    return line.rstrip("\r\n")[:_RAW_LINE_LIMIT]


def _stage_cdnow(path: Path) -> Iterator[_Chunk]:
    chunk = _Chunk()
    name, src = path.name, str(path)
    with path.open("r", encoding="utf-8", errors="replace", newline="") as fh:
        for line_no, raw in enumerate(fh, start=1):
            fields = raw.split()
            if not fields:
                continue
            if line_no == 1 and tuple(f.lower() for f in fields) == CDNOW_HEADER:
                continue
            get = fields.__getitem__ if len(fields) == 4 else (lambda _i: None)
            chunk.add(source_file=src, file_name=name, source_line=line_no, n_fields=len(fields),
                      expected_fields=4, customer_id=get(0), order_date=get(1), units=get(2), amount=get(3),
                      raw_line=_clip(raw), date_format="%Y%m%d")
            if len(chunk) >= _CHUNK_LINES:
                yield chunk
                chunk = _Chunk()
    if len(chunk):
        yield chunk


def _stage_csv(path: Path) -> Iterator[_Chunk]:
    chunk = _Chunk()
    name, src = path.name, str(path)
    with path.open("r", encoding="utf-8", errors="replace", newline="") as fh:
        # Keep the physical text of each line for the rejects table; csv.reader reads from the same lines.
        lines = _LineTap(fh)
        reader = csv.reader(lines)
        header: list[str] | None = None
        index: dict[str, int] = {}
        for record in reader:
            line_no, raw = lines.line_no, lines.last
            if not record or all(not f.strip() for f in record):
                continue
            if header is None:
                header = [h.strip().lower() for h in record]
                index = {c: header.index(c) for c in CSV_COLUMNS}
                continue
            ok = len(record) == len(header)

            def get(col: str, _r: list[str] = record, _ok: bool = ok,
                    _ix: dict[str, int] = index) -> str | None:
                return _r[_ix[col]] if _ok else None

            chunk.add(source_file=src, file_name=name, source_line=line_no, n_fields=len(record),
                      expected_fields=len(header), order_id=get("order_id"), customer_id=get("customer_id"),
                      email=get("email"), order_date=get("order_date"), units=get("units"),
                      amount=get("amount"), raw_line=_clip(raw), date_format="%Y-%m-%d")
            if len(chunk) >= _CHUNK_LINES:
                yield chunk
                chunk = _Chunk()
    if len(chunk):
        yield chunk


class _LineTap:
    """Iterator over a file's lines that remembers the current 1-based line number and text.

    A quoted field spanning lines makes csv.reader pull several lines; the record is then reported at the
    line where it ends, which is where an editor shows the problem anyway.
    """

    def __init__(self, fh: io.TextIOBase) -> None:
        self._fh = fh
        self.line_no = 0
        self.last = ""

    def __iter__(self) -> _LineTap:
        return self

    def __next__(self) -> str:
        line = next(self._fh)
        self.line_no += 1
        self.last = line
        return line


def _stage_unreadable(path: Path, problem: str) -> Iterator[_Chunk]:
    chunk = _Chunk()
    with path.open("r", encoding="utf-8", errors="replace", newline="") as fh:
        for line_no, raw in enumerate(fh, start=1):
            if raw.strip():
                chunk.add(source_file=str(path), file_name=path.name, source_line=line_no,
                          raw_line=_clip(raw), problem=problem)
    if len(chunk):
        yield chunk


def _stage_file(path: Path) -> Iterator[_Chunk]:
    try:
        fmt = detect_order_format(path)
    except OrderFormatError as exc:
        yield from _stage_unreadable(path, f"unrecognised order file format: {exc}")
        return
    yield from (_stage_cdnow(path) if fmt == "cdnow" else _stage_csv(path))


# --- typing and validating in SQL ---

# One row per staged line: typed values plus the first problem found (NULL when the line is good).
_CHECKED_SQL = """
CREATE OR REPLACE TEMP TABLE _orders_checked AS
WITH typed AS (
  SELECT
    source_file, file_name, source_line, raw_line, problem, n_fields, expected_fields,
    NULLIF(trim(order_id), '') AS order_id_text,
    NULLIF(trim(customer_id), '') AS customer_id,
    NULLIF(lower(trim(email)), '') AS email,
    trim(order_date) AS date_text,
    CASE WHEN date_format = '%Y%m%d' THEN try_strptime(trim(order_date), '%Y%m%d')
         ELSE try_strptime(trim(order_date), '%Y-%m-%d') END::DATE AS order_date,
    date_format,
    trim(units) AS units_text,
    trim(amount) AS amount_text,
    TRY_CAST(trim(amount) AS DOUBLE) AS amount
  FROM _orders_stage
)
SELECT
  source_file, source_line, raw_line,
  coalesce(order_id_text, file_name || ':' || source_line) AS order_id,
  customer_id, email, order_date,
  CASE WHEN regexp_full_match(units_text, '[0-9]{1,9}') THEN units_text::INTEGER END AS units,
  amount,
  CASE
    WHEN problem IS NOT NULL THEN problem
    WHEN n_fields <> expected_fields THEN 'expected ' || expected_fields || ' fields, found ' || n_fields
    WHEN order_date IS NULL THEN 'order date ' || coalesce('''' || date_text || '''', 'missing')
         || ' is not a real date ('
         || CASE WHEN date_format = '%Y%m%d' THEN 'YYYYMMDD' ELSE 'YYYY-MM-DD' END || ')'
    WHEN regexp_full_match(units_text, '-[0-9]+') THEN 'negative units ' || units_text
    WHEN NOT regexp_full_match(coalesce(units_text, ''), '[0-9]{1,9}')
         THEN 'units ' || coalesce('''' || units_text || '''', 'missing') || ' is not a whole number'
    WHEN amount IS NULL OR isnan(amount) OR isinf(amount)
         THEN 'amount ' || coalesce('''' || amount_text || '''', 'missing') || ' is not a number'
    WHEN amount < 0 THEN 'negative amount ' || amount_text
    WHEN customer_id IS NULL AND email IS NULL THEN 'no customer id and no email'
  END AS reject_reason
FROM typed
"""


def load_orders(conn: duckdb.DuckDBPyConnection, files: Sequence[Path], *,
                shift_days: int = 0) -> OrdersReport:
    """Replace ``commerce.orders`` and ``commerce.order_rejects`` with the content of ``files``.

    Good lines load, bad lines go to the rejects table with file, line and reason; neither holds the other
    back. ``shift_days`` is added to every order date. The tables must exist; the caller owns the transaction
    (nothing here commits). Raises ``FileNotFoundError`` naming a missing file before anything is replaced.
    """
    paths = [Path(f) for f in files]
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"order file not found: {p}")
    conn.execute("DELETE FROM commerce.orders")
    conn.execute("DELETE FROM commerce.order_rejects")
    lines = 0
    for path in paths:
        for chunk in _stage_file(path):
            lines += len(chunk)
            stage = chunk.frame()
            conn.register("_orders_stage", stage)
            try:
                conn.execute(_CHECKED_SQL)
            finally:
                conn.unregister("_orders_stage")
            conn.execute(
                """INSERT INTO commerce.orders
                   (order_id, customer_id, email, order_date, units, amount, source_file, source_line)
                   SELECT order_id, customer_id, email, order_date + CAST(? AS INTEGER), units, amount,
                          source_file, source_line
                   FROM _orders_checked WHERE reject_reason IS NULL ORDER BY source_line""",
                [shift_days],
            )
            conn.execute(
                """INSERT INTO commerce.order_rejects (source_file, source_line, reason, raw_line)
                   SELECT source_file, source_line, reject_reason, raw_line
                   FROM _orders_checked WHERE reject_reason IS NOT NULL ORDER BY source_line"""
            )
    conn.execute("DROP TABLE IF EXISTS _orders_checked")
    _reject_duplicate_order_ids(conn, paths)
    loaded, first, last = conn.execute(
        "SELECT count(*), min(order_date), max(order_date) FROM commerce.orders"
    ).fetchall()[0]
    rejected = conn.execute("SELECT count(*) FROM commerce.order_rejects").fetchall()[0][0]
    return OrdersReport(files=len(paths), lines=lines, loaded=loaded, rejected=rejected,
                        first_date=first, last_date=last)


def _reject_duplicate_order_ids(conn: duckdb.DuckDBPyConnection, paths: list[Path]) -> None:
    """Keep the first line of each order_id (in the order the files were given, then line order); move the
    repeats to the rejects table. A repeat is a duplicated export, not a second order: counting it would
    double the customer's revenue."""
    conn.execute("CREATE OR REPLACE TEMP TABLE _order_file_rank (source_file VARCHAR, file_rank INTEGER)")
    conn.executemany("INSERT INTO _order_file_rank VALUES (?, ?)", [(str(p), i) for i, p in enumerate(paths)])
    conn.execute(
        """CREATE OR REPLACE TEMP TABLE _order_dups AS
           SELECT o.*, first_value(o.source_file || ':' || o.source_line) OVER w AS first_seen,
                  row_number() OVER w AS seen
           FROM commerce.orders o JOIN _order_file_rank USING (source_file)
           WHERE o.order_id IN (SELECT order_id FROM commerce.orders GROUP BY order_id HAVING count(*) > 1)
           WINDOW w AS (PARTITION BY o.order_id ORDER BY file_rank, o.source_line)
           QUALIFY seen > 1"""
    )
    conn.execute(
        """INSERT INTO commerce.order_rejects (source_file, source_line, reason, raw_line)
           SELECT source_file, source_line,
                  'duplicate order_id ' || order_id || ' (first at ' || first_seen || ')',
                  -- the parsed values, in canonical CSV order, stand in for the raw text
                  concat_ws(',', order_id, customer_id, email, order_date, units, amount)
           FROM _order_dups ORDER BY source_file, source_line"""
    )
    conn.execute(
        """DELETE FROM commerce.orders o USING _order_dups d
           WHERE o.source_file = d.source_file AND o.source_line = d.source_line"""
    )
    conn.execute("DROP TABLE _order_dups")
    conn.execute("DROP TABLE _order_file_rank")


def newest_order_date(files: Sequence[Path]) -> date | None:
    """The newest valid order date written in the files (before any shift); None when there is none."""
    newest: date | None = None
    conn = duckdb.connect()
    try:
        for path in (Path(f) for f in files):
            for chunk in _stage_file(path):
                conn.register("_orders_stage", chunk.frame())
                conn.execute(_CHECKED_SQL)
                conn.unregister("_orders_stage")
                value = conn.execute(
                    "SELECT max(order_date) FROM _orders_checked WHERE reject_reason IS NULL"
                ).fetchall()[0][0]
                if value is not None and (newest is None or value > newest):
                    newest = value
    finally:
        conn.close()
    return newest


def auto_shift_days(files: Sequence[Path], *, end_date: date) -> int:
    """Whole days that move the newest valid order date in ``files`` onto ``end_date`` (0 when no dates).

    Typical use: ``load_orders(conn, files, shift_days=auto_shift_days(files, end_date=today - 1 day))`` so
    CDNOW's history (ending 1998-06-30) ends yesterday.
    """
    newest = newest_order_date(files)
    if newest is None:
        return 0
    return (end_date - newest) // timedelta(days=1)
