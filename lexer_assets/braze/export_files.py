"""Reading Braze segment export files: zip, gzip or plain NDJSON, decided by the first bytes, not the name.

Braze writes ``<32 hex>.zip`` files holding one or more NDJSON members, or ``<32 hex>.gz`` files holding one
gzipped NDJSON stream; names are not trusted (a ``.zip`` may really be gzip). Every member is checked before
and while it is read:

* a zip member name that is absolute, has a drive letter or a ``..`` component (it would leave the target
  folder when extracted) is refused;
* a member whose expanded size passes ``max_member_bytes``, or whose expanded/compressed ratio passes
  ``max_ratio`` (a zip bomb), is refused. Sizes declared in a zip's directory are checked up front and the
  bytes actually produced are counted while reading, so a lying header does not get past. The ratio is only
  judged once a member has produced more than ``RATIO_GRACE_BYTES`` (tiny files compress extremely well);
* a file that cannot be read (truncated, corrupt, bad CRC) is refused.

Every refusal is an :class:`ExportFileError` whose message names the file (and member) and the reason.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import shutil
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Literal

ExportFormat = Literal["zip", "gzip", "ndjson"]

DEFAULT_MAX_MEMBER_BYTES = 4 * 1024**3  # 4 GiB expanded per member; Braze writes ~5,000 users (MBs) per file
DEFAULT_MAX_RATIO = 200.0  # NDJSON of users compresses ~5-20x; a bomb is 1,000x and more
RATIO_GRACE_BYTES = 8 * 1024**2

_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")
_GZIP_MAGIC = b"\x1f\x8b"
_COPY_CHUNK = 1024**2


class ExportFileError(ValueError):
    """An export file or member that is refused: the message names it and says why."""


def detect_format(head: bytes) -> ExportFormat:
    """What an export file is, from its first bytes: ``zip`` (PK signature), ``gzip`` (1f 8b), else ``ndjson``."""
    if head.startswith(_ZIP_MAGICS):
        return "zip"
    if head.startswith(_GZIP_MAGIC):
        return "gzip"
    return "ndjson"


def _file_format(path: Path) -> ExportFormat:
    try:
        with open(path, "rb") as fh:
            return detect_format(fh.read(4))
    except OSError as exc:
        raise ExportFileError(f"{path}: cannot be read ({exc.strerror or exc})") from exc


def _unsafe_member_name(name: str) -> str | None:
    """Why a zip member name would escape the folder it is extracted into, or None when it is safe."""
    normalized = name.replace("\\", "/")
    if normalized.startswith("/"):
        return "is an absolute path"
    if re.match(r"^[A-Za-z]:", normalized):
        return "starts with a drive letter"
    if ".." in PurePosixPath(normalized).parts:
        return "contains a '..' component"
    if "\x00" in name:
        return "contains a NUL byte"
    return None


class _GuardedStream(io.RawIOBase):
    """A read-only stream counting expanded bytes against the limits; every error names the member."""

    def __init__(self, inner: BinaryIO, label: str, *, compressed_bytes: int | None,
                 max_member_bytes: int, max_ratio: float) -> None:
        super().__init__()
        self._inner = inner
        self._label = label
        self._compressed = compressed_bytes
        self._max_bytes = max_member_bytes
        self._max_ratio = max_ratio
        self._produced = 0

    def readable(self) -> bool:
        return True

    def _count(self, n: int) -> None:
        self._produced += n
        if self._produced > self._max_bytes:
            raise ExportFileError(
                f"{self._label}: expands past the limit of {self._max_bytes:,} bytes (max_member_bytes)")
        if (self._compressed is not None and self._produced > RATIO_GRACE_BYTES
                and self._produced > self._max_ratio * max(self._compressed, 1)):
            raise ExportFileError(
                f"{self._label}: expands more than {self._max_ratio:g}x its compressed size of "
                f"{self._compressed:,} bytes (max_ratio; a zip bomb?)")

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            # Read in bounded steps so a bomb is stopped at the limit instead of filling memory first.
            parts = []
            while chunk := self.read(_COPY_CHUNK * 8):
                parts.append(chunk)
            return b"".join(parts)
        try:
            data = self._inner.read(size)
        except ExportFileError:
            raise
        except (OSError, EOFError, zlib.error, zipfile.BadZipFile) as exc:
            raise ExportFileError(f"{self._label}: cannot be read ({exc})") from exc
        self._count(len(data))
        return data

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            super().close()


class _DeflateMember(io.RawIOBase):
    """A deflated zip member inflated straight from the archive file, CRC-32 and size checked at the end.

    zipfile's own reader re-copies its unread input on every read; on a 1M-user export that was about a third
    of the whole decompression cost. Only plain deflate members come here (see ``_open_member``).
    """

    _IN_CHUNK = 1024**2

    def __init__(self, path: Path, info: zipfile.ZipInfo) -> None:
        super().__init__()
        self._fh = open(path, "rb")  # noqa: SIM115 - closed in close()
        try:
            self._fh.seek(info.header_offset)
            header = self._fh.read(30)
            if len(header) != 30 or header[:4] != b"PK\x03\x04":
                raise zipfile.BadZipFile("bad local file header")
            name_len = int.from_bytes(header[26:28], "little")
            extra_len = int.from_bytes(header[28:30], "little")
            self._fh.seek(info.header_offset + 30 + name_len + extra_len)
        except BaseException:
            self._fh.close()
            raise
        self._left = info.compress_size
        self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        self._pending = b""
        self._crc = 0
        self._size = 0
        self._info = info

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = _COPY_CHUNK * 8
        while True:
            if not self._pending and self._left > 0 and not self._inflater.eof:
                self._pending = self._fh.read(min(self._left, self._IN_CHUNK))
                if not self._pending:
                    raise EOFError("the file ends inside this member's compressed data")
                self._left -= len(self._pending)
            if not self._pending or self._inflater.eof:
                self._finish()
                return b""
            data = self._inflater.decompress(self._pending, size)
            self._pending = self._inflater.unconsumed_tail
            if data:
                self._crc = zlib.crc32(data, self._crc)
                self._size += len(data)
                return data

    def _finish(self) -> None:
        # (an empty member may be stored as no deflate data at all)
        if not self._inflater.eof and (self._info.compress_size or self._info.file_size):
            raise EOFError("compressed data ends before the end of the deflate stream")
        if self._size != self._info.file_size:
            raise zipfile.BadZipFile(f"expanded to {self._size:,} bytes, the zip directory says "
                                     f"{self._info.file_size:,}")
        if self._crc != self._info.CRC:
            raise zipfile.BadZipFile("Bad CRC-32")

    def close(self) -> None:
        try:
            self._fh.close()
        finally:
            super().close()


def _open_member(archive: zipfile.ZipFile, path: Path, info: zipfile.ZipInfo) -> BinaryIO:
    """The member's bytes: plain deflate through :class:`_DeflateMember`, anything else (stored, encrypted,
    other methods) through zipfile, which reads or refuses it."""
    if info.compress_type == zipfile.ZIP_DEFLATED and not info.flag_bits & 0x1:
        return _DeflateMember(path, info)  # type: ignore[return-value]
    return archive.open(info)


def iter_ndjson_members(path: Path, *, max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
                        max_ratio: float = DEFAULT_MAX_RATIO) -> Iterator[tuple[str, BinaryIO]]:
    """Yield ``(label, stream)`` for every NDJSON member of one export file.

    The label is ``<file name>!<member name>`` for a zip member and the file name for gzip or plain files.
    Each stream is readable only until the next item is requested. Zip directories are skipped; an empty
    zip yields nothing. Raises :class:`ExportFileError` for unsafe names, limits passed or unreadable data.
    """
    path = Path(path)
    fmt = _file_format(path)
    if fmt == "zip":
        yield from _iter_zip(path, max_member_bytes=max_member_bytes, max_ratio=max_ratio)
        return
    size = path.stat().st_size
    if fmt == "gzip":
        inner: BinaryIO = gzip.open(path, "rb")  # type: ignore[assignment]  # noqa: SIM115
        stream = _GuardedStream(inner, path.name, compressed_bytes=size,
                                max_member_bytes=max_member_bytes, max_ratio=max_ratio)
    else:
        stream = _GuardedStream(open(path, "rb"), path.name, compressed_bytes=None,  # noqa: SIM115
                                max_member_bytes=max_member_bytes, max_ratio=max_ratio)
    with stream:
        yield path.name, stream  # type: ignore[misc]


def _iter_zip(path: Path, *, max_member_bytes: int, max_ratio: float) -> Iterator[tuple[str, BinaryIO]]:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ExportFileError(f"{path.name}: not a readable zip file ({exc})") from exc
    with archive:
        infos = [i for i in archive.infolist() if not i.is_dir()]
        # Refuse the whole file before reading anything: a bad member makes the file suspect.
        for info in infos:
            label = f"{path.name}!{info.filename}"
            why = _unsafe_member_name(info.filename)
            if why:
                raise ExportFileError(f"{label}: member name {why}; it would leave the target folder")
            if info.file_size > max_member_bytes:
                raise ExportFileError(f"{label}: declares {info.file_size:,} expanded bytes, past the limit "
                                      f"of {max_member_bytes:,} (max_member_bytes)")
            if (info.file_size > RATIO_GRACE_BYTES
                    and info.file_size > max_ratio * max(info.compress_size, 1)):
                raise ExportFileError(
                    f"{label}: declares {info.file_size:,} bytes from {info.compress_size:,} compressed, "
                    f"more than {max_ratio:g}x (max_ratio; a zip bomb?)")
        for info in infos:
            label = f"{path.name}!{info.filename}"
            try:
                inner = _open_member(archive, path, info)
            except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError) as exc:
                raise ExportFileError(f"{label}: cannot be read ({exc})") from exc
            stream = _GuardedStream(inner, label, compressed_bytes=info.compress_size,  # type: ignore[arg-type]
                                    max_member_bytes=max_member_bytes, max_ratio=max_ratio)
            with stream:
                yield label, stream  # type: ignore[misc]


def safe_file_name(label: str) -> str:
    """A file name made from a member label that cannot contain a path separator or start with a dot."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", label).lstrip(".")
    return cleaned[:150] or "member"


