"""The emulator speaks Braze: raw HTTP requests against it on loopback, plus its state and export files."""

from __future__ import annotations

import gzip
import io
import json
import re
import time
import zipfile
from pathlib import Path

import boto3
import httpx
import pytest

from lexer_assets.braze.emulator import (
    EmulatorConfig,
    EmulatorState,
    make_app,
    start_in_thread,
    start_subprocess,
)
from lexer_assets.braze.emulator.export_writer import with_duplicates
from lexer_assets.braze.emulator.track_semantics import AttributeOps, add_values
from lexer_assets_tests.braze.conftest import KEY, SEGMENT_ID, USERS, Emulator

AUTH = {"Authorization": f"Bearer {KEY}"}


def track(emulator: Emulator, attributes: list, key: str = KEY, **extra: list) -> httpx.Response:
    return httpx.post(
        f"{emulator.url}/users/track",
        headers={"Authorization": f"Bearer {key}"},
        json={"attributes": attributes, **extra},
    )


def audience(emulator: Emulator, external_id: str) -> object:
    return emulator.state.attribute_values("lexer_audience").get(external_id)


def read_export_file(path_or_bytes: Path | bytes) -> list[dict]:
    data = path_or_bytes.read_bytes() if isinstance(path_or_bytes, Path) else path_or_bytes
    if data[:2] == b"PK":
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            assert len(zf.namelist()) == 1
            data = zf.read(zf.namelist()[0])
    else:
        assert data[:2] == b"\x1f\x8b"
        data = gzip.decompress(data)
    return [json.loads(line) for line in data.decode().splitlines()]


# ---- /users/track semantics -------------------------------------------------------------------------------
def test_unique_arrays_and_readding_moves_to_the_end(emulator: Emulator) -> None:
    r = track(emulator, [{"external_id": "u1", "lexer_audience": {"add": ["B", "A", "C"]}}])
    assert r.status_code == 201 and r.json() == {"message": "success", "attributes_processed": 1}
    # ["A"] + add B, A (moves A to the end), C
    assert audience(emulator, "u1") == ["B", "A", "C"]


def test_add_then_remove_then_set_within_one_request(emulator: Emulator) -> None:
    r = track(
        emulator,
        [
            {"external_id": "u2", "lexer_audience": {"remove": ["A"]}},
            {"external_id": "u2", "lexer_audience": {"add": ["A", "B"]}},  # add runs before remove: A ends removed
            {"external_id": "u3", "lexer_audience": ["X", "Y"]},
            {"external_id": "u3", "lexer_audience": {"add": ["Z"]}},  # set runs last: Z is lost
        ],
    )
    assert r.status_code == 201 and r.json()["attributes_processed"] == 4
    assert audience(emulator, "u2") == ["B"]
    assert audience(emulator, "u3") == ["X", "Y"]


def test_null_and_empty_array_clear_the_attribute(emulator: Emulator) -> None:
    track(emulator, [{"external_id": "u4", "lexer_audience": None}, {"external_id": "u5", "lexer_audience": []}])
    assert audience(emulator, "u4") is None and audience(emulator, "u5") is None


def test_array_cap_drops_the_oldest_silently(emulator: Emulator) -> None:
    emulator.configure(max_array_length=3)
    r = track(emulator, [{"external_id": "u6", "lexer_audience": {"add": ["B", "C", "D", "E"]}}])
    assert r.status_code == 201 and "errors" not in r.json()
    assert audience(emulator, "u6") == ["C", "D", "E"]


def test_255_character_limits(emulator: Emulator) -> None:
    long_key = "k" * 256
    r = track(
        emulator, [{"external_id": "u7", "note": "x" * 300, "tags": ["y" * 260]}, {"external_id": "u8", long_key: 1}]
    )
    body = r.json()
    assert r.status_code == 201 and body["attributes_processed"] == 1
    assert [(e["input_array"], e["index"]) for e in body["errors"]] == [("attributes", 1)]
    users = {u.get("external_id"): u for u in emulator.state.users()}
    assert users["u7"]["custom_attributes"]["note"] == "x" * 255
    assert users["u7"]["custom_attributes"]["tags"] == ["y" * 255]
    assert long_key not in users["u8"]["custom_attributes"]


