"""Loading Braze exports into braze.users / braze.export_rejects, values checked against hand-written input."""

from __future__ import annotations

import datetime as dt
import json
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

from lexer_assets.braze.export_files import ExportFileError
from lexer_assets.braze.export_load import (
    REJECT_EMPTY_FILE,
    REJECT_INVALID_JSON,
    REJECT_INVALID_UTF8,
    REJECT_NO_IDENTIFIER,
    REJECT_NOT_OBJECT,
    REJECT_TOO_LONG,
    load_export,
)
from lexer_assets.storage.warehouse import ensure_tables
from lexer_assets_tests.braze.archives import write_gzip, write_zip

SHARED = Path(os.environ.get("LEXER_SHARED_DIR", Path(__file__).resolve().parents[3] / "shared"))
SAMPLE_EXPORT = (SHARED / "data" / "braze-export-sample" / "bucket" / "segment-export"
                 / "3f2c9d1e-5b7a-4c0e-9a61-0d2b8e4f7a10" / "2026-12-01"
                 / "9b1f4c2e-7d3a-4e8b-a5c6-1f2e3d4c5b6a-1764547200")


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    connection = duckdb.connect(str(tmp_path / "hub.duckdb"))
    ensure_tables(connection)
    yield connection
    connection.close()


def ndjson(users: list[Any]) -> bytes:
    return b"".join(json.dumps(u, ensure_ascii=False).encode() + b"\n" for u in users)



def load(conn: duckdb.DuckDBPyConnection, files: list[Path], tmp_path: Path, prefix: str = "exp-1", **kw: Any):
    return load_export(conn, files, object_prefix=prefix, work_dir=tmp_path / "work", **kw)


