"""Bounds of a plausible order line, shared by the order loader and the settings (no heavy imports here)."""

from datetime import date

DEFAULT_MAX_ORDER_AMOUNT = 1_000_000.0  # LEXER_MAX_ORDER_AMOUNT's default
MAX_ORDER_AMOUNT_LIMIT = 1e12  # amounts are summed as DECIMAL(18, 4): anything near 1e14 cannot be stored
EARLIEST_ORDER_DATE = date(1900, 1, 1)
