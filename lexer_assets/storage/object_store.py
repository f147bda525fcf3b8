"""The bucket Braze exports into: an S3 bucket (prod) or a local folder with the same key layout (local).

Both stores answer the same three questions: which objects are under a prefix (all pages), how big and how old
each is, and "copy this object to that file". Keys come from outside (Braze writes them), so a key that would
resolve outside the local root is refused.
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol


class ObjectStoreError(RuntimeError):
    """The bucket could not be read; the message names the bucket/folder and key."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    last_modified: dt.datetime


class ObjectStore(Protocol):
    def list(self, prefix: str) -> list[ObjectInfo]: ...

    def download(self, key: str, dest: Path) -> None: ...

    def describe(self) -> str: ...


def safe_join(root: Path, relative: str) -> Path:
    """root / relative, refusing anything that would land outside root (absolute paths, '..', links)."""
    root = root.resolve()
    candidate = (root / relative).resolve()
    if candidate != root and root not in candidate.parents:
        raise ObjectStoreError(f"refusing path {relative!r}: it resolves outside {root}")
    return candidate


class LocalFolderStore:
    """A folder playing the S3 bucket (local profile): key 'a/b/c.zip' is the file <root>/a/b/c.zip."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def describe(self) -> str:
        return f"local folder {self.root}"

    def list(self, prefix: str) -> list[ObjectInfo]:
        base = self.root
        if not base.exists():
            return []
        found: list[ObjectInfo] = []
        # Walk only the prefix's folder part: exports sit several levels deep under a fixed prefix.
        folder = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = safe_join(base, folder) if folder else base
        if not start.exists():
            return []
        for path in _walk_files(start):
            key = path.relative_to(base).as_posix()
            if key.startswith(prefix) and not path.name.startswith("."):
                stat = path.stat()
                found.append(ObjectInfo(key, stat.st_size, dt.datetime.fromtimestamp(stat.st_mtime, dt.UTC)))
        return sorted(found, key=lambda o: o.key)

    def download(self, key: str, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(safe_join(self.root, key), dest)


def _walk_files(start: Path) -> Iterator[Path]:
    for path in start.rglob("*"):
        if path.is_file():
            yield path


class S3Store:
    """An S3 bucket through a boto3 client (dagster-aws's S3Resource builds it in the Dagster layer)."""

    def __init__(self, client: Any, bucket: str) -> None:
        self.client = client
        self.bucket = bucket

    def describe(self) -> str:
        return f"s3://{self.bucket}"

    def list(self, prefix: str) -> list[ObjectInfo]:
        found: list[ObjectInfo] = []
        try:
            # list_objects_v2 answers at most 1,000 keys a page; exports of millions of users have more files.
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    found.append(ObjectInfo(obj["Key"], int(obj["Size"]), obj["LastModified"]))
        except Exception as exc:  # botocore raises many types; the message is what the user needs
            raise ObjectStoreError(f"could not list s3://{self.bucket}/{prefix}: {_short(exc)}") from None
        return sorted(found, key=lambda o: o.key)

    def download(self, key: str, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.client.download_file(self.bucket, key, str(dest))
        except Exception as exc:
            raise ObjectStoreError(f"could not read s3://{self.bucket}/{key}: {_short(exc)}") from None


def _short(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc)[:300]}"