def decompress_export(files: Sequence[Path], out_dir: Path, **limits: int | float) -> list[tuple[str, Path]]:
    """Write every member of every export file as a plain NDJSON file in ``out_dir``.

    Files are named ``<position>-<safe label>.ndjson`` (never outside ``out_dir``, never clashing). Returns
    ``(label, path)`` in file and member order. ``limits`` are the keyword limits of
    :func:`iter_ndjson_members`. A refused file raises :class:`ExportFileError`; a partly written output
    file is removed first.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    root = out_dir.resolve()
    written: list[tuple[str, Path]] = []
    for path in files:
        for label, stream in iter_ndjson_members(Path(path), **limits):  # type: ignore[arg-type]
            target = out_dir / f"{len(written):06d}-{safe_file_name(label)}.ndjson"
            if target.resolve().parent != root:  # belt and braces: safe_file_name already forbids this
                raise ExportFileError(f"{label}: would be written outside {out_dir}")
            try:
                with open(target, "wb") as out:
                    shutil.copyfileobj(stream, out, _COPY_CHUNK)
            except BaseException:
                target.unlink(missing_ok=True)
                raise
            written.append((label, target))
    return written


def export_file_bytes(files: Sequence[Path]) -> int:
    """Total size on disk of the given export files (for metadata and benchmarks)."""
    return sum(os.path.getsize(p) for p in files)
