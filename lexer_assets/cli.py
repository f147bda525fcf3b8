"""`lexer-assets`: demo, query, verify, doctor, dev, emulator, audiences."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from lexer_assets.settings import Settings, SettingsError

if TYPE_CHECKING:
    import duckdb


# Variables only the parts that talk to Braze or S3 need.
_SERVICE_VARIABLES = ("BRAZE_", "LEXER_S3_", "AWS_")


def _settings(*, local_only: bool = False) -> Settings:
    """The settings, or exit naming the variable that is wrong.

    ``local_only``: the command reads only local files (the analysts' store, the audiences file). Under
    LEXER_PROFILE=prod it then works without the Braze and S3 variables: an analyst querying the store should
    not have to hold the Braze key.
    """
    try:
        return Settings.from_env()
    except SettingsError as exc:
        if not (local_only and os.environ.get("LEXER_PROFILE") == "prod"):
            raise SystemExit(f"configuration error: {exc}") from None
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SERVICE_VARIABLES)}
    try:
        return Settings.from_env({**env, "LEXER_PROFILE": "local"})
    except SettingsError as exc:
        raise SystemExit(f"configuration error: {exc}") from None


def _whole_number(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low:,} and {high:,}, got {value:,}")
        return value
    return parse


def _open_store(settings: Settings) -> duckdb.DuckDBPyConnection | None:
    """A read-only session on the analysts' published store, or None (reason printed) when there is none yet."""
    import duckdb

    from lexer_assets.storage.warehouse import Warehouse

    try:
        return Warehouse(settings.warehouse_path, settings.published_store_path).read_only()
    except FileNotFoundError as exc:
        print(exc, file=sys.stderr)
        return None
    except duckdb.Error as exc:
        print(f"cannot open the profile store {settings.published_store_path}: {exc}\nThe next run that "
              "publishes replaces it; open the store read-only so this cannot happen again.", file=sys.stderr)
        return None


def cmd_demo(args: argparse.Namespace) -> int:
    from lexer_assets.demo import run_demo

    return run_demo(_settings(), orders_file=Path(args.orders) if args.orders else None,
                    customers=args.customers, seed=args.seed, reset=args.reset, approve_sync=args.approve_sync)


def cmd_query(args: argparse.Namespace) -> int:
    """Run SQL read-only against the published profile store and print a table."""
    import duckdb


    if not args.sql.strip():
        print("no SQL given: lexer-assets query \"SELECT ...\"", file=sys.stderr)
        return 2
    settings = _settings(local_only=True)
    conn = _open_store(settings)
    if conn is None:
        return 1
    # Read the store, nothing else: no COPY ... TO files, no reading arbitrary files through SQL.
    conn.execute("SET enable_external_access = false")
    try:
        rel = conn.sql(args.sql)
        if rel is None:
            return 0
        names = rel.columns
        rows = rel.limit(args.limit + 1).fetchall()
    except duckdb.Error as exc:
        print(f"query failed: {exc}", file=sys.stderr)
        return 1
    finally:
        conn.close()
    shown = rows[: args.limit]
    cells = [names, *[["NULL" if v is None else str(v) for v in row] for row in shown]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(names))]
    for i, row in enumerate(cells):
        print("  ".join(c.ljust(widths[j]) for j, c in enumerate(row)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    if len(rows) > args.limit:
        print(f"... (more than {args.limit} rows; use --limit)")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from lexer_assets.defs.braze_sync import synced_audiences
    from lexer_assets.defs.resources import resources_for
    from lexer_assets.storage.warehouse import Warehouse
    from lexer_assets.sync.verify import verify_braze

    settings = _settings()
    res = resources_for(settings)
    braze = res["braze"]
    if settings.profile == "prod":
        braze = braze.model_copy(update={"api_key": settings.braze.api_key.get()})
    audiences = synced_audiences(res["pipeline"].audiences())
    warehouse = Warehouse(settings.warehouse_path, settings.published_store_path)
    report = verify_braze(warehouse, braze.client(), audiences=audiences,
                          attribute=settings.braze.attribute_name, array_cap=settings.braze.array_cap)
    for m in report.mismatches[: args.show]:
        held = "not in Braze" if m.braze is None else sorted(m.braze)
        print(f"MISMATCH {m.customer_id}: hub says {sorted(m.expected)}, Braze holds {held}")
    print(f"verify: checked {report.checked:,} users; {len(report.mismatches):,} mismatch(es)")
    return 1 if report.mismatches else 0


def cmd_doctor(args: argparse.Namespace) -> int:
    """Check the configuration end to end (Braze endpoint, key, permissions, segment; bucket) read-only."""
    from lexer_assets.doctor import header, run_doctor

    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print("  FAIL  settings  " + str(exc))
        print("        fix: see .env.example and docs/production.md for every variable")
        print("doctor: 1 problem(s) found")
        return 1
    print(header(settings))
    report = run_doctor(settings, timeout_s=args.timeout)
    print("\n".join(report.lines()))
    return report.exit_code


def cmd_dev(args: argparse.Namespace) -> int:
    from lexer_assets.instance import ensure_instance_config

    settings = _settings()
    home = ensure_instance_config(settings)
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    repo = Path(__file__).resolve().parent.parent
    cmd = [str(Path(sys.executable).with_name("dagster")), "dev", "-w", str(repo / "workspace.yaml"),
           "-p", str(args.port), "-h", args.host]
    print(f"Dagster UI on http://{args.host}:{args.port} (DAGSTER_HOME={home})", flush=True)
    os.chdir(repo)
    os.execve(cmd[0], cmd, env)  # become `dagster dev`, so Ctrl-C and SIGTERM reach it and its children
    return 0


def cmd_emulator_serve(args: argparse.Namespace) -> int:
    from lexer_assets.braze.emulator import EmulatorConfig, serve

    settings = _settings()
    state_dir = Path(args.state_dir) if args.state_dir else settings.emulator_dir
    config = EmulatorConfig(bucket_root=settings.bucket.local_root, bucket_path_prefix=settings.bucket.path_prefix)
    print(f"Braze emulator on http://{args.host}:{args.port} (state in {state_dir})", flush=True)
    serve(state_dir, host=args.host, port=args.port, config=config)
    return 0


def cmd_audiences_validate(args: argparse.Namespace) -> int:
    from lexer_assets.audiences.snapshots import PROFILE_COLUMNS
    from lexer_assets.audiences.spec import AudienceError, validate_all

    settings = _settings(local_only=True)
    path = Path(args.file) if args.file else settings.audiences_file
    try:
        problems = validate_all(path, PROFILE_COLUMNS)
    except AudienceError as exc:
        problems = exc.problems
    for problem in problems:
        print(problem)
    print(f"{path}: {len(problems)} problem(s)")
    return 1 if problems else 0


def cmd_audiences_preview(args: argparse.Namespace) -> int:
    """Size and a sample of one audience as of a day, on the published store (read-only; never waits on a run)."""
    import datetime as dt

    from lexer_assets.audiences.rules import compile_audience, describe_rules, preview
    from lexer_assets.audiences.snapshots import ORDERS_REL, PROFILE_COLUMNS, PROFILES_REL, prepare_day, uses_orders
    from lexer_assets.audiences.spec import AudienceError, find_audience, load_audiences
    from lexer_assets.profiles.build import LifecycleThresholds

    settings = _settings(local_only=True)
    try:
        audiences = load_audiences(settings.audiences_file)
        audience = find_audience(audiences, args.name)
    except (AudienceError, KeyError) as exc:
        print(str(exc).strip("'\""), file=sys.stderr)
        return 1
    conn = _open_store(settings)
    if conn is None:
        return 1
    try:
        stored = conn.sql("SELECT max(as_of_date) FROM lexer.customer_profiles").fetchall()[0][0]
        as_of = dt.date.fromisoformat(args.as_of) if args.as_of else stored or settings.today()
        compiled = compile_audience(audience, audiences, PROFILE_COLUMNS, profiles=PROFILES_REL,
                                    orders=ORDERS_REL, as_of=as_of)
        # A past day rebuilds profiles as of that day in this session's temp space (stored export only).
        thresholds = LifecycleThresholds(settings.new_customer_days, settings.active_days, settings.lapsing_days)
        prepare_day(conn, as_of, thresholds, with_orders=uses_orders(compiled))
        result = preview(conn, compiled, sample_size=args.sample)
    except AudienceError as exc:
        print(exc, file=sys.stderr)
        return 1
    finally:
        conn.close()
    print(f"{audience.name} ({audience.slug}): {result.size:,} members as of {as_of}")
    print(f"rules: {describe_rules(audience.rules)}")
    for customer_id in result.sample:
        print(f"  {customer_id}")
    return 0


def cmd_audiences_backfill(args: argparse.Namespace) -> int:
    """Recompute audience partitions over a date range in one run, recorded in the local Dagster instance."""
    import datetime as dt

    from lexer_assets.audiences.spec import AudienceError
    from lexer_assets.defs.audiences import backfill_audiences
    from lexer_assets.demo import failure_text, local_instance

    settings = _settings()
    try:
        first, last = dt.date.fromisoformat(args.start), dt.date.fromisoformat(args.end)
    except ValueError as exc:
        print(f"dates must be YYYY-MM-DD: {exc}", file=sys.stderr)
        return 2
    if last > settings.today():
        print(f"the range ends after today ({settings.today()}): audiences cannot be computed for future days",
              file=sys.stderr)
        return 2
    if last < first or first < settings.partitions_start:
        print(f"the range must run forwards from on or after LEXER_PARTITIONS_START ({settings.partitions_start})",
              file=sys.stderr)
        return 2
    try:
        result = backfill_audiences(settings, first, last, args.names, instance=local_instance(settings))
    except (AudienceError, KeyError) as exc:
        print(str(exc).strip("'\""), file=sys.stderr)
        return 1
    for event in result.all_events:
        if event.is_step_failure:
            print(f"FAILED {event.step_key.replace('__', '/')}: {failure_text(event.step_failure_data)}",
                  file=sys.stderr)
    done = sorted(e.step_key for e in result.all_events if e.is_step_success and e.step_key.startswith("audiences__"))
    days = (last - first).days + 1
    print(f"backfill {first}...{last} (run {result.run_id}): {len(done)} audience(s) x {days} day(s) computed")
    return 0 if result.success else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lexer-assets", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the whole loop on the local profile")
    demo.add_argument("--orders", help="a real order file (e.g. CDNOW_master.txt) instead of synthetic data")
    demo.add_argument("--customers", type=int, default=20_000, help="synthetic population size")
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--reset", action="store_true", help="start from a clean local state")
    demo.add_argument("--approve-sync", action="store_true",
                      help="approve a sync the safety guard blocked (run tag lexer/approve_sync=true)")
    demo.set_defaults(func=cmd_demo)

    query = sub.add_parser("query", help="run SQL read-only on the profile store")
    query.add_argument("sql")
    query.add_argument("--limit", type=_whole_number(1, 1_000_000_000), default=50, help="rows to print (default 50)")
    query.set_defaults(func=cmd_query)

    verify = sub.add_parser("verify", help="compare what Braze holds with what the hub says")
    verify.add_argument("--show", type=int, default=20, help="mismatches to print")
    verify.set_defaults(func=cmd_verify)

    doctor = sub.add_parser("doctor", help="check Braze and bucket settings end to end (changes nothing)")
    doctor.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    doctor.set_defaults(func=cmd_doctor)

    dev = sub.add_parser("dev", help="open the Dagster UI on these definitions")
    dev.add_argument("--port", type=_whole_number(1, 65535), default=3000)
    dev.add_argument("--host", default="127.0.0.1")
    dev.set_defaults(func=cmd_dev)

    emulator = sub.add_parser("emulator", help="the local Braze emulator")
    emulator_sub = emulator.add_subparsers(dest="emulator_command", required=True)
    serve = emulator_sub.add_parser("serve", help="serve the Braze REST API over HTTP")
    serve.add_argument("--port", type=_whole_number(1, 65535), default=8765)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--state-dir", help="emulator state folder (default $LEXER_HOME/braze-emulator)")
    serve.set_defaults(func=cmd_emulator_serve)

    audiences = sub.add_parser("audiences", help="check and preview audience definitions")
    audiences_sub = audiences.add_subparsers(dest="audiences_command", required=True)
    validate = audiences_sub.add_parser("validate", help="report every problem in the audiences YAML")
    validate.add_argument("--file", help="YAML file (default LEXER_AUDIENCES_FILE or data/audiences.yaml)")
    validate.set_defaults(func=cmd_audiences_validate)
    preview = audiences_sub.add_parser("preview", help="size and a sample of an audience today")
    preview.add_argument("name", help="audience name or slug")
    preview.add_argument("--as-of", help="day to compute (YYYY-MM-DD; default: the stored profiles' day)")
    preview.add_argument("--sample", type=int, default=10, help="members to list")
    preview.set_defaults(func=cmd_audiences_preview)
    backfill = audiences_sub.add_parser("backfill", help="recompute audience days over a range in one run")
    backfill.add_argument("start", help="first day (YYYY-MM-DD)")
    backfill.add_argument("end", help="last day, inclusive (YYYY-MM-DD)")
    backfill.add_argument("names", nargs="*", help="audience names or slugs (default: all)")
    backfill.set_defaults(func=cmd_audiences_backfill)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from lexer_assets.audiences.spec import AudienceError
    from lexer_assets.braze.client import BrazeError

    try:
        return int(args.func(args) or 0)
    except (AudienceError, BrazeError) as exc:  # a clear message, not a traceback; never holds a secret
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
