"""Names from outside (bucket keys, Braze's object_prefix, zip members, audience slugs, settings) never make the
code read or write outside its own folders. Every test tries, and checks nothing landed outside."""

from __future__ import annotations

import datetime as dt
import io
import zipfile
from pathlib import Path

import boto3
import pytest

from lexer_assets.audiences.spec import AudienceError, load_audiences
from lexer_assets.braze.export_files import ExportFileError, decompress_export
from lexer_assets.braze.export_landing import LandedExport, copy_export, export_files
from lexer_assets.storage.object_store import (
    LocalFolderStore,
    ObjectInfo,
    ObjectStoreError,
    S3Store,
    safe_join,
)

NOW = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)


def files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("relative", ["../x", "../../etc/passwd", "/etc/passwd", "a/../../x", "a/b/../../../x"])
def test_safe_join_refuses_escapes(tmp_path: Path, relative: str) -> None:
    with pytest.raises(ObjectStoreError, match="outside"):
        safe_join(tmp_path / "root", relative)


def test_safe_join_keeps_inside_paths(tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert safe_join(root, "a/b/../c.zip") == (root / "a" / "c.zip").resolve()


def test_local_bucket_never_reads_outside_its_folder(tmp_path: Path) -> None:
    bucket = tmp_path / "bucket"
    bucket.mkdir()
    secret = tmp_path / "outside.txt"
    secret.write_text("not for the hub")
    (bucket / "link.zip").symlink_to(secret)  # a symlink inside the folder pointing out of it
    store = LocalFolderStore(bucket)
    for key in ("../outside.txt", "link.zip", str(secret)):
        with pytest.raises(ObjectStoreError):
            store.download(key, tmp_path / "dest" / "copy")
    assert not (tmp_path / "dest" / "copy").exists()


class KeysStore:
    """A bucket whose keys are whatever the test says (S3 allows '..' and '.' as key steps)."""

    def __init__(self, keys: list[str]) -> None:
        self.objects = [ObjectInfo(k, 3, NOW) for k in keys]

    def list(self, prefix: str) -> list[ObjectInfo]:
        return [o for o in self.objects if o.key.startswith(prefix)]

    def download(self, key: str, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(b"abc")

    def describe(self) -> str:
        return "test keys"


@pytest.mark.parametrize(("object_prefix", "file_name"), [
    ("..", "a.zip"), (".", "a.zip"), ("../../evil", "a.zip"), ("pfx", ".."), ("pfx", "."),
    ("pfx", "..\\evil.zip"), ("pfx/../../x", "a.zip"),
])
def test_copy_export_refuses_names_that_are_not_plain(tmp_path: Path, object_prefix: str, file_name: str) -> None:
    raw = tmp_path / "home" / "raw"
    landed = LandedExport(object_prefix, dt.date(2026, 12, 1),
                          (ObjectInfo(f"segment-export/s/2026-12-01/{object_prefix}/{file_name}", 3, NOW),))
    with pytest.raises(ObjectStoreError, match="refusing"):
        copy_export(KeysStore([]), landed, raw)
    assert files_under(tmp_path) == set()


def test_dotdot_keys_in_a_real_s3_bucket_are_never_copied_out(tmp_path: Path) -> None:
    """moto's S3 server holds keys with '..' steps; landing them must not write outside the raw folder."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        s3 = boto3.client("s3", endpoint_url=f"http://{host}:{port}", region_name="us-east-1",
                          aws_access_key_id="AKIAPATHSAFETY000001", aws_secret_access_key="path-safety-secret")
        s3.create_bucket(Bucket="brand-bucket")
        base = "segment-export/seg/2026-12-01/pfx/"
        for key in (base + "..", base + "good.zip", "segment-export/seg/2026-12-01/../../../escape.zip"):
            s3.put_object(Bucket="brand-bucket", Key=key, Body=b"abc")
        store = S3Store(s3, "brand-bucket")
        files = export_files(store, "", "seg", "pfx")
        assert sorted(f.key for f in files) == [base + "..", base + "good.zip"]  # escape.zip is not the layout
        raw = tmp_path / "home" / "raw"
        with pytest.raises(ObjectStoreError, match="'..'"):
            copy_export(store, LandedExport("pfx", dt.date(2026, 12, 1), tuple(files)), raw)
        assert files_under(tmp_path) == set()
    finally:
        server.stop()


@pytest.mark.parametrize("member", ["../evil.ndjson", "../../evil.ndjson", "/tmp/evil.ndjson", "a/../../evil",
                                    "C:/evil.ndjson", "..\\evil.ndjson"])
def test_zip_members_cannot_leave_the_work_folder(tmp_path: Path, member: str) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("ok.json", '{"external_id": "1"}\n')
        zf.writestr(member, '{"external_id": "2"}\n')
    export = tmp_path / "in" / ("a" * 32 + ".zip")
    export.parent.mkdir()
    export.write_bytes(buf.getvalue())
    work = tmp_path / "work" / "load"
    with pytest.raises(ExportFileError, match="leave the target folder"):
        decompress_export([export], work)
    assert files_under(tmp_path) == {f"in/{export.name}"}  # nothing extracted anywhere, not even ok.json


@pytest.mark.parametrize("slug", ["../../etc", "vip/../x", "VIP", "vip.json", "a b"])
def test_audience_slugs_are_plain_identifiers(tmp_path: Path, slug: str) -> None:
    path = tmp_path / "audiences.yaml"
    path.write_text(f"""
- name: Test
  slug: {slug!r}
  description: d
  owner: o@example.com
  activation: {{braze: true, list_action: maintain, priority: 1}}
  rules:
    all:
      - {{column: revenue, op: '>=', value: 1}}
""")
    with pytest.raises(AudienceError, match="slug"):
        load_audiences(path)
