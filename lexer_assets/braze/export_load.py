"""Loading one Braze segment export into ``braze.users`` (and its bad lines into ``braze.export_rejects``).

How it works
------------
Members are read with :mod:`lexer_assets.braze.export_files` (zip / gzip / plain by magic bytes, zip limits
enforced) in a background thread, split into lines in bounded chunks (in Arrow, no Python object per line) and
streamed to DuckDB as Arrow batches of raw lines (file label, 1-based line number, text, byte length). One
``INSERT INTO braze.users ... SELECT`` over that stream does all per-line work in SQL, on DuckDB's threads:
classify the line, parse it once with ``json_transform`` into the schema *we* fix (:data:`USER_JSON_SCHEMA`;
nothing is inferred from the files, so keys first seen late, keys missing from a file, leading empty arrays
and custom attributes whose type varies between users all land the same way) and write typed columns. One
statement (not one per batch) lets DuckDB write full row groups to disk as it goes, so memory stays bounded
by the batch size, not by the export size, even inside the caller's transaction.

Values
------
* ``custom_attributes``, ``custom_events``, ``purchases``, ``campaigns_received``, ``canvases_received`` are
  kept as JSON exactly as exported (a JSON ``null`` or a missing key is SQL NULL).
* ``user_aliases`` is always a JSON list: a single alias object is wrapped in a list, missing means ``[]``.
  ``alias_name`` / ``alias_label`` come from the first alias.
* ``created_at`` accepts ISO-8601 (``Z`` or an offset) and ``YYYY-MM-DD HH:MM:SS.fff UTC``; it is stored as a
  UTC TIMESTAMP. An unparseable value is NULL. (A string without any zone is read in the session time zone.)
* ``dob`` that is not a real date (e.g. 1991-02-29) is NULL, not a reject. ``total_revenue`` and
  ``random_bucket`` accept numbers sent as strings; anything else that does not convert is NULL.
* ``email_normalized`` = ``lower(trim(email))``, NULL when empty. Empty-string ids count as missing.
* ``customer_id`` = ``external_id``, else ``'braze:' || braze_id``, else
  ``'alias:' || alias_label || ':' || alias_name`` (both alias parts needed).

Rejects
-------
A line goes to ``braze.export_rejects`` (file label, 1-based line number, reason, first 1,000 characters)
with one of the reasons in :data:`REJECT_REASONS`; the load goes on. A file with no line at all (0 bytes, a
zip without members, only empty members) is recorded there too, as line 0 with reason ``empty file``. Blank
lines (empty or only whitespace) are skipped silently and not counted. Line numbers count every line, blank
ones included.

Duplicates
----------
Rows are ranked by ``created_at`` (latest first, unknown last), then by position in the export (later file
in the order given, later member, later line first). Collapsing is done in three passes over the survivors of
the previous pass: one row per ``external_id``, then one per ``braze_id``, then one per ``customer_id`` (which
also collapses repeated alias-only users). Every dropped row counts in ``LoadReport.duplicates``.

Replacement and idempotency
---------------------------
``load_export`` replaces all of ``braze.users`` (it holds the newest export) and the
``braze.export_rejects`` rows of this ``object_prefix``; it does not begin or commit a transaction (the caller
does, so a failure leaves the previous data). Loading the same files again gives the same rows. An unsafe or
unreadable export file raises :class:`~lexer_assets.braze.export_files.ExportFileError` and loads nothing
further. An empty export
(no files) empties ``braze.users``: guarding against replacing good data with an empty read is the caller's
decision.
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from lexer_assets.braze.export_files import (
    DEFAULT_MAX_MEMBER_BYTES,
    DEFAULT_MAX_RATIO,
    iter_ndjson_members,
)
from lexer_assets.storage.catalog import BRAZE_USERS

REJECT_INVALID_JSON = "invalid JSON"
REJECT_NOT_OBJECT = "not a JSON object"
REJECT_NO_IDENTIFIER = "no identifier"
REJECT_TOO_LONG = "line too long"
REJECT_INVALID_UTF8 = "invalid UTF-8"
REJECT_EMPTY_FILE = "empty file"  # a file holding no line at all (0 bytes, a zip without members): line 0
REJECT_REASONS: tuple[str, ...] = (
    REJECT_INVALID_JSON, REJECT_NOT_OBJECT, REJECT_NO_IDENTIFIER, REJECT_TOO_LONG, REJECT_INVALID_UTF8,
    REJECT_EMPTY_FILE,
)
RAW_LINE_CHARS = 1000

_BLANK = "blank"
_READ_CHUNK = 4 * 1024**2
_BATCH_BYTES = 8 * 1024**2
_TOO_LONG_PREFIX = 4 * RAW_LINE_CHARS  # bytes kept of an over-long line: enough for 1,000 characters

_SCALARS = ("external_id", "braze_id", "created_at", "first_name", "last_name", "email", "phone", "dob",
            "gender", "country", "home_city", "language", "time_zone", "total_revenue", "random_bucket",
            "email_subscribe", "push_subscribe")
_JSONS = ("user_aliases", "custom_attributes", "custom_events", "purchases", "campaigns_received",
          "canvases_received")
# The raw schema is ours, not inferred: every scalar as text (numbers sent as strings and odd types survive
# and are converted with try_cast below), every nested value as JSON text.
USER_JSON_SCHEMA: dict[str, str] = {**{k: "VARCHAR" for k in _SCALARS}, **{k: "JSON" for k in _JSONS}}

_BATCH_SCHEMA = pa.schema([
    ("member_seq", pa.int32()),
    ("export_file", pa.string()),
    ("export_line", pa.int64()),
    ("line", pa.string()),
    ("line_bytes", pa.int64()),
    ("flag", pa.string()),
])


@dataclass
class LoadReport:
    """What one load did. ``lines`` (non-blank lines read) = ``loaded`` + ``duplicates`` + ``rejected``."""

    object_prefix: str
    files: int
    lines: int
    loaded: int
    duplicates: int
    rejected: int
    rejects_by_reason: dict[str, int] = field(default_factory=dict)
    members: int = 0

    def as_metadata(self) -> dict[str, Any]:
        return {"object_prefix": self.object_prefix, "files": self.files, "members": self.members,
                "lines": self.lines, "loaded": self.loaded, "duplicates": self.duplicates,
                "rejected": self.rejected, "rejects_by_reason": dict(self.rejects_by_reason)}


# ---------------------------------------------------------------------------------------------- line batches

class _BatchBuilder:
    """Collects raw lines into Arrow record batches of a bounded total size."""

    def __init__(self) -> None:
        self.batches: list[pa.RecordBatch] = []
        self.nbytes = 0

    def add(self, member_seq: int, label: str, first_line: int, lines: list[bytes],
            flags: list[str | None] | None = None, line_bytes: list[int] | None = None) -> None:
        """Add a few lines given as Python bytes (line ends, over-long lines)."""
        if lines:
            self.add_array(member_seq, label, first_line, pa.array(lines, pa.binary()), flags, line_bytes)

    def add_block(self, member_seq: int, label: str, first_line: int, block: bytes | memoryview) -> int:
        """Add every line of ``block`` (the lines before a newline, that newline cut off); how many lines.

        An empty block is one blank line: nothing to load, but it counts for line numbers.
        """
        if not len(block):
            return 1
        # Split in Arrow, not Python: no Python object per line.
        whole = pa.Array.from_buffers(pa.binary(), 1, [None, pa.array([0, len(block)], pa.int32()).buffers()[1],
                                                      pa.py_buffer(block)])
        lines = pc.split_pattern(whole, pattern=b"\n").flatten()
        self.add_array(member_seq, label, first_line, lines)
        return len(lines)

    def add_array(self, member_seq: int, label: str, first_line: int, raw: pa.Array,
                  flags: list[str | None] | None = None, line_bytes: list[int] | None = None) -> None:
        n = len(raw)
        lengths = pa.array(line_bytes, pa.int64()) if line_bytes is not None else pc.binary_length(raw).cast(
            pa.int64())
        try:
            text = raw.cast(pa.string())  # validates UTF-8 for the whole chunk at C speed
            flag_arr = pa.array(flags, pa.string()) if flags is not None else pa.nulls(n, pa.string())
        except pa.ArrowInvalid:
            text, flag_arr = _repair_utf8(raw.to_pylist(), flags)
        batch = pa.RecordBatch.from_arrays(
            [pa.repeat(pa.scalar(member_seq, pa.int32()), n), pa.repeat(pa.scalar(label, pa.string()), n),
             pa.array(range(first_line, first_line + n), pa.int64()), text, lengths, flag_arr],
            schema=_BATCH_SCHEMA)
        self.batches.append(batch)
        self.nbytes += raw.nbytes

    def take(self) -> pa.Table:
        table = pa.Table.from_batches(self.batches, schema=_BATCH_SCHEMA)
        if len(self.batches) > 8:  # many small members: scanning many tiny batches costs more than a copy
            table = table.combine_chunks()
        self.batches, self.nbytes = [], 0
        return table


def _repair_utf8(lines: list[bytes], flags: list[str | None] | None) -> tuple[pa.Array, pa.Array]:
    """Slow path for a chunk holding invalid UTF-8: flag those lines and keep a readable copy of them."""
    texts: list[str] = []
    out_flags: list[str | None] = list(flags) if flags is not None else [None] * len(lines)
    for i, line in enumerate(lines):
        try:
            texts.append(line.decode("utf-8"))
        except UnicodeDecodeError:
            texts.append(line.decode("utf-8", errors="replace"))
            out_flags[i] = out_flags[i] or REJECT_INVALID_UTF8
    return pa.array(texts, pa.string()), pa.array(out_flags, pa.string())


def _iter_line_batches(files: Sequence[Path], labels: Sequence[str], *, max_line_bytes: int,
                       max_member_bytes: int, max_ratio: float, counts: dict[str, int],
                       member_order: dict[str, int]) -> Iterator[pa.Table]:
    """Split every member of every file into lines, yielding Arrow tables of about ``_BATCH_BYTES``.

    ``member_order`` is filled with each member's label and its position in the export (labels are made
    unique: a zip may hold two members of the same name).
    """
    builder = _BatchBuilder()
    member_seq = 0
    for path, file_label in zip(files, labels, strict=True):
        members = iter_ndjson_members(path, max_member_bytes=max_member_bytes, max_ratio=max_ratio)
        file_bytes = 0
        for label, stream in members:
            label = file_label + label[len(path.name):]  # keep the disambiguated file label
            if label in member_order:
                label = f"{label}#{sum(1 for k in member_order if k.startswith(label)) + 1}"
            member_seq += 1
            member_order[label] = member_seq
            counts["members"] += 1
            next_line = 1
            carry = b""
            overlong: tuple[bytes, int] | None = None  # (prefix kept, bytes seen) of a line past the limit
            while chunk := stream.read(_READ_CHUNK):
                file_bytes += len(chunk)
                if overlong is not None:
                    cut = chunk.find(b"\n")
                    if cut < 0:
                        overlong = (overlong[0], overlong[1] + len(chunk))
                        continue
                    builder.add(member_seq, label, next_line, [overlong[0]], [REJECT_TOO_LONG],
                                [overlong[1] + cut])
                    next_line += 1
                    overlong = None
                    chunk = chunk[cut + 1:]
                data = carry + chunk if carry else chunk
                cut = data.rfind(b"\n")
                if cut >= 0:
                    next_line += builder.add_block(member_seq, label, next_line, memoryview(data)[:cut])
                carry = data[cut + 1:]
                if len(carry) > max_line_bytes:
                    # A line longer than the limit with no end in sight: keep its start, count the rest.
                    overlong = (_clean_prefix(carry), len(carry))
                    carry = b""
                if builder.nbytes >= _BATCH_BYTES:
                    yield builder.take()
            if overlong is not None:
                builder.add(member_seq, label, next_line, [overlong[0]], [REJECT_TOO_LONG], [overlong[1]])
            elif carry:
                builder.add(member_seq, label, next_line, [carry])
        if not file_bytes:
            # Braze never writes a file without users: one that holds nothing is a fault to show, not skip.
            builder.add(member_seq, file_label, 0, [b""], [REJECT_EMPTY_FILE], [0])
    if builder.batches:
        yield builder.take()


def _clean_prefix(data: bytes) -> bytes:
    return data[:_TOO_LONG_PREFIX].decode("utf-8", errors="ignore").encode("utf-8")


def _prefetch(source: Iterator[pa.Table], depth: int = 2) -> Iterator[pa.Table]:
    """Run ``source`` in a thread, so decompression overlaps with DuckDB's parsing of the previous batch."""
    slots: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in source:
                while not stop.is_set():
                    try:
                        slots.put(("item", item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            slots.put(("done", None))
        except BaseException as exc:  # handed to the consumer, which re-raises it
            slots.put(("error", exc))

    worker = threading.Thread(target=produce, name="braze-export-reader", daemon=True)
    worker.start()
    try:
        while True:
            kind, value = slots.get()
            if kind == "item":
                yield value
            elif kind == "error":
                raise value
            else:
                return
    finally:
        stop.set()
        while worker.is_alive():
            try:
                slots.get_nowait()
            except queue.Empty:
                worker.join(timeout=0.1)


# ---------------------------------------------------------------------------------------------------- SQL

def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


_WS = "' ' || chr(9) || chr(10) || chr(13)"


def _stage_sql(max_line_bytes: int) -> str:
    schema = _sql_string(json.dumps(USER_JSON_SCHEMA))
    return f"""
WITH parsed AS (
  SELECT member_seq, export_file, export_line, line, flag, line_bytes,
    -- One parse per line: try() turns malformed JSON into NULL; the rare NULLs are classified below.
    CASE WHEN flag IS NULL AND line_bytes <= {int(max_line_bytes)} THEN try(json_transform(line, {schema})) END
      AS u
  FROM _braze_lines
), classified AS (
  SELECT * EXCLUDE (flag, line_bytes),
    CASE
      WHEN flag IS NOT NULL THEN flag
      WHEN line_bytes > {int(max_line_bytes)} THEN '{REJECT_TOO_LONG}'
      WHEN u IS NULL AND trim(line, {_WS}) = '' THEN '{_BLANK}'
      WHEN u IS NULL AND NOT json_valid(line) THEN '{REJECT_INVALID_JSON}'
      WHEN u IS NULL THEN '{REJECT_NOT_OBJECT}'
      -- valid JSON whose first non-blank character is not '{{' is an array, string, number, ...
      WHEN left(line, 1) <> '{{' AND left(ltrim(line, {_WS}), 1) <> '{{' THEN '{REJECT_NOT_OBJECT}'
    END AS reason
  FROM parsed
), fields AS (
  SELECT member_seq, export_file, export_line, line, reason, u,
    nullif(u.external_id, '') AS external_id,
    nullif(u.braze_id, '') AS braze_id,
    CASE
      WHEN u.user_aliases IS NULL THEN '[]'::JSON
      -- json_transform wrote this JSON itself (compact), so its first character tells its type.
      WHEN left(u.user_aliases, 1) = '[' THEN u.user_aliases
      ELSE ('[' || u.user_aliases || ']')::JSON
    END AS user_aliases
  FROM classified
), ids AS (
  SELECT * EXCLUDE (first_alias),
    nullif(first_alias[1], '') AS alias_name,
    nullif(first_alias[2], '') AS alias_label
  FROM (SELECT *, CASE WHEN user_aliases <> '[]'
                       THEN json_extract_string(user_aliases, ['$[0].alias_name', '$[0].alias_label']) END
                    AS first_alias FROM fields)
), judged AS (
  SELECT * REPLACE (coalesce(reason,
      CASE WHEN external_id IS NULL AND braze_id IS NULL AND (alias_name IS NULL OR alias_label IS NULL)
           THEN '{REJECT_NO_IDENTIFIER}' END) AS reason)
  FROM ids
)
SELECT member_seq, export_file, export_line, reason,
  CASE WHEN reason IS NOT NULL THEN left(rtrim(line, chr(10) || chr(13)), {RAW_LINE_CHARS}) END AS raw_line,
  coalesce(external_id, 'braze:' || braze_id, 'alias:' || alias_label || ':' || alias_name) AS customer_id,
  external_id, braze_id, alias_name, alias_label, user_aliases,
  try_cast(u.created_at AS TIMESTAMPTZ) AT TIME ZONE 'UTC' AS created_at,
  u.first_name AS first_name, u.last_name AS last_name, u.email AS email,
  nullif(lower(trim(u.email)), '') AS email_normalized,
  u.phone AS phone, try_cast(u.dob AS DATE) AS dob, u.gender AS gender, u.country AS country,
  u.home_city AS home_city, u.language AS language, u.time_zone AS time_zone,
  try_cast(u.total_revenue AS DOUBLE) AS total_revenue, try_cast(u.random_bucket AS INTEGER) AS random_bucket,
  u.email_subscribe AS email_subscribe, u.push_subscribe AS push_subscribe,
  u.custom_attributes AS custom_attributes, u.custom_events AS custom_events, u.purchases AS purchases,
  u.campaigns_received AS campaigns_received, u.canvases_received AS canvases_received
FROM judged
"""


def _file_labels(files: Sequence[Path]) -> list[str]:
    """File labels for rows: the file name, or parent/name when two files share a name."""
    names = Counter(p.name for p in files)
    return [p.name if names[p.name] == 1 else f"{p.parent.name}/{p.name}" for p in files]


def load_export(conn: duckdb.DuckDBPyConnection, files: Sequence[Path], *, object_prefix: str,
                work_dir: Path | None = None, max_line_bytes: int = 1_000_000,
                max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
                max_ratio: float = DEFAULT_MAX_RATIO, parse_threads: int | None = None) -> LoadReport:
    """Replace ``braze.users`` with the export in ``files`` and record its bad lines (see the module doc).

    ``files`` are export files in the order they should be read (later wins ties between duplicates).
    ``work_dir`` is accepted for callers that provide scratch space; lines stream from the files into DuckDB
    without scratch files, so nothing is written there. Does not begin or commit a transaction.

    ``parse_threads`` caps DuckDB's threads while the INSERT runs (restored afterwards; default: DuckDB's
    own setting). Measured here (2 CPUs, duckdb 2.0.1), one thread looked frugal but lost overall: with a
    single thread DuckDB plans a serial insert that keeps the rows in memory and writes them all at COMMIT
    (about 2 s per million users, ~1.1 GB peak), whereas two threads write row groups while parsing
    (COMMIT ~0.1 s, ~0.85 GB peak) and finished 15-30% sooner for ~10% more CPU.
    """
    files = [Path(f) for f in files]
    labels = _file_labels(files)
    prefix = _sql_string(object_prefix)
    counts = {"members": 0}
    member_order: dict[str, int] = {}
    failure: list[BaseException] = []

    def line_batches() -> Iterator[pa.RecordBatch]:
        try:
            batches = _iter_line_batches(files, labels, max_line_bytes=max_line_bytes,
                                         max_member_bytes=max_member_bytes, max_ratio=max_ratio,
                                         counts=counts, member_order=member_order)
            for table in _prefetch(batches):
                yield from table.to_batches()
        except BaseException as exc:  # re-raised as itself below, not as DuckDB's wrapper of it
            failure.append(exc)
            raise

    conn.execute("DELETE FROM braze.users")
    conn.execute("DELETE FROM braze.export_rejects WHERE object_prefix = ?", [object_prefix])
    # ONE streaming INSERT parses every line (DuckDB's threads pull batches in parallel and write full row
    # groups to disk as they go; many small INSERTs in one transaction would hold everything in memory until
    # commit). Rejected lines travel in the same stream as rows with a NULL customer_id, carrying their
    # reason and text, and are moved to braze.export_rejects right after: no valid user has a NULL
    # customer_id, and the caller's transaction never shows the interim state.
    stream = pa.RecordBatchReader.from_batches(_BATCH_SCHEMA, line_batches())
    conn.register("_braze_lines", stream)
    try:
        with _capped_threads(conn, parse_threads):
            conn.execute(_insert_sql(max_line_bytes, prefix))
    except Exception:
        if failure:
            raise failure[0] from None
        raise
    finally:
        with contextlib.suppress(duckdb.Error):  # an aborted transaction refuses even this
            conn.unregister("_braze_lines")
    conn.execute(
        "INSERT INTO braze.export_rejects (object_prefix, export_file, export_line, reason, raw_line) "
        f"SELECT {prefix}, export_file, export_line, {_REJECT_REASON_COLUMN}, {_REJECT_TEXT_COLUMN} "
        "FROM braze.users WHERE customer_id IS NULL")
    conn.execute("DELETE FROM braze.users WHERE customer_id IS NULL")
    duplicates = _collapse_duplicates(conn, member_order)
    loaded = conn.execute("SELECT count(*) FROM braze.users").fetchone()[0]
    by_reason = dict(conn.execute(
        "SELECT reason, count(*) FROM braze.export_rejects WHERE object_prefix = ? GROUP BY reason "
        "ORDER BY reason", [object_prefix]).fetchall())
    rejected = sum(by_reason.values())
    return LoadReport(object_prefix=object_prefix, files=len(files), lines=loaded + duplicates + rejected,
                      loaded=loaded, duplicates=duplicates, rejected=rejected, rejects_by_reason=by_reason,
                      members=counts["members"])


@contextlib.contextmanager
def _capped_threads(conn: duckdb.DuckDBPyConnection, threads: int | None) -> Iterator[None]:
    """Lower DuckDB's (instance-wide) thread count for a block (``None``: leave it), through a cursor of its
    own: the caller's transaction may be aborted by the time it is restored, and an aborted transaction
    refuses even SET."""
    if threads is None:
        yield
        return
    admin = conn.cursor()
    try:
        before = int(admin.execute("SELECT current_setting('threads')").fetchone()[0])
        if threads >= before:
            yield
            return
        admin.execute(f"SET threads = {int(threads)}")
        try:
            yield
        finally:
            admin.execute(f"SET threads = {before}")
    finally:
        admin.close()


# A rejected line rides through braze.users with its reason and text in these two columns (see load_export).
_REJECT_REASON_COLUMN = "last_name"
_REJECT_TEXT_COLUMN = "first_name"


def _insert_sql(max_line_bytes: int, prefix: str) -> str:
    user_cols = [c for c in BRAZE_USERS.column_names if c != "object_prefix"]
    select = []
    for col in user_cols:
        if col == "customer_id":
            select.append("CASE WHEN reason IS NULL THEN customer_id END")
        elif col == _REJECT_REASON_COLUMN:
            select.append(f"CASE WHEN reason IS NULL THEN {col} ELSE reason END")
        elif col == _REJECT_TEXT_COLUMN:
            select.append(f"CASE WHEN reason IS NULL THEN {col} ELSE raw_line END")
        else:
            select.append(col)
    return (f"INSERT INTO braze.users ({', '.join(user_cols)}, object_prefix)\n"
            f"SELECT {', '.join(select)}, {prefix}\n"
            f"FROM ({_stage_sql(max_line_bytes)}) AS staged\n"
            f"WHERE reason IS DISTINCT FROM '{_BLANK}'")


def _collapse_duplicates(conn: duckdb.DuckDBPyConnection, member_order: dict[str, int]) -> int:
    """Apply the three-pass duplicate rule of the module doc; return how many rows were dropped."""
    if not member_order:
        return 0
    order = "ORDER BY created_at DESC NULLS LAST, member_seq DESC, export_line DESC"
    conn.register("_braze_members", pa.table({"export_file": list(member_order),
                                              "member_seq": list(member_order.values())}))
    try:
        conn.execute(f"""
CREATE OR REPLACE TEMP TABLE _braze_losers AS
WITH keys AS (
  SELECT export_file, export_line, external_id, braze_id, customer_id, created_at FROM braze.users
), dup_external AS (
  SELECT external_id FROM keys WHERE external_id IS NOT NULL GROUP BY ALL HAVING count(*) > 1
), dup_braze AS (
  SELECT braze_id FROM keys WHERE braze_id IS NOT NULL GROUP BY ALL HAVING count(*) > 1
), dup_customer AS (
  SELECT customer_id FROM keys GROUP BY ALL HAVING count(*) > 1
), candidates AS (
  -- Only rows sharing a key with another row can lose; ranking just those avoids sorting the export.
  SELECT k.*, m.member_seq
  FROM keys k JOIN _braze_members m USING (export_file)
  WHERE k.external_id IN (SELECT external_id FROM dup_external)
     OR k.braze_id IN (SELECT braze_id FROM dup_braze)
     OR k.customer_id IN (SELECT customer_id FROM dup_customer)
), pass1 AS (
  SELECT *, external_id IS NULL
            OR row_number() OVER (PARTITION BY external_id {order}) = 1 AS keep1 FROM candidates
), pass2 AS (
  SELECT *, braze_id IS NULL
            OR row_number() OVER (PARTITION BY braze_id {order}) = 1 AS keep2 FROM pass1 WHERE keep1
), pass3 AS (
  SELECT *, row_number() OVER (PARTITION BY customer_id {order}) = 1 AS keep3 FROM pass2 WHERE keep2
)
SELECT export_file, export_line FROM candidates
EXCEPT SELECT export_file, export_line FROM pass3 WHERE keep3
""")
    finally:
        conn.unregister("_braze_members")
    try:
        losers = conn.execute("SELECT count(*) FROM _braze_losers").fetchone()[0]
        if losers:
            conn.execute("DELETE FROM braze.users u USING _braze_losers l "
                         "WHERE u.export_file = l.export_file AND u.export_line = l.export_line")
    finally:
        conn.execute("DROP TABLE IF EXISTS _braze_losers")
    return int(losers)
