"""A deterministic synthetic population: Braze users in the export shape, and their order history.

Same arguments, same output, byte for byte: every user is generated from its own random stream seeded by
``(seed, purpose, index)``, so a user and its orders do not depend on how many users were generated before it,
and an export of a million users can be streamed (:func:`iter_population`) without holding it in memory.

The mix is meant to exercise the loader and the profile builder the way real exports do:

* about 2% alias-only users (no ``external_id``; about half of them have an email that guest orders use);
* about 10% of customers never ordered; the rest have 1 to ~25 orders ending no later than ``end_date``;
* fields that come and go (any optional field may be missing), ``created_at`` in both Braze formats,
  ``user_aliases`` sometimes a single object, emails with capitals or a trailing space, a few impossible dates
  of birth (e.g. 30 February), numbers sent as strings, JSON nulls, non-ASCII names, leading empty arrays,
  and a few hundred sparse custom-attribute keys whose value type varies between users.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import hashlib
import io
import json
import random
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ORDER_COLUMNS = ("order_id", "customer_id", "email", "order_date", "units", "amount")
ALIAS_ONLY_SHARE = 0.02
NEVER_ORDERED_SHARE = 0.10
SPARSE_ATTRIBUTE_KEYS = 300

_FIRST_NAMES = ("Ava", "Liam", "Olivia", "Noah", "Mia", "Jack", "Charlotte", "Oliver", "Isla", "William",
                "Zoë", "José", "Søren", "Chloé", "Łukasz", "Aoife", "Mateo", "Amélie", "Hana", "Priya",
                "Wei", "Sofía", "Björn", "Nguyễn", "Ingrid")
_LAST_NAMES = ("Nguyen", "Smith", "Williams", "Brown", "Jones", "Müller", "García", "O'Brien", "Kowalski",
               "Tanaka", "Dubois", "Rossi", "Andersen", "Patel", "Kim", "Wilson", "Taylor", "Núñez",
               "Ødegaard", "Chen")
_PLACES = (  # (country, city, language, time zone, phone prefix)
    ("AU", "Melbourne", "en", "Australia/Melbourne", "+614"), ("AU", "Sydney", "en", "Australia/Sydney", "+614"),
    ("AU", "Brisbane", "en", "Australia/Brisbane", "+614"), ("NZ", "Auckland", "en", "Pacific/Auckland", "+642"),
    ("GB", "Leeds", "en", "Europe/London", "+447"), ("GB", "London", "en", "Europe/London", "+447"),
    ("US", "Austin", "en", "America/Chicago", "+1512"), ("US", "Seattle", "en", "America/Los_Angeles", "+1206"),
    ("DE", "München", "de", "Europe/Berlin", "+4915"), ("FR", "Lyon", "fr", "Europe/Paris", "+336"),
    ("JP", "Tokyo", "ja", "Asia/Tokyo", "+8190"), ("ES", "Málaga", "es", "Europe/Madrid", "+346"),
)
_GENDERS = ("F", "M", "O", "N", "P")
_GENDER_WEIGHTS = (46, 44, 3, 4, 3)
_SUBSCRIBE = ("opted_in", "subscribed", "unsubscribed")
_TIERS = ("bronze", "silver", "gold", "platinum")
_STORES = ("Chadstone", "Bondi", "Southbank", "Queen Street", "Online")
_TOPICS = ("menswear", "womenswear", "sale", "new arrivals", "kids", "homewares")
_EVENTS = ("viewed_product", "added_to_cart", "started_checkout", "searched", "wishlisted")
_SKUS = tuple(f"sku-{n:04d}" for n in range(40))
_CAMPAIGNS = tuple((f"Campaign {n}", f"cmp-{n:03d}") for n in range(1, 31))
_CANVASES = tuple((f"Journey {n}", f"cnv-{n:03d}") for n in range(1, 9))
_AUDIENCES = ("VIP", "Lapsed", "New customers", "High value")


@dataclass
class Population:
    """Braze users (export shape) and the brand's orders (canonical order-file rows)."""

    braze_users: list[dict[str, Any]]
    orders: list[dict[str, Any]]


def _rng(seed: int, purpose: str, index: int) -> random.Random:
    return random.Random(f"{seed}:{purpose}:{index}")


def _hex(rng: random.Random, digits: int) -> str:
    return f"{rng.getrandbits(digits * 4):0{digits}x}"


