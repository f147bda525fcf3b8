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
units that are not a whole number >= 0, an amount that is not a finite number >= 0 or is above ``max_amount``
(``LEXER_MAX_ORDER_AMOUNT``: one mistyped amount would otherwise dominate every CLV estimate), a date before
1900 or after tomorrow (after the shift), text that is not UTF-8, an email with spaces or control characters,
neither customer id nor email, or a repeated order_id (the line kept is the one from the file that held the
order in the previous load, else the first in file order, oldest file first: a new file, or an old one
touched, cannot overwrite an order already there). A UTF-8 byte order mark (Excel's
"CSV UTF-8") is ignored.
Blank lines and the header are skipped (not rejected). A file whose format is not recognised has every line
rejected (reason names the problem) so the other files still load and nothing is silently dropped.

``shift_days`` moves every order date by a whole number of days: CDNOW's 1997-98 dates can be moved so the
history ends yesterday (see ``auto_shift_days``) and "as of today" profiles look like a live brand's.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Literal

import duckdb
import polars as pl

from lexer_assets.commerce.order_limits import DEFAULT_MAX_ORDER_AMOUNT, EARLIEST_ORDER_DATE

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
    with path.open("r", encoding="utf-8-sig", errors="replace", newline="") as fh:
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

_TEXT_COLUMNS = ("order_id", "customer_id", "email", "order_date", "units", "amount", "raw_line")


@dataclass
class _Batch:
    """Text fields of up to _CHUNK_LINES lines of one file, column by column (cheap to append to)."""

    path: Path
    expected_fields: int
    date_format: str  # strptime format of order_date
    problem: str | None = None  # set for a file whose lines are all rejected

    def __post_init__(self) -> None:
        self.line_no: list[int] = []
        self.n_fields: list[int] = []
        self.text: dict[str, list[str | None]] = {c: [] for c in _TEXT_COLUMNS}

    def __len__(self) -> int:
        return len(self.line_no)

    def frame(self) -> pl.DataFrame:
        df = pl.DataFrame({"source_line": self.line_no, "n_fields": self.n_fields, **self.text},
                          schema={"source_line": pl.Int64, "n_fields": pl.Int32,
                                  **{c: pl.String for c in _TEXT_COLUMNS}})
        return df.with_columns(
            pl.lit(str(self.path)).alias("source_file"), pl.lit(self.path.name).alias("file_name"),
            pl.lit(self.expected_fields, dtype=pl.Int32).alias("expected_fields"),
            pl.lit(self.date_format).alias("date_format"), pl.lit(self.problem, dtype=pl.String).alias("problem"),
        )

    def fresh(self) -> _Batch:
        return _Batch(self.path, self.expected_fields, self.date_format, self.problem)


def _stage_cdnow(path: Path) -> Iterator[_Batch]:
    batch = _Batch(path, 4, "%Y%m%d")
    with path.open("r", encoding="utf-8-sig", errors="replace", newline="") as fh:
        for line_no, raw in enumerate(fh, start=1):
            fields = raw.split()
            if not fields:
                continue
            if line_no == 1 and tuple(f.lower() for f in fields) == CDNOW_HEADER:
                continue
            batch.line_no.append(line_no)
            batch.n_fields.append(len(fields))
            t = batch.text
            t["raw_line"].append(raw)
            ok = len(fields) == 4
            t["customer_id"].append(fields[0] if ok else None)
            t["order_date"].append(fields[1] if ok else None)
            t["units"].append(fields[2] if ok else None)
            t["amount"].append(fields[3] if ok else None)
            t["order_id"].append(None)
            t["email"].append(None)
            if len(batch) >= _CHUNK_LINES:
                yield batch
                batch = batch.fresh()
    if len(batch):
        yield batch


def _stage_csv(path: Path) -> Iterator[_Batch]:
    # raw_line stays NULL here: it is read back from the file for rejected lines only (_fill_raw_lines).
    batch: _Batch | None = None
    with path.open("r", encoding="utf-8-sig", errors="replace", newline="") as fh:
        reader = csv.reader(fh)
        index: list[int] = []
        ended = 0  # physical line where the previous record ended
        for record in reader:
            start, ended = ended + 1, reader.line_num  # a quoted field may span lines: report the first
            if not record or all(not f.strip() for f in record):
                continue
            if batch is None:
                header = [h.strip().lower() for h in record]
                index = [header.index(c) for c in CSV_COLUMNS]
                batch = _Batch(path, len(header), "%Y-%m-%d")
                continue
            batch.line_no.append(start)
            batch.n_fields.append(len(record))
            t = batch.text
            t["raw_line"].append(None)
            if len(record) == batch.expected_fields:
                for col, i in zip(CSV_COLUMNS, index, strict=True):
                    t[col].append(record[i])
            else:
                for col in CSV_COLUMNS:
                    t[col].append(None)
            if len(batch) >= _CHUNK_LINES:
                yield batch
                batch = batch.fresh()
    if batch is not None and len(batch):
        yield batch


