"""`lexer-assets doctor` against the Braze emulator over HTTP and S3 through moto's server: each problem gives
its own line, a remedy, and the exit code; nothing is changed in Braze or the bucket; no secret is printed."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx
import pytest

from lexer_assets.braze.emulator import EmulatorState
from lexer_assets.braze.emulator.server import RunningEmulator
from lexer_assets.cli import main
from lexer_assets.doctor import endpoint_check

GOOD_KEY = "doctor-good-key-5b1e9f27"
SEGMENT_ID = "9c0d7e11-2f4a-4b8e-a3c6-1d5f7b9e0a22"
BUCKET = "brand-braze-exports"
BUCKET_REGION = "eu-west-1"
AWS_KEY_ID = "AKIADOCTORTEST000001"
AWS_SECRET = "doctor-aws-secret-6e2c0b8d"
ALL = ("users.track", "users.export.segment", "users.export.ids", "segments.list")


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    s3 = boto3.client("s3", endpoint_url=url, region_name=BUCKET_REGION, aws_access_key_id=AWS_KEY_ID,
                      aws_secret_access_key=AWS_SECRET)
    s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": BUCKET_REGION})
    try:
        yield url
    finally:
        server.stop()


@pytest.fixture
def braze(served_emulator: tuple[RunningEmulator, Path]) -> tuple[RunningEmulator, EmulatorState]:
    server, home = served_emulator
    state = EmulatorState(home / "braze-emulator")
    state.seed([{"external_id": f"c{i}", "email": f"c{i}@example.test"} for i in range(5)],
               segment_id=SEGMENT_ID, api_key=GOOD_KEY)
    return server, state


def run_doctor_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], home: Path,
                   **env: str) -> tuple[int, str]:
    for name in list(os.environ):
        if name.startswith(("LEXER_", "BRAZE_", "AWS_")):
            monkeypatch.delenv(name)
    for name, value in {"LEXER_HOME": str(home), **env}.items():
        monkeypatch.setenv(name, value)
    code = main(["doctor", "--timeout", "5"])
    out = capsys.readouterr()
    return code, out.out + out.err


def prod_env(server_url: str, s3_url: str, **changes: str) -> dict[str, str]:
    return {"LEXER_PROFILE": "prod", "BRAZE_REST_ENDPOINT": server_url, "BRAZE_API_KEY": GOOD_KEY,
            "BRAZE_EXPORT_SEGMENT_ID": SEGMENT_ID, "LEXER_S3_BUCKET": BUCKET, "LEXER_S3_REGION": BUCKET_REGION,
            "LEXER_S3_ENDPOINT_URL": s3_url, "AWS_ACCESS_KEY_ID": AWS_KEY_ID, "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
            **changes}


def line(output: str, name: str) -> str:
    """The checklist line for check ``name`` (status, name, detail), plus its 'fix:' line if any."""
    lines = output.splitlines()
    for i, text in enumerate(lines):
        parts = text.split(maxsplit=1)
        if len(parts) == 2 and parts[1].startswith(name + "  "):
            nxt = lines[i + 1] if i + 1 < len(lines) and lines[i + 1].strip().startswith("fix:") else ""
            return text + "\n" + nxt
    raise AssertionError(f"no line for {name!r} in:\n{output}")


def status(output: str, name: str) -> str:
    return line(output, name).split()[0]


def assert_no_secret(output: str, *secrets: str) -> None:
    for secret in (GOOD_KEY, AWS_SECRET, *secrets):
        assert secret not in output


BRAZE_CHECKS = ["Braze endpoint", "Braze reachable", "REST key", "permission segments.list", "export segment",
                "permission users.export.segment", "permission users.export.ids", "permission users.track"]
S3_CHECKS = ["AWS credentials", "S3 bucket", "S3 listable", "S3 readable"]


def test_good_configuration_passes_and_changes_nothing(braze, s3_endpoint, monkeypatch, capsys, tmp_path) -> None:
    server, state = braze
    users_before = list(state.users())
    code, out = run_doctor_cli(monkeypatch, capsys, tmp_path, **prod_env(server.url, s3_endpoint))
    assert code == 0, out
    for name in BRAZE_CHECKS + S3_CHECKS:
        assert status(out, name) == "ok", line(out, name)
    assert "'All Users'" in line(out, "export segment")
    assert f"region {BUCKET_REGION}" in line(out, "S3 bucket")
    assert out.rstrip().endswith("doctor: everything checked is in order")
    assert_no_secret(out)
    # Read-only: no export was started, no user touched, the probes were refused as malformed.
    assert state.exports() == []
    assert list(state.users()) == users_before
    stats = httpx.get(f"{server.url}/_emulator/stats").json()["requests"]
    probes = {r["path"]: r["status"] for r in stats if r["path"] != "/segments/list"}
    assert probes == {"/users/export/segment": 400, "/users/export/ids": 201, "/users/track": 400}
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name=BUCKET_REGION, aws_access_key_id=AWS_KEY_ID,
                      aws_secret_access_key=AWS_SECRET)
    assert s3.list_objects_v2(Bucket=BUCKET).get("KeyCount") == 0


def test_wrong_key_is_explained_as_wrong_key_or_cluster(braze, s3_endpoint, monkeypatch, capsys, tmp_path) -> None:
    server, _ = braze
    wrong = "doctor-wrong-key-a83d41c0"
    code, out = run_doctor_cli(monkeypatch, capsys, tmp_path,
                               **prod_env(server.url, s3_endpoint, BRAZE_API_KEY=wrong))
    assert code == 1
    key_line = line(out, "REST key")
    assert key_line.startswith("  FAIL") and "401" in key_line
    assert "wrong" in key_line and "cluster" in key_line and "fix:" in key_line
    for name in BRAZE_CHECKS[3:]:
        assert status(out, name) == "skip"
    assert status(out, "S3 bucket") == "ok"  # the bucket side is still checked
    assert_no_secret(out, wrong)  # the emulator echoes a rejected key in its body, as Braze does


def test_key_without_segments_list(braze, s3_endpoint, monkeypatch, capsys, tmp_path) -> None:
    server, state = braze
    key = "doctor-no-segments-7f21"
    state.add_api_key(key, [p for p in ALL if p != "segments.list"])
    code, out = run_doctor_cli(monkeypatch, capsys, tmp_path, **prod_env(server.url, s3_endpoint, BRAZE_API_KEY=key))
    assert code == 1
    perm = line(out, "permission segments.list")
    assert perm.startswith("  FAIL") and "403" in perm and "create a new key" in perm
    assert status(out, "REST key") == "ok"
    assert status(out, "export segment") == "skip"
    for name in ("permission users.export.segment", "permission users.export.ids", "permission users.track"):
        assert status(out, name) == "ok"
    assert_no_secret(out, key)


@pytest.mark.parametrize("missing", ["users.track", "users.export.segment", "users.export.ids"])
def test_each_missing_permission_is_named(braze, s3_endpoint, monkeypatch, capsys, tmp_path, missing: str) -> None:
    server, state = braze
    key = f"doctor-no-{missing.replace('.', '-')}"
    state.add_api_key(key, [p for p in ALL if p != missing])
    code, out = run_doctor_cli(monkeypatch, capsys, tmp_path, **prod_env(server.url, s3_endpoint, BRAZE_API_KEY=key))
    assert code == 1
    failed = [n for n in BRAZE_CHECKS if status(out, n) == "FAIL"]
    assert failed == [f"permission {missing}"]
    assert f"lacks {missing}" in line(out, f"permission {missing}")


def _add_segments(state: EmulatorState, n: int) -> None:
    for i in range(n):
        state.add_segment(f"filler-{i:04d}", f"Filler {i}")


def test_segment_found_on_page_three(braze, s3_endpoint, monkeypatch, capsys, tmp_path) -> None:
    server, state = braze
    _add_segments(state, 250)  # after the 3 seeded segments
    state.add_segment("hub-export-segment", "Hub export")  # the 254th segment: on page 3 (entries 201-300)
    code, out = run_doctor_cli(monkeypatch, capsys, tmp_path,
                               **prod_env(server.url, s3_endpoint, BRAZE_EXPORT_SEGMENT_ID="hub-export-segment"))
    assert code == 0, out
    assert "'Hub export'" in line(out, "export segment") and "page 3" in line(out, "export segment")


def test_unknown_segment_after_reading_every_page(braze, s3_endpoint, monkeypatch, capsys, tmp_path) -> None:
    server, state = braze
    _add_segments(state, 250)  # 3 seeded + 250 = 253 segments: pages of 100, 100, 53
    httpx.post(f"{server.url}/_emulator/reset-stats").raise_for_status()
    code, out = run_doctor_cli(monkeypatch, capsys, tmp_path,
                               **prod_env(server.url, s3_endpoint, BRAZE_EXPORT_SEGMENT_ID="no-such-segment"))
    assert code == 1
    seg = line(out, "export segment")
    assert seg.startswith("  FAIL") and "no-such-segment" in seg
    assert "253 segments" in seg and "3 page(s)" in seg and "API Identifier" in seg
    pages = [r for r in httpx.get(f"{server.url}/_emulator/stats").json()["requests"]
             if r["path"] == "/segments/list"]
    assert len(pages) == 3


def test_s3_wrong_region(braze, s3_endpoint, monkeypatch, capsys, tmp_path) -> None:
    server, _ = braze
    code, out = run_doctor_cli(monkeypatch, capsys, tmp_path,
                               **prod_env(server.url, s3_endpoint, LEXER_S3_REGION="us-east-1"))
    assert code == 1
    b = line(out, "S3 bucket")
    assert b.startswith("  FAIL") and f"is in region {BUCKET_REGION}" in b and "LEXER_S3_REGION is us-east-1" in b
    assert f"fix: set LEXER_S3_REGION={BUCKET_REGION}" in b
    assert status(out, "S3 listable") == "skip"
    assert all(status(out, n) == "ok" for n in BRAZE_CHECKS)


def test_s3_missing_bucket(braze, s3_endpoint, monkeypatch, capsys, tmp_path) -> None:
    server, _ = braze
    code, out = run_doctor_cli(monkeypatch, capsys, tmp_path,
                               **prod_env(server.url, s3_endpoint, LEXER_S3_BUCKET="no-such-bucket"))
    assert code == 1
    b = line(out, "S3 bucket")
    assert b.startswith("  FAIL") and "s3://no-such-bucket" in b and "does not exist" in b
    assert "LEXER_S3_BUCKET" in b
    assert_no_secret(out)


def test_s3_lists_and_reads_an_export_and_hints_at_a_path_mismatch(braze, s3_endpoint, monkeypatch, capsys,
                                                                   tmp_path) -> None:
    server, _ = braze
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name=BUCKET_REGION, aws_access_key_id=AWS_KEY_ID,
                      aws_secret_access_key=AWS_SECRET)
    key = f"segment-export/{SEGMENT_ID}/2026-12-01/prefix-1/{'a' * 32}.zip"
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"PK\x03\x04")
    try:
        code, out = run_doctor_cli(monkeypatch, capsys, tmp_path, **prod_env(server.url, s3_endpoint))
        assert code == 0, out
        assert "1 object(s)" in line(out, "S3 listable")
        assert key in line(out, "S3 readable")
        # Braze writes at the root but LEXER_S3_PATH says otherwise: a warning with the fix, not a failure.
        code, out = run_doctor_cli(monkeypatch, capsys, tmp_path,
                                   **prod_env(server.url, s3_endpoint, LEXER_S3_PATH="braze"))
        assert code == 0
        assert status(out, "S3 path") == "warn" and "blank if it has none" in line(out, "S3 path")
    finally:
        s3.delete_object(Bucket=BUCKET, Key=key)


def test_unreachable_endpoint(s3_endpoint, monkeypatch, capsys, tmp_path) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code, out = run_doctor_cli(monkeypatch, capsys, tmp_path,
                               **prod_env(f"http://127.0.0.1:{port}", s3_endpoint))
    assert code == 1
    assert line(out, "Braze reachable").startswith("  FAIL")
    assert "BRAZE_REST_ENDPOINT" in line(out, "Braze reachable")
    assert status(out, "REST key") == "skip"


def test_settings_error_is_a_failed_line(monkeypatch, capsys, tmp_path) -> None:
    code, out = run_doctor_cli(monkeypatch, capsys, tmp_path, LEXER_PROFILE="prod")
    assert code == 1
    assert out.startswith("  FAIL  settings") and "BRAZE_REST_ENDPOINT" in out


@pytest.mark.parametrize(("endpoint", "expected"), [
    ("https://rest.iad-01.braze.com", "ok"), ("https://rest.iad-08.braze.com", "ok"),
    ("https://rest.us-10.braze.com", "ok"), ("https://rest.fra-02.braze.eu", "ok"),
    ("https://rest.au-01.braze.com", "ok"), ("http://127.0.0.1:8765", "ok"),
    ("http://braze-emulator.local", "ok"),
    ("https://dashboard-01.braze.com", "fail"), ("https://rest.iad-01.braze.com.evil.example", "fail"),
    ("https://api.example.com", "fail"), ("https://sdk.iad-01.braze.com", "fail"),
])
def test_endpoint_host_pattern(endpoint: str, expected: str) -> None:
    assert endpoint_check(endpoint).status == expected


def test_cli_exit_code_as_a_process(braze, s3_endpoint, tmp_path) -> None:
    server, _ = braze
    wrong = "doctor-process-wrong-key-41aa"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEXER_", "BRAZE_", "AWS_"))}
    env.update(prod_env(server.url, s3_endpoint, BRAZE_API_KEY=wrong), LEXER_HOME=str(tmp_path))
    cli = Path(sys.executable).with_name("lexer-assets")
    done = subprocess.run([str(cli), "doctor", "--timeout", "5"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1
    assert "FAIL  REST key" in done.stdout
    assert wrong not in done.stdout + done.stderr and AWS_SECRET not in done.stdout + done.stderr
