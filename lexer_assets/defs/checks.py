"""Asset checks on the data: what a data engineer looks at before trusting a table.

Each check is a plain function over a DuckDB connection returning a ``CheckOutcome`` (tests call them
directly); ``build_checks`` wraps them as Dagster asset checks that read the working file through the
``warehouse`` resource. Blocking checks (on braze/users and lexer/customer_profiles) stop everything downstream
in the same run, and declarative automation does not start downstream assets while they are failing.
"""


from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import dagster as dg
import duckdb

from lexer_assets.audiences.spec import Audience
from lexer_assets.defs.policies import DUCKDB_WRITER_POOL
from lexer_assets.defs.resources import BrazeResource, PipelineResource, WarehouseResource
from lexer_assets.settings import Settings

USERS = dg.AssetKey(["braze", "users"])
PROFILES = dg.AssetKey(["lexer", "customer_profiles"])
SYNC = dg.AssetKey(["braze", "audience_sync"])
# Statuses of sync.braze_sync_log meaning "Braze did not take this change" (see the catalog).
SYNC_FAILED_STATUSES = ("failed", "rejected", "unconfirmed", "parked")


@dataclass(frozen=True)
class CheckOutcome:
    passed: bool
    description: str
    metadata: dict[str, int | float | str] = field(default_factory=dict)

    def result(self, severity: dg.AssetCheckSeverity = dg.AssetCheckSeverity.ERROR) -> dg.AssetCheckResult:
        meta = {k: (dg.MetadataValue.float(v) if isinstance(v, float) else v) for k, v in self.metadata.items()}
        return dg.AssetCheckResult(passed=self.passed, description=self.description, metadata=meta,
                                   severity=severity)


def _one(conn: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> tuple:
    return conn.execute(sql, params or []).fetchall()[0]


def unique_customer_ids(conn: duckdb.DuckDBPyConnection, table: str) -> CheckOutcome:
    """Every customer_id appears once (null ids count as a problem too: they cannot be synced)."""
    rows, distinct, nulls = _one(conn, f"SELECT count(*), count(DISTINCT customer_id), "
                                       f"count(*) FILTER (WHERE customer_id IS NULL) FROM {table}")
    examples = [r[0] for r in conn.execute(
        f"SELECT customer_id FROM {table} WHERE customer_id IS NOT NULL GROUP BY 1 HAVING count(*) > 1 "
        "ORDER BY 1 LIMIT 5").fetchall()]
    duplicated = rows - nulls - distinct
    passed = duplicated == 0 and nulls == 0
    text = (f"{rows:,} rows, every customer_id unique" if passed else
            f"{duplicated:,} extra row(s) share a customer_id, {nulls:,} row(s) without one"
            + (f" (e.g. {', '.join(examples)})" if examples else ""))
    return CheckOutcome(passed, text, {"rows": int(rows), "distinct_customer_ids": int(distinct),
                                       "duplicate_rows": int(duplicated), "null_customer_ids": int(nulls)})


def export_reject_rate(conn: duckdb.DuckDBPyConnection, max_rate: float) -> CheckOutcome:
    """Share of the newest export's lines rejected: rejected / (rejected + users loaded from that export)."""
    prefix = _one(conn, "SELECT any_value(object_prefix) FROM braze.users")[0]
    if prefix is None:
        return CheckOutcome(False, "braze.users is empty: no export has been loaded", {"rate": 0.0})
    loaded = _one(conn, "SELECT count(*) FROM braze.users WHERE object_prefix = ?", [prefix])[0]
    rejected = _one(conn, "SELECT count(*) FROM braze.export_rejects WHERE object_prefix = ?", [prefix])[0]
    rate = rejected / (rejected + loaded) if rejected + loaded else 0.0
    reasons = conn.execute("SELECT reason, count(*) FROM braze.export_rejects WHERE object_prefix = ? "
                           "GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 3", [prefix]).fetchall()
    passed = rate <= max_rate
    text = (f"{rejected:,} of {rejected + loaded:,} export line(s) rejected ({rate:.2%}; limit {max_rate:.2%})"
            + (f"; top reasons: {', '.join(f'{r} ({n})' for r, n in reasons)}" if reasons else ""))
    return CheckOutcome(passed, text, {"object_prefix": prefix, "rejected": int(rejected),
                                       "loaded": int(loaded), "rate": float(rate), "max_rate": float(max_rate)})


def profile_coverage(conn: duckdb.DuckDBPyConnection, min_coverage: float) -> CheckOutcome:
    """Share of the export's users that have a profile row."""
    users, covered = _one(conn, "SELECT count(DISTINCT u.customer_id), count(DISTINCT p.customer_id) "
                                "FROM braze.users u LEFT JOIN lexer.customer_profiles p USING (customer_id)")
    coverage = covered / users if users else 1.0
    missing = [r[0] for r in conn.execute(
        "SELECT u.customer_id FROM braze.users u ANTI JOIN lexer.customer_profiles p USING (customer_id) "
        "ORDER BY 1 LIMIT 5").fetchall()]
    passed = coverage >= min_coverage and users > 0
    text = (f"{covered:,} of {users:,} exported users have a profile ({coverage:.2%}; minimum "
            f"{min_coverage:.2%})" + (f"; missing e.g. {', '.join(missing)}" if missing else ""))
    return CheckOutcome(passed, text, {"exported_users": int(users), "profiled": int(covered),
                                       "coverage": float(coverage), "min_coverage": float(min_coverage)})


def sync_failure_rate(conn: duckdb.DuckDBPyConnection, max_rate: float, run_id: str | None = None
                      ) -> CheckOutcome:
    """Share of the sync run's changes Braze did not take (failed, rejected, unconfirmed, parked).

    A run that sent nothing is judged by the newest run that did, and the text says so."""
    prefix = ""
    if run_id is None or not _one(conn, "SELECT count(*) FROM sync.braze_sync_log WHERE run_id = ?", [run_id])[0]:
        newest = conn.execute("SELECT run_id FROM sync.braze_sync_log GROUP BY 1 ORDER BY max(queued_at) DESC "
                              "LIMIT 1").fetchall()
        if not newest:
            return CheckOutcome(True, "no change has been sent to Braze yet", {"changes": 0, "rate": 0.0})
        if run_id is not None:
            prefix = f"this run sent no change; the newest run that did ({newest[0][0][:8]}): "
        run_id = newest[0][0]
    placeholders = ", ".join("?" for _ in SYNC_FAILED_STATUSES)
    total, failed = _one(conn, f"SELECT count(*), count(*) FILTER (WHERE status IN ({placeholders})) "
                               "FROM sync.braze_sync_log WHERE run_id = ?", [*SYNC_FAILED_STATUSES, run_id])
    rate = failed / total if total else 0.0
    errors = conn.execute(f"SELECT coalesce(error, status), count(*) FROM sync.braze_sync_log WHERE run_id = ? "
                          f"AND status IN ({placeholders}) GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 3",
                          [run_id, *SYNC_FAILED_STATUSES]).fetchall()
    text = (f"{prefix}{failed:,} of {total:,} change(s) not taken by Braze ({rate:.2%}; limit {max_rate:.2%})"
            + (f"; top reasons: {', '.join(f'{e} ({n})' for e, n in errors)}" if errors else ""))
    return CheckOutcome(rate <= max_rate, text, {"run_id": run_id, "changes": int(total), "failed": int(failed),
                                                 "rate": float(rate), "max_rate": float(max_rate)})


# ---- the Dagster layer ------------------------------------------------------------------------------------------

def _sql_check(asset: dg.AssetKey, name: str, doc: str, blocking: bool,
               outcome: Callable[[duckdb.DuckDBPyConnection, dg.AssetCheckExecutionContext], CheckOutcome]
               ) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=asset, name=name, description=doc, blocking=blocking, pool=DUCKDB_WRITER_POOL)
    def _check(context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource) -> dg.AssetCheckResult:
        with warehouse.get().connect() as conn:
            return outcome(conn, context).result()

    return _check