def rows(conn: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> list[tuple]:
    return conn.execute(sql, params or []).fetchall()


def user(conn: duckdb.DuckDBPyConnection, customer_id: str) -> dict[str, Any]:
    cur = conn.execute("SELECT * FROM braze.users WHERE customer_id = ?", [customer_id])
    names = [d[0] for d in cur.description]
    found = cur.fetchall()
    assert len(found) == 1, f"{customer_id}: {len(found)} rows"
    return dict(zip(names, found[0], strict=True))


# ------------------------------------------------------------------------------------------- the sample export

def test_shared_sample_export_values_checked_by_hand(conn: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    files = sorted(SAMPLE_EXPORT.glob("*.zip"))
    assert len(files) == 1
    report = load(conn, files, tmp_path, prefix="9b1f4c2e-7d3a-4e8b-a5c6-1f2e3d4c5b6a-1764547200")
    # Six lines: five users, user 00005 twice.
    assert (report.files, report.lines, report.loaded, report.duplicates, report.rejected) == (1, 6, 5, 1, 0)
    assert sorted(r[0] for r in rows(conn, "SELECT customer_id FROM braze.users")) == [
        "00001", "00002", "00004", "00005", "braze:6041a5c59f0c1a3b8e2d4f03"]

    ava = user(conn, "00001")
    assert ava["created_at"] == dt.datetime(2021, 3, 4, 9, 12, 45, 118000)  # "2021-03-04 09:12:45.118 UTC"
    assert (ava["alias_name"], ava["alias_label"]) == ("shopify-88123", "shopify_customer_id")
    assert json.loads(ava["user_aliases"]) == [{"alias_name": "shopify-88123",
                                                "alias_label": "shopify_customer_id"}]
    assert (ava["first_name"], ava["last_name"], ava["email_normalized"]) == ("Ava", "Nguyen",
                                                                              "ava.nguyen@example.test")
    assert (ava["dob"], ava["gender"], ava["country"], ava["home_city"]) == (dt.date(1988, 7, 14), "F", "AU",
                                                                            "Melbourne")
    assert (ava["total_revenue"], ava["random_bucket"]) == (412.5, 1834)
    assert (ava["email_subscribe"], ava["push_subscribe"]) == ("opted_in", "subscribed")
    assert json.loads(ava["custom_attributes"]) == {"loyalty_tier": "gold", "loyalty_points": 1840,
                                                    "preferred_store": "Chadstone", "lexer_audience": ["VIP"]}
    assert json.loads(ava["campaigns_received"])[0]["engaged"] == {"opened_email": True, "clicked_email": True}
    assert json.loads(ava["custom_events"])[0]["count"] == 214
    assert json.loads(ava["canvases_received"])[0]["api_canvas_id"] == "cnv-001"
    assert ava["export_file"] == "5d41402abc4b2a76b9719d911017c592.zip!5d41402abc4b2a76b9719d911017c592.json"
    assert ava["export_line"] == 1

    liam = user(conn, "00002")
    assert liam["email"] == "LIAM.OBRIEN@Example.Test "
    assert liam["email_normalized"] == "liam.obrien@example.test"
    assert liam["created_at"] == dt.datetime(2024, 11, 30, 22, 1, 9)
    assert json.loads(liam["custom_attributes"])["loyalty_points"] == "320"  # kept as sent
    assert json.loads(liam["purchases"]) == [] and json.loads(liam["user_aliases"]) == []

    noah = user(conn, "braze:6041a5c59f0c1a3b8e2d4f03")  # alias-only: single alias object, no external_id
    assert noah["external_id"] is None
    assert json.loads(noah["user_aliases"]) == [{"alias_name": "lead-7731", "alias_label": "crm_lead_id"}]
    assert (noah["alias_name"], noah["alias_label"]) == ("lead-7731", "crm_lead_id")
    assert noah["created_at"] == dt.datetime(2025, 6, 1)

    leap = user(conn, "00004")
    assert leap["dob"] == dt.date(1992, 2, 29) and leap["total_revenue"] == 0.0
    assert json.loads(leap["custom_attributes"])["loyalty_tier"] is None

    zoe = user(conn, "00005")
    assert (zoe["first_name"], zoe["last_name"]) == ("Zoë", "Müller")
    assert zoe["export_line"] == 6  # identical duplicates: the later line wins
    # The numeric custom attribute stays queryable whatever JSON type each user sent.
    assert sorted(rows(conn, "SELECT customer_id, TRY_CAST(custom_attributes->>'$.loyalty_points' AS DOUBLE) "
                             "FROM braze.users WHERE external_id IS NOT NULL")) == [
        ("00001", 1840.0), ("00002", 320.0), ("00004", 0.0), ("00005", 12.5)]


# --------------------------------------------------------------------------------------------- file formats

def test_two_member_zip_gzip_named_zip_and_plain_ndjson(conn: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    two = write_zip(tmp_path / "a.zip", {"m1.json": ndjson([{"external_id": "1"}, {"external_id": "2"}]),
                                         "m2.json": ndjson([{"external_id": "3"}])})
    fake_zip = write_gzip(tmp_path / "b.zip", ndjson([{"external_id": "4"}]))
    plain = tmp_path / "c.json"
    plain.write_bytes(ndjson([{"external_id": "5"}, {"external_id": "6"}]))
    report = load(conn, [two, fake_zip, plain], tmp_path)
    assert (report.files, report.members, report.loaded) == (3, 4, 6)
    assert rows(conn, "SELECT customer_id, export_file, export_line FROM braze.users ORDER BY customer_id") == [
        ("1", "a.zip!m1.json", 1), ("2", "a.zip!m1.json", 2), ("3", "a.zip!m2.json", 1),
        ("4", "b.zip", 1), ("5", "c.json", 1), ("6", "c.json", 2)]
    assert rows(conn, "SELECT DISTINCT object_prefix FROM braze.users") == [("exp-1",)]


def test_export_of_1001_files(conn: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    folder = tmp_path / "export"
    folder.mkdir()
    files = []
    for i in range(1001):
        users = [{"external_id": f"f{i}-u{j}", "braze_id": f"b{i}-{j}"} for j in range(2)]
        maker = write_zip if i % 2 else None
        path = folder / f"{i:032x}.{'zip' if maker else 'gz'}"
        files.append(write_zip(path, {f"{i:032x}.json": ndjson(users)}) if maker else write_gzip(path, ndjson(users)))
    report = load(conn, files, tmp_path)
    assert (report.files, report.members, report.lines, report.loaded) == (1001, 1001, 2002, 2002)
    assert rows(conn, "SELECT count(DISTINCT export_file), min(customer_id), max(export_line) FROM braze.users") == [
        (1001, "f0-u0", 2)]


def test_empty_export_replaces_previous_users(conn: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    first = write_gzip(tmp_path / "x.gz", ndjson([{"external_id": "1"}]))
    load(conn, [first], tmp_path, prefix="old")
    report = load(conn, [], tmp_path, prefix="new")
    assert (report.files, report.lines, report.loaded, report.rejected) == (0, 0, 0, 0)
    assert rows(conn, "SELECT count(*) FROM braze.users") == [(0,)]
    empty_zip = write_zip(tmp_path / "empty.zip", {})
    empty_member = write_zip(tmp_path / "empty-member.zip", {"m.json": b""})
    zero_bytes = tmp_path / "zero.gz"
    zero_bytes.write_bytes(b"")
    report = load(conn, [empty_zip, empty_member, zero_bytes], tmp_path, prefix="new")
    assert (report.files, report.members, report.loaded) == (3, 2, 0)
    # Each file that held nothing is shown, not skipped: line 0, reason "empty file".
    assert report.rejects_by_reason == {REJECT_EMPTY_FILE: 3}
    assert rows(conn, "SELECT export_file, export_line, reason FROM braze.export_rejects WHERE object_prefix = 'new' "
                "ORDER BY 1") == [("empty-member.zip", 0, REJECT_EMPTY_FILE), ("empty.zip", 0, REJECT_EMPTY_FILE),
                                  ("zero.gz", 0, REJECT_EMPTY_FILE)]


# ----------------------------------------------------------------------------------------------- schema drift

def test_schema_is_ours_not_inferred(conn: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    # File 1: 150 users with leading empty arrays and no home_city; the key appears first at line 150.
    file1 = [{"external_id": f"a{i}", "purchases": [], "custom_events": [], "custom_attributes": {"n": i}}
             for i in range(1, 150)]
    file1.append({"external_id": "a150", "home_city": "Hobart", "purchases": [{"name": "sku-1", "count": 2}],
                  "custom_attributes": {"n": "one hundred fifty", "late_key": True}})
    # File 2 lacks columns file 1 had and adds others; a custom attribute changes type between users.
    file2 = [{"braze_id": "b1", "email": " Mixed@Case.Test ", "custom_attributes": {"n": 2.5}},
             {"external_id": "b2", "custom_attributes": {"n": [1, "x"], "obj": {"deep": {"er": None}}}},
             {"external_id": "b3", "total_revenue": "19.90", "random_bucket": "77", "dob": "1991-02-29",
              "created_at": "2020-05-06T07:08:09.250+10:00"}]
    # Hundreds of sparse custom-attribute keys, each set for one user only.
    file3 = [{"external_id": f"s{k}", "custom_attributes": {f"sparse_{k}": k if k % 2 else f"v{k}"}}
             for k in range(400)]
    files = [write_zip(tmp_path / "1.zip", {"1.json": ndjson(file1)}), write_gzip(tmp_path / "2.gz", ndjson(file2)),
             write_gzip(tmp_path / "3.gz", ndjson(file3))]
    report = load(conn, files, tmp_path)
    assert (report.loaded, report.rejected) == (150 + 3 + 400, 0)

    assert user(conn, "a150")["home_city"] == "Hobart"
    assert json.loads(user(conn, "a150")["purchases"]) == [{"name": "sku-1", "count": 2}]
    assert json.loads(user(conn, "a1")["purchases"]) == []
    assert json.loads(user(conn, "a150")["custom_attributes"]) == {"n": "one hundred fifty", "late_key": True}
    assert json.loads(user(conn, "a7")["custom_attributes"]) == {"n": 7}
    b1 = user(conn, "braze:b1")
    assert (b1["external_id"], b1["email"], b1["email_normalized"]) == (None, " Mixed@Case.Test ", "mixed@case.test")
    assert json.loads(b1["custom_attributes"]) == {"n": 2.5}
    assert json.loads(user(conn, "b2")["custom_attributes"]) == {"n": [1, "x"], "obj": {"deep": {"er": None}}}
    b3 = user(conn, "b3")
    assert (b3["total_revenue"], b3["random_bucket"], b3["dob"]) == (19.9, 77, None)  # 1991 is no leap year
    assert b3["created_at"] == dt.datetime(2020, 5, 5, 21, 8, 9, 250000)  # +10:00 converted to UTC
    assert b3["home_city"] is None and b3["custom_attributes"] is None
    sparse = dict(rows(conn, "SELECT customer_id, custom_attributes FROM braze.users WHERE customer_id LIKE 's%'"))
    assert len(sparse) == 400
    assert all(json.loads(sparse[f"s{k}"]) == {f"sparse_{k}": k if k % 2 else f"v{k}"} for k in range(400))
    # Every value of the type-changing attribute is still there, with its own JSON type.
    assert sorted(rows(conn, "SELECT json_type(custom_attributes->'$.n') t, count(*) FROM braze.users "
                             "WHERE (custom_attributes->'$.n') IS NOT NULL GROUP BY t")) == [
        ("ARRAY", 1), ("DOUBLE", 1), ("UBIGINT", 149), ("VARCHAR", 1)]


# ---------------------------------------------------------------------------------------------- duplicates

def test_duplicates_collapse_by_the_documented_rule(conn: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    lines = [
        {"external_id": "e1", "braze_id": "x1", "created_at": "2024-01-02T00:00:00.000Z", "first_name": "new"},
        {"external_id": "e1", "braze_id": "x1", "created_at": "2023-01-01T00:00:00.000Z", "first_name": "old"},
        {"external_id": "e2", "first_name": "first copy"},
        {"external_id": "e2", "first_name": "last copy"},  # same created_at (none): the later line wins
        {"braze_id": "x3", "first_name": "anonymous"},
        {"external_id": "e3", "braze_id": "x3", "created_at": "2020-01-01 00:00:00.000 UTC", "first_name": "known"},
        {"user_aliases": {"alias_name": "n", "alias_label": "l"}, "first_name": "alias one"},
        {"user_aliases": [{"alias_name": "n", "alias_label": "l"}], "first_name": "alias two"},
    ]
    file_a = write_gzip(tmp_path / "a.gz", ndjson(lines))
    file_b = write_gzip(tmp_path / "b.gz", ndjson([{"external_id": "e2", "first_name": "other file"}]))
    report = load(conn, [file_a, file_b], tmp_path)
    # e1: latest created_at wins; e2: three copies, the one in the later file wins; x3: same braze_id, the
    # dated row beats the undated one; alias-only: the later line wins.
    assert rows(conn, "SELECT customer_id, first_name FROM braze.users ORDER BY customer_id") == [
        ("alias:l:n", "alias two"), ("e1", "new"), ("e2", "other file"), ("e3", "known")]
    assert (report.lines, report.loaded, report.duplicates) == (9, 4, 5)


# ------------------------------------------------------------------------------------------------- rejects

def test_every_reject_reason_with_file_line_and_text(conn: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    long_line = json.dumps({"external_id": "long", "blob": "x" * 3000}).encode()
    content = b"\n".join([
        b'{"external_id": "ok1"}',
        b'{"external_id": "broken"',
        b"",  # blank lines are skipped, not rejected, but still count for line numbers
        b"[1, 2, 3]",
        b'"just a string"',
        b'{"first_name": "nobody", "user_aliases": [{"alias_name": "only-name"}]}',
        long_line,
        b'{"external_id": "bad-\xff-bytes"}',
        b"   ",
        b'{"external_id": "ok2"}\r',
        b'{"external_id": "ok3", "trailing": 1} garbage',
    ]) + b"\n"
    path = write_zip(tmp_path / "r.zip", {"r.json": content})
    report = load(conn, [path], tmp_path, max_line_bytes=2000)
    expected = [
        (2, REJECT_INVALID_JSON, '{"external_id": "broken"'),
        (4, REJECT_NOT_OBJECT, "[1, 2, 3]"),
        (5, REJECT_NOT_OBJECT, '"just a string"'),
        (6, REJECT_NO_IDENTIFIER, '{"first_name": "nobody", "user_aliases": [{"alias_name": "only-name"}]}'),
        (7, REJECT_TOO_LONG, long_line.decode()[:1000]),
        (8, REJECT_INVALID_UTF8, '{"external_id": "bad-\ufffd-bytes"}'),
        (11, REJECT_INVALID_JSON, '{"external_id": "ok3", "trailing": 1} garbage'),
    ]
    assert rows(conn, "SELECT export_line, reason, raw_line FROM braze.export_rejects ORDER BY 1") == expected
    assert rows(conn, "SELECT DISTINCT object_prefix, export_file FROM braze.export_rejects") == [
        ("exp-1", "r.zip!r.json")]
    assert rows(conn, "SELECT customer_id, export_line FROM braze.users ORDER BY export_line") == [
        ("ok1", 1), ("ok2", 10)]
    assert report.rejects_by_reason == {REJECT_INVALID_JSON: 2, REJECT_NOT_OBJECT: 2, REJECT_NO_IDENTIFIER: 1,
                                        REJECT_TOO_LONG: 1, REJECT_INVALID_UTF8: 1}
    assert (report.lines, report.loaded, report.rejected) == (9, 2, 7)


def test_line_longer_than_a_read_chunk_is_rejected_and_the_next_line_loads(
        conn: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    padding = os.urandom(10 * 1024 * 1024).hex().encode()  # 20 MiB that gzip cannot shrink much
    huge = b'{"external_id": "huge", "pad": "' + padding + b'"}'
    path = write_gzip(tmp_path / "h.gz", b'{"external_id": "before"}\n' + huge + b'\n{"external_id": "after"}')
    report = load(conn, [path], tmp_path)
    assert rows(conn, "SELECT export_line, reason, length(raw_line) FROM braze.export_rejects") == [
        (2, REJECT_TOO_LONG, 1000)]
    assert rows(conn, "SELECT customer_id, export_line FROM braze.users ORDER BY export_line") == [
        ("before", 1), ("after", 3)]
    assert report.rejected == 1


# ----------------------------------------------------------------------------------------- idempotency etc.

def test_reload_changes_nothing_and_keeps_other_exports_rejects(conn: duckdb.DuckDBPyConnection,
                                                                 tmp_path: Path) -> None:
    older = write_gzip(tmp_path / "old.gz", b"not json\n")
    load(conn, [older], tmp_path, prefix="older")
    files = [write_zip(tmp_path / "n.zip", {"n.json": ndjson([{"external_id": "1"}, {"external_id": "1"}])
                                            + b"oops\n"}),
             write_gzip(tmp_path / "m.gz", ndjson([{"braze_id": "z", "custom_attributes": {"a": 1}}]))]
    first = load(conn, files, tmp_path, prefix="newer")
    snapshot = (rows(conn, "SELECT * FROM braze.users ORDER BY customer_id"),
                rows(conn, "SELECT * FROM braze.export_rejects ORDER BY object_prefix, export_file, export_line"))
    second = load(conn, files, tmp_path, prefix="newer")
    assert first == second
    assert snapshot == (rows(conn, "SELECT * FROM braze.users ORDER BY customer_id"),
                        rows(conn, "SELECT * FROM braze.export_rejects ORDER BY object_prefix, export_file, "
                                   "export_line"))
    assert rows(conn, "SELECT object_prefix, count(*) FROM braze.export_rejects GROUP BY 1 ORDER BY 1") == [
        ("newer", 1), ("older", 1)]


def test_unsafe_zip_refuses_the_load_and_caller_transaction_keeps_old_data(
        conn: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    load(conn, [write_gzip(tmp_path / "good.gz", ndjson([{"external_id": "kept"}]))], tmp_path)
    evil = write_zip(tmp_path / "evil.zip", {"../../x.json": ndjson([{"external_id": "x"}])})
    conn.execute("BEGIN TRANSACTION")
    with pytest.raises(ExportFileError, match=r"evil\.zip!\.\./\.\./x\.json"):
        load(conn, [write_gzip(tmp_path / "fine.gz", ndjson([{"external_id": "new"}])), evil], tmp_path)
    conn.execute("ROLLBACK")
    assert rows(conn, "SELECT customer_id FROM braze.users") == [("kept",)]


def test_lines_crossing_read_chunks_keep_their_numbers(conn: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    # ~9 MiB member: several 4 MiB reads, so many lines straddle a chunk boundary.
    users = [{"external_id": f"n{n}", "line": n, "pad": "z" * (n % 1500)} for n in range(1, 12001)]
    path = write_zip(tmp_path / "big.zip", {"big.json": ndjson(users)})
    report = load(conn, [path], tmp_path)
    assert (report.loaded, report.rejected) == (12000, 0)
    assert rows(conn, "SELECT count(*) FROM braze.users WHERE customer_id <> 'n' || export_line") == [(0,)]


def test_same_names_in_different_folders_and_repeated_zip_members(conn: duckdb.DuckDBPyConnection,
                                                                   tmp_path: Path) -> None:
    (tmp_path / "d1").mkdir()
    (tmp_path / "d2").mkdir()
    one = write_gzip(tmp_path / "d1" / "same.gz", ndjson([{"external_id": "1"}]))
    two = write_gzip(tmp_path / "d2" / "same.gz", ndjson([{"external_id": "2"}]))
    twice = tmp_path / "twice.zip"
    with zipfile.ZipFile(twice, "w") as archive:
        archive.writestr("u.json", ndjson([{"external_id": "3"}]))
        with pytest.warns(UserWarning):  # zipfile warns about the repeated name; Braze never does this
            archive.writestr("u.json", ndjson([{"external_id": "4"}]))
    report = load(conn, [one, two, twice], tmp_path)
    assert report.loaded == 4
    assert rows(conn, "SELECT customer_id, export_file FROM braze.users ORDER BY 1") == [
        ("1", "d1/same.gz"), ("2", "d2/same.gz"), ("3", "twice.zip!u.json"), ("4", "twice.zip!u.json#2")]


def test_zip_bomb_refuses_the_load(conn: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    bomb = write_zip(tmp_path / "bomb.zip", {"bomb.json": b"\n" * (40 * 1024 * 1024)})
    with pytest.raises(ExportFileError, match=r"bomb\.zip!bomb\.json.*max_ratio"):
        load(conn, [bomb], tmp_path)
    with pytest.raises(ExportFileError, match=r"max_member_bytes"):
        load(conn, [write_gzip(tmp_path / "big.gz", ndjson([{"external_id": "x" * 5000}]))], tmp_path,
             max_member_bytes=1000)


def test_work_dir_is_left_clean(conn: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    path = write_gzip(tmp_path / "r.gz", b"bad line\n" + ndjson([{"external_id": "1"}]))
    report = load(conn, [path], tmp_path)
    assert (report.loaded, report.rejected) == (1, 1)
    work = tmp_path / "work"
    assert not work.exists() or list(work.iterdir()) == []


def test_blank_lines_count_for_numbering_and_line_limit_is_inclusive(conn: duckdb.DuckDBPyConnection,
                                                                     tmp_path: Path) -> None:
    exact = b'{"external_id": "exact", "p": "' + b"q" * 50 + b'"}'
    over = b'{"external_id": "over!", "p": "' + b"q" * 51 + b'"}'
    content = b"\n\n" + b'{"external_id": "three"}' + b"\n\n\n" + exact + b"\n" + over + b"\n\n"
    report = load(conn, [write_gzip(tmp_path / "b.gz", content)], tmp_path, max_line_bytes=len(exact))
    assert rows(conn, "SELECT customer_id, export_line FROM braze.users ORDER BY 2") == [("three", 3), ("exact", 6)]
    assert rows(conn, "SELECT export_line, reason FROM braze.export_rejects") == [(7, REJECT_TOO_LONG)]
    assert (report.lines, report.loaded, report.rejected) == (3, 2, 1)


def test_created_at_does_not_depend_on_the_session_time_zone(conn: duckdb.DuckDBPyConnection,
                                                             tmp_path: Path) -> None:
    conn.execute("SET TimeZone = 'Australia/Melbourne'")
    path = write_gzip(tmp_path / "t.gz", ndjson([
        {"external_id": "utc", "created_at": "2021-03-04 09:12:45.118 UTC"},
        {"external_id": "z", "created_at": "2024-11-30T22:01:09.000Z"},
        {"external_id": "bad", "created_at": "yesterday"}]))
    load(conn, [path], tmp_path)
    assert rows(conn, "SELECT customer_id, created_at FROM braze.users ORDER BY 1") == [
        ("bad", None), ("utc", dt.datetime(2021, 3, 4, 9, 12, 45, 118000)), ("z", dt.datetime(2024, 11, 30, 22, 1, 9))]


def test_duplicates_linked_through_both_ids(conn: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    # A and B share external_id 1 (B newer); B and C share braze_id y (B newer): only B stays. D is alone.
    lines = [{"external_id": "1", "braze_id": "x", "created_at": "2020-01-01T00:00:00Z", "first_name": "A"},
             {"external_id": "1", "braze_id": "y", "created_at": "2022-01-01T00:00:00Z", "first_name": "B"},
             {"external_id": "2", "braze_id": "y", "created_at": "2019-01-01T00:00:00Z", "first_name": "C"},
             {"external_id": "3", "braze_id": "z", "first_name": "D"}]
    report = load(conn, [write_gzip(tmp_path / "c.gz", ndjson(lines))], tmp_path)
    assert rows(conn, "SELECT customer_id, first_name FROM braze.users ORDER BY 1") == [("1", "B"), ("3", "D")]
    assert (report.loaded, report.duplicates) == (2, 2)
