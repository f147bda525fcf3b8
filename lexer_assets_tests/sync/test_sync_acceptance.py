"""The sync against the emulator over HTTP: every behaviour of issue 7, expected values worked out by hand or
in plain Python from the test's own inputs; the emulator's request journal shows what was really sent."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import math
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from lexer_assets.sync.audience_sync import SyncedAudience
from lexer_assets.sync.notifications import NotifyConfig, notify
from lexer_assets.sync.sharding import Shard, shard_of
from lexer_assets.sync.sync_guard import GuardLimits, SyncBlocked
from lexer_assets_tests.sync.world import ATTR, DAY1, DAY2, World, load_hub_users, set_members

CUSTOMERS = [f"c{i:03d}" for i in range(200)]
VIP = SyncedAudience("vip", "VIP", True, priority=1)
LAPSED = SyncedAudience("lapsed", "Lapsed", True, priority=2)


HELD = {"c000": ["VIP"], "c001": ["Old campaign"]}


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path, CUSTOMERS, held=HELD)
    yield w
    w.close()


def _no_readds_no_overlap(world: World) -> None:
    for request in world.requests():
        assert request["readds"] == []
        for obj in request["attributes"]:
            ops = obj[ATTR]
            assert not set(ops.get("add", [])) & set(ops.get("remove", []))


def test_first_sync_then_entering_and_leaving(world: World) -> None:
    vip1 = set(CUSTOMERS[:50])
    set_members(world.wh, "vip", "VIP", DAY1, vip1)
    report = world.sync([VIP], run_id="r1")
    # c000 already holds VIP (export): not re-added; c001 gains VIP and loses its retired value in one object.
    assert (report.diff.adds, report.diff.removes, report.done, report.status) == (49, 1, 49, "succeeded")
    assert world.braze() == {c: ["VIP"] for c in vip1}
    assert {o["external_id"] for o in world.objects()} == vip1 - {"c000"}
    c001 = next(o for o in world.objects() if o["external_id"] == "c001")
    assert c001[ATTR] == {"add": ["VIP"], "remove": ["Old campaign"]}
    assert all(o["_update_existing_only"] is True for o in world.objects())

    # Day two: 10 leave, 20 enter. Only they are sent.
    vip2 = (vip1 - set(CUSTOMERS[:10])) | set(CUSTOMERS[100:120])
    set_members(world.wh, "vip", "VIP", DAY2, vip2)
    before = len(world.objects())
    report = world.sync([VIP], run_id="r2")
    assert world.log("r2") == sorted(
        [(c, "add", "VIP", "done") for c in CUSTOMERS[100:120]]
        + [(c, "remove", "VIP", "done") for c in CUSTOMERS[:10]])
    assert len(world.objects()) - before == 30
    assert world.braze() == {c: ["VIP"] for c in vip2}
    # Nothing changed: nothing sent.
    assert world.sync([VIP], run_id="r3").diff.customers == 0
    assert len(world.objects()) - before == 30
    _no_readds_no_overlap(world)


def test_renamed_audience_removes_old_and_adds_new_in_one_object(world: World) -> None:
    members = set(CUSTOMERS[10:40])
    set_members(world.wh, "vip", "VIP", DAY1, members)
    world.sync([VIP], run_id="r1")
    start = len(world.objects())
    world.sync([SyncedAudience("vip", "Very Important", True, priority=1)], run_id="r2")
    sent = world.objects()[start:]
    assert {o["external_id"]: o[ATTR] for o in sent} == {
        c: {"add": ["Very Important"], "remove": ["VIP"]} for c in members}
    assert world.braze() == {c: ["Very Important"] for c in members}


def test_a_rename_recomputed_the_same_day_is_not_a_deletion(world: World) -> None:
    """The renamed audience's day is recomputed under its new name, replacing the only history row with the
    old one: the guard still knows the old name's slug from the sync that sent it."""
    guard = GuardLimits(max_drop_share=0.5, max_removals=50_000)
    members = set(CUSTOMERS[10:40])
    set_members(world.wh, "vip", "VIP", DAY1, members)
    world.sync([VIP], run_id="r1", guard=guard)
    set_members(world.wh, "vip", "VIP Gold", DAY1, members)  # same day, same slug, new name
    report = world.sync([SyncedAudience("vip", "VIP Gold", True, priority=1)], run_id="r2", guard=guard)
    assert report.guard.startswith("guard passed")
    assert world.braze() == {c: ["VIP Gold"] for c in members}


