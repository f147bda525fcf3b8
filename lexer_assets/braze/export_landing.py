"""Noticing that a Braze segment export has landed in the bucket, and keeping a copy of it.

Braze writes ``[<path>/]segment-export/<segment_id>/<YYYY-MM-dd>/<object_prefix>/<32 hex>.zip|.gz`` and writes no
completion marker. The date folder cannot be derived from the request, so the export is found by listing the
segment's prefix and matching ``object_prefix``.

Settle rule: an export counts as landed when its listing (keys and sizes) is non-empty and has not changed for
``settle_seconds``. An export that never writes a file is reported as empty only after ``timeout_seconds`` and
only because Braze answered the request with success (an empty segment may write nothing); the caller decides
whether an empty export may replace data (it may not, silently).
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lexer_assets.storage.object_store import ObjectInfo, ObjectStore, ObjectStoreError, safe_join

_DATE_FOLDER = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_PLAIN_STEP = re.compile(r"^[A-Za-z0-9._-]{1,255}$")


class ExportNotLandedError(TimeoutError):
    """The export's files did not settle in time."""


@dataclass(frozen=True)
class LandedExport:
    object_prefix: str
    export_date: dt.date | None
    files: tuple[ObjectInfo, ...]

    @property
    def bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def is_empty(self) -> bool:
        return not self.files


def segment_prefix(path_prefix: str, segment_id: str) -> str:
    """The key prefix Braze writes one segment's exports under."""
    path = path_prefix.strip("/")
    return f"{path + '/' if path else ''}segment-export/{segment_id}/"


def export_files(store: ObjectStore, path_prefix: str, segment_id: str, object_prefix: str) -> list[ObjectInfo]:
    """The objects of one export: under the segment prefix, in a folder named exactly ``object_prefix``."""
    base = segment_prefix(path_prefix, segment_id)
    found = []
    for obj in store.list(base):
        parts = obj.key[len(base):].split("/")
        # <date>/<object_prefix>/<file>: anything else under the prefix is not Braze's export layout
        if len(parts) == 3 and parts[1] == object_prefix and _DATE_FOLDER.match(parts[0]) and parts[2]:
            found.append(obj)
    return found


def export_date_of(key: str) -> dt.date | None:
    for part in key.split("/"):
        if _DATE_FOLDER.match(part):
            try:
                return dt.date.fromisoformat(part)
            except ValueError:
                return None
    return None


def wait_for_export(
    store: ObjectStore,
    *,
    path_prefix: str,
    segment_id: str,
    object_prefix: str,
    settle_seconds: float,
    timeout_seconds: float,
    poll_seconds: float = 0.5,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    on_poll: Callable[[int, int], None] | None = None,
) -> LandedExport:
    """Poll until the export's files stop changing for ``settle_seconds``; empty only after the timeout."""
    start = clock()
    last_listing: tuple[tuple[str, int], ...] | None = None
    stable_since = start
    while True:
        files = export_files(store, path_prefix, segment_id, object_prefix)
        listing = tuple((f.key, f.size) for f in files)
        now = clock()
        if listing != last_listing:
            last_listing, stable_since = listing, now
        if on_poll:
            on_poll(len(files), sum(f.size for f in files))
        if listing and now - stable_since >= settle_seconds:
            return LandedExport(object_prefix, export_date_of(files[0].key), tuple(files))
        if now - start >= timeout_seconds:
            if listing:
                raise ExportNotLandedError(
                    f"export {object_prefix} in {store.describe()} was still changing after {timeout_seconds:.0f} s"
                )
            return LandedExport(object_prefix, None, ())
        sleep(poll_seconds)


def copy_export(store: ObjectStore, landed: LandedExport, raw_root: Path) -> list[Path]:
    """Copy an export's files into the hub's raw storage, by export date, so it outlives Braze's few hours."""
    date_folder = landed.export_date.isoformat() if landed.export_date else "undated"
    # object_prefix (Braze's answer) and file names (bucket keys) come from outside: each must be one plain
    # path step, so '.', '..' or a nested name can neither leave nor flatten the export's own folder.
    for step in (landed.object_prefix, *(obj.key.rsplit("/", 1)[-1] for obj in landed.files)):
        if not _PLAIN_STEP.match(step) or step in (".", ".."):
            raise ObjectStoreError(f"refusing export name {step!r}: not a plain file or folder name")
    target_dir = safe_join(raw_root, f"{date_folder}/{landed.object_prefix}")
    copied: list[Path] = []
    for obj in landed.files:
        name = obj.key.rsplit("/", 1)[-1]
        dest = safe_join(target_dir, name)
        if not (dest.exists() and dest.stat().st_size == obj.size):
            tmp = dest.with_name(f".{name}.part")
            store.download(obj.key, tmp)
            tmp.replace(dest)
        copied.append(dest)
    return copied

