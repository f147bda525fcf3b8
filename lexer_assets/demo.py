"""`lexer-assets demo`: the whole loop on the local profile, with inputs prepared if missing.

Inputs: a Braze population seeded into the local emulator and an order file in ``$LEXER_HOME/commerce/orders``.
By default both come from the deterministic synthetic generator; with ``--orders FILE`` (e.g. the real CDNOW
history) the file's customers become Braze users (their ids as ``external_id``) and its dates are shifted by a
whole number of days so the newest order falls on yesterday (the shift is recorded in ``_import.json`` and shown
as metadata on commerce/orders).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg

from lexer_assets.braze.emulator import EmulatorState
from lexer_assets.commerce.order_files import auto_shift_days, load_orders
from lexer_assets.defs.commerce import IMPORT_MANIFEST
from lexer_assets.population import braze_users_for_customers, synthetic_population, write_orders_csv
from lexer_assets.settings import LOCAL_EMULATOR_KEY, Settings
from lexer_assets.storage.warehouse import Warehouse
from lexer_assets.sync.sync_guard import APPROVE_TAG

if TYPE_CHECKING:
    from dagster._core.execution.plan.objects import StepFailureData

DEMO_MARKER = "demo-inputs.json"
DEFAULT_CUSTOMERS = 20_000


@dataclass(frozen=True)
class DemoInputs:
    source: str  # "synthetic" or the order file's absolute path
    customers: int
    seed: int
    shift_days: int
    prepared_on: str


def _out(msg: str) -> None:
    print(msg, flush=True)


def reset_state(settings: Settings) -> None:
    """Forget every runtime state of the local profile (inputs, emulator, bucket, warehouse, raw copies)."""
    for path in (settings.emulator_dir, settings.bucket.local_root, settings.warehouse_path.parent,
                 settings.published_store_path.parent, settings.raw_exports_dir, settings.orders_dir,
                 settings.home / DEMO_MARKER):
        if path is None or not path.exists():
            continue
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def prepare_inputs(settings: Settings, *, orders_file: Path | None, customers: int, seed: int,
                   reset: bool = False, say: Callable[[str], None] = _out) -> DemoInputs:
    """Seed the emulator and write the order file unless the same inputs are already in place."""
    if settings.profile != "local":
        raise SystemExit("the demo prepares local inputs; it runs on LEXER_PROFILE=local only")
    source = str(orders_file.resolve()) if orders_file else "synthetic"
    customer_ids: list[str] = []
    if orders_file:  # checked before anything is reset: a mistyped path must not cost the previous state
        if not orders_file.is_file():
            raise SystemExit(f"order file not found: {orders_file} (nothing was changed)")
        customer_ids, report = _read_order_file(orders_file)
        if not customer_ids:
            raise SystemExit(f"order file {orders_file} has no order with a customer id (empty, or no line could "
                             "be read: the canonical CSV or the CDNOW format, see the README): nothing was "
                             "changed")
        limit = settings.automation.max_order_reject_rate
        if report.lines and report.rejected / report.lines > limit:
            # commerce/orders would refuse it after the reset, leaving an empty hub: refuse it here instead
            raise SystemExit(f"order file {orders_file}: {report.rejected:,} of {report.lines:,} lines are bad, more "
                             f"than LEXER_MAX_ORDER_REJECT_RATE={limit:.1%} (first: {report.first_reject}): "
                             "nothing was changed")
    marker = settings.home / DEMO_MARKER
    if marker.exists() and not reset:
        existing = DemoInputs(**json.loads(marker.read_text()))
        if existing.source == source and (orders_file or existing.customers == customers) and existing.seed == seed:
            say(f"Using the inputs prepared on {existing.prepared_on} ({_describe(existing)}).")
            return existing
        say("Inputs differ from the previous demo: starting from a clean local state.")
        reset = True
    if reset:
        reset_state(settings)
    settings.orders_dir.mkdir(parents=True, exist_ok=True)
    yesterday = settings.today() - dt.timedelta(days=1)
    started = time.monotonic()
    if orders_file:
        shift = auto_shift_days([orders_file], end_date=yesterday)
        shutil.copyfile(orders_file, settings.orders_dir / orders_file.name)
        users = braze_users_for_customers(customer_ids, seed=seed, as_of=settings.today())
        n = len(customer_ids)
    else:
        shift = 0
        population = synthetic_population(customers, seed=seed, end_date=yesterday)
        write_orders_csv(population.orders, settings.orders_dir / "orders.csv")
        users = population.braze_users
        n = customers
    (settings.orders_dir / IMPORT_MANIFEST).write_text(json.dumps({"shift_days": shift, "source": source}))
    seeded = EmulatorState(settings.emulator_dir).seed(
        users, segment_id=settings.braze.export_segment_id, api_key=LOCAL_EMULATOR_KEY)
    inputs = DemoInputs(source, n, seed, shift, dt.date.today().isoformat())
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(asdict(inputs)))
    say(f"Prepared inputs: {_describe(inputs)}; {seeded:,} Braze users in the emulator "
        f"({time.monotonic() - started:.1f} s).")
    return inputs


def _describe(inputs: DemoInputs) -> str:
    if inputs.source == "synthetic":
        return f"synthetic population of {inputs.customers:,} customers (seed {inputs.seed})"
    return (f"order file {inputs.source} ({inputs.customers:,} customers, dates shifted by "
            f"{inputs.shift_days:,} days)")


@dataclass(frozen=True)
class _FileCheck:
    lines: int
    rejected: int
    first_reject: str  # "line N: reason", or "" when none


def _read_order_file(order_file: Path) -> tuple[list[str], _FileCheck]:
    """Distinct customer ids of an order file and how many of its lines are bad, read with the same reader
    commerce/orders uses."""
    import duckdb

    from lexer_assets.storage.warehouse import ensure_tables

    conn = duckdb.connect()
    try:
        ensure_tables(conn)
        report = load_orders(conn, [order_file])
        ids = [r[0] for r in conn.sql("SELECT DISTINCT customer_id FROM commerce.orders "
                                       "WHERE customer_id IS NOT NULL ORDER BY 1").fetchall()]
        first = conn.sql("SELECT 'line ' || source_line || ': ' || reason FROM commerce.order_rejects "
                         "ORDER BY source_line LIMIT 1").fetchall()
    finally:
        conn.close()
    return ids, _FileCheck(report.lines, report.rejected, first[0][0] if first else "")


class _ProgressHandler(logging.Handler):
    """Prints one line per step start/end and the assets' own info messages; hides Dagster's chatter."""

    def emit(self, record: logging.LogRecord) -> None:
        meta = getattr(record, "dagster_meta", None) or {}
        event = meta.get("dagster_event")
        step = meta.get("step_key") or ""
        if event is None:
            if record.levelno >= logging.INFO and step:
                _out(f"    {meta.get('orig_message', record.getMessage())}")
            return
        kind = event.event_type_value
        if kind == "ASSET_CHECK_EVALUATION":
            check = event.event_specific_data
            if check is not None and not check.passed:
                _out(f"  CHECK FAILED {check.asset_key.to_user_string()} {check.check_name}: {check.description}")
            return
        if kind == "STEP_START":
            _out(f"  > {step.replace('__', '/')}")
        elif kind == "STEP_SUCCESS":
            _out(f"  ok {step.replace('__', '/')}")
        elif kind == "STEP_FAILURE":
            text = failure_text(event.step_failure_data) or meta.get("orig_message")
            _out(f"  FAILED {step.replace('__', '/')}: {text}")


def failure_text(data: StepFailureData | None) -> str | None:
    """What a failed step says: the asset's own Failure description, else its innermost error (Dagster wraps
    the asset's error in its own)."""
    if data is None:
        return None
    if data.user_failure_data is not None and data.user_failure_data.description:
        return data.user_failure_data.description
    err = data.error
    while err is not None and err.cause is not None:
        err = err.cause
    return err.message.strip() if err is not None else None


