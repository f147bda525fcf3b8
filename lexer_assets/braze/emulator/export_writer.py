"""Writing segment exports in Braze's bucket layout, to a local folder or to S3 (boto3).

``[<path prefix>/]segment-export/<segment_id>/<YYYY-MM-dd>/<object_prefix>/<32 hex>.zip|.gz``; a zip holds
one NDJSON member, a .gz is one gzipped NDJSON file; about ``users_per_file`` users per file. Braze's rare
duplicate users are reproduced deterministically (a user is duplicated when a hash of its id falls under
``duplicate_rate``), the copy landing a while later in the stream, often in another file.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import uuid
import zipfile
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Protocol

DUPLICATE_LAG = 1000  # users between an original and its duplicate


class Bucket(Protocol):
    def put(self, key: str, data: bytes) -> None: ...


class LocalFolderBucket:
    """A folder playing the bucket; files appear atomically (written aside, then renamed)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def put(self, key: str, data: bytes) -> None:
        target = self.root / key
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, target)


class S3Bucket:
    """An S3 bucket through boto3 (credentials are handed to boto3 only, never kept in a repr)."""

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
    ) -> None:
        import boto3

        self.bucket = bucket
        self._client = boto3.client(
            "s3",
            endpoint_url=endpoint_url or None,
            region_name=region or None,
            aws_access_key_id=access_key_id or None,
            aws_secret_access_key=secret_access_key or None,
        )

    def __repr__(self) -> str:
        return f"S3Bucket({self.bucket!r})"

    def put(self, key: str, data: bytes) -> None:
        self._client.put_object(Bucket=self.bucket, Key=key, Body=data)


def export_folder(path_prefix: str, segment_id: str, date_folder: str, object_prefix: str) -> str:
    """Key prefix (ending in '/') of one export's files."""
    parts = [p for p in (path_prefix.strip("/"), "segment-export", segment_id, date_folder, object_prefix) if p]
    return "/".join(parts) + "/"


def project_fields(user: Mapping, fields: Sequence[str], custom_attributes: Sequence[str] | None) -> dict:
    """The user as Braze exports it for ``fields_to_export`` (absent fields stay absent)."""
    wanted = set(fields)
    out = {k: v for k, v in user.items() if k in wanted and k != "custom_attributes"}
    custom = user.get("custom_attributes")
    if "custom_attributes" in wanted:
        if custom:
            out["custom_attributes"] = custom
    elif custom_attributes and custom:
        chosen = {k: v for k, v in custom.items() if k in set(custom_attributes)}
        if chosen:
            out["custom_attributes"] = chosen
    return out


def _is_duplicated(user: Mapping, rate: float) -> bool:
    if rate <= 0:
        return False
    ident = str(user.get("braze_id") or user.get("external_id") or json.dumps(user, sort_keys=True))
    h = int.from_bytes(hashlib.sha256(ident.encode()).digest()[:8], "big") / 2**64
    return h < rate


def with_duplicates(users: Iterable[dict], rate: float) -> Iterator[dict]:
    """Yield every user, plus a second copy of the deterministic ``rate`` share, a little later."""
    pending: deque[tuple[int, dict]] = deque()
    for n, user in enumerate(users, start=1):
        yield user
        if _is_duplicated(user, rate):
            pending.append((n + DUPLICATE_LAG, user))
        while pending and pending[0][0] <= n:
            yield pending.popleft()[1]
    for _, user in pending:
        yield user


def _pack(lines: list[bytes], output_format: str) -> tuple[str, bytes]:
    name = uuid.uuid4().hex
    payload = b"".join(lines)
    if output_format == "gzip":
        return f"{name}.gz", gzip.compress(payload, compresslevel=5)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=5) as zf:
        zf.writestr(f"{name}.json", payload)
    return f"{name}.zip", buf.getvalue()


def write_export(
    users: Iterable[dict],
    bucket: Bucket,
    folder: str,
    *,
    output_format: str = "zip",
    users_per_file: int = 5000,
    duplicate_rate: float = 0.0,
) -> tuple[list[str], int]:
    """Write ``users`` as export files under ``folder``; returns (keys written, lines written).

    An empty segment writes nothing, as Braze may.
    """
    if output_format not in ("zip", "gzip"):
        raise ValueError(f"output_format must be zip or gzip, got {output_format!r}")
    keys: list[str] = []
    lines: list[bytes] = []
    total = 0
    for user in with_duplicates(users, duplicate_rate):
        lines.append(json.dumps(user, separators=(",", ":"), ensure_ascii=False).encode() + b"\n")
        total += 1
        if len(lines) >= users_per_file:
            name, data = _pack(lines, output_format)
            bucket.put(folder + name, data)
            keys.append(folder + name)
            lines = []
    if lines:
        name, data = _pack(lines, output_format)
        bucket.put(folder + name, data)
        keys.append(folder + name)
    return keys, total
