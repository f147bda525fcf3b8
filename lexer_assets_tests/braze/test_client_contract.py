"""Contract tests: the Braze client against the emulator over real HTTP on loopback (issue 3 acceptance)."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter

import httpx
import pytest

from lexer_assets.braze.batching import identifier_problem, plan_batches, request_count
from lexer_assets.braze.client import BrazeAuthError, BrazeClient, BrazeError, ObjectResult
from lexer_assets.braze.rate_limit import SlidingWindowLimiter, parse_rate_limit_headers
from lexer_assets_tests.braze.conftest import KEY, SEGMENT_ID, Emulator

FAST = {"backoff_base_s": 0.01, "backoff_max_s": 0.05}


def add(external_id: str, *values: str) -> dict:
    return {"external_id": external_id, "_update_existing_only": True, "lexer_audience": {"add": list(values)}}


def client(emulator: Emulator, key: str = KEY, **kwargs: object) -> BrazeClient:
    return BrazeClient(emulator.url, key, **{**FAST, **kwargs})  # type: ignore[arg-type]


# ---- responses --------------------------------------------------------------------------------------------
def test_201_with_one_bad_object_among_three(emulator: Emulator) -> None:
    objects = [add("u1", "VIP"), add("nobody-here", "VIP"), add("u2", "VIP")]
    results = client(emulator).send_attributes(objects)

    assert [r.status for r in results] == ["done", "failed", "done"]
    assert results[1].reason is not None and "_update_existing_only" in results[1].reason
    assert results[0].reason is None and results[2].reason is None
    sent = emulator.requests()
    assert [(e["status"], e["objects"]) for e in sent] == [(201, 3)]  # nothing resent
    values = emulator.state.attribute_values("lexer_audience")
    assert values["u1"] == ["A", "VIP"] and values["u2"] == ["A", "VIP"]
    assert "nobody-here" not in values


@pytest.mark.parametrize(
    ("pending", "cap", "expected_requests"),
    [
        (0, 75, 0),
        (1, 75, 1),
        (75, 75, 1),
        (76, 75, 2),
        (150, 75, 2),
        (151, 75, 3),
        (0, 50, 0),
        (1, 50, 1),
        (50, 50, 1),
        (51, 50, 2),
        (75, 50, 2),
        (151, 50, 4),
    ],
)
def test_request_counts_per_batch_cap(emulator: Emulator, pending: int, cap: int, expected_requests: int) -> None:
    emulator.configure(track_batch_cap=cap)  # the emulator refuses anything above the cap with a 400
    objects = [add(f"u{i}", "VIP") for i in range(pending)]
    results = client(emulator, batch_cap=cap).send_attributes(objects)

    assert all(r.status == "done" for r in results) and len(results) == pending
    sent = emulator.requests()
    assert len(sent) == expected_requests
    assert all(e["status"] == 201 and e["objects"] <= cap for e in sent)
    assert sum(e["objects"] for e in sent) == pending  # every object exactly once, tail included
    assert len({r.batch for r in results}) == expected_requests


def test_object_without_identifier_is_rejected_and_does_not_hold_back_its_batch(emulator: Emulator) -> None:
    objects = [
        add("u1", "VIP"),
        {"lexer_audience": {"add": ["VIP"]}},
        add("u2", "VIP"),
        {"external_id": "  ", "lexer_audience": {"add": ["VIP"]}},
    ]
    results = client(emulator).send_attributes(objects)

    assert [r.status for r in results] == ["done", "rejected", "done", "rejected"]
    assert "no identifier" in (results[1].reason or "")
    assert "empty" in (results[3].reason or "")
    assert results[1].batch is None
    assert [e["objects"] for e in emulator.requests()] == [2]


def test_400_batch_is_bisected_down_to_the_single_bad_object(emulator: Emulator) -> None:
    objects = [add(f"u{i}", "VIP") for i in range(75)]
    objects[37]["__emulator_bad_request__"] = True
    results = client(emulator, max_in_flight=1).send_attributes(objects)

    assert [i for i, r in enumerate(results) if r.status != "done"] == [37]
    assert results[37].status == "failed" and "400" in (results[37].reason or "")
    # By hand: 75 -> 37|38, bad in 38 -> 19|19, bad in first 19 -> 9|10, bad in 9 -> 4|5, bad in 4 -> 2|2,
    # bad in first 2 -> 1|1: 1 + 2 * 6 = 13 requests, the single bad object's own request included.
    sent = emulator.requests()
    assert len(sent) == 13
    assert sum(e["objects"] for e in sent if e["status"] == 201) == 74
    values = emulator.state.attribute_values("lexer_audience")
    assert values["u36"] == ["A", "VIP"] and values["u37"] == ["A"] and values["u74"] == ["A", "VIP"]


def test_array_pushed_past_its_cap_drops_the_oldest_silently(emulator: Emulator) -> None:
    emulator.configure(max_array_length=5)
    c = client(emulator)
    assert [r.status for r in c.send_attributes([add("u3", "B", "C", "D", "E", "F")])] == ["done"]
    # By hand: ["A"] + B..F = 6 values, cap 5 -> the oldest ("A") goes.
    assert emulator.state.attribute_values("lexer_audience")["u3"] == ["B", "C", "D", "E", "F"]
    assert [r.status for r in c.send_attributes([add("u3", "C", "G")])] == ["done"]
    # C moves to the end, G appends, B (now oldest) goes.
    assert emulator.state.attribute_values("lexer_audience")["u3"] == ["D", "E", "F", "C", "G"]


# ---- rate limits ------------------------------------------------------------------------------------------
def test_429_burst_is_honoured_until_the_reset(emulator: Emulator) -> None:
    # A burst of 429s (injected at random, each announcing the real window's reset) on a small window.
    emulator.configure(track_rate_limit=50, track_rate_window_s=1.0, fault_429_rate=0.5, fault_seed=11)
    c = client(emulator, rate_limit_requests=100_000, rate_limit_window_s=1.0, batch_cap=2, max_in_flight=1)
    results = c.send_attributes([add(f"u{i}", "VIP") for i in range(8)])  # 4 batches

    assert all(r.status == "done" for r in results)
    sent = emulator.requests()
    limited = [e for e in sent if e["status"] == 429]
    assert len(limited) >= 2 and c.stats.rate_limited == len(limited)
    assert sum(e["objects"] for e in sent if e["status"] == 201) == 8
    for n, entry in enumerate(sent[:-1]):
        if entry["status"] == 429:
            # the next request waited for the announced reset (epoch seconds): no hammering
            assert sent[n + 1]["t"] >= float(entry["reset"]) - 0.02


def test_remaining_zero_pauses_the_client_before_any_429(emulator: Emulator) -> None:
    emulator.configure(track_rate_limit=5, track_rate_window_s=1.0)
    # The client believes in a huge limit; Braze's X-RateLimit-Remaining: 0 is what holds it back.
    c = client(emulator, rate_limit_requests=100_000, rate_limit_window_s=1.0, batch_cap=2, max_in_flight=1)
    started = time.time()
    results = c.send_attributes([add(f"u{i}", "VIP") for i in range(24)])  # 12 requests, 5 per window

    assert all(r.status == "done" for r in results)
    sent = emulator.requests()
    assert [e["status"] for e in sent] == [201] * 12 and c.stats.rate_limited == 0
    windows = Counter(e["reset"] for e in sent)
    assert max(windows.values()) <= 5 and time.time() - started >= 1.0


def test_emulator_sends_rate_limit_headers_in_lower_case_and_client_reads_any_case(emulator: Emulator) -> None:
    r = httpx.post(
        f"{emulator.url}/users/track", headers={"Authorization": f"Bearer {KEY}"}, json={"attributes": [add("u1", "X")]}
    )
    raw_names = [name for name, _ in r.headers.raw]
    assert b"x-ratelimit-reset" in raw_names  # lower-case on the wire, as under HTTP/2
    for headers in (
        {"X-RateLimit-Limit": "3000", "X-RateLimit-Remaining": "7", "X-RateLimit-Reset": "1700"},
        {"x-ratelimit-limit": "3000", "x-ratelimit-remaining": "7", "x-ratelimit-reset": "1700"},
        {"X-RATELIMIT-LIMIT": "3000", "x-RateLimit-remaining": "7", "X-Ratelimit-Reset": "1700"},
    ):
        info = parse_rate_limit_headers(headers)
        assert (info.limit, info.remaining, info.reset_epoch) == (3000, 7, 1700.0)


@pytest.mark.parametrize("header_name", ["X-RateLimit-Reset", "x-ratelimit-reset"])
def test_429_reset_header_in_either_case_sets_the_wait(header_name: str) -> None:
    calls: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(time.time())
        if len(calls) == 1:
            return httpx.Response(429, headers={header_name: str(time.time() + 0.6)}, json={"message": "x"})
        return httpx.Response(201, json={"message": "success", "attributes_processed": 1})

    c = BrazeClient(f"https://rest.case-{header_name}.test", KEY, transport=httpx.MockTransport(handler), **FAST)
    results = c.send_attributes([add("u1", "VIP")])
    assert [r.status for r in results] == ["done"]
    assert len(calls) == 2 and calls[1] - calls[0] >= 0.55  # waited for the reset, not the 10 ms backoff


def test_proactive_limiter_shared_by_all_clients_of_an_endpoint() -> None:
    now = [100.0]
    limiter = SlidingWindowLimiter(10, 1.0, margin=0.0, clock=lambda: now[0])
    delays = [limiter.reserve() for _ in range(25)]
    # By hand: 10 go now, the next 10 one window later, the last 5 two windows later.
    assert delays == [0.0] * 10 + [1.0] * 10 + [2.0] * 5
    limiter.block_for(5.0)
    assert limiter.reserve() == 5.0

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(201, json={"message": "success"})

    a = BrazeClient("https://rest.shared.test", KEY, transport=httpx.MockTransport(answer))
    b = BrazeClient("https://rest.shared.test/", KEY, transport=httpx.MockTransport(answer))
    other = BrazeClient("https://rest.other.test", KEY, transport=httpx.MockTransport(answer))
    assert a._track_limiter is b._track_limiter
    assert a._track_limiter is not other._track_limiter


def test_two_clients_in_two_threads_share_one_budget_and_see_no_429(emulator: Emulator) -> None:
    # Braze allows 20 per window; the clients are told 18, a little headroom because the emulator counts
    # arrival times, which jitter against send times on a busy machine.
    emulator.configure(track_rate_limit=20, track_rate_window_s=1.0)
    errors: list[BaseException] = []
    outcomes: list[list[ObjectResult]] = []

    def sender(offset: int) -> None:
        c = client(emulator, rate_limit_requests=18, rate_limit_window_s=1.0, batch_cap=1, max_in_flight=4)
        try:
            outcomes.append(c.send_attributes([add(f"u{offset + i}", "VIP") for i in range(25)]))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=sender, args=(n * 100,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and all(r.status == "done" for rs in outcomes for r in rs)
    sent = emulator.requests()
    assert len(sent) == 50 and {e["status"] for e in sent} == {201}  # 50 requests > 20/s, yet no 429
    assert max(Counter(e["reset"] for e in sent).values()) <= 20


# ---- transient failures -----------------------------------------------------------------------------------
def test_503s_are_retried_until_they_stop(emulator: Emulator) -> None:
    emulator.configure(fault_5xx_rate=0.5, fault_seed=7)
    c = client(emulator, max_in_flight=1, max_retries=10)
    results = c.send_attributes([add(f"u{i}", "VIP") for i in range(150)])

    assert all(r.status == "done" for r in results)
    sent = emulator.requests()
    assert any(e["status"] >= 500 for e in sent)
    assert sum(e["objects"] for e in sent if e["status"] == 201) == 150  # each batch applied once


def test_503s_that_never_stop_leave_objects_pending(emulator: Emulator) -> None:
    emulator.configure(fault_5xx_rate=1.0)
    c = client(emulator, max_retries=2)
    results = c.send_attributes([add(f"u{i}", "VIP") for i in range(80)])

    assert Counter(r.status for r in results) == {"pending": 80}
    assert all("HTTP 5" in (r.reason or "") for r in results)
    assert len(emulator.requests()) == 2 * 3  # 2 batches x (1 try + 2 retries), then stop
    assert emulator.state.attribute_values("lexer_audience")["u0"] == ["A"]


def test_dropped_connections_are_retried_then_counted_pending(emulator: Emulator) -> None:
    emulator.configure(fault_drop_rate=0.5, fault_seed=3)
    results = client(emulator, max_in_flight=1, max_retries=10).send_attributes(
        [add(f"u{i}", "VIP") for i in range(100)]
    )
    assert all(r.status == "done" for r in results)
    assert any(e["status"] == 0 for e in emulator.requests())  # 0 = dropped mid-answer

    emulator.configure(fault_drop_rate=1.0)
    results = client(emulator, max_retries=1).send_attributes([add("u200", "VIP")])
    assert results[0].status == "pending" and "gave up after 2 attempts" in (results[0].reason or "")


def test_timeouts_are_transient(emulator: Emulator) -> None:
    emulator.configure(latency_s=0.3)
    results = client(emulator, timeout_s=0.05, max_retries=1).send_attributes([add("u5", "VIP")])
    assert results[0].status == "pending" and "Timeout" in (results[0].reason or "")


# ---- auth and secrets -------------------------------------------------------------------------------------
def test_401_names_wrong_key_or_cluster_and_is_not_retried(
    emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "wrong-key-5551234"
    c = client(emulator, key=wrong)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(BrazeAuthError) as info:
        c.send_attributes([add(f"u{i}", "VIP") for i in range(200)])

    message = str(info.value)
    assert "401" in message and "wrong key or wrong cluster/endpoint" in message and emulator.url in message
    assert info.value.status == 401
    assert len(emulator.requests()) <= c.max_in_flight  # stopped at once: no retries, no further batches
    assert info.value.results is not None and {r.status for r in info.value.results} == {"pending"}
    everything = [message, repr(info.value), repr(c), caplog.text, *(r.reason or "" for r in info.value.results)]
    assert not any(wrong in text for text in everything)


def test_403_names_the_missing_permission(emulator: Emulator) -> None:
    limited_key = "export-only-key-987"
    emulator.state.add_api_key(limited_key, ["users.export.segment", "segments.list"])
    c = client(emulator, key=limited_key)
    with pytest.raises(BrazeAuthError) as info:
        c.send_attributes([add("u1", "VIP")])
    assert "403" in str(info.value) and "'users.track'" in str(info.value)
    assert limited_key not in str(info.value)

    track_only_key = "track-only-key-654"
    emulator.state.add_api_key(track_only_key, ["users.track"])
    with pytest.raises(BrazeAuthError, match="users.export.segment"):
        client(emulator, key=track_only_key).export_segment(SEGMENT_ID, ["external_id"])


def test_repr_never_shows_the_key(emulator: Emulator) -> None:
    c = client(emulator)
    assert KEY not in repr(c) and KEY not in str(vars(c).get("endpoint"))


# ---- other endpoints --------------------------------------------------------------------------------------
def test_export_segment_lands_in_braze_layout(emulator: Emulator) -> None:
    answer = client(emulator).export_segment(SEGMENT_ID, ["external_id", "custom_attributes"])
    assert answer["message"] == "success"
    files = list(emulator.bucket.glob(f"segment-export/{SEGMENT_ID}/*/{answer['object_prefix']}/*.zip"))
    assert len(files) == 1


def test_list_segments_reads_every_page(emulator: Emulator) -> None:
    for n in range(247):
        emulator.state.add_segment(f"extra-{n:03d}", f"Extra {n}")
    segments = client(emulator).list_segments()
    # 3 seeded + 247 = 250 -> pages of 100, 100, 50
    assert len(segments) == 250 and len({s["id"] for s in segments}) == 250
    assert len(emulator.requests("/segments/list")) == 3


def test_export_ids_batches_fifty_per_request(emulator: Emulator) -> None:
    wanted = [f"u{i}" for i in range(120)] + ["ghost-1"]
    users = client(emulator).export_ids(external_ids=wanted, fields_to_export=["external_id", "email"])
    assert sorted(u["external_id"] for u in users) == sorted(f"u{i}" for i in range(120))
    assert users[0].keys() == {"external_id", "email"}
    assert len(emulator.requests("/users/export/ids")) == 3  # 121 ids -> 50, 50, 21


def test_export_ids_waits_out_429s(emulator: Emulator) -> None:
    # Reconciliation must read in-flight users back before a sync plans: a few 429s in a row are no reason to
    # fail the run (export requests, by contrast, give up after 3). At 80% refusals, 4 or more in a row on one
    # of the 3 requests is likely (1 - 0.59^3, about 80%).
    emulator.configure(fault_429_rate=0.8, fault_seed=5)
    wanted = [f"u{i}" for i in range(120)]
    users = client(emulator, backoff_base_s=0.005, backoff_max_s=0.02, max_reset_wait_s=0.02).export_ids(
        external_ids=wanted)
    assert sorted(u["external_id"] for u in users) == sorted(wanted)
    assert len(emulator.requests("/users/export/ids")) > 3


def test_non_auth_errors_raise_brazeerror_without_the_key(emulator: Emulator) -> None:
    with pytest.raises(BrazeError, match="not found") as info:
        client(emulator).export_segment("no-such-segment", ["external_id"])
    assert not isinstance(info.value, BrazeAuthError) and KEY not in str(info.value)


def test_progress_reaches_the_total(emulator: Emulator) -> None:
    seen: list[tuple[int, int]] = []
    objects = [add(f"u{i}", "VIP") for i in range(160)] + [{"no": "id"}]
    client(emulator).send_attributes(objects, on_progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (161, 161)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


# ---- pure helpers -----------------------------------------------------------------------------------------
def test_identifier_problem_accepts_each_identifier_kind() -> None:
    assert identifier_problem({"external_id": "x"}) is None
    assert identifier_problem({"braze_id": "b"}) is None
    assert identifier_problem({"email": "a@b.c"}) is None
    assert identifier_problem({"user_alias": {"alias_name": "n", "alias_label": "l"}}) is None
    assert identifier_problem({"user_alias": {"alias_name": "n"}}) is not None
    assert identifier_problem({"first_name": "x"}) is not None
    assert identifier_problem(["external_id"]) is not None


def test_plan_batches_keeps_order_and_tail() -> None:
    batches = list(plan_batches(list(range(7)), 3))
    assert [b.indices for b in batches] == [(0, 1, 2), (3, 4, 5), (6,)]
    assert [b.number for b in batches] == [0, 1, 2]
    assert [request_count(n, 75) for n in (0, 1, 75, 76, 150, 151)] == [0, 1, 1, 2, 2, 3]


def test_unserialisable_object_is_rejected_not_raised(emulator: Emulator) -> None:
    results = client(emulator).send_attributes([{"external_id": "u1", "when": object()}, add("u2", "V")])
    assert [r.status for r in results] == ["rejected", "done"]
    assert isinstance(results[0], ObjectResult) and "JSON" in (results[0].reason or "")


def test_export_while_one_runs_is_reported_not_waited_out(emulator: Emulator) -> None:
    emulator.configure(export_delay_s=1.0)
    c = client(emulator)
    c.export_segment(SEGMENT_ID, ["external_id"])
    started = time.monotonic()
    with pytest.raises(BrazeError, match="already running"):
        c.export_segment(SEGMENT_ID, ["external_id"])
    # 429 with budget left is a refusal, not a spent window: short backoff, not the hourly reset
    assert time.monotonic() - started < 5
    assert [e["status"] for e in emulator.requests("/users/export/segment")] == [201, 429, 429, 429, 429]
    time.sleep(1.2)  # let the running export finish before the next test