def test_cap_with_priorities_reports_held_back(world: World) -> None:
    third = SyncedAudience("new", "New", True, priority=3)
    for aud, members in ((VIP, CUSTOMERS[:30]), (LAPSED, CUSTOMERS[20:60]), (third, CUSTOMERS[25:80])):
        set_members(world.wh, aud.slug, aud.name, DAY1, members)
    report = world.sync([VIP, LAPSED, third], array_cap=2, run_id="r1")
    # c020-c029 are in VIP and Lapsed; c025-c029 also in New: New (priority 3) is held back from 5 customers.
    assert (report.diff.capped_customers, report.diff.held_back) == (5, {"New": 5})
    line = next(a for a in report.audiences if a.audience_name == "New")
    assert line.held_back == 5
    held = world.braze()
    for c in CUSTOMERS[25:30]:
        assert sorted(held[c]) == ["Lapsed", "VIP"]
    assert max(len(v) for v in held.values()) == 2


def test_refused_objects_are_retried_then_parked_and_transient_ones_finish_next_run(world: World) -> None:
    # In the newest export, deleted from Braze since: Braze refuses them (_update_existing_only).
    ghosts = ["ghost1", "ghost2"]
    load_hub_users(world.wh, CUSTOMERS + ghosts, HELD)
    set_members(world.wh, "vip", "VIP", DAY1, CUSTOMERS[:20] + ghosts)
    world.configure(fault_5xx_rate=1.0)  # every request fails: nothing confirmed, all stay unconfirmed
    report = world.sync([VIP], client=world.client(max_retries=0), run_id="r1")
    # c000 already holds VIP: 19 customers + 2 ghosts = 21 objects (c001 also loses its retired value)
    assert report.status == "partial" and report.done == 0 and report.pending == 21
    world.configure(fault_5xx_rate=0.0)
    report = world.sync([VIP], run_id="r2", max_failed_runs=2)
    assert report.reconciled == 21  # read back before re-sending: nothing had reached Braze
    assert report.done == 19 and report.failed == 2
    assert {r[0] for r in world.log("r2") if r[3] == "failed"} == set(ghosts)
    assert world.braze() == {c: ["VIP"] for c in CUSTOMERS[:20]}
    report = world.sync([VIP], run_id="r3", max_failed_runs=2)
    assert (report.failed, report.parked) == (2, 0)  # refused a second time
    report = world.sync([VIP], run_id="r4", max_failed_runs=2)
    assert (report.diff.customers, report.parked) == (0, 2)  # parked: not sent again
    assert [r[3] for r in world.log("r4")] == ["parked", "parked"]
    report = world.sync([VIP], run_id="r5", max_failed_runs=2, retry_parked=True)
    assert report.failed == 2  # released by the operator: tried again


def test_dry_run_counts_and_sends_nothing(world: World) -> None:
    set_members(world.wh, "vip", "VIP", DAY1, CUSTOMERS[:100])
    set_members(world.wh, "lapsed", "Lapsed", DAY1, CUSTOMERS[80:180])
    report = world.sync([VIP, LAPSED], dry_run=True, run_id="dry")
    assert world.requests() == []
    lines = {a.audience_name: a for a in report.audiences}
    # VIP: c000 already holds it -> 99 adds; Lapsed: 100 adds; Old campaign: 1 removal (c001).
    assert (lines["VIP"].adds, lines["VIP"].customers, lines["VIP"].requests) == (99, 99, 2)
    assert (lines["Lapsed"].adds, lines["Lapsed"].requests) == (100, 2)
    assert lines["Old campaign"].removes == 1
    touched = len(set(CUSTOMERS[1:100]) | set(CUSTOMERS[80:180]))  # c001 is in VIP too
    assert report.diff.customers == touched and report.requests_estimate == math.ceil(touched / 75)
    with world.wh.connect() as conn:
        assert conn.sql("SELECT count(*) FROM sync.braze_attribute_state WHERE run_id <> 'export'"
                        ).fetchall()[0][0] == 0
        assert conn.sql("SELECT count(*) FROM sync.braze_sync_log").fetchall()[0][0] == 0
        assert conn.sql("SELECT kind, status FROM sync.braze_sync_reports").fetchall() == [("dry_run", "succeeded")]


