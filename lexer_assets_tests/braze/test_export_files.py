"""Export file reading: format by magic bytes, every zip member, and the refusals (bombs, escapes, corrupt)."""

from __future__ import annotations

import gzip
import io
import zipfile
from pathlib import Path

import pytest

from lexer_assets.braze.export_files import (
    ExportFileError,
    decompress_export,
    detect_format,
    iter_ndjson_members,
)
from lexer_assets_tests.braze.archives import write_gzip, write_zip

LINES_A = b'{"external_id": "a1"}\n{"external_id": "a2"}\n'
LINES_B = b'{"external_id": "b1"}\n'



def read_all(path: Path, **limits: float) -> list[tuple[str, bytes]]:
    return [(label, stream.read()) for label, stream in iter_ndjson_members(path, **limits)]


def test_detect_format_from_first_bytes() -> None:
    assert detect_format(b"PK\x03\x04rest") == "zip"
    assert detect_format(b"PK\x05\x06") == "zip"  # an empty zip is only its end record
    assert detect_format(b"\x1f\x8b\x08\x00") == "gzip"
    assert detect_format(b'{"external_id"') == "ndjson"
    assert detect_format(b"") == "ndjson"


def test_zip_with_two_members_yields_both_in_order(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "abc.zip", {"users-1.json": LINES_A, "users-2.json": LINES_B})
    assert read_all(path) == [("abc.zip!users-1.json", LINES_A), ("abc.zip!users-2.json", LINES_B)]


def test_zip_named_file_that_is_really_gzip(tmp_path: Path) -> None:
    path = write_gzip(tmp_path / "0123456789abcdef0123456789abcdef.zip", LINES_A)
    assert read_all(path) == [("0123456789abcdef0123456789abcdef.zip", LINES_A)]


def test_gzip_named_file_that_is_really_zip(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "x.gz", {"m.json": LINES_B})
    assert read_all(path) == [("x.gz!m.json", LINES_B)]


def test_plain_ndjson_and_concatenated_gzip_members(tmp_path: Path) -> None:
    plain = tmp_path / "plain.json"
    plain.write_bytes(LINES_A)
    assert read_all(plain) == [("plain.json", LINES_A)]
    multi = tmp_path / "multi.gz"
    multi.write_bytes(gzip.compress(LINES_A) + gzip.compress(LINES_B))  # gzip allows several members
    assert read_all(multi) == [("multi.gz", LINES_A + LINES_B)]


def test_empty_zip_and_directories_yield_nothing(tmp_path: Path) -> None:
    empty = write_zip(tmp_path / "empty.zip", {})
    assert read_all(empty) == []
    with zipfile.ZipFile(tmp_path / "dirs.zip", "w") as archive:
        archive.writestr("folder/", b"")
        archive.writestr("folder/u.json", LINES_B)
    assert read_all(tmp_path / "dirs.zip") == [("dirs.zip!folder/u.json", LINES_B)]


@pytest.mark.parametrize("name, why", [
    ("../escape.json", "'..'"),
    ("ok/../../escape.json", "'..'"),
    ("/etc/passwd", "absolute"),
    ("C:/windows/x.json", "drive letter"),
    ("..\\windows-escape.json", "'..'"),
])
def test_member_names_that_leave_the_folder_are_refused(tmp_path: Path, name: str, why: str) -> None:
    path = write_zip(tmp_path / "evil.zip", {"fine.json": LINES_A, name: LINES_B})
    with pytest.raises(ExportFileError) as err:
        read_all(path)
    assert "evil.zip" in str(err.value) and why in str(err.value)
    # Refused before anything is read, and nothing written outside out_dir when decompressing.
    out = tmp_path / "out" / "deeper"
    with pytest.raises(ExportFileError):
        decompress_export([path], out)
    assert list(out.iterdir()) == []
    assert not (tmp_path / "out" / "escape.json").exists() and not (tmp_path / "escape.json").exists()


def test_zip_member_past_the_size_limit_is_refused(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "big.zip", {"m.json": LINES_A * 1000})
    with pytest.raises(ExportFileError, match=r"big\.zip!m\.json.*max_member_bytes"):
        read_all(path, max_member_bytes=1000)
    assert read_all(path, max_member_bytes=len(LINES_A) * 1000)[0][1] == LINES_A * 1000


def test_zip_bomb_ratio_is_refused(tmp_path: Path) -> None:
    # 64 MiB of one byte deflates about 1000x: past the default 200x ratio.
    path = tmp_path / "bomb.zip"
    with (zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive,
          archive.open("bomb.json", "w") as member):
        for _ in range(64):
            member.write(b" " * (1024 * 1024))
    assert path.stat().st_size < 1024 * 1024
    with pytest.raises(ExportFileError, match=r"bomb\.zip!bomb\.json.*max_ratio"):
        read_all(path)


