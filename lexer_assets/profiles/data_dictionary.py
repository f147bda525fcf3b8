"""Generate docs/data-dictionary.md from the table catalog, the profile rules and the analyst views.

    .venv/bin/python -m lexer_assets.profiles.data_dictionary          # rewrite the file
    .venv/bin/python -m lexer_assets.profiles.data_dictionary --check  # exit 1 when the file is stale

Every column comes from ``lexer_assets.storage.catalog``, so a column cannot exist without a description;
the RFM mapping, the CLV model (with its CDNOW backtest) and the views come from the code that implements
them. A test fails when the committed file differs from what this renders.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lexer_assets.commerce import order_files
from lexer_assets.profiles import build, clv, rfm
from lexer_assets.profiles.views import ANALYST_VIEWS
from lexer_assets.storage.catalog import CUSTOMER_PROFILES, TABLES, Table

DEFAULT_PATH = Path(__file__).resolve().parents[2] / "docs" / "data-dictionary.md"
COMMAND = "python -m lexer_assets.profiles.data_dictionary"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table_section(table: Table) -> list[str]:
    lines = [f"### `{table.name}`", "", f"One row per {table.grain}.", "", "| column | type | meaning |",
             "|---|---|---|"]
    lines += [f"| `{c.name}` | {c.type} | {_cell(c.description)} |" for c in table.columns]
    return lines + [""]


def _profiles_rules() -> list[str]:
    t = build.LifecycleThresholds()
    bands = ", ".join(label for _, label in build.AGE_BANDS) + ", 65+"
    return [
        "## How `lexer.customer_profiles` is computed",
        "",
        "- **One row per Braze user** in `braze.users` (the newest export), alias-only users included. "
        "`customer_id` is the Braze external_id, else `braze:<braze_id>`, else `alias:<label>:<name>`.",
        "- **As of a date.** Every time-dependent column is computed for `as_of_date` (default today; a past "
        "day when an audience partition is backfilled): orders dated after it are ignored, day windows end on "
        "it. Braze engagement comes from the newest export whatever the date (Braze only exports the last 90 "
        "days of messages); its windows are still cut at `as_of_date`.",
        "- **Orders attach to customers** by `commerce.orders.customer_id = external_id`; failing that by "
        "`commerce.orders.email = email_normalized` (when several Braze users share an email, the oldest "
        "profile, then the smallest customer_id). Orders that attach to nobody are left out of every profile "
        "and counted (orders, and distinct order identities) in the build's report.",
        "- **What an order is.** Each line of `commerce.orders` is one order; several orders the same day count "
        "separately; zero-amount orders count (they are purchases); the loader rejects negative amounts, so "
        "refunds are not netted. Revenue sums are exact decimal sums (ties in RFM never depend on float "
        "rounding).",
        f"- **Age** from `dob`: whole years on `as_of_date`; a 29 February birthday is reached on 1 March in "
        f"common years. Null (band `unknown`) when dob is missing, after `as_of_date`, or more than "
        f"{build.MAX_PLAUSIBLE_AGE} years back (placeholder dates). Bands: {bands}.",
        f"- **Country**: trimmed, upper-cased, kept only when it is one of the {len(build.ISO_COUNTRY_CODES)} "
        "assigned ISO 3166-1 alpha-2 codes (list in `lexer_assets/profiles/build.py`); `UK`, `EU`, `XX`, "
        "`USA` become null.",
        f"- **Lifecycle stage** (settings `LEXER_NEW_CUSTOMER_DAYS`={t.new_customer_days}, "
        f"`LEXER_ACTIVE_DAYS`={t.active_days}, `LEXER_LAPSING_DAYS`={t.lapsing_days}), first match wins:",
        "",
        "| stage | rule |",
        "|---|---|",
        "| never purchased | no order on or before as_of_date |",
        f"| new | first order less than new_customer_days ago: `tenure_days < {t.new_customer_days}` |",
        f"| active | `days_since_last_order < {t.active_days}` |",
        f"| lapsing | `days_since_last_order < {t.lapsing_days}` |",
        "| lapsed | otherwise |",
        "",
        "### RFM scores and segments",
        "",
        rfm.markdown(),
        "",
        "### Predicted customer lifetime value (`predicted_clv`)",
        "",
        clv.markdown(),
        "",
        f"- **Engagement**: {build._engagement_sql.__doc__.split(chr(10) + chr(10), 1)[1].strip()}"
        .replace("\n    ", " "),
        "",
    ]


def _orders_section() -> list[str]:
    doc = (order_files.__doc__ or "").split("\n", 2)[2].strip()
    return ["## Order files (`commerce.orders`, `commerce.order_rejects`)", "", doc, ""]


def _views_section() -> list[str]:
    lines = ["## Analyst views", "",
             "Created by `lexer_assets.profiles.views.create_analyst_views`; plain SQL over the tables above.", ""]
    for v in ANALYST_VIEWS:
        lines += [f"### `{v.name}`", "", f"One row per {v.grain}. {v.description}", "",
                  "| column | meaning |", "|---|---|"]
        lines += [f"| `{name}` | {_cell(meaning)} |" for name, meaning in v.columns]
        lines += ["", "```sql", v.example, "```", ""]
    return lines


def render() -> str:
    """The whole data dictionary as Markdown (deterministic: same code, same text)."""
    lines = [
        "# Data dictionary: the profile store",
        "",
        f"Generated by `{COMMAND}` from `lexer_assets/storage/catalog.py` and the code that computes the "
        "profiles; do not edit by hand (a test fails when this file is stale).",
        "",
        "Analysts query the published, read-only copy of the store, e.g. "
        "`duckdb -readonly $LEXER_HOME/store/profile_store.duckdb` or `lexer-assets query`; a run never "
        "writes that file in place (see `lexer_assets/storage/warehouse.py`).",
        "",
        "## Tables",
        "",
    ]
    for table in TABLES:
        lines += _table_section(table)
    lines += _profiles_rules()
    lines += _orders_section()
    lines += _views_section()
    return "\n".join(lines).rstrip() + "\n"


def documented_profile_columns(text: str) -> set[str]:
    """Column names with a non-empty description in the customer_profiles table of a rendered dictionary."""
    section = text.split(f"### `{CUSTOMER_PROFILES.name}`", 1)[1].split("\n### ", 1)[0]
    names = set()
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`") and cells[2]:
            names.add(cells[0].strip("`"))
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write or check docs/data-dictionary.md")
    parser.add_argument("--check", action="store_true", help="exit 1 if the file differs from the catalog")
    parser.add_argument("--path", type=Path, default=DEFAULT_PATH)
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.path.read_text() if args.path.exists() else ""
        if current != text:
            print(f"{args.path} is stale: run `{COMMAND}`", file=sys.stderr)
            return 1
        return 0
    args.path.parent.mkdir(parents=True, exist_ok=True)
    args.path.write_text(text)
    print(f"wrote {args.path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