def test_guard_blocks_a_big_drop_until_approved(world: World) -> None:
    set_members(world.wh, "vip", "VIP", DAY1, CUSTOMERS[:100])
    world.sync([VIP], run_id="r1", guard=GuardLimits())
    set_members(world.wh, "vip", "VIP", DAY2, CUSTOMERS[:40])  # -60 %: beyond the 50 % default
    sent = len(world.objects())
    with pytest.raises(SyncBlocked) as blocked:
        world.sync([VIP], run_id="r2", guard=GuardLimits())
    assert "'VIP' dropped from 100 to 40" in str(blocked.value) and "lexer/approve_sync=true" in str(blocked.value)
    assert len(world.objects()) == sent and len(world.braze()) == 100
    # The removal limit alone blocks too.
    with pytest.raises(SyncBlocked, match="remove 60 values"):
        world.sync([VIP], run_id="r3", guard=GuardLimits(max_drop_share=1.0, max_removals=59))
    report = world.sync([VIP], run_id="r4", guard=GuardLimits(), approved=True)
    assert report.status == "succeeded" and report.guard.startswith("approved")
    assert world.braze() == {c: ["VIP"] for c in CUSTOMERS[:40]}
    with world.wh.connect() as conn:
        statuses = conn.sql("SELECT run_id, status FROM sync.braze_sync_reports ORDER BY run_id").fetchall()
    assert statuses == [("r1", "succeeded"), ("r2", "blocked"), ("r3", "blocked"), ("r4", "succeeded")]


def test_audience_computed_empty_is_empty_not_unknown(world: World) -> None:
    """A computed day with no members means "remove the value from everyone" (after the guard's approval);
    only an audience never computed is unknown."""
    set_members(world.wh, "vip", "VIP", DAY1, CUSTOMERS[:30])
    world.sync([VIP], run_id="r1", guard=GuardLimits())
    set_members(world.wh, "vip", "VIP", DAY2, [])
    with pytest.raises(SyncBlocked, match="'VIP' dropped from 30 to 0"):
        world.sync([VIP], run_id="r2", guard=GuardLimits())
    assert len(world.braze()) == 30
    report = world.sync([VIP], run_id="r3", guard=GuardLimits(), approved=True)
    assert (report.diff.removes, report.done) == (30, 30)
    assert world.braze() == {}


def test_a_day_after_today_never_reaches_braze(world: World) -> None:
    """A partition computed for a future day (a mistyped backfill) is ignored: the sync targets today at most."""
    set_members(world.wh, "vip", "VIP", DAY1, CUSTOMERS[:20])
    world.sync([VIP], run_id="r1")
    tomorrow = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=1)
    set_members(world.wh, "vip", "VIP", tomorrow, CUSTOMERS[:5])
    assert world.sync([VIP], run_id="r2").diff.customers == 0
    assert world.braze() == {c: ["VIP"] for c in CUSTOMERS[:20]}