def test_update_existing_only_never_creates_a_profile(emulator: Emulator) -> None:
    before = emulator.state.user_count()
    r = track(
        emulator,
        [
            {"external_id": "new-1", "_update_existing_only": True, "tier": "x"},
            {"external_id": "new-2", "tier": "y"},
            {"user_alias": {"alias_name": "n1", "alias_label": "shop"}, "tier": "z"},
        ],
    )
    body = r.json()
    assert body["attributes_processed"] == 2
    assert body["errors"] == [{"type": body["errors"][0]["type"], "input_array": "attributes", "index": 0}]
    assert emulator.state.user_count() == before + 2
    ids = {u.get("external_id") for u in emulator.state.users()}
    assert "new-1" not in ids and "new-2" in ids


def test_standard_attributes_go_to_the_top_level_and_email_identifies(emulator: Emulator) -> None:
    track(
        emulator,
        [
            {"external_id": "u9", "first_name": "Zoë", "country": "NZ"},
            {"email": " U10@Example.TEST ", "lexer_audience": {"add": ["E"]}},
        ],
    )
    users = {u.get("external_id"): u for u in emulator.state.users()}
    assert users["u9"]["first_name"] == "Zoë" and users["u9"]["country"] == "NZ"
    assert "first_name" not in users["u9"]["custom_attributes"]
    assert users["u10"]["custom_attributes"]["lexer_audience"] == ["A", "E"]


def test_batch_cap_total_and_per_array(emulator: Emulator) -> None:
    objs = [{"external_id": f"u{i}", "tier": "t"} for i in range(76)]
    assert track(emulator, objs).status_code == 400
    assert track(emulator, objs[:75]).status_code == 201
    events = [{"external_id": "u1", "name": "e", "time": "2026-12-01T00:00:00Z"}]
    assert track(emulator, objs[:75], events=events).status_code == 400  # 76 in total
    emulator.configure(track_batch_mode="per_array")
    assert track(emulator, objs[:75], events=events).status_code == 201
    emulator.configure(track_batch_cap=50, track_batch_mode="total")
    assert track(emulator, objs[:51]).status_code == 400
    assert track(emulator, objs[:50]).status_code == 201


def test_partial_errors_name_exactly_the_invalid_objects(emulator: Emulator) -> None:
    r = track(
        emulator,
        [
            {"external_id": "u1", "tier": "a"},
            {"tier": "no id"},
            "not an object",
            {"braze_id": "unknown-braze-id", "tier": "b"},
            {"external_id": "u2", "tier": "c"},
        ],
    )
    body = r.json()
    assert r.status_code == 201 and body["message"] == "success" and body["attributes_processed"] == 2
    assert [e["index"] for e in body["errors"]] == [1, 2, 3]
    assert all(isinstance(e["type"], str) and e["type"] for e in body["errors"])


def test_whole_request_errors_are_400(emulator: Emulator) -> None:
    r = httpx.post(f"{emulator.url}/users/track", headers=AUTH, content=b"{not json")
    assert r.status_code == 400 and "message" in r.json()
    assert track(emulator, []).status_code == 400  # no data at all
    r = track(emulator, [{"external_id": "u1", "__emulator_bad_request__": 1}])
    assert r.status_code == 400


# ---- auth and rate limits ---------------------------------------------------------------------------------
def test_unknown_key_401_and_missing_permission_403(emulator: Emulator) -> None:
    r = track(emulator, [{"external_id": "u1", "tier": "x"}], key="nope")
    assert r.status_code == 401 and "Invalid API key" in r.json()["message"]
    r = httpx.post(f"{emulator.url}/users/track", json={"attributes": []})
    assert r.status_code == 401
    emulator.state.add_api_key("list-only", ["segments.list"])
    r = track(emulator, [{"external_id": "u1", "tier": "x"}], key="list-only")
    assert r.status_code == 403 and r.json() == {"message": "Access Denied"}
    r = httpx.get(f"{emulator.url}/segments/list", headers={"Authorization": "Bearer list-only"})
    assert r.status_code == 200


def test_rate_limit_headers_on_every_answer_and_429_when_exceeded(emulator: Emulator) -> None:
    emulator.configure(track_rate_limit=3, track_rate_window_s=3600.0)
    statuses, remaining = [], []
    for _ in range(5):
        r = track(emulator, [{"external_id": "u1", "tier": "x"}])
        statuses.append(r.status_code)
        remaining.append(r.headers["x-ratelimit-remaining"])
        assert r.headers["x-ratelimit-limit"] == "3"
        assert float(r.headers["x-ratelimit-reset"]) % 3600 == 0  # end of the hour window, epoch seconds
    assert statuses == [201, 201, 201, 429, 429]
    assert remaining == ["2", "1", "0", "0", "0"]
    r = httpx.get(f"{emulator.url}/segments/list", headers=AUTH)  # the other pool is separate
    assert r.status_code == 200 and r.headers["x-ratelimit-limit"] == "250000"