def _iso(ts: dt.datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def _braze_utc(ts: dt.datetime) -> str:
    return ts.strftime("%Y-%m-%d %H:%M:%S.") + f"{ts.microsecond // 1000:03d} UTC"


def _moment(rng: random.Random, start: dt.date, end: dt.date) -> dt.datetime:
    span = max((end - start).days, 0)
    day = start + dt.timedelta(days=rng.randint(0, span))
    return dt.datetime(day.year, day.month, day.day) + dt.timedelta(
        seconds=rng.randrange(86_400), microseconds=rng.randrange(1000) * 1000)


def _ascii(text: str) -> str:
    table = str.maketrans({"ë": "e", "é": "e", "ø": "o", "Ø": "O", "ł": "l", "Ł": "L", "ü": "u", "í": "i",
                           "á": "a", "ñ": "n", "ö": "o", "ễ": "e", "'": "", "ú": "u"})
    return text.translate(table).lower()


@dataclass
class _Customer:
    index: int
    external_id: str | None  # None for an alias-only user
    email: str | None  # normalized email (what orders carry)
    orders: list[dict[str, Any]]


def _orders_for(seed: int, index: int, customer_id: str | None, email: str | None, end_date: dt.date,
                ordered: bool) -> list[dict[str, Any]]:
    if not ordered:
        return []
    rng = _rng(seed, "orders", index)
    count = 1 + min(int(rng.expovariate(0.35)), 24)
    first = end_date - dt.timedelta(days=rng.randint(0, 3 * 365))
    dates = sorted([first] + [first + dt.timedelta(days=rng.randint(0, (end_date - first).days))
                              for _ in range(count - 1)])
    base = rng.lognormvariate(3.6, 0.6)  # typical basket around 35-40 with a long tail
    orders = []
    for k, day in enumerate(dates, start=1):
        units = rng.choices((1, 2, 3, 4, 5, 8), (50, 25, 12, 7, 4, 2))[0]
        amount = 0.0 if rng.random() < 0.003 else round(base * units * rng.uniform(0.6, 1.4), 2)
        orders.append({"order_id": f"O{index + 1:08d}-{k:02d}", "customer_id": customer_id, "email": email,
                       "order_date": day, "units": units, "amount": amount})
    return orders


def _make_user(rng: random.Random, *, external_id: str | None, names: tuple[str, str], email_local: str,
               as_of: dt.date, orders: Sequence[dict[str, Any]], alias_only: bool) -> dict[str, Any]:
    first, last = names
    country, city, language, tz, phone_prefix = rng.choice(_PLACES)
    created = _moment(rng, as_of - dt.timedelta(days=6 * 365), as_of - dt.timedelta(days=1))
    if orders:  # the profile existed before the first order
        first_order = orders[0]["order_date"]
        created = min(created, dt.datetime(first_order.year, first_order.month, first_order.day)
                      - dt.timedelta(hours=rng.randint(1, 2000)))
    user: dict[str, Any] = {"created_at": _braze_utc(created) if rng.random() < 0.5 else _iso(created)}
    if external_id is not None:
        user["external_id"] = external_id
    user["braze_id"] = _hex(rng, 24)
    if alias_only or rng.random() < 0.6:
        alias = {"alias_name": f"{'lead' if alias_only else 'shopify'}-{rng.randint(10_000, 9_999_999)}",
                 "alias_label": "crm_lead_id" if alias_only else "shopify_customer_id"}
        user["user_aliases"] = alias if rng.random() < 0.05 else [alias]
    if rng.random() < 0.93:
        user["first_name"] = first
    if rng.random() < 0.85:
        user["last_name"] = last
    if email_local:
        email = f"{email_local}@example.test"
        shape = rng.random()
        user["email"] = email.upper() if shape < 0.02 else (email + " " if shape < 0.04 else email)
    if rng.random() < 0.7:
        user["phone"] = phone_prefix + "".join(str(rng.randrange(10)) for _ in range(8))
    if rng.random() < 0.75:
        roll = rng.random()
        if roll < 0.004:
            user["dob"] = f"{rng.randint(1950, 2005)}-02-30"  # not a real date: must load as NULL
        elif roll < 0.01:
            user["dob"] = f"{rng.choice((1960, 1972, 1984, 1988, 1992, 1996, 2000, 2004))}-02-29"
        else:
            born = dt.date(1950, 1, 1) + dt.timedelta(days=rng.randint(0, 58 * 365))
            user["dob"] = born.isoformat()
    if rng.random() < 0.8:
        user["gender"] = rng.choices(_GENDERS, _GENDER_WEIGHTS)[0]
    user["country"] = country
    if rng.random() < 0.8:
        user["home_city"] = city
    if rng.random() < 0.9:
        user["language"] = language
    if rng.random() < 0.85:
        user["time_zone"] = tz
    revenue = round(sum(o["amount"] for o in orders), 2)
    user["total_revenue"] = revenue if orders or rng.random() < 0.5 else 0
    user["random_bucket"] = rng.randrange(10_000)
    user["email_subscribe"] = rng.choices(_SUBSCRIBE, (30, 45, 25))[0]
    if rng.random() < 0.7:
        user["push_subscribe"] = rng.choices(_SUBSCRIBE, (20, 50, 30))[0]
    user["custom_attributes"] = _custom_attributes(rng, revenue)
    user["custom_events"] = [] if rng.random() < 0.3 else [
        _history_item(rng, name, as_of) for name in rng.sample(_EVENTS, rng.randint(1, 2))]
    user["purchases"] = _purchases(rng, orders)
    user["campaigns_received"] = [_campaign(rng, as_of) for _ in range(rng.choice((0, 0, 0, 1, 1, 2)))]
    if rng.random() < 0.5:
        user["canvases_received"] = [_canvas(rng, as_of) for _ in range(rng.randint(0, 1))]
    return user


def _custom_attributes(rng: random.Random, revenue: float) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    tier = _TIERS[min(int(revenue // 400), 3)]
    attrs["loyalty_tier"] = None if rng.random() < 0.05 else tier
    points = int(revenue * 4) + rng.randint(0, 200)
    attrs["loyalty_points"] = str(points) if rng.random() < 0.03 else points  # numbers sent as strings
    if rng.random() < 0.5:
        attrs["preferred_store"] = rng.choice(_STORES)
    if rng.random() < 0.4:
        attrs["newsletter_topics"] = rng.sample(_TOPICS, rng.randint(0, 3))
    if rng.random() < 0.2:
        attrs["lexer_audience"] = rng.sample(_AUDIENCES, rng.randint(1, 2))
    for _ in range(rng.choice((0, 0, 1, 2, 3))):
        key = rng.randrange(SPARSE_ATTRIBUTE_KEYS)
        # The same sparse key holds a number for some users and a string or bool for others.
        kind = (key + rng.randrange(3)) % 3
        attrs[f"pref_{key:03d}"] = rng.randint(0, 99) if kind == 0 else (
            f"v{rng.randint(0, 9)}" if kind == 1 else rng.random() < 0.5)
    return attrs


def _history_item(rng: random.Random, name: str, as_of: dt.date) -> dict[str, Any]:
    first = _moment(rng, as_of - dt.timedelta(days=5 * 365), as_of - dt.timedelta(days=30))
    last = _moment(rng, as_of - dt.timedelta(days=89), as_of)
    return {"name": name, "first": _iso(first), "last": _iso(last), "count": rng.randint(1, 400)}


def _purchases(rng: random.Random, orders: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    if not orders:
        return []
    items = []
    for sku in rng.sample(_SKUS, min(len(orders), 2)):
        first, last = orders[0]["order_date"], orders[-1]["order_date"]
        items.append({"name": sku, "first": _iso(dt.datetime(first.year, first.month, first.day, 3)),
                      "last": _iso(dt.datetime(last.year, last.month, last.day, 5)),
                      "count": rng.randint(1, len(orders))})
    return items


def _campaign(rng: random.Random, as_of: dt.date) -> dict[str, Any]:
    name, cid = rng.choice(_CAMPAIGNS)
    opened = rng.random() < 0.35
    clicked = opened and rng.random() < 0.3
    return {"name": name, "api_campaign_id": cid,
            "last_received": _iso(_moment(rng, as_of - dt.timedelta(days=89), as_of)),
            "engaged": {"opened_email": opened, "clicked_email": clicked},
            "converted": clicked and rng.random() < 0.4, "in_control": rng.random() < 0.05}


def _canvas(rng: random.Random, as_of: dt.date) -> dict[str, Any]:
    name, cid = rng.choice(_CANVASES)
    entered = _moment(rng, as_of - dt.timedelta(days=89), as_of)
    return {"name": name, "api_canvas_id": cid, "last_received_message": _iso(entered + dt.timedelta(hours=2)),
            "last_entered": _iso(entered), "in_control": rng.random() < 0.05}


def _customer(seed: int, index: int, end_date: dt.date) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    rng = _rng(seed, "user", index)
    alias_only = rng.random() < ALIAS_ONLY_SHARE
    ordered = rng.random() >= NEVER_ORDERED_SHARE
    names = (rng.choice(_FIRST_NAMES), rng.choice(_LAST_NAMES))
    email_local = _ascii(f"{names[0]}.{names[1]}") + f".{index + 1}"
    external_id = None if alias_only else f"{index + 1:08d}"
    has_email = rng.random() < (0.5 if alias_only else 0.95)
    email = f"{email_local}@example.test" if has_email else None
    # Alias-only users who ordered did so as guests: orders carry their email and no customer id.
    if alias_only and not has_email:
        ordered = False
    orders = _orders_for(seed, index, external_id, email, end_date, ordered)
    user = _make_user(rng, external_id=external_id, names=names, email_local=email_local if has_email else "",
                      as_of=end_date, orders=orders, alias_only=alias_only)
    return user, orders


def iter_population(n_customers: int, *, seed: int = 7, end_date: dt.date, start: int = 0
                    ) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Yield ``(braze_user, orders)`` per customer, in customer order, without holding them all.

    ``start`` skips to customer number ``start`` (each customer is independent of the ones before it), so
    slices of a large population can be generated in parallel.
    """
    for index in range(start, start + n_customers):
        yield _customer(seed, index, end_date)


def synthetic_population(n_customers: int, *, seed: int = 7, end_date: dt.date) -> Population:
    """``n_customers`` Braze users and their orders (sorted by date, then order id), all ending by ``end_date``."""
    users: list[dict[str, Any]] = []
    orders: list[dict[str, Any]] = []
    for user, user_orders in iter_population(n_customers, seed=seed, end_date=end_date):
        users.append(user)
        orders.extend(user_orders)
    orders.sort(key=lambda o: (o["order_date"], o["order_id"]))
    return Population(braze_users=users, orders=orders)


def braze_users_for_customers(customer_ids: Sequence[str], *, seed: int = 7, as_of: dt.date) -> list[dict]:
    """One Braze user per brand customer id (``external_id`` = that id), with the same realistic field mix."""
    users = []
    for index, customer_id in enumerate(customer_ids):
        rng = _rng(seed, f"customer:{customer_id}", index)
        names = (rng.choice(_FIRST_NAMES), rng.choice(_LAST_NAMES))
        local = _ascii(f"{names[0]}.{names[1]}") + f".{customer_id}"
        users.append(_make_user(rng, external_id=str(customer_id), names=names,
                                email_local=local if rng.random() < 0.95 else "", as_of=as_of, orders=(),
                                alias_only=False))
    return users


def write_orders_csv(orders: Iterable[dict[str, Any]], path: Path) -> None:
    """Write the canonical order file: header ``order_id,customer_id,email,order_date,units,amount``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(ORDER_COLUMNS)
        for o in orders:
            day = o["order_date"]
            writer.writerow([o["order_id"], o.get("customer_id") or "", o.get("email") or "",
                             day.isoformat() if isinstance(day, dt.date) else day, o["units"],
                             f"{o['amount']:.2f}"])


def export_folder(bucket_root: Path, *, segment_id: str, export_date: dt.date, object_prefix: str) -> Path:
    """Braze's folder for one export: ``segment-export/<segment_id>/<YYYY-MM-dd>/<object_prefix>/``."""
    return Path(bucket_root) / "segment-export" / segment_id / export_date.isoformat() / object_prefix


def write_braze_export(users: Iterable[dict[str, Any]], bucket_root: Path, *, segment_id: str,
                       export_date: dt.date, object_prefix: str, users_per_file: int = 5000,
                       fmt: str = "zip", first_file_number: int = 0) -> list[Path]:
    """Write users as a Braze segment export in Braze's layout; return the files written, in order.

    ``fmt`` is ``zip`` (one ``<hex>.json`` member per ``<hex>.zip``) or ``gzip`` (``<hex>.gz``). File names
    are 32 hex digits derived from ``object_prefix`` and the file number, and archive timestamps are fixed,
    so the same users give the same bytes. No users writes no files (as Braze does for an empty segment).
    ``first_file_number`` lets slices of one export be written separately (e.g. in parallel).
    """
    if fmt not in ("zip", "gzip"):
        raise ValueError(f"fmt must be 'zip' or 'gzip', got {fmt!r}")
    if users_per_file < 1:
        raise ValueError("users_per_file must be at least 1")
    folder = export_folder(bucket_root, segment_id=segment_id, export_date=export_date,
                           object_prefix=object_prefix)
    written: list[Path] = []
    buffer = io.StringIO()
    in_buffer = 0

    def flush() -> None:
        nonlocal buffer, in_buffer
        number = first_file_number + len(written)
        name = hashlib.md5(f"{object_prefix}:{number}".encode(), usedforsecurity=False).hexdigest()
        folder.mkdir(parents=True, exist_ok=True)
        data = buffer.getvalue().encode("utf-8")
        if fmt == "zip":
            target = folder / f"{name}.zip"
            info = zipfile.ZipInfo(f"{name}.json", date_time=(export_date.year, export_date.month,
                                                               export_date.day, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with zipfile.ZipFile(target, "w") as archive:
                archive.writestr(info, data)
        else:
            target = folder / f"{name}.gz"
            with open(target, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as gz:
                gz.write(data)
        written.append(target)
        buffer, in_buffer = io.StringIO(), 0

    for user in users:
        buffer.write(json.dumps(user, ensure_ascii=False))
        buffer.write("\n")
        in_buffer += 1
        if in_buffer >= users_per_file:
            flush()
    if in_buffer:
        flush()
    return written