def test_retired_maintain_audience_is_cleaned_and_append_one_left(world: World) -> None:
    """Issue 6: deactivating (or deleting) an audience removes its value from Braze when it is `maintain`, and
    leaves it when it is `append`; the run's report says which happened."""
    keep = SyncedAudience("keep", "Keep", True, list_action="append", priority=3)
    set_members(world.wh, "vip", "VIP", DAY1, CUSTOMERS[:10])
    set_members(world.wh, "keep", "Keep", DAY1, CUSTOMERS[5:15])
    world.sync([VIP, keep], run_id="r1")
    retired = [SyncedAudience("vip", "VIP", False), SyncedAudience("keep", "Keep", False, list_action="append")]
    report = world.sync(retired, run_id="r2")
    assert world.braze() == {c: ["Keep"] for c in CUSTOMERS[5:15]}
    lines = {line.audience_name: line for line in report.audiences}
    assert lines["VIP"].removes == 10
    assert "Keep" not in lines or lines["Keep"].removes == 0


def test_frozen_audience_is_neither_added_nor_removed(world: World) -> None:
    set_members(world.wh, "vip", "VIP", DAY1, CUSTOMERS[:5])
    world.sync([VIP], run_id="r1")
    set_members(world.wh, "vip", "VIP", DAY2, CUSTOMERS[3:8])
    report = world.sync([SyncedAudience("vip", "VIP", True, frozen=True)], run_id="r2")
    assert report.diff.customers == 0
    assert world.braze() == {c: ["VIP"] for c in CUSTOMERS[:5]}