def test_fault_knobs(emulator: Emulator) -> None:
    emulator.configure(fault_5xx_rate=1.0)
    assert track(emulator, [{"external_id": "u1", "tier": "x"}]).status_code in (500, 502, 503)
    emulator.configure(fault_5xx_rate=0.0, fault_429_rate=1.0)
    r = track(emulator, [{"external_id": "u1", "tier": "x"}])
    assert r.status_code == 429 and r.headers["x-ratelimit-remaining"] == "0"
    emulator.configure(fault_429_rate=0.0, fault_drop_rate=1.0)
    with pytest.raises(httpx.TransportError):
        track(emulator, [{"external_id": "u1", "tier": "x"}])
    emulator.configure(fault_drop_rate=0.0, latency_s=0.2)
    started = time.monotonic()
    assert track(emulator, [{"external_id": "u1", "tier": "x"}]).status_code == 201
    assert time.monotonic() - started >= 0.2


# ---- segment export ---------------------------------------------------------------------------------------
EXPORT_PATH = re.compile(
    r"^segment-export/(?P<seg>[^/]+)/(?P<date>\d{4}-\d{2}-\d{2})/(?P<prefix>[0-9a-f-]{36}-\d+)/"
    r"(?P<name>[0-9a-f]{32})\.(?P<ext>zip|gz)$"
)


def export(emulator: Emulator, **body: object) -> httpx.Response:
    payload = {"segment_id": SEGMENT_ID, "fields_to_export": ["external_id", "email", "custom_attributes"], **body}
    return httpx.post(f"{emulator.url}/users/export/segment", headers=AUTH, json=payload, timeout=30)


def exported_files(bucket: Path, object_prefix: str) -> list[Path]:
    return sorted(p for p in bucket.rglob("*") if p.is_file() and p.parent.name == object_prefix)


def test_export_writes_brazes_layout_with_synced_values(emulator: Emulator) -> None:
    emulator.configure(users_per_file=120)
    track(emulator, [{"external_id": "u1", "_update_existing_only": True, "lexer_audience": {"add": ["VIP"]}}])
    r = export(emulator)
    assert r.status_code == 201
    prefix = r.json()["object_prefix"]
    assert r.json() == {"message": "success", "object_prefix": prefix}
    assert re.fullmatch(r"[0-9a-f-]{36}-\d{10}", prefix)
    files = exported_files(emulator.bucket, prefix)
    assert len(files) == 3  # 300 users, 120 per file -> 120, 120, 60
    for f in files:
        match = EXPORT_PATH.match(f.relative_to(emulator.bucket).as_posix())
        assert match and match["seg"] == SEGMENT_ID and match["ext"] == "zip"
    users = [u for f in files for u in read_export_file(f)]
    assert len(users) == USERS
    by_id = {u["external_id"]: u for u in users}
    assert by_id["u1"]["custom_attributes"]["lexer_audience"] == ["A", "VIP"]
    assert by_id["u2"].keys() == {"external_id", "email", "custom_attributes"}  # only the fields asked for


def test_export_gzip_custom_attribute_subset_and_path_prefix(emulator: Emulator) -> None:
    emulator.configure(bucket_path_prefix="brand/exports")
    r = export(emulator, output_format="gzip", fields_to_export=["external_id"], custom_attributes_to_export=["tier"])
    prefix = r.json()["object_prefix"]
    files = exported_files(emulator.bucket, prefix)
    assert len(files) == 1 and files[0].suffix == ".gz"
    rel = files[0].relative_to(emulator.bucket).as_posix()
    assert rel.startswith(f"brand/exports/segment-export/{SEGMENT_ID}/")
    users = read_export_file(files[0])
    assert users[0] == {"external_id": "u0", "custom_attributes": {"tier": "gold"}}


def test_export_while_one_runs_is_429_and_files_land_after_the_answer(emulator: Emulator) -> None:
    emulator.configure(export_delay_s=0.5)
    first = export(emulator)
    assert first.status_code == 201
    prefix = first.json()["object_prefix"]
    assert exported_files(emulator.bucket, prefix) == []  # not there yet
    assert export(emulator).status_code == 429
    deadline = time.monotonic() + 10
    while not any(e["object_prefix"] == prefix and e["status"] == "done" for e in emulator.exports()):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert len(exported_files(emulator.bucket, prefix)) == 1
    assert export(emulator).status_code == 201  # free again


