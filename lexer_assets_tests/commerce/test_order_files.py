"""Order files -> commerce.orders / commerce.order_rejects, checked against plain-Python reads of the files."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest

from lexer_assets.commerce.order_files import (
    OrderFormatError,
    auto_shift_days,
    detect_order_format,
    load_orders,
)
from lexer_assets.storage.warehouse import ensure_tables

CDNOW = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "cdnow" / "CDNOW_master.txt"
needs_cdnow = pytest.mark.skipif(not CDNOW.exists(), reason=f"CDNOW data not at {CDNOW}")


@pytest.fixture
def conn(tmp_path: Path) -> duckdb.DuckDBPyConnection:
    c = duckdb.connect(str(tmp_path / "hub.duckdb"))
    ensure_tables(c)
    yield c
    c.close()


def _write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode())
    return path


def _rejects(conn: duckdb.DuckDBPyConnection) -> list[tuple[int, str]]:
    sql = "SELECT source_line, reason FROM commerce.order_rejects ORDER BY source_file, source_line"
    return conn.sql(sql).fetchall()


@needs_cdnow
def test_cdnow_file_loads_completely_and_matches_a_plain_python_read(conn: duckdb.DuckDBPyConnection) -> None:
    records = [line.split() for line in CDNOW.read_text().splitlines()[1:]]
    expected_total = sum(Decimal(r[3]) for r in records)
    expected_units = sum(int(r[2]) for r in records)

    report = load_orders(conn, [CDNOW])

    assert (report.files, report.lines, report.loaded, report.rejected) == (1, 69659, 69659, 0)
    assert (report.first_date, report.last_date) == (date(1997, 1, 1), date(1998, 6, 30))
    total, units, customers, zero, emails = conn.sql(
        "SELECT sum(amount::DECIMAL(18, 2)), sum(units), count(DISTINCT customer_id), "
        "count(*) FILTER (WHERE amount = 0), count(email) FROM commerce.orders"
    ).fetchall()[0]
    assert total == expected_total
    assert units == expected_units
    assert customers == 23570
    assert zero == sum(1 for r in records if Decimal(r[3]) == 0)
    assert emails == 0
    # The first record of the file: "00001 19970101 1 11.77" on line 2 (line 1 is the header).
    assert conn.sql("SELECT * FROM commerce.orders WHERE source_line = 2").fetchall() == [
        ("CDNOW_master.txt:2", "00001", None, date(1997, 1, 1), 1, 11.77, str(CDNOW), 2)
    ]


@needs_cdnow
def test_shift_moves_every_date_by_whole_days(conn: duckdb.DuckDBPyConnection) -> None:
    shift = auto_shift_days([CDNOW], end_date=date(2026, 12, 2))
    assert shift == (date(2026, 12, 2) - date(1998, 6, 30)).days
    report = load_orders(conn, [CDNOW], shift_days=shift)
    assert report.last_date == date(2026, 12, 2)
    assert report.first_date == date(1997, 1, 1) + timedelta(days=shift)
    # 00002 bought twice on 1997-01-12: both orders keep the same (shifted) day.
    days = conn.sql("SELECT DISTINCT order_date FROM commerce.orders WHERE customer_id = '00002'").fetchall()
    assert days == [(date(1997, 1, 12) + timedelta(days=shift),)]


def test_cdnow_bad_lines_are_rejected_with_line_and_reason(conn: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    f = _write(tmp_path / "cdnow_small.txt", (
        "customer_id date number_of_cds dollar_value\r\n"
        "  00001 19970101 1 11.77\r\n"      # 2 good
        "  00002 19970230 1 12.00\r\n"      # 3 no 30 February
        "  00003 19970102 2\r\n"            # 4 three fields
        "  00004 19970103 x 10.00\r\n"      # 5 units not a number
        "  00005 19970104 1 -3.00\r\n"      # 6 negative amount
        "\r\n"                              # 7 blank: skipped
        "  00006 19970105 0 0.00\r\n"       # 8 good: zero units, zero amount
        "  00007 19970106 -1 5.00\r\n"      # 9 negative units
        "  00008 19970107 1 abc\r\n"        # 10 amount not a number
    ))
    report = load_orders(conn, [f])
    assert (report.lines, report.loaded, report.rejected) == (8, 2, 6)
    reasons = dict(_rejects(conn))
    assert sorted(reasons) == [3, 4, 5, 6, 9, 10]
    assert "not a real date" in reasons[3] and "19970230" in reasons[3]
    assert reasons[4] == "expected 4 fields, found 3"
    assert reasons[5] == "units 'x' is not a whole number"
    assert reasons[6] == "negative amount -3.00"
    assert reasons[9] == "negative units -1"
    assert reasons[10] == "amount 'abc' is not a number"
    raw = conn.sql("SELECT raw_line FROM commerce.order_rejects WHERE source_line = 4").fetchall()[0][0]
    assert raw == "  00003 19970102 2"
    assert conn.sql("SELECT customer_id, units, amount FROM commerce.orders ORDER BY source_line").fetchall() == [
        ("00001", 1, 11.77), ("00006", 0, 0.0)
    ]


def test_csv_orders_normalise_email_and_reject_bad_lines(conn: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    f = _write(tmp_path / "orders.csv", (
        "order_id,customer_id,email,order_date,units,amount\n"
        "A1,C1, Ann@Example.COM ,2026-03-01,2,19.90\n"        # 2 good
        "A2,,bob@example.com,2026-03-02,1,5\n"                # 3 good: email only
        ",C3,,2026-03-03,1,7.5\n"                             # 4 good: no order id -> orders.csv:4
        "A4,,,2026-03-04,1,7.5\n"                             # 5 no customer id, no email
        "A5,C5,,03/05/2026,1,7.5\n"                           # 6 not ISO
        "A6,C6,,2026-03-06,1\n"                               # 7 five fields
        "A1,C1,ann@example.com,2026-03-07,1,1.00\n"           # 8 duplicate of line 2
        '"A8","C8","x@y.z","2026-03-08","3","12.00"\n'        # 9 good, quoted
    ))
    assert detect_order_format(f) == "csv"
    report = load_orders(conn, [f])
    assert (report.lines, report.loaded, report.rejected) == (8, 4, 4)
    assert conn.sql(
        "SELECT order_id, customer_id, email, order_date, units, amount FROM commerce.orders ORDER BY source_line"
    ).fetchall() == [
        ("A1", "C1", "ann@example.com", date(2026, 3, 1), 2, 19.9),
        ("A2", None, "bob@example.com", date(2026, 3, 2), 1, 5.0),
        ("orders.csv:4", "C3", None, date(2026, 3, 3), 1, 7.5),
        ("A8", "C8", "x@y.z", date(2026, 3, 8), 3, 12.0),
    ]
    reasons = dict(_rejects(conn))
    assert reasons[5] == "no customer id and no email"
    assert "'03/05/2026' is not a real date" in reasons[6]
    assert reasons[7] == "expected 6 fields, found 5"
    assert reasons[8] == f"duplicate order_id A1 (first at {f}:2)"
    raw = dict(conn.sql("SELECT source_line, raw_line FROM commerce.order_rejects").fetchall())
    assert raw[7] == "A6,C6,,2026-03-06,1"
    assert raw[8] == "A1,C1,ann@example.com,2026-03-07,1,1.00"


def test_csv_columns_in_any_order(conn: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    f = _write(tmp_path / "o.csv",
               "Amount,Units,Order_Date,Email,Customer_ID,Order_ID,channel\n3.5,1,2026-01-02,,K,O1,web\n")
    load_orders(conn, [f])
    assert conn.sql("SELECT order_id, customer_id, units, amount FROM commerce.orders").fetchall() == [
        ("O1", "K", 1, 3.5)
    ]


def test_unrecognised_file_is_rejected_line_by_line_and_other_files_still_load(
    conn: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    bad = _write(tmp_path / "notes.txt", "hello world\nsecond line\n")
    good = _write(tmp_path / "good.csv", "order_id,customer_id,email,order_date,units,amount\nZ,K,,2026-01-01,1,2\n")
    with pytest.raises(OrderFormatError, match="notes.txt"):
        detect_order_format(bad)
    report = load_orders(conn, [bad, good])
    assert (report.files, report.loaded, report.rejected) == (2, 1, 2)
    rows = conn.sql("SELECT source_line, reason, raw_line FROM commerce.order_rejects ORDER BY 1").fetchall()
    assert [r[0] for r in rows] == [1, 2]
    assert all(r[1].startswith("unrecognised order file format") for r in rows)
    assert rows[1][2] == "second line"


def test_load_replaces_previous_content_and_missing_file_changes_nothing(
    conn: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    a = _write(tmp_path / "a.csv", "order_id,customer_id,email,order_date,units,amount\n1,K,,2026-01-01,1,2\n")
    b = _write(tmp_path / "b.csv", "order_id,customer_id,email,order_date,units,amount\n2,K,,2026-01-01,1,2\n")
    load_orders(conn, [a])
    load_orders(conn, [b])
    assert conn.sql("SELECT order_id FROM commerce.orders").fetchall() == [("2",)]
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        load_orders(conn, [a, tmp_path / "nope.csv"])
    assert conn.sql("SELECT order_id FROM commerce.orders").fetchall() == [("2",)]


def test_detect_cdnow_without_header(tmp_path: Path) -> None:
    f = _write(tmp_path / "x.dat", "\n 00001 19970101 1 11.77\n")
    assert detect_order_format(f) == "cdnow"
    with pytest.raises(OrderFormatError, match="empty"):
        detect_order_format(_write(tmp_path / "empty.txt", "\n\n"))


def test_auto_shift_ignores_invalid_dates(tmp_path: Path) -> None:
    f = _write(tmp_path / "c.txt", "00001 19970101 1 1.00\n00002 19991399 1 1.00\n00003 19970110 1 1.00\n")
    assert auto_shift_days([f], end_date=date(1997, 1, 20)) == 10
    assert auto_shift_days([_write(tmp_path / "none.txt", "00002 19991399 1 1.00\n")], end_date=date(2000, 1, 1)) == 0


def test_implausible_values_are_rejected_and_an_excel_bom_is_ignored(conn: duckdb.DuckDBPyConnection,
                                                                      tmp_path: Path) -> None:
    f = tmp_path / "orders.csv"
    f.write_bytes(
        b"\xef\xbb\xbf"  # Excel's "CSV UTF-8" starts with a byte order mark
        b"Order_ID,customer_id,email,order_date,units,amount\n"
        b"B1,C1,,2026-03-01,1,1000000\n"                    # 2 good: exactly the maximum
        b"B2,C2,,2026-03-01,1,1000000.01\n"                 # 3 above LEXER_MAX_ORDER_AMOUNT
        b"B3,C3,,2026-03-01,1,1e308\n"                      # 4 far above (would not fit DECIMAL(18, 4))
        b"B4,C4,,1850-01-01,1,5\n"                          # 5 before 1900
        b"B5,C5,,2026-03-03,1,5\n"                          # 6 after `latest`
        b"B6,C\xff6,,2026-03-01,1,5\n"                      # 7 not UTF-8
        b"B7,C7,\"ann\n@example.com\",2026-03-01,1,5\n"     # 8-9 a newline inside the email
        b"B8,C8, Bob@Example.com ,2026-03-02,1,5\n"         # 10 good (trimmed, lower-cased)
        b"B9,C9,,2026-03-01,99999999999999999999,5\n"      # 11 units too large for a whole number column
    )
    report = load_orders(conn, [f], latest=date(2026, 3, 2))
    assert (report.loaded, report.rejected) == (2, 7)
    assert conn.sql("SELECT order_id, email FROM commerce.orders ORDER BY 1").fetchall() == [
        ("B1", None), ("B8", "bob@example.com")]
    assert _rejects(conn) == [
        (3, "amount 1000000.01 is above LEXER_MAX_ORDER_AMOUNT (1,000,000)"),
        (4, "amount 1e308 is above LEXER_MAX_ORDER_AMOUNT (1,000,000)"),
        (5, "order date 1850-01-01 is before 1900-01-01"),
        (6, "order date 2026-03-03 is in the future"),
        (7, "not UTF-8 text (order files must be UTF-8)"),
        (8, "email contains spaces or control characters"),  # the record starts on line 8
        (11, "units 99999999999999999999 is too large"),
    ]
    raw = dict(conn.sql("SELECT source_line, raw_line FROM commerce.order_rejects").fetchall())
    assert raw[8] == 'B7,C7,"ann'  # the record's first line, with its order id
    # the limit and the future are judged after the shift; a higher maximum lets the big line through
    report = load_orders(conn, [f], latest=date(2026, 3, 2), shift_days=-1, max_amount=2e6)
    assert report.rejected == 5  # 1e308, 1850, not UTF-8, the email, the units; B5 (2026-03-02 after the shift)


def test_a_newer_file_cannot_overwrite_an_order_already_loaded(conn: duckdb.DuckDBPyConnection,
                                                              tmp_path: Path) -> None:
    import os

    from lexer_assets.defs.commerce import order_files

    folder = tmp_path / "orders"
    folder.mkdir()
    old = _write(folder / "orders.csv", "order_id,customer_id,email,order_date,units,amount\n"
                                        "O1,C1,,2023-12-03,1,123.71\n")
    new = _write(folder / "extra.csv", "order_id,customer_id,email,order_date,units,amount\n"
                                         "O1,C1,,2026-11-01,1,5.00\n")  # sorts first by name, arrived later
    os.utime(old, (1_700_000_000, 1_700_000_000))
    os.utime(new, (1_760_000_000, 1_760_000_000))
    files = order_files(folder)
    assert files == [old, new]
    load_orders(conn, files)
    assert conn.sql("SELECT order_date, amount FROM commerce.orders").fetchall() == [(date(2023, 12, 3), 123.71)]
    assert _rejects(conn) == [(2, f"duplicate order_id O1 (first at {old}:2)")]
    # The brand appends to its main file (now the newest): the order already loaded still stays.
    os.utime(old, (1_770_000_000, 1_770_000_000))
    files = order_files(folder)
    assert files == [new, old]
    load_orders(conn, files)
    assert conn.sql("SELECT order_date, amount FROM commerce.orders").fetchall() == [(date(2023, 12, 3), 123.71)]
    assert [reason for _, reason in _rejects(conn)] == [f"duplicate order_id O1 (first at {old}:2)"]
