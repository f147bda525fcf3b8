"""The analyst contract: every table of the profile store, its columns, types and meaning.

One place: the DDL, the Dagster column schemas and the generated data dictionary (docs/data-dictionary.md)
all come from here, so a column cannot exist without a description.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # DuckDB type
    description: str
    # Storage override (DuckDB ``USING COMPRESSION``); None lets DuckDB choose per segment.
    compression: str | None = None

    @property
    def definition(self) -> str:
        using = f" USING COMPRESSION {self.compression}" if self.compression else ""
        return f"{self.name} {self.type}{using}"


@dataclass(frozen=True)
class Table:
    name: str  # schema.table
    grain: str  # "one row per ..."
    columns: tuple[Column, ...]

    @property
    def schema(self) -> str:
        return self.name.split(".")[0]

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def ddl(self, target: str | None = None, *, replace: bool = False) -> str:
        """CREATE statement for this table, or for ``target`` with the same columns (no schema: a TEMP table)."""
        target = target or self.name
        kind = "TABLE" if "." in target else "TEMP TABLE"
        head = f"CREATE OR REPLACE {kind} {target}" if replace else f"CREATE {kind} IF NOT EXISTS {target}"
        cols = ",\n  ".join(c.definition for c in self.columns)
        return f"{head} (\n  {cols}\n)"

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)


def _cols(*rows: tuple[str, ...]) -> tuple[Column, ...]:
    return tuple(Column(*r) for r in rows)


IDENTITY = (
    ("customer_id", "VARCHAR", "The hub's customer key: the Braze external_id; for users without one "
     "'braze:<braze_id>', else 'alias:<alias_label>:<alias_name>'."),
    ("external_id", "VARCHAR", "Braze external_id (the brand's customer id), null for alias-only users."),
    ("braze_id", "VARCHAR", "Braze's internal user id."),
    ("alias_name", "VARCHAR", "First user alias name, if any."),
    ("alias_label", "VARCHAR", "First user alias label, if any."),
)

EXPORT_REQUESTS = Table(
    "braze.export_requests",
    "segment export requested from Braze",
    _cols(
        ("object_prefix", "VARCHAR", "Braze's object_prefix for the export (names its folder in the bucket)."),
        ("segment_id", "VARCHAR", "Exported segment id."),
        ("requested_at", "TIMESTAMP", "When the request was answered (UTC)."),
        ("fields_to_export", "VARCHAR[]", "Fields asked for."),
        ("output_format", "VARCHAR", "zip or gzip."),
    ),
)

EXPORT_FILES = Table(
    "braze.export_files",
    "export file that landed in the bucket and was copied into the hub's raw storage",
    _cols(
        ("object_prefix", "VARCHAR", "Export the file belongs to."),
        ("export_date", "DATE", "Date folder Braze wrote the export under."),
        ("bucket_key", "VARCHAR", "Object key in the bucket."),
        ("raw_path", "VARCHAR", "Path of the hub's own copy (relative to LEXER_HOME)."),
        ("bytes", "BIGINT", "Size in bytes."),
        ("landed_at", "TIMESTAMP", "When the hub saw the export as complete (UTC)."),
    ),
)

BRAZE_USERS = Table(
    "braze.users",
    "Braze user in the newest export (duplicates collapsed)",
    _cols(
        *IDENTITY,
        ("user_aliases", "JSON", "All user aliases as exported (always a JSON list)."),
        ("created_at", "TIMESTAMP", "When the Braze profile was created (UTC); both Braze formats parsed."),
        ("first_name", "VARCHAR", "First name."),
        ("last_name", "VARCHAR", "Last name."),
        ("email", "VARCHAR", "Email as exported."),
        ("email_normalized", "VARCHAR", "Email trimmed and lower-cased (used to match orders)."),
        ("phone", "VARCHAR", "Phone as exported."),
        ("dob", "DATE", "Date of birth; null when missing or not a real date."),
        ("gender", "VARCHAR", "M, F, O, N or P as Braze exports it."),
        ("country", "VARCHAR", "ISO-3166 alpha-2 country code as exported."),
        ("home_city", "VARCHAR", "Home city."),
        ("language", "VARCHAR", "Language code."),
        ("time_zone", "VARCHAR", "IANA time zone."),
        ("total_revenue", "DOUBLE", "Braze's all-time total revenue for the user."),
        ("random_bucket", "INTEGER", "Braze random bucket number (0-9999)."),
        ("email_subscribe", "VARCHAR", "opted_in, subscribed or unsubscribed."),
        ("push_subscribe", "VARCHAR", "opted_in, subscribed or unsubscribed."),
        ("custom_attributes", "JSON", "All custom attributes as a JSON object (values keep their JSON type)."),
        ("custom_events", "JSON", "Custom events [{name, first, last, count}]."),
        ("purchases", "JSON", "Purchases [{name, first, last, count}]."),
        ("campaigns_received", "JSON", "Campaigns received in the last 90 days, with engagement."),
        ("canvases_received", "JSON", "Canvases received in the last 90 days."),
        ("object_prefix", "VARCHAR", "Export this row was loaded from."),
        ("export_file", "VARCHAR", "File (and zip member) the row came from."),
        ("export_line", "BIGINT", "1-based line number inside that file/member."),
    ),
)

EXPORT_REJECTS = Table(
    "braze.export_rejects",
    "export line that could not be loaded",
    _cols(
        ("object_prefix", "VARCHAR", "Export the line belongs to."),
        ("export_file", "VARCHAR", "File (and zip member) holding the line."),
        ("export_line", "BIGINT", "1-based line number."),
        ("reason", "VARCHAR", "Why it was rejected: invalid JSON, not a JSON object, no identifier, line too "
         "long, invalid UTF-8, or empty file (a file with no line at all; export_line 0)."),
        ("raw_line", "VARCHAR", "The first 1,000 characters of the line."),
    ),
)

ORDERS = Table(
    "commerce.orders",
    "order line from the brand's order files",
    _cols(
        ("order_id", "VARCHAR", "Order id from the file; for files without one, '<file>:<line>'."),
        ("customer_id", "VARCHAR", "The brand's customer id (matches Braze external_id); may be null."),
        ("email", "VARCHAR", "Customer email, trimmed and lower-cased; may be null."),
        ("order_date", "DATE", "Order date (after any documented date shift of the import)."),
        ("units", "INTEGER", "Number of items."),
        ("amount", "DOUBLE", "Order value in the brand's currency."),
        ("source_file", "VARCHAR", "Order file the line came from."),
        ("source_line", "BIGINT", "1-based line number in that file."),
    ),
)

ORDER_REJECTS = Table(
    "commerce.order_rejects",
    "order file line that could not be loaded",
    _cols(
        ("source_file", "VARCHAR", "Order file."),
        ("source_line", "BIGINT", "1-based line number."),
        ("reason", "VARCHAR", "Why it was rejected."),
        ("raw_line", "VARCHAR", "The first 1,000 characters of the line."),
    ),
)

# Identifiers unique per customer gain little from DuckDB's dictionary compression, and compressing them was
# about a fifth of the profile build's write time: stored plain (~35 MB more per million customers).
_PLAIN = "uncompressed"

CUSTOMER_PROFILES = Table(
    "lexer.customer_profiles",
    "customer (Braze user in the newest export), enriched as of as_of_date",
    _cols(
        *((*row, _PLAIN) if row[0] in ("customer_id", "external_id", "braze_id") else row for row in IDENTITY),
        ("email", "VARCHAR", "Email, trimmed and lower-cased (braze.users.email_normalized).", _PLAIN),
        ("first_name", "VARCHAR", "First name."),
        ("last_name", "VARCHAR", "Last name."),
        ("dob", "DATE", "Date of birth as exported (null when missing or not a real date)."),
        ("age", "INTEGER",
         "Whole years on as_of_date; a 29 February birthday is reached on 1 March in common years. Null "
         "when dob is missing, after as_of_date, or more than 120 years before it."),
        ("age_band", "VARCHAR",
         "under 18, 18-24, 25-34, 35-44, 45-54, 55-64, 65+, or unknown when age is null."),
        ("gender", "VARCHAR", "M, F, O, N or P (upper-cased); null for anything else."),
        ("country", "VARCHAR",
         "ISO 3166-1 alpha-2 country code, trimmed and upper-cased; null when not one of the 249 assigned "
         "codes (e.g. 'UK' is null: the code is GB)."),
        ("home_city", "VARCHAR", "Home city."),
        ("language", "VARCHAR", "Language code."),
        ("time_zone", "VARCHAR", "IANA time zone."),
        ("email_subscribe", "VARCHAR", "Email subscription state: opted_in, subscribed or unsubscribed."),
        ("push_subscribe", "VARCHAR", "Push subscription state: opted_in, subscribed or unsubscribed."),
        ("braze_created_at", "TIMESTAMP", "When the Braze profile was created."),
        ("orders", "INTEGER",
         "Orders attached to the customer dated on or before as_of_date; each order line is an order "
         "(several the same day count separately; zero-amount orders count). 0 when none."),
        ("units", "INTEGER", "Units in those orders (0 when none)."),
        ("revenue", "DOUBLE", "Sum of those orders' amounts (0 when none)."),
        ("average_order_value", "DOUBLE", "revenue / orders; null without orders."),
        ("first_order_date", "DATE", "Date of the first order; null without orders."),
        ("last_order_date", "DATE",
         "Date of the most recent order on or before as_of_date; null without orders."),
        ("days_since_last_order", "INTEGER",
         "as_of_date - last_order_date in days (0 = bought on as_of_date); null without orders."),
        ("tenure_days", "INTEGER", "as_of_date - first_order_date in days; null without orders."),
        ("purchase_frequency", "DOUBLE",
         "Orders per year of tenure: orders * 365 / max(tenure_days, 1); null without orders."),
        ("orders_last_90_days", "INTEGER",
         "Orders dated in the 90 days ending on as_of_date (as_of_date - 89 .. as_of_date); 0 when none."),
        ("revenue_last_365_days", "DOUBLE",
         "Revenue dated in the 365 days ending on as_of_date; 0 when none."),
        ("recency_score", "INTEGER",
         "RFM recency quintile 1-5 among customers with orders (5 = bought most recently; ties share a "
         "score; rule in the data dictionary); null without orders."),
        ("frequency_score", "INTEGER",
         "RFM frequency quintile 1-5 by orders (5 = most); null without orders."),
        ("monetary_score", "INTEGER",
         "RFM monetary quintile 1-5 by revenue (5 = most); null without orders."),
        ("rfm_segment", "VARCHAR",
         "Champions, Loyal, Potential loyalist, New, Promising, Needs attention, About to sleep, At risk, "
         "Can't lose them, Hibernating or Lost (mapping in the data dictionary); No purchases without "
         "orders."),
        ("lifecycle_stage", "VARCHAR",
         "never purchased (no orders); new (tenure_days < LEXER_NEW_CUSTOMER_DAYS, default 30); active "
         "(days_since_last_order < LEXER_ACTIVE_DAYS, 90); lapsing (< LEXER_LAPSING_DAYS, 180); else "
         "lapsed."),
        ("predicted_clv", "DOUBLE",
         "Predicted revenue in the 365 days after as_of_date (recency-decay model refitted at each build; "
         "described and backtested in the data dictionary); 0 without orders."),
        ("messages_received_90d", "INTEGER",
         "Braze campaigns (by last_received) and canvases (by last_received_message) received on one of "
         "the 90 days ending on as_of_date."),
        ("email_opens_90d", "INTEGER", "Of those campaigns, the ones with engaged.opened_email true."),
        ("email_clicks_90d", "INTEGER", "Of those campaigns, the ones with engaged.clicked_email true."),
        ("last_engaged_at", "TIMESTAMP",
         "Latest last_received (on or before as_of_date) of a campaign with any engaged flag true; null "
         "when none."),
        ("braze_total_revenue", "DOUBLE", "Braze's own all-time revenue for the user."),
        ("braze_purchase_count", "INTEGER",
         "Sum of the all-time counts in Braze's purchases list (0 when none)."),
        ("braze_custom_event_count", "INTEGER",
         "Sum of the all-time counts in Braze's custom events list (0 when none)."),
        ("custom_attributes", "JSON", "Braze custom attributes as exported (JSON object)."),
        ("as_of_date", "DATE",
         "Reference date every time-dependent value is computed for (orders after it are ignored)."),
    ),
)

AUDIENCE_MEMBERSHIP = Table(
    "lexer.audience_membership",
    "(audience, snapshot date, customer); member lists are kept for the last LEXER_MEMBERSHIP_RETENTION_DAYS "
    "(default 35) days of each audience, counted back from its newest day, and for the day the sync reads",
    _cols(
        ("audience_slug", "VARCHAR", "Stable audience id (asset key audiences/<slug>)."),
        ("audience_name", "VARCHAR", "Audience name (the value written to Braze)."),
        ("snapshot_date", "DATE", "Partition date: membership as of that day."),
        ("customer_id", "VARCHAR", "Member."),
    ),
)

AUDIENCE_HISTORY = Table(
    "lexer.audience_history",
    "(audience, snapshot date)",
    _cols(
        ("audience_slug", "VARCHAR", "Stable audience id."),
        ("audience_name", "VARCHAR", "Audience name."),
        ("snapshot_date", "DATE", "Partition date."),
        ("size", "BIGINT", "Members on that day."),
        ("entered", "BIGINT", "Members not in the previous stored day's snapshot (null when that day's member "
         "list is no longer kept: LEXER_MEMBERSHIP_RETENTION_DAYS)."),
        ("exited", "BIGINT", "Previous stored day's members no longer in (null likewise)."),
        ("object_prefix", "VARCHAR", "Braze export the snapshot attributes came from."),
        ("materialized_at", "TIMESTAMP", "When the partition was computed (UTC)."),
    ),
)

ATTRIBUTE_STATE = Table(
    "sync.braze_attribute_state",
    "(customer, attribute value) as Braze has confirmed it",
    _cols(
        ("customer_id", "VARCHAR", "Customer."),
        ("attribute", "VARCHAR", "Braze custom attribute name (default lexer_audience)."),
        ("value", "VARCHAR", "Value Braze holds in that array attribute."),
        ("confirmed_at", "TIMESTAMP", "When Braze acknowledged it (UTC), or when it was read from an export."),
        ("run_id", "VARCHAR", "Dagster run that confirmed it ('export' when seeded from a Braze export)."),
    ),
)

SYNC_LOG = Table(
    "sync.braze_sync_log",
    "change sent (or to be sent) to Braze",
    _cols(
        ("run_id", "VARCHAR", "Dagster run id."),
        ("customer_id", "VARCHAR", "Customer."),
        ("attribute", "VARCHAR", "Braze attribute name."),
        ("op", "VARCHAR", "add or remove."),
        ("value", "VARCHAR", "Audience name added or removed."),
        ("batch", "INTEGER", "Request number within the run."),
        ("status", "VARCHAR", "pending (computed, not sent yet), sending (in a request whose answer is not "
         "recorded yet), unconfirmed (sent, no answer after retries), done (Braze acknowledged it), failed "
         "(Braze refused it), rejected (not sendable, never sent), parked (refused in too many runs; not "
         "retried), superseded (a later run recomputed it), released (a parked change put back by an operator)."),
        ("error", "VARCHAR", "Braze's reason or the local reason."),
        ("queued_at", "TIMESTAMP", "When the change was computed (UTC)."),
        ("finished_at", "TIMESTAMP", "When its outcome was recorded (UTC)."),
    ),
)

SYNC_RUNS = Table(
    "sync.braze_sync_runs",
    "(sync run, audience) report",
    _cols(
        ("run_id", "VARCHAR", "Dagster run id."),
        ("audience_name", "VARCHAR", "Audience value."),
        ("snapshot_date", "DATE", "Partition the desired state came from."),
        ("members", "BIGINT", "Members in that partition."),
        ("adds", "BIGINT", "Add changes computed."),
        ("removes", "BIGINT", "Remove changes computed."),
        ("sent", "BIGINT", "Changes Braze acknowledged."),
        ("failed", "BIGINT", "Changes Braze rejected or that stayed pending."),
        ("finished_at", "TIMESTAMP", "When the run finished (UTC)."),
        ("audience_slug", "VARCHAR",
         "The audience's slug (null for a value no audience produces any more, being removed)."),
    ),
)

SYNC_REPORTS = Table(
    "sync.braze_sync_reports",
    "sync run (dry runs, blocked and failed runs included): the confirmation report",
    _cols(
        ("run_id", "VARCHAR", "Dagster run id."),
        ("attribute", "VARCHAR", "Braze attribute name."),
        ("kind", "VARCHAR", "sync or dry_run."),
        ("status", "VARCHAR", "succeeded (everything confirmed), partial (some changes failed or stay "
         "pending; retried next run), blocked (the safety guard stopped it), failed (an error stopped it)."),
        ("shard", "VARCHAR", "'all' or '<n>/<shards>' (1-based) when the sync ran as shards."),
        ("started_at", "TIMESTAMP", "When the run started (UTC)."),
        ("finished_at", "TIMESTAMP", "When the run finished (UTC)."),
        ("customers_changed", "BIGINT", "Customers with at least one change (one /users/track object each)."),
        ("adds", "BIGINT", "Values to add."),
        ("removes", "BIGINT", "Values to remove."),
        ("confirmed", "BIGINT", "Objects Braze acknowledged."),
        ("failed", "BIGINT", "Objects Braze refused (retried next run, parked after too many runs)."),
        ("pending", "BIGINT", "Objects never confirmed (transient errors); retried next run."),
        ("parked", "BIGINT", "Changes left out because Braze refused them in too many runs."),
        ("reconciled", "BIGINT", "Customers whose in-flight changes of an interrupted run were read back from Braze."),
        ("capped_customers", "BIGINT", "Customers in more audiences than the array cap."),
        ("held_back", "JSON", "Values held back by the array cap: {audience name: customers}."),
        ("requests", "BIGINT", "/users/track requests (sent, or that a dry run would take)."),
        ("guard", "VARCHAR", "The safety guard's verdict (why it blocked, or that the run was approved)."),
        ("audiences", "JSON", "Per audience: snapshot, members, adds, removes, customers, requests, sent, failed."),
        ("notified", "VARCHAR", "Where the confirmation went (email, webhook) and any delivery error."),
        ("error", "VARCHAR", "Why a failed run stopped."),
    ),
)

TABLES: tuple[Table, ...] = (
    EXPORT_REQUESTS, EXPORT_FILES, BRAZE_USERS, EXPORT_REJECTS, ORDERS, ORDER_REJECTS, CUSTOMER_PROFILES,
    AUDIENCE_MEMBERSHIP, AUDIENCE_HISTORY, ATTRIBUTE_STATE, SYNC_LOG, SYNC_RUNS, SYNC_REPORTS,
)
SCHEMAS: tuple[str, ...] = tuple(dict.fromkeys(t.schema for t in TABLES))