@dg.logger
def progress_logger(_init_context: dg.InitLoggerContext) -> logging.Logger:
    log = logging.getLogger("lexer_assets.demo")
    log.setLevel(logging.DEBUG)  # step events arrive at DEBUG; the handler picks what to show
    log.handlers = [_ProgressHandler()]
    log.propagate = False
    return log


def local_instance(settings: Settings) -> dg.DagsterInstance:
    """The same Dagster instance `make dev` uses, so demo runs show up in the UI's run history."""
    from lexer_assets.instance import ensure_instance_config

    home = ensure_instance_config(settings)
    return dg.DagsterInstance.from_config(str(home))


DEMO_TAG = "lexer/launched_by"
PID_TAG = "lexer/pid"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def release_dead_runs(instance: dg.DagsterInstance, say: Callable[[str], None] = _out) -> int:
    """Mark in-process runs whose process died (killed demo) as failed and free their DuckDB-writer slots.

    Runs launched by `dagster dev` are left to its daemon's run monitoring; a demo has no daemon, so without
    this a killed demo would hold the writer pool's only slot and every later run would wait forever.
    """
    live = [dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.NOT_STARTED]
    released = 0
    for record in instance.get_run_records(dg.RunsFilter(statuses=live, tags={DEMO_TAG: "lexer-assets"})):
        run = record.dagster_run
        pid = int(run.tags.get(PID_TAG, "0") or 0)
        if pid and not _process_alive(pid):
            instance.report_run_failed(run)
            instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
            say(f"Released run {run.run_id[:8]}: its process ({pid}) died before it finished; "
                "its confirmed changes are kept and the rest is re-planned.")
            released += 1
    return released


