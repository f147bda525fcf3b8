"""Asset checks on the data: what a data engineer looks at before trusting a table."""

from collections.abc import Sequence

import dagster as dg

from lexer_assets.audiences.spec import Audience


def build_checks(audiences: Sequence[Audience]) -> list[dg.AssetChecksDefinition]:
    """Every data-quality check of the graph (the sync's safety guard lives with the sync)."""
    return []
