"""Benchmark: 30 audiences over 1,000,000 profiles for one day, a past day, and the store publish they cause.

Steps, in one run on the same hub (synthetic: 1,000,000 Braze users, 10,000,000 order lines, made by
``benchmarks.profiles_build.generate`` and reused per workdir):

* ``reference``: each audience's compiled SELECT counted, nothing stored (the least the day can cost).
* ``today``: what the 30 audience steps do for today's partition (profiles already as of the day):
  ``materialize_days`` per audience = membership replaced, history recounted, one transaction each.
  Goal (issue 6): under 30 s.
* ``past day``: the same 30 audiences for yesterday: the first builds yesterday's profiles and caches them,
  the other 29 reuse that file.
* ``publish``: a full copy of the store (what every write used to cost) next to the incremental publish of
  the audience tables and of the profile table.

    .venv/bin/python -m benchmarks.audiences_day [--customers 1000000] [--orders 10000000] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import datetime as dt
import resource
import shutil
import tempfile
import time
from pathlib import Path

import yaml

AS_OF = dt.date(2026, 6, 30)
SHIPPED = Path(__file__).resolve().parent.parent / "data" / "audiences.yaml"


def thirty_audiences(path: Path) -> Path:
    """The shipped audiences plus variants of the kinds marketers write, 30 in all."""
    entries = yaml.safe_load(SHIPPED.read_text())
    stages = ["new", "active", "lapsing", "lapsed", "never purchased"]
    segments = ["Champions", "Loyal", "At risk", "Hibernating", "Needs attention"]
    extra: list[dict] = []
    for i, threshold in enumerate([50, 100, 250, 500, 1000]):
        extra.append({"name": f"Spent {threshold}", "rules": [{"column": "revenue", "op": ">=", "value": threshold}]})
        extra.append({"name": f"Recent {30 * (i + 1)}d", "rules": [{"ordered_in_last_days": 30 * (i + 1)}]})
    for stage in stages:
        extra.append({"name": f"Stage {stage}", "rules": {"all": [
            {"column": "lifecycle_stage", "op": "=", "value": stage},
            {"column": "email_subscribe", "op": "in", "value": ["opted_in", "subscribed"]}]}})
    for segment in segments:
        extra.append({"name": f"RFM {segment}", "rules": {"any": [
            {"column": "rfm_segment", "op": "=", "value": segment},
            {"column": "predicted_clv", "op": ">=", "value": 400}]}})
    for country in ["GB", "US", "AU", "DE", "FR"]:
        extra.append({"name": f"Buyers in {country}", "rules": {"all": [
            {"column": "country", "op": "=", "value": country}, {"column": "orders", "op": ">=", "value": 1}]}})
    extra = extra[: 30 - len(entries)]
    for n, e in enumerate(extra):
        e.update({"slug": f"bench_{n}", "description": "benchmark audience", "owner": "bench@example.com",
                  "activation": {"braze": False}})
    path.write_text(yaml.safe_dump([*entries, *extra], sort_keys=False))
    return path


def main(argv: list[str] | None = None) -> int:
    from benchmarks.profiles_build import generate
    from lexer_assets.audiences.rules import compile_audience
    from lexer_assets.audiences.snapshots import PROFILE_COLUMNS, materialize_days, prepare_day
    from lexer_assets.audiences.spec import load_audiences
    from lexer_assets.profiles.build import LifecycleThresholds, build_profiles
    from lexer_assets.storage.warehouse import RowScope, Warehouse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--orders", type=int, default=10_000_000)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)

    workdir = args.workdir or Path(tempfile.gettempdir()) / "lexer-bench-audiences"
    workdir.mkdir(parents=True, exist_ok=True)
    source = workdir / f"source_{args.customers}_{args.orders}.duckdb"
    if not source.exists():
        t = time.perf_counter()
        generate(source, args.customers, args.orders)
        print(f"generated {args.customers:,} users / {args.orders:,} orders in {time.perf_counter() - t:.1f} s")
    run = workdir / "run"
    shutil.rmtree(run, ignore_errors=True)
    (run / "warehouse").mkdir(parents=True)
    shutil.copyfile(source, run / "warehouse" / "hub.duckdb")
    wh = Warehouse(run / "warehouse" / "hub.duckdb", run / "store" / "profile_store.duckdb")
    thresholds = LifecycleThresholds()
    audiences = load_audiences(thirty_audiences(run / "audiences.yaml"))
    assert len(audiences) == 30, len(audiences)

    with wh.transaction() as conn:
        t = time.perf_counter()
        build_profiles(conn, as_of=AS_OF, thresholds=thresholds)
        profiles_s = time.perf_counter() - t
    t = time.perf_counter()
    wh.publish()
    full_publish_s = time.perf_counter() - t

    with wh.connect() as conn:
        prepare_day(conn, AS_OF, thresholds)
        t = time.perf_counter()
        sizes = []
        for a in audiences:
            c = compile_audience(a, audiences, PROFILE_COLUMNS, as_of=AS_OF)
            sizes.append(conn.execute(c.count_sql(), c.params).fetchall()[0][0])
        reference_s = time.perf_counter() - t

        t = time.perf_counter()
        stored = [materialize_days(conn, a, audiences, [AS_OF], thresholds, home=run, cache_dir=run / "cache")[0]
                  for a in audiences]
        today_s = time.perf_counter() - t
        assert [s.size for s in stored] == sizes

        yesterday = AS_OF - dt.timedelta(days=1)
        t = time.perf_counter()
        first = materialize_days(conn, audiences[0], audiences, [yesterday], thresholds, home=run,
                                 cache_dir=run / "cache")
        first_s = time.perf_counter() - t
        past = [materialize_days(conn, a, audiences, [yesterday], thresholds, home=run, cache_dir=run / "cache")[0]
                for a in audiences[1:]]
        past_s = time.perf_counter() - t
        assert first[0].profiles_source == "built" and {p.profiles_source for p in past} == {"cache"}

    # what one audience step publishes: its rows of the membership table and the history table
    wh.mark_unpublished(["lexer.audience_history"], rows=[RowScope(
        "lexer.audience_membership", "audience_slug = ? AND snapshot_date BETWEEN ?::DATE AND ?::DATE",
        [audiences[0].slug, AS_OF.isoformat(), AS_OF.isoformat()])])
    t = time.perf_counter()
    wh.publish(["lexer.audience_history"])
    audience_publish_s = time.perf_counter() - t
    assert wh.last_publish == "tables"
    t = time.perf_counter()
    wh.publish(["lexer.customer_profiles"])
    profile_publish_s = time.perf_counter() - t
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    print(f"customers: {args.customers:,}  order lines: {args.orders:,}  audiences: {len(audiences)}  "
          f"members today: {sum(sizes):,}")
    print(f"{'step':<48} {'wall s':>8}")
    for name, secs in [
        ("profiles as of the day (context, not in the goal)", profiles_s),
        ("reference: 30 compiled SELECT count(*)", reference_s),
        ("today: 30 audiences stored (goal < 30 s)", today_s),
        ("past day: first audience (builds + caches profiles)", first_s),
        ("past day: all 30 audiences", past_s),
        ("publish: full copy of the store", full_publish_s),
        ("publish: one audience step (its rows + history)", audience_publish_s),
        ("publish: profile table only", profile_publish_s),
    ]:
        print(f"{name:<48} {secs:>8.2f}")
    print(f"peak RSS: {peak_mb:,.0f} MB")
    ok = today_s < 30
    print("GOAL MET" if ok else "GOAL NOT MET")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
