"""Automation applied in one spot: schedules, sensors, automation conditions and freshness policies."""

from collections.abc import Sequence

import dagster as dg

from lexer_assets.settings import Settings


def schedules(settings: Settings) -> list[dg.ScheduleDefinition]:
    return []


def sensors(settings: Settings) -> list[dg.SensorDefinition]:
    return []


def with_automation(assets: Sequence[dg.AssetsDefinition], settings: Settings) -> list[dg.AssetsDefinition]:
    """Attach automation conditions and freshness policies to the assets (identity for now)."""
    return list(assets)