def _verify_check(settings: Settings) -> dg.AssetChecksDefinition:
    sample = settings.automation.verify_sample

    @dg.asset_check(asset=SYNC, name="braze_matches_hub_sample", pool=DUCKDB_WRITER_POOL,
                    description=f"Reads {sample} users (a fixed random sample) back from Braze "
                                "(/users/export/ids) and compares their audience attribute with the hub.")
    def braze_matches_hub_sample(braze: BrazeResource, warehouse: WarehouseResource,
                                 pipeline: PipelineResource) -> dg.AssetCheckResult:
        from lexer_assets.defs.braze_sync import synced_audiences
        from lexer_assets.sync.verify import verify_braze

        report = verify_braze(warehouse.get(), braze.client(), audiences=synced_audiences(pipeline.audiences()),
                              attribute=braze.attribute_name, array_cap=braze.array_cap, sample=sample)
        shown = [f"{m.customer_id}: hub {sorted(m.expected)}, Braze "
                 f"{'no user' if m.braze is None else sorted(m.braze)}" for m in report.mismatches[:5]]
        text = f"{report.checked:,} user(s) read back from Braze, {len(report.mismatches):,} mismatch(es)"
        return CheckOutcome(not report.mismatches, text + ("; " + "; ".join(shown) if shown else ""),
                            {"checked": report.checked, "mismatches": len(report.mismatches)}).result()

    return braze_matches_hub_sample


def build_checks(audiences: Sequence[Audience], settings: Settings) -> list[dg.AssetChecksDefinition]:
    """Every data-quality check of the graph (the sync's safety guard lives with the sync)."""
    auto = settings.automation
    checks = [
        _sql_check(USERS, "unique_customer_ids", "Every customer_id in braze.users appears once (blocking).", True,
                   lambda conn, _ctx: unique_customer_ids(conn, "braze.users")),
        _sql_check(USERS, "export_reject_rate",
                   f"At most {auto.max_export_reject_rate:.2%} of the newest export's lines rejected "
                   "(LEXER_MAX_EXPORT_REJECT_RATE; blocking: a broken export does not reach the profiles).", True,
                   lambda conn, _ctx: export_reject_rate(conn, auto.max_export_reject_rate)),
        _sql_check(PROFILES, "unique_customer_ids",
                   "Every customer_id in lexer.customer_profiles appears once (blocking).", True,
                   lambda conn, _ctx: unique_customer_ids(conn, "lexer.customer_profiles")),
        _sql_check(PROFILES, "export_coverage",
                   f"At least {auto.min_profile_coverage:.2%} of the exported users have a profile row "
                   "(LEXER_MIN_PROFILE_COVERAGE; blocking).", True,
                   lambda conn, _ctx: profile_coverage(conn, auto.min_profile_coverage)),
        _sql_check(SYNC, "failure_rate",
                   f"At most {auto.max_sync_failure_rate:.2%} of the run's changes not taken by Braze "
                   "(LEXER_MAX_SYNC_FAILURE_RATE).", False,
                   lambda conn, ctx: sync_failure_rate(conn, auto.max_sync_failure_rate, ctx.run.run_id)),
    ]
    if auto.verify_sample > 0:
        checks.append(_verify_check(settings))
    return checks