def test_two_shards_in_parallel(world: World) -> None:
    members = set(CUSTOMERS[:150])
    set_members(world.wh, "vip", "VIP", DAY1, members)
    reports = {}

    def run(i: int) -> None:
        reports[i] = world.sync([VIP], run_id=f"shard{i}", shard=Shard(i, 2))

    threads = [threading.Thread(target=run, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    expected = {i: {c for c in (members - {"c000"}) | {"c001"} if shard_of(c, 2) == i} for i in (0, 1)}
    for i in (0, 1):
        assert {r[0] for r in world.log(f"shard{i}")} == expected[i]
        assert reports[i].done == len(expected[i]) and reports[i].shard == f"{i + 1}/2"
    assert world.braze() == {c: ["VIP"] for c in members}
    _no_readds_no_overlap(world)


class _SMTPHandler(socketserver.StreamRequestHandler):
    """Just enough SMTP to receive one message (HELO/EHLO, MAIL, RCPT, DATA, QUIT)."""

    def handle(self) -> None:
        self.wfile.write(b"220 test ESMTP\r\n")
        while line := self.rfile.readline():
            verb = line[:4].upper()
            if verb == b"DATA":
                self.wfile.write(b"354 go ahead\r\n")
                data = []
                while (chunk := self.rfile.readline()) not in (b".\r\n", b""):
                    data.append(chunk)
                self.server.messages.append(b"".join(data).decode())  # type: ignore[attr-defined]
                self.wfile.write(b"250 OK\r\n")
            elif verb == b"QUIT":
                self.wfile.write(b"221 bye\r\n")
                return
            else:
                self.wfile.write(b"250 OK\r\n")


def test_confirmation_email_received_by_a_local_smtp_server(world: World) -> None:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _SMTPHandler)
    server.messages = []  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        set_members(world.wh, "vip", "VIP", DAY1, CUSTOMERS[:30])
        config = NotifyConfig(smtp_host="127.0.0.1", smtp_port=server.server_address[1],
                              recipients=("crm@example.com", "ops@example.com"))
        outcomes: list[str] = []
        world.sync([VIP], run_id="r1", on_finish=lambda r: outcomes.extend(notify(r, ATTR, config)))
        assert outcomes == ["email: sent to 2 recipient(s)"]
        (raw,) = server.messages  # type: ignore[attr-defined]
        parsed = email.message_from_string(raw, policy=email.policy.default)
        assert parsed["To"] == "crm@example.com, ops@example.com"
        message = parsed.get_content()
        assert "SUCCEEDED" in message and "Confirmed by Braze: 29" in message
        vip_line = next(line for line in message.splitlines() if line.startswith("VIP "))
        assert vip_line.split()[1:6] == ["2026-03-01", "30", "29", "0", "29"]  # c000 already held VIP
        # A failing run notifies too.
        set_members(world.wh, "vip", "VIP", DAY2, CUSTOMERS[:5])
        with pytest.raises(SyncBlocked):
            world.sync([VIP], run_id="r2", guard=GuardLimits(),
                       on_finish=lambda r: outcomes.extend(notify(r, ATTR, config)))
        assert len(server.messages) == 2  # type: ignore[attr-defined]
        second = email.message_from_string(server.messages[1], policy=email.policy.default)  # type: ignore[attr-defined]
        assert "BLOCKED" in second.get_content() and "dropped from 30 to 5" in second.get_content()
    finally:
        server.shutdown()
        server.server_close()


def test_customers_missing_from_the_newest_export_are_left_as_they_are(world: World) -> None:
    vip = set(CUSTOMERS[:40])
    set_members(world.wh, "vip", "VIP", DAY1, vip)
    world.sync([VIP], run_id="r1")
    assert world.braze() == {c: ["VIP"] for c in vip}  # c001's retired value went in the same object
    sent_before = len(world.objects())
    # The next export lost ten VIPs (say their lines were rejected) and the audience, computed on it, too.
    missing = CUSTOMERS[:10]
    load_hub_users(world.wh, [c for c in CUSTOMERS if c not in missing], {c: ["VIP"] for c in vip})
    set_members(world.wh, "vip", "VIP", DAY2, vip - set(missing) | {"c100"})
    report = world.sync([VIP], run_id="r2")
    assert report.absent == 10
    assert (report.diff.adds, report.diff.removes) == (1, 0)  # c100 joins; nobody is removed
    assert world.braze() == {c: ["VIP"] for c in vip | {"c100"}}  # the ten keep VIP
    assert len(world.objects()) - sent_before == 1
    # Back in an export and still out of the audience: now they are removed.
    load_hub_users(world.wh, CUSTOMERS, {c: ["VIP"] for c in vip | {"c100"}})
    report = world.sync([VIP], run_id="r3")
    assert (report.absent, report.diff.removes, report.diff.adds) == (0, 10, 0)
    assert world.braze() == {c: ["VIP"] for c in vip - set(missing) | {"c100"}}


def test_guard_blocks_removing_a_synced_audience_that_left_the_file(world: World) -> None:
    guard = GuardLimits(max_drop_share=0.5, max_removals=50_000)
    set_members(world.wh, "vip", "VIP", DAY1, CUSTOMERS[:30])
    set_members(world.wh, "lapsed", "Lapsed", DAY1, CUSTOMERS[30:40])
    # c001's "Old campaign" came with the first export and was never synced by the hub: cleaned, no approval.
    first = world.sync([VIP, LAPSED], run_id="r1", guard=guard)
    assert world.braze() == {c: ["VIP"] for c in CUSTOMERS[:30]} | {c: ["Lapsed"] for c in CUSTOMERS[30:40]}
    assert first.guard.startswith("guard passed")
    # Renamed (same slug, new name): the old name goes, the new one comes; no approval needed.
    renamed = SyncedAudience("lapsed", "Lapsed customers", True, priority=2)
    set_members(world.wh, "lapsed", "Lapsed customers", DAY2, CUSTOMERS[30:40])
    world.sync([VIP, renamed], run_id="r2", guard=guard)
    assert world.braze() == {c: ["VIP"] for c in CUSTOMERS[:30]} | {c: ["Lapsed customers"] for c in CUSTOMERS[30:40]}
    # VIP deleted from the file (say by mistake): 30 removals is far under max_removals, yet the sync stops.
    sent = len(world.objects())
    with pytest.raises(SyncBlocked, match="'VIP' had 30 members at the last sync and is no longer activated"):
        world.sync([renamed], run_id="r3", guard=guard)
    assert len(world.objects()) == sent
    world.sync([renamed], run_id="r4", guard=guard, approved=True)
    assert world.braze() == {c: ["Lapsed customers"] for c in CUSTOMERS[30:40]}