def test_export_request_validation(emulator: Emulator) -> None:
    assert export(emulator, segment_id="missing").status_code == 400
    assert export(emulator, fields_to_export=[]).status_code == 400
    assert export(emulator, output_format="csv").status_code == 400


def test_duplicates_are_deterministic_and_rare() -> None:
    users = [{"braze_id": f"b{i}"} for i in range(20_000)]
    once = [u["braze_id"] for u in with_duplicates(users, 0.002)]
    again = [u["braze_id"] for u in with_duplicates(users, 0.002)]
    assert once == again
    extra = len(once) - len(users)
    assert 10 <= extra <= 80  # expected 40
    assert sorted(set(once)) == sorted(u["braze_id"] for u in users)
    assert list(with_duplicates(users[:5], 0.0)) == users[:5]


def test_export_to_s3_through_boto3(tmp_path: Path) -> None:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        creds = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing-secret"}
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **creds)
        s3.create_bucket(Bucket="brand-bucket")
        state = EmulatorState(tmp_path / "state")
        state.seed([{"external_id": "s1"}, {"external_id": "s2"}], segment_id="seg", api_key=KEY)
        config = EmulatorConfig(
            s3_endpoint_url=endpoint,
            s3_bucket="brand-bucket",
            s3_region="us-east-1",
            bucket_path_prefix="p",
            export_delay_s=0,
            **creds,
        )
        assert "testing-secret" not in repr(config)
        transport = httpx.ASGITransport(app=make_app(tmp_path / "state", config=config))

        async def call() -> httpx.Response:
            async with httpx.AsyncClient(transport=transport, base_url="http://emulator") as c:
                return await c.post(
                    "/users/export/segment",
                    headers=AUTH,
                    json={"segment_id": "seg", "fields_to_export": ["external_id"]},
                )

        import asyncio

        r = asyncio.run(call())
        assert r.status_code == 201
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="brand-bucket")["Contents"]]
        assert len(keys) == 1 and keys[0].startswith("p/segment-export/seg/")
        assert r.json()["object_prefix"] in keys[0]
        body = s3.get_object(Bucket="brand-bucket", Key=keys[0])["Body"].read()
        assert [u["external_id"] for u in read_export_file(body)] == ["s1", "s2"]
    finally:
        server.stop()


# ---- segments and export by id ----------------------------------------------------------------------------
def test_segments_list_pages_of_100(emulator: Emulator) -> None:
    for n in range(150):
        emulator.state.add_segment(f"s-{n:03d}", f"S {n}")
    emulator.state.add_segment("archived-1", "Old", archived=True)
    pages = [
        httpx.get(f"{emulator.url}/segments/list", headers=AUTH, params={"page": p}).json()["segments"]
        for p in range(3)
    ]
    assert [len(p) for p in pages] == [100, 53, 0]  # 3 seeded + 150, the archived one hidden
    assert pages[0][0]["id"] == SEGMENT_ID and pages[0][0]["name"] == "All Users"
    assert set(pages[0][0]) == {"id", "name", "analytics_tracking_enabled", "tags"}
    desc = httpx.get(
        f"{emulator.url}/segments/list", headers=AUTH, params={"page": 0, "sort_direction": "desc"}
    ).json()["segments"]
    assert desc[0]["id"] == "s-149"


def test_export_ids(emulator: Emulator) -> None:
    r = httpx.post(
        f"{emulator.url}/users/export/ids",
        headers=AUTH,
        json={"external_ids": ["u1", "ghost"], "fields_to_export": ["external_id", "first_name"]},
    )
    assert r.status_code == 201
    assert r.json() == {
        "users": [{"external_id": "u1", "first_name": "First1"}],
        "invalid_user_ids": ["ghost"],
        "message": "success",
    }
    r = httpx.post(
        f"{emulator.url}/users/export/ids", headers=AUTH, json={"external_ids": [f"u{i}" for i in range(51)]}
    )
    assert r.status_code == 400


# ---- state ------------------------------------------------------------------------------------------------
def test_state_survives_a_restart(tmp_path: Path) -> None:
    state = EmulatorState(tmp_path)
    assert (
        state.seed(
            [{"external_id": "a"}, {"external_id": "a"}, {"external_id": "b"}], segment_id="s", api_key="k-secret-777"
        )
        == 2
    )  # the repeated user is stored once
    with start_in_thread(tmp_path) as running:
        r = httpx.post(
            f"{running.url}/users/track",
            headers={"Authorization": "Bearer k-secret-777"},
            json={"attributes": [{"external_id": "a", "lexer_audience": {"add": ["Q"]}}]},
        )
        assert r.status_code == 201
    reopened = EmulatorState(tmp_path)
    assert reopened.attribute_values("lexer_audience") == {"a": ["Q"]}
    assert reopened.key_permissions("k-secret-777") is not None and reopened.key_permissions("other") is None
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("braze.sqlite*"))
    assert b"k-secret-777" not in stored  # only a hash of the key is kept