def run_loop(settings: Settings, *, partition_key: str | None = None, instance: dg.DagsterInstance | None = None,
             quiet: bool = False, approve_sync: bool = False, sync_only: bool = False) -> dg.ExecuteInProcessResult:
    """Materialise the main job (every asset; today's audience partitions) in this process; ``sync_only``:
    only the Braze sync."""
    from lexer_assets.definitions import MAIN_JOB, SYNC_JOB, build_definitions

    defs = build_definitions(settings, loggers=None if quiet else {"console": progress_logger})
    job = defs.resolve_job_def(SYNC_JOB if sync_only else MAIN_JOB)
    # No partitioned asset at all when the audiences file is broken (a stand-in replaces the audiences).
    partitioned = job.partitions_def is not None
    return job.execute_in_process(
        partition_key=(partition_key or settings.today().isoformat()) if partitioned else None,
        instance=instance or dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
        tags={DEMO_TAG: "lexer-assets", PID_TAG: str(os.getpid()),
              **({APPROVE_TAG: "true"} if approve_sync else {})},
        # Only a run config that names the logger makes the job use the definitions' console logger.
        run_config=None if quiet else {"loggers": {"console": {}}},
    )


def audiences_alone_failed(result: dg.ExecuteInProcessResult) -> bool:
    """Whether the only failed steps of a main-job run are audiences (so the sync was skipped, not refused)."""
    failed = {str(e.step_key) for e in result.all_events if e.is_step_failure}
    # the stand-in for an unreadable audiences file is not an audience: the sync would refuse to run
    return (bool(failed) and all(k.startswith("audiences__") for k in failed)
            and "audiences__audiences_file_invalid" not in failed)


def summary_table(settings: Settings, run_id: str) -> str:
    """Members, entered, exited, sent and failed per audience for the run that just finished."""
    wh = Warehouse(settings.warehouse_path, settings.published_store_path)
    with wh.connect() as conn:
        rows = conn.execute(
            """
            WITH latest AS (SELECT audience_slug, max(snapshot_date) AS d FROM lexer.audience_history GROUP BY 1)
            SELECT h.audience_name, h.snapshot_date, h.size, h.entered, h.exited,
                   coalesce(r.adds, 0), coalesce(r.removes, 0), coalesce(r.sent, 0), coalesce(r.failed, 0)
            FROM lexer.audience_history h JOIN latest l ON l.audience_slug = h.audience_slug AND l.d = h.snapshot_date
            LEFT JOIN sync.braze_sync_runs r ON r.run_id = ? AND r.audience_name = h.audience_name
            ORDER BY h.audience_name
            """, [run_id]).fetchall()
        # values the run removed that no audience produces any more (a renamed audience's old name, a deleted
        # or disabled audience): "(old value)", no partition, but their removals belong in the summary
        gone = conn.execute(
            "SELECT audience_name, adds, removes, sent, failed FROM sync.braze_sync_runs WHERE run_id = ? "
            "AND audience_name NOT IN (SELECT unnest(?::VARCHAR[])) ORDER BY audience_name",
            [run_id, [r[0] for r in rows]]).fetchall()
    # adds/removes: changes the diff found; sent: changes Braze confirmed; failed: rejected or still pending
    header = ("audience", "day", "members", "entered", "exited", "adds", "removes", "sent", "failed")
    # entered/exited are NULL when the previous day's member list is no longer kept (retention)
    table = [header, *[(str(r[0]), str(r[1]), *("?" if v is None else f"{int(v):,}" for v in r[2:]))
                       for r in rows],
             *[(str(r[0]), "(old value)", "-", "-", "-", *(f"{int(v or 0):,}" for v in r[1:])) for r in gone]]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(widths[i]) if i < 2 else cell.rjust(widths[i]) for i, cell in enumerate(row))
             for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run_demo(settings: Settings, *, orders_file: Path | None, customers: int, seed: int, reset: bool,
             approve_sync: bool = False) -> int:
    started = time.monotonic()
    _out(f"lexer-assets demo: LEXER_HOME={settings.home}")
    prepare_inputs(settings, orders_file=orders_file, customers=customers, seed=seed, reset=reset)
    _out(f"Running job on partition {settings.today().isoformat()}:")
    instance = local_instance(settings)
    release_dead_runs(instance)
    result = run_loop(settings, instance=instance, approve_sync=approve_sync)
    _out("")
    if not result.success:
        if audiences_alone_failed(result):
            # As automation does under `make dev`: the audiences that were computed still reach Braze; the
            # failed ones keep their values (the sync reads each audience's newest stored day).
            _out("Only audiences failed: syncing the others now (the failed ones keep their Braze values):")
            synced = run_loop(settings, instance=instance, approve_sync=approve_sync, sync_only=True)
            _out("")
            if synced.success:
                _out(summary_table(settings, synced.run_id))
                _out("")
        _out("The run failed (see the FAILED lines above). Nothing was lost: fix the cause and run again"
             " (a sync the guard blocked on purpose: `lexer-assets demo --approve-sync`).")
        return 1
    _out(summary_table(settings, result.run_id))
    _out("")
    _out(f"Finished in {time.monotonic() - started:.1f} s.")
    _out(f"Profile store (read-only copy for analysts): {settings.published_store_path}")
    _out("  query it:   .venv/bin/lexer-assets query \"SELECT lifecycle_stage, count(*) FROM "
         "lexer.customer_profiles GROUP BY 1\"")
    _out("  check Braze: .venv/bin/lexer-assets verify")
    _out("  open the UI: make dev   (then http://127.0.0.1:3000)")
    return 0