def _stage_unreadable(path: Path, problem: str) -> Iterator[_Batch]:
    batch = _Batch(path, 0, "%Y-%m-%d", problem)
    with path.open("r", encoding="utf-8-sig", errors="replace", newline="") as fh:
        for line_no, raw in enumerate(fh, start=1):
            if raw.strip():
                batch.line_no.append(line_no)
                batch.n_fields.append(0)
                for col in _TEXT_COLUMNS:
                    batch.text[col].append(raw if col == "raw_line" else None)
    if len(batch):
        yield batch


def _stage_file(path: Path) -> Iterator[_Batch]:
    try:
        fmt = detect_order_format(path)
    except OrderFormatError as exc:
        yield from _stage_unreadable(path, f"unrecognised order file format: {exc}")
        return
    yield from (_stage_cdnow(path) if fmt == "cdnow" else _stage_csv(path))


def _fill_raw_lines(conn: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Put the file's text into raw_line of its rejected lines that have none yet (CSV files)."""
    wanted = {n for (n,) in conn.execute(
        "SELECT source_line FROM commerce.order_rejects WHERE source_file = ? AND raw_line IS NULL", [str(path)]
    ).fetchall()}
    if not wanted:
        return
    found: list[tuple[str, int]] = []
    with path.open("r", encoding="utf-8-sig", errors="replace", newline="") as fh:
        for line_no, raw in enumerate(fh, start=1):
            if line_no in wanted:
                found.append((_clip(raw), line_no))
    conn.executemany(
        "UPDATE commerce.order_rejects SET raw_line = ? WHERE source_file = ? AND source_line = ?",
        [(raw, str(path), n) for raw, n in found],
    )


def _clip(line: str) -> str:
    return line.rstrip("\r\n")[:_RAW_LINE_LIMIT]


# --- typing and validating in SQL ---

def _checked_sql(*, shift_days: int = 0, max_amount: float = DEFAULT_MAX_ORDER_AMOUNT,
                 latest: date | None = None) -> str:
    """The checking statement; bounds apply to dates after ``shift_days`` (``latest`` None: no upper bound)."""
    shifted = f"(order_date + {int(shift_days)})"
    too_late = f"{shifted} > DATE '{latest.isoformat()}'" if latest else "false"
    return _CHECKED_SQL.format(max_amount=float(max_amount), earliest=EARLIEST_ORDER_DATE.isoformat(),
                               shifted=shifted, too_late=too_late)


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
  source_file, source_line, left(rtrim(raw_line, chr(13) || chr(10)), 1000) AS raw_line,
  coalesce(order_id_text, file_name || ':' || source_line) AS order_id,
  customer_id, email, order_date,
  CASE WHEN regexp_full_match(units_text, '[0-9]{{1,9}}') THEN units_text::INTEGER END AS units,
  amount,
  CASE
    WHEN problem IS NOT NULL THEN problem
    WHEN n_fields <> expected_fields THEN 'expected ' || expected_fields || ' fields, found ' || n_fields
    WHEN order_date IS NULL THEN 'order date ' || coalesce('''' || date_text || '''', 'missing')
         || ' is not a real date ('
         || CASE WHEN date_format = '%Y%m%d' THEN 'YYYYMMDD' ELSE 'YYYY-MM-DD' END || ')'
    WHEN regexp_full_match(units_text, '-[0-9]+') THEN 'negative units ' || units_text
    WHEN regexp_full_match(units_text, '[0-9]{{10,}}') THEN 'units ' || units_text || ' is too large'
    WHEN NOT regexp_full_match(coalesce(units_text, ''), '[0-9]{{1,9}}')
         THEN 'units ' || coalesce('''' || units_text || '''', 'missing') || ' is not a whole number'
    WHEN amount IS NULL OR isnan(amount) OR isinf(amount)
         THEN 'amount ' || coalesce('''' || amount_text || '''', 'missing') || ' is not a number'
    WHEN amount < 0 THEN 'negative amount ' || amount_text
    WHEN amount > {max_amount} THEN 'amount ' || amount_text || ' is above LEXER_MAX_ORDER_AMOUNT ({max_amount:,.0f})'
    WHEN {shifted} < DATE '{earliest}' THEN 'order date ' || date_text || ' is before {earliest}'
    WHEN {too_late} THEN 'order date ' || date_text || ' is in the future'
    WHEN contains(concat(order_id_text, customer_id, email), chr(65533))
         THEN 'not UTF-8 text (order files must be UTF-8)'
    WHEN regexp_matches(email, '[[:space:][:cntrl:]]') THEN 'email contains spaces or control characters'
    WHEN customer_id IS NULL AND email IS NULL THEN 'no customer id and no email'
  END AS reject_reason
FROM typed
"""


def load_orders(conn: duckdb.DuckDBPyConnection, files: Sequence[Path], *, shift_days: int = 0,
                max_amount: float = DEFAULT_MAX_ORDER_AMOUNT, latest: date | None = None) -> OrdersReport:
    """Replace ``commerce.orders`` and ``commerce.order_rejects`` with the content of ``files``.

    Good lines load, bad lines go to the rejects table with file, line and reason; neither holds the other
    back. ``shift_days`` is added to every order date; ``latest``: the last plausible (shifted) order date,
    normally tomorrow. The tables must exist; the caller owns the transaction
    (nothing here commits). Raises ``FileNotFoundError`` naming a missing file before anything is replaced.
    """
    paths = [Path(f) for f in files]
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"order file not found: {p}")
    # Which file each order came from last time: a repeated order_id keeps the line already loaded.
    conn.execute("CREATE OR REPLACE TEMP TABLE _orders_before AS SELECT order_id, source_file FROM commerce.orders")
    conn.execute("DELETE FROM commerce.orders")
    conn.execute("DELETE FROM commerce.order_rejects")
    lines = 0
    for path in paths:
        for chunk in _stage_file(path):
            lines += len(chunk)
            stage = chunk.frame()
            conn.register("_orders_stage", stage)
            try:
                conn.execute(_checked_sql(shift_days=shift_days, max_amount=max_amount, latest=latest))
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
    for path in dict.fromkeys(paths):
        _fill_raw_lines(conn, path)
    loaded, first, last = conn.execute(
        "SELECT count(*), min(order_date), max(order_date) FROM commerce.orders"
    ).fetchall()[0]
    rejected = conn.execute("SELECT count(*) FROM commerce.order_rejects").fetchall()[0][0]
    return OrdersReport(files=len(paths), lines=lines, loaded=loaded, rejected=rejected,
                        first_date=first, last_date=last)


def _reject_duplicate_order_ids(conn: duckdb.DuckDBPyConnection, paths: list[Path]) -> None:
    """Keep one line of each order_id and move the repeats to the rejects table: the line from the file that
    held the order in the previous load (``_orders_before``), else the first in the order the files were
    given, then line order. A repeat is a duplicated export, not a second order: counting it would double the
    customer's revenue; and a file added (or an old one touched) later must not replace an order."""
    conn.execute("CREATE OR REPLACE TEMP TABLE _order_file_rank (source_file VARCHAR, file_rank INTEGER)")
    conn.executemany("INSERT INTO _order_file_rank VALUES (?, ?)", [(str(p), i) for i, p in enumerate(paths)])
    conn.execute(
        """CREATE OR REPLACE TEMP TABLE _order_dups AS
           SELECT o.*, first_value(o.source_file || ':' || o.source_line) OVER w AS first_seen,
                  row_number() OVER w AS seen
           FROM commerce.orders o JOIN _order_file_rank USING (source_file)
           LEFT JOIN _orders_before b ON b.order_id = o.order_id AND b.source_file = o.source_file
           WHERE o.order_id IN (SELECT order_id FROM commerce.orders GROUP BY order_id HAVING count(*) > 1)
           WINDOW w AS (PARTITION BY o.order_id ORDER BY b.order_id IS NULL, file_rank, o.source_line)
           QUALIFY seen > 1"""
    )
    conn.execute(
        """INSERT INTO commerce.order_rejects (source_file, source_line, reason, raw_line)
           SELECT source_file, source_line,
                  'duplicate order_id ' || order_id || ' (first at ' || first_seen || ')',
                  NULL  -- the line's text is read back from the file (_fill_raw_lines)
           FROM _order_dups ORDER BY source_file, source_line"""
    )
    conn.execute(
        """DELETE FROM commerce.orders o USING _order_dups d
           WHERE o.source_file = d.source_file AND o.source_line = d.source_line"""
    )
    conn.execute("DROP TABLE _order_dups")
    conn.execute("DROP TABLE _order_file_rank")
    conn.execute("DROP TABLE _orders_before")


def newest_order_date(files: Sequence[Path]) -> date | None:
    """The newest valid order date written in the files (before any shift); None when there is none."""
    newest: date | None = None
    conn = duckdb.connect()
    try:
        for path in (Path(f) for f in files):
            for chunk in _stage_file(path):
                conn.register("_orders_stage", chunk.frame())
                conn.execute(_checked_sql())
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
