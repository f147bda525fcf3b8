"""The synthetic population: deterministic, in Braze's export shape and layout, with the promised mix."""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import hashlib
import json
import zipfile
from pathlib import Path

import duckdb

from lexer_assets.braze.export_load import load_export
from lexer_assets.population import (
    braze_users_for_customers,
    iter_population,
    synthetic_population,
    write_braze_export,
    write_orders_csv,
)
from lexer_assets.storage.warehouse import ensure_tables

END = dt.date(2026, 12, 1)


def digest(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    def build(seed: int, root: Path) -> str:
        pop = synthetic_population(300, seed=seed, end_date=END)
        files = write_braze_export(pop.braze_users, root, segment_id="seg", export_date=END, object_prefix="p",
                                   users_per_file=100)
        write_orders_csv(pop.orders, root / "orders.csv")
        return digest([*files, root / "orders.csv"])

    assert build(7, tmp_path / "a") == build(7, tmp_path / "b")
    assert build(8, tmp_path / "c") != build(7, tmp_path / "a")


def test_population_mix() -> None:
    n = 5000
    pop = synthetic_population(n, end_date=END)
    users = pop.braze_users
    assert len(users) == n
    alias_only = [u for u in users if "external_id" not in u]
    assert 0.01 * n < len(alias_only) < 0.03 * n
    assert all(u.get("user_aliases") for u in alias_only)
    customers_with_orders = {o["customer_id"] for o in pop.orders if o["customer_id"]}
    known = [u["external_id"] for u in users if "external_id" in u]
    never = [c for c in known if c not in customers_with_orders]
    assert 0.07 * len(known) < len(never) < 0.13 * len(known)
    # Some alias-only users' emails appear on (guest) orders.
    guest_emails = {o["email"] for o in pop.orders if o["customer_id"] is None}
    assert guest_emails & {u.get("email", "").strip().lower() for u in alias_only}
    assert all(o["order_date"] <= END for o in pop.orders)
    assert max(o["order_date"] for o in pop.orders) >= END - dt.timedelta(days=30)
    assert [o["order_date"] for o in pop.orders] == sorted(o["order_date"] for o in pop.orders)
    # The awkward shapes real exports have.
    assert any(" UTC" in u["created_at"] for u in users) and any(u["created_at"].endswith("Z") for u in users)
    assert any(isinstance(u.get("user_aliases"), dict) for u in users)
    assert any(isinstance(u["custom_attributes"].get("loyalty_points"), str) for u in users)
    assert any(u["custom_attributes"].get("loyalty_tier", "x") is None for u in users)
    assert any(u.get("dob", "").endswith("-02-30") for u in users)
    assert any(u.get("email", "") != u.get("email", "").strip().lower() for u in users)
    assert any(any(ord(ch) > 127 for ch in u.get("first_name", "")) for u in users)
    assert all({"opened_email", "clicked_email"} <= set(c["engaged"]) for u in users
               for c in u["campaigns_received"])
    sparse_keys = {k for u in users for k in u["custom_attributes"] if k.startswith("pref_")}
    assert len(sparse_keys) > 200
    # total_revenue is the sum of the user's orders (Braze's all-time figure).
    by_customer: dict[str, float] = {}
    for o in pop.orders:
        if o["customer_id"]:
            by_customer[o["customer_id"]] = by_customer.get(o["customer_id"], 0.0) + o["amount"]
    for u in users[:500]:
        if u.get("external_id") in by_customer:
            assert abs(u["total_revenue"] - by_customer[u["external_id"]]) < 0.01


def test_iterator_matches_list_and_does_not_depend_on_size() -> None:
    small = synthetic_population(50, end_date=END)
    first_50 = [u for u, _ in iter_population(50, end_date=END)]
    assert first_50 == small.braze_users
    assert synthetic_population(80, end_date=END).braze_users[:50] == small.braze_users


def test_braze_users_for_customers() -> None:
    ids = ["00001", "00002", "23570"]
    users = braze_users_for_customers(ids, as_of=dt.date(1998, 6, 30))
    assert [u["external_id"] for u in users] == ids
    assert all(u["created_at"][:4] <= "1998" for u in users)
    assert users == braze_users_for_customers(ids, as_of=dt.date(1998, 6, 30))


def test_write_orders_csv(tmp_path: Path) -> None:
    orders = [{"order_id": "O1", "customer_id": "c1", "email": None, "order_date": dt.date(2026, 1, 2),
               "units": 2, "amount": 10.5},
              {"order_id": "O2", "customer_id": None, "email": "g@x.test", "order_date": dt.date(2026, 1, 3),
               "units": 1, "amount": 0.0}]
    path = tmp_path / "orders.csv"
    write_orders_csv(orders, path)
    assert path.read_text() == ("order_id,customer_id,email,order_date,units,amount\n"
                                "O1,c1,,2026-01-02,2,10.50\nO2,,g@x.test,2026-01-03,1,0.00\n")
    assert len(list(csv.DictReader(path.open()))) == 2


def test_write_braze_export_layout_and_load(tmp_path: Path) -> None:
    pop = synthetic_population(1200, end_date=END)
    zips = write_braze_export(pop.braze_users, tmp_path, segment_id="seg-1", export_date=END,
                              object_prefix="pfx-1", users_per_file=500)
    folder = tmp_path / "segment-export" / "seg-1" / "2026-12-01" / "pfx-1"
    assert [p.parent for p in zips] == [folder] * 3
    assert all(len(p.stem) == 32 and int(p.stem, 16) >= 0 and p.suffix == ".zip" for p in zips)
    with zipfile.ZipFile(zips[0]) as archive:
        assert archive.namelist() == [f"{zips[0].stem}.json"]
        lines = archive.read(archive.namelist()[0]).decode().splitlines()
    assert len(lines) == 500 and json.loads(lines[0]) == pop.braze_users[0]
    gz = write_braze_export(pop.braze_users[:10], tmp_path, segment_id="seg-1", export_date=END,
                            object_prefix="pfx-2", fmt="gzip")
    assert len(gz) == 1 and gz[0].suffix == ".gz"
    assert [json.loads(line) for line in gzip.decompress(gz[0].read_bytes()).splitlines()] == pop.braze_users[:10]
    assert write_braze_export([], tmp_path, segment_id="seg-1", export_date=END, object_prefix="none") == []

    conn = duckdb.connect(str(tmp_path / "hub.duckdb"))
    ensure_tables(conn)
    report = load_export(conn, zips, object_prefix="pfx-1", work_dir=tmp_path)
    assert (report.loaded, report.rejected, report.duplicates) == (1200, 0, 0)
    invalid_dobs = sum(1 for u in pop.braze_users if u.get("dob", "").endswith("-02-30"))
    assert conn.execute("SELECT count(*) FROM braze.users WHERE dob IS NULL").fetchone()[0] == sum(
        1 for u in pop.braze_users if "dob" not in u) + invalid_dobs
    conn.close()