def test_pure_array_semantics() -> None:
    assert add_values(["a", "b"], ["a"], 10) == ["b", "a"]
    assert add_values(["a", "b", "c"], ["d", "e"], 3) == ["c", "d", "e"]
    ops = AttributeOps(adds=["x"], removes=["x", "a"])
    assert ops.apply(["a", "b"], 10) == ["b"]
    assert AttributeOps(set_value=["b", "b", "c"]).apply(["a"], 10) == ["b", "c"]


def test_seed_is_fast_enough_for_large_populations(tmp_path: Path) -> None:
    state = EmulatorState(tmp_path)
    started = time.monotonic()
    n = state.seed(
        ({"external_id": f"e{i}", "email": f"e{i}@x.test", "custom_attributes": {"t": i}} for i in range(50_000)),
        segment_id="s",
        api_key="k",
    )
    assert n == 50_000 and time.monotonic() - started < 30  # 1M took 34 s on a loaded 2-core box


def test_served_as_a_separate_process_with_config(tmp_path: Path) -> None:
    state = EmulatorState(tmp_path / "state")
    state.seed([{"external_id": "p1"}], segment_id="s", api_key="proc-key")
    config = EmulatorConfig(track_batch_cap=1, aws_secret_access_key="never-on-argv")
    with start_subprocess(tmp_path / "state", config=config) as running:
        auth = {"Authorization": "Bearer proc-key"}
        two = [{"external_id": "p1", "t": 1}, {"external_id": "p1", "t": 2}]
        assert httpx.post(f"{running.url}/users/track", headers=auth, json={"attributes": two}).status_code == 400
        r = httpx.post(f"{running.url}/users/track", headers=auth, json={"attributes": two[:1]})
        assert r.status_code == 201
        assert "never-on-argv" not in " ".join(running._process.args)  # type: ignore[union-attr]
    assert running._process is not None and running._process.poll() is not None


def test_in_process_local_profile_path(tmp_path: Path) -> None:
    """The local profile: the client talks to make_app through httpx.ASGITransport, no socket at all."""
    from lexer_assets.braze.client import BrazeClient

    state = EmulatorState(tmp_path / "state")
    state.seed(
        [{"external_id": "i1", "custom_attributes": {"lexer_audience": ["Old"]}}, {"external_id": "i2"}],
        segment_id="seg",
        api_key="local-key",
    )
    app = make_app(tmp_path / "state", config=EmulatorConfig(bucket_root=tmp_path / "bucket", export_delay_s=0))
    client = BrazeClient("http://braze-emulator.local", "local-key", transport=httpx.ASGITransport(app=app))
    results = client.send_attributes(
        [
            {"external_id": "i1", "_update_existing_only": True, "lexer_audience": {"add": ["New"], "remove": ["Old"]}},
            {"external_id": "i9", "_update_existing_only": True, "lexer_audience": {"add": ["New"]}},
        ]
    )
    assert [r.status for r in results] == ["done", "failed"]
    answer = client.export_segment("seg", ["external_id", "custom_attributes"])
    files = exported_files(tmp_path / "bucket", answer["object_prefix"])  # there before the answer came
    users = {u["external_id"]: u for u in read_export_file(files[0])}
    assert users["i1"]["custom_attributes"] == {"lexer_audience": ["New"]}
    assert "custom_attributes" not in users["i2"]


def test_request_journal_records_applied_requests_and_readds(emulator: Emulator, tmp_path: Path) -> None:
    journal = tmp_path / "journal.jsonl"
    emulator.configure(journal_path=str(journal))
    try:
        track(emulator, [{"external_id": "u1", "lexer_audience": {"add": ["VIP"]}}])
        track(emulator, [{"external_id": "u1", "lexer_audience": {"add": ["VIP", "A"]}}])
        track(emulator, [{"external_id": f"u{i}", "t": 1} for i in range(76)])  # 400: never applied
    finally:
        emulator.configure(journal_path="")
    lines = [json.loads(line) for line in journal.read_text().splitlines()]
    assert [len(e["attributes"]) for e in lines] == [1, 1]
    assert lines[0]["readds"] == []
    assert sorted(map(tuple, lines[1]["readds"])) == [("u1", "lexer_audience", "A"), ("u1", "lexer_audience", "VIP")]