def test_gzip_bomb_is_stopped_while_reading(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb") as gz:
        for _ in range(64):
            gz.write(b"\n" * (1024 * 1024))
    path = tmp_path / "bomb.gz"
    path.write_bytes(buf.getvalue())
    with pytest.raises(ExportFileError, match=r"bomb\.gz.*max_ratio"):
        read_all(path)
    with pytest.raises(ExportFileError, match=r"bomb\.gz.*max_member_bytes"):
        read_all(path, max_member_bytes=10 * 1024 * 1024, max_ratio=1e9)


def test_corrupt_files_are_refused_with_their_name(tmp_path: Path) -> None:
    good = write_zip(tmp_path / "good.zip", {"m.json": LINES_A * 50})
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(good.read_bytes()[:-40])
    with pytest.raises(ExportFileError, match=r"truncated\.zip"):
        read_all(truncated)
    short_gz = tmp_path / "short.gz"
    short_gz.write_bytes(gzip.compress(LINES_A * 50)[:-12])
    with pytest.raises(ExportFileError, match=r"short\.gz"):
        read_all(short_gz)
    with pytest.raises(ExportFileError, match=r"missing\.zip"):
        read_all(tmp_path / "missing.zip")


def _lines(n: int) -> bytes:
    # Varied enough not to compress to nothing, so the member spans several of the reader's input chunks.
    return b"".join(b'{"external_id": "u%d", "n": %d}\n' % (i, (i * 7919) % 100003) for i in range(n))


def test_large_deflated_and_stored_members_read_back_byte_for_byte(tmp_path: Path) -> None:
    big = _lines(200_000)
    path = tmp_path / "big.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("big.json", big, compress_type=zipfile.ZIP_DEFLATED)
        archive.writestr("stored.json", LINES_A, compress_type=zipfile.ZIP_STORED)
        archive.writestr("empty.json", b"", compress_type=zipfile.ZIP_DEFLATED)
    assert zipfile.ZipFile(path).getinfo("big.json").compress_size > 1024**2  # more than one input chunk
    got = [(label, data) for label, data in read_all(path)]
    assert got == [("big.zip!big.json", big), ("big.zip!stored.json", LINES_A), ("big.zip!empty.json", b"")]


def _patch(data: bytes, offset: int, new: bytes) -> bytes:
    return data[:offset] + new + data[offset + len(new):]


def test_wrong_crc_and_short_deflate_data_are_refused_with_the_member_name(tmp_path: Path) -> None:
    data = write_zip(tmp_path / "src.zip", {"m.json": LINES_A * 500}).read_bytes()
    local, central = data.index(b"PK\x03\x04"), data.index(b"PK\x01\x02")
    bad_crc = tmp_path / "crc.zip"  # CRC-32 changed in both headers: only the data can tell
    bad_crc.write_bytes(_patch(_patch(data, local + 14, b"\0\0\0\0"), central + 16, b"\0\0\0\0"))
    with pytest.raises(ExportFileError, match=r"crc\.zip!m\.json: cannot be read.*CRC"):
        read_all(bad_crc)
    # The deflate stream cut in half, its bytes replaced by a stored empty block that never ends the
    # stream: the directory still adds up, the data does not.
    size = zipfile.ZipFile(bad_crc).getinfo("m.json").compress_size
    start = local + 30 + len("m.json")
    cut = tmp_path / "cut.zip"
    cut.write_bytes(_patch(data, start + size // 2, b"\x00\x00\x00\xff\xff" * ((size - size // 2) // 5)))
    with pytest.raises(ExportFileError, match=r"cut\.zip!m\.json: cannot be read"):
        read_all(cut)


def test_decompress_export_writes_every_member_as_plain_ndjson(tmp_path: Path) -> None:
    z = write_zip(tmp_path / "one.zip", {"a.json": LINES_A, "sub/b.json": LINES_B})
    g = write_gzip(tmp_path / "two.gz", LINES_B)
    p = tmp_path / "three.json"
    p.write_bytes(LINES_A)
    out = tmp_path / "out"
    written = decompress_export([z, g, p], out)
    assert [label for label, _ in written] == ["one.zip!a.json", "one.zip!sub/b.json", "two.gz", "three.json"]
    assert [path.read_bytes() for _, path in written] == [LINES_A, LINES_B, LINES_B, LINES_A]
    assert all(path.parent == out for _, path in written)
    assert len({path.name for _, path in written}) == 4
