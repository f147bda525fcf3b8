"""The asset graph as a reviewable text file: keys, deps (and partition mappings), partitions, automation
conditions, freshness policies, checks, schedules and sensors, for the committed audiences file.

An accidental change to the graph fails this test and shows up as a diff of ``asset_graph.snapshot.json`` in
review. After an intended change, regenerate the file and commit it with the change:

    LEXER_UPDATE_SNAPSHOT=1 .venv/bin/pytest lexer_assets_tests/defs/test_asset_graph_snapshot.py
"""

import json
import os
from pathlib import Path
from typing import Any

import dagster as dg

from lexer_assets.definitions import build_definitions
from lexer_assets_tests.conftest import COMMITTED_AUDIENCES, local_settings

SNAPSHOT = Path(__file__).with_name("asset_graph.snapshot.json")


def condition_tree(condition: dg.AutomationCondition | None) -> Any:
    """Labels (or operator names) of an automation condition, nested as the condition is."""
    if condition is None:
        return None
    name = condition.get_label() or condition.name
    children = [condition_tree(c) for c in condition.children]
    return {name: children} if children else name


def freshness(policy: object) -> dict[str, Any] | None:
    if policy is None:
        return None
    out: dict[str, Any] = {"type": type(policy).__name__}
    for attr in ("fail_window", "warn_window", "deadline_cron", "lower_bound_delta", "timezone"):
        value = getattr(policy, attr, None)
        if value is not None:
            out[attr] = str(value.to_timedelta()) if hasattr(value, "to_timedelta") else str(value)
    return out


def graph_snapshot(defs: dg.Definitions) -> dict[str, Any]:
    graph = defs.resolve_asset_graph()
    assets = {}
    conditions: dict[str, Any] = {}  # each distinct condition once, by its label; assets name the label

    def condition_name(condition: dg.AutomationCondition | None) -> str | None:
        if condition is None:
            return None
        tree = condition_tree(condition)
        name = condition.get_label() or condition.name
        while name in conditions and conditions[name] != tree:
            name += "'"
        conditions[name] = tree
        return name

    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        partitions = node.partitions_def
        deps = {}
        for parent in sorted(node.parent_keys, key=lambda k: k.to_user_string()):
            # a partition mapping only means something when one side is partitioned
            either = partitions is not None or graph.get(parent).partitions_def is not None
            deps[parent.to_user_string()] = type(graph.get_partition_mapping(key, parent)).__name__ if either else None
        assets[key.to_user_string()] = {
            "group": node.group_name,
            "kinds": sorted(node.kinds),
            "deps": deps,
            "partitions": None if partitions is None else {
                "type": type(partitions).__name__,
                "cron": getattr(partitions, "cron_schedule", None),
                "start": str(partitions.start.date()) if hasattr(partitions, "start") else None,
                "end_offset": getattr(partitions, "end_offset", None),
            },
            "automation_condition": condition_name(node.automation_condition),
            "freshness_policy": freshness(node.freshness_policy),
            "checks": {c.name: {"blocking": graph.get(c).blocking}
                       for c in sorted(graph.get_check_keys_for_assets({key}), key=lambda c: c.name)},
        }
    return {
        "assets": assets,
        "automation_conditions": conditions,
        "jobs": sorted(j.name for j in defs.jobs if not j.name.startswith("__")),
        "schedules": {s.name: {"cron": s.cron_schedule, "default_status": s.default_status.value}
                      for s in sorted(defs.schedules, key=lambda s: s.name)},
        "sensors": {s.name: {"type": type(s).__name__, "default_status": s.default_status.value}
                    for s in sorted(defs.sensors, key=lambda s: s.name)},
    }


def test_asset_graph_matches_the_committed_snapshot(tmp_path: Path) -> None:
    settings = local_settings(tmp_path, LEXER_AUDIENCES_FILE=str(COMMITTED_AUDIENCES))
    current = json.dumps(graph_snapshot(build_definitions(settings)), indent=2, sort_keys=True) + "\n"
    if os.environ.get("LEXER_UPDATE_SNAPSHOT") == "1":
        SNAPSHOT.write_text(current)
    assert SNAPSHOT.exists(), "no snapshot yet: run with LEXER_UPDATE_SNAPSHOT=1 (see this file's docstring)"
    assert current == SNAPSHOT.read_text(), (
        "the asset graph changed; if intended, regenerate the snapshot with LEXER_UPDATE_SNAPSHOT=1 .venv/bin/"
        "pytest lexer_assets_tests/defs/test_asset_graph_snapshot.py and commit it")


def test_snapshot_has_what_the_readme_promises() -> None:
    """Hand-written expectations on the committed snapshot, so a wrong regeneration is caught too."""
    snap = json.loads(SNAPSHOT.read_text())
    assets = snap["assets"]
    chain = ["braze/users", "lexer/customer_profiles", "braze/audience_sync"]
    audiences = [k for k in assets if k.startswith("audiences/")]
    assert set(assets) == {"braze/export_request", "braze/segment_export", "commerce/orders", *chain, *audiences}
    assert assets["braze/segment_export"]["deps"] == {"braze/export_request": None}
    assert set(assets["lexer/customer_profiles"]["deps"]) == {"braze/users", "commerce/orders"}
    assert set(assets["braze/audience_sync"]["deps"].values()) == {"LastPartitionMapping"}
    for key in audiences:
        assert assets[key]["partitions"]["type"] == "DailyPartitionsDefinition"
        assert assets[key]["partitions"]["cron"] == "0 0 * * *"
    for key in ("braze/export_request", "braze/segment_export", "commerce/orders"):
        assert assets[key]["automation_condition"] is None  # started by the schedule / landing sensors
    for key in [*chain, *audiences]:
        assert assets[key]["automation_condition"] is not None
    assert all(a["freshness_policy"] for a in assets.values())
    assert assets["braze/users"]["checks"]["unique_customer_ids"] == {"blocking": True}
    assert snap["sensors"]["lexer_automation"] == {"type": "AutomationConditionSensorDefinition",
                                                   "default_status": "RUNNING"}
