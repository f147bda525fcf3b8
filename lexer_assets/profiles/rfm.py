"""RFM scores and the named RFM segment: the rules, as SQL and as documentation from one source.

Scores are quintiles 1-5 among customers with at least one order on or before as_of:

* recency: fewer days since the last order scores higher (5 = most recent);
* frequency: more orders scores higher;
* monetary: more revenue scores higher.

Quintile rule (deterministic, ties never split): ``score = 1 + floor(5 * (r - 1) / n)`` where ``n`` is the
number of purchasers and ``r`` is the customer's SQL ``RANK()`` when purchasers are sorted from worst to best
(customers with equal values share the lowest rank of their group, so equal values always get equal scores).
With many ties (e.g. half of all purchasers bought once) some scores can be unused.

The segment reads the recency score ``R`` and the combined frequency-monetary score
``FM = (F + M + 1) // 2`` (the mean of F and M, halves rounded up) in ``SEGMENT_GRID``.
"""

from __future__ import annotations

SEGMENTS: tuple[str, ...] = (
    "Champions", "Loyal", "Potential loyalist", "New", "Promising", "Needs attention", "About to sleep",
    "At risk", "Can't lose them", "Hibernating", "Lost",
)
NO_PURCHASES = "No purchases"

# SEGMENT_GRID[R][FM - 1]: rows are recency 5 (most recent) .. 1, columns FM 1 .. 5.
SEGMENT_GRID: dict[int, tuple[str, str, str, str, str]] = {
    5: ("New", "Potential loyalist", "Potential loyalist", "Champions", "Champions"),
    4: ("Promising", "Potential loyalist", "Loyal", "Loyal", "Champions"),
    3: ("About to sleep", "Needs attention", "Needs attention", "Loyal", "Loyal"),
    2: ("Hibernating", "Hibernating", "At risk", "At risk", "Can't lose them"),
    1: ("Lost", "Lost", "At risk", "Can't lose them", "Can't lose them"),
}

SEGMENT_MEANINGS: dict[str, str] = {
    "Champions": "bought recently, buy often and spend the most",
    "Loyal": "buy often and spend well, not necessarily very recently",
    "Potential loyalist": "recent customers with a few orders or average spend",
    "New": "bought very recently, only once or for little",
    "Promising": "fairly recent, low frequency and spend",
    "Needs attention": "middling recency, frequency and spend",
    "About to sleep": "middling recency, low frequency and spend: slipping away",
    "At risk": "used to buy often or spend well, not for a while",
    "Can't lose them": "among the best by frequency and spend, but have not bought for a long time",
    "Hibernating": "low recency, low frequency and spend",
    "Lost": "lowest recency, lowest frequency and spend",
}


def fm_score(frequency: int, monetary: int) -> int:
    """The combined frequency-monetary score used by the segment grid: mean of F and M, halves rounded up."""
    return (frequency + monetary + 1) // 2


def segment_for(recency: int | None, frequency: int | None, monetary: int | None) -> str:
    """The named segment for scores 1-5 (``'No purchases'`` when the customer has no scores)."""
    if recency is None or frequency is None or monetary is None:
        return NO_PURCHASES
    return SEGMENT_GRID[recency][fm_score(frequency, monetary) - 1]


def score_ctes_sql(source: str) -> str:
    """CTEs ``rfm_recency(v, score)``, ``rfm_frequency(v, score)``, ``rfm_monetary(v, score)`` over the rows of
    ``source`` (purchasers with last_order_date, orders, revenue): one row per distinct value.

    ``RANK()`` is computed from counts per distinct value (rank = 1 + rows with a smaller value) so only the
    distinct values are sorted, not every customer row: the same result as a window over all rows, far cheaper.
    """
    ctes = []
    for name, column in (("rfm_recency", "last_order_date"), ("rfm_frequency", "orders"),
                         ("rfm_monetary", "revenue")):
        ctes.append(
            f"""{name} AS (
  SELECT v, CAST(1 + (5 * (r - 1)) // n AS INTEGER) AS score FROM (
    SELECT {column} AS v,
           sum(count(*)) OVER (ORDER BY {column}) - count(*) + 1 AS r,
           sum(count(*)) OVER () AS n
    FROM {source} GROUP BY {column}))"""
        )
    return ",\n".join(ctes)


def segment_sql(recency: str, frequency: str, monetary: str) -> str:
    """SQL expression naming the segment from the three score columns (NULL scores -> 'No purchases').

    The grid is a constant list indexed by (R - 1) * 5 + FM: one lookup per row instead of a 25-way CASE.
    """
    names = [SEGMENT_GRID[r][fm - 1] for r in range(1, 6) for fm in range(1, 6)]
    grid = "[" + ", ".join("'" + n.replace("'", "''") + "'" for n in names) + "]"
    fm = f"(({frequency} + {monetary} + 1) // 2)"
    return f"coalesce({grid}[({recency} - 1) * 5 + {fm}], '{NO_PURCHASES}')"


def markdown() -> str:
    """The RFM rules and the segment grid as Markdown for the data dictionary."""
    lines = [
        "Scores are quintiles among customers with at least one order on or before `as_of_date` "
        "(customers without orders have NULL scores and segment `No purchases`).",
        "",
        "- `recency_score`: fewer `days_since_last_order` is better (5 = bought most recently).",
        "- `frequency_score`: more `orders` is better. `monetary_score`: more `revenue` is better.",
        "- Quintile rule: `score = 1 + floor(5 * (r - 1) / n)`, `n` = number of purchasers, `r` = `RANK()` "
        "with purchasers sorted worst to best. Equal values share the lowest rank of their group, so ties "
        "always get the same score and the result never depends on row order; with heavy ties (e.g. every "
        "one-order customer) some scores are skipped.",
        "- Segment: `FM = (frequency_score + monetary_score + 1) // 2` (mean of F and M, halves up), then "
        "look up recency `R` and `FM`:",
        "",
        "| R \\ FM | 1 | 2 | 3 | 4 | 5 |",
        "|---|---|---|---|---|---|",
    ]
    for r, row in SEGMENT_GRID.items():
        lines.append(f"| {r} | " + " | ".join(row) + " |")
    lines += ["", "| segment | meaning |", "|---|---|"]
    lines += [f"| {name} | {SEGMENT_MEANINGS[name]} |" for name in SEGMENTS]
    lines.append(f"| {NO_PURCHASES} | no order on or before as_of_date |")
    return "\n".join(lines)
