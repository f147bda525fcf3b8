"""Typed settings, read once from the environment.

Two profiles: ``local`` (the default: Braze emulator + a folder playing the S3 bucket + a DuckDB file, all
under ``$LEXER_HOME``) and ``prod`` (real Braze REST endpoint and key, real S3 bucket). Every value has one
environment variable; a malformed value fails with a message naming that variable. Secrets are kept in
``Secret`` wrappers whose repr never shows the value.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from lexer_assets.commerce.order_limits import DEFAULT_MAX_ORDER_AMOUNT, MAX_ORDER_AMOUNT_LIMIT

DEFAULT_SEGMENT_ID = "3f2c9d1e-5b7a-4c0e-9a61-0d2b8e4f7a10"
# The key the local emulator accepts with every permission; it is not a secret (local only).
LOCAL_EMULATOR_KEY = "local-emulator-key"
LOCAL_EMULATOR_ENDPOINT = "http://braze-emulator.local"


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the environment variable."""


class Secret:
    """A string that never shows itself in repr/str (logs, metadata, exceptions)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('***')" if self._value else "Secret('')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def _int(env: Mapping[str, str], name: str, default: int, *, minimum: int = 0, maximum: int | None = None) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise SettingsError(f"{name} must be at most {maximum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, *, positive: bool = False) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    if not math.isfinite(value) or (positive and value <= 0):
        raise SettingsError(f"{name} must be a {'positive ' if positive else ''}finite number, got {raw!r}")
    return value


def _date(env: Mapping[str, str], name: str, default: dt.date | None) -> dt.date | None:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return dt.date.fromisoformat(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a date YYYY-MM-DD, got {raw!r}") from None


def _partitions_start(env: Mapping[str, str]) -> dt.date:
    start = _date(env, "LEXER_PARTITIONS_START", dt.date(2026, 1, 1))
    assert start is not None
    today = dt.datetime.now(dt.UTC).date()
    if start > today:
        raise SettingsError(f"LEXER_PARTITIONS_START ({start}) is after today ({today}): there would be no "
                            "audience partition to compute")
    return start


def _as_of(env: Mapping[str, str]) -> dt.date | None:
    """LEXER_AS_OF must be a day the audiences have a partition for: from LEXER_PARTITIONS_START to today."""
    as_of = _date(env, "LEXER_AS_OF", None)
    if as_of is None:
        return None
    start, today = _partitions_start(env), dt.datetime.now(dt.UTC).date()
    if not start <= as_of <= today:
        raise SettingsError(f"LEXER_AS_OF ({as_of}) must be between LEXER_PARTITIONS_START ({start}) and today "
                            f"({today}): audiences have a daily partition for those days only")
    return as_of


def _lapsing_days(env: Mapping[str, str]) -> int:
    active, lapsing = _int(env, "LEXER_ACTIVE_DAYS", 90, minimum=1), _int(env, "LEXER_LAPSING_DAYS", 180, minimum=1)
    if active > lapsing:
        raise SettingsError(f"LEXER_ACTIVE_DAYS ({active}) must not exceed LEXER_LAPSING_DAYS ({lapsing}): "
                            "no customer could be 'lapsing'")
    return lapsing


def _order_amount(env: Mapping[str, str]) -> float:
    value = _float(env, "LEXER_MAX_ORDER_AMOUNT", DEFAULT_MAX_ORDER_AMOUNT, positive=True)
    if value > MAX_ORDER_AMOUNT_LIMIT:
        raise SettingsError(f"LEXER_MAX_ORDER_AMOUNT must be at most {MAX_ORDER_AMOUNT_LIMIT:,.0f} (amounts are "
                            f"summed exactly as DECIMAL(18, 4)), got {value:,.0f}")
    return value


def _share(env: Mapping[str, str], name: str, default: float) -> float:
    value = _float(env, name, default)
    if not 0.0 <= value <= 1.0:
        raise SettingsError(f"{name} must be a share between 0 and 1, got {value}")
    return value


def _cron(env: Mapping[str, str], name: str, default: str) -> str:
    raw = (env.get(name) or default).strip()
    if len(raw.split()) != 5:
        raise SettingsError(f"{name} must be a 5-field cron expression like '0 5 * * *', got {raw!r}")
    return raw


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = env.get(name) or default
    if raw not in choices:
        raise SettingsError(f"{name} must be one of {', '.join(choices)}; got {raw!r}")
    return raw


# ---- prod connection values: checked at load so a typo fails here, naming the variable, not mid-run --------
# Braze REST hosts are rest.<cluster>.braze.com|eu (iad-01..08, us-10, au-01, fra-01/02, ...).
BRAZE_REST_HOST = re.compile(r"^rest\.[a-z]{2,3}-\d{2}\.braze\.(com|eu)$")
_S3_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")  # S3's bucket naming rules (3-63 chars)
_AWS_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d{1,2}$")  # us-east-1, eu-central-2, us-gov-west-1
# Segment ids end up in bucket key prefixes: only characters that cannot form a path step.
_SEGMENT_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


def is_loopback_host(host: str | None) -> bool:
    """True for localhost / 127.0.0.0/8 / ::1 (a local emulator or test server, never a real service)."""
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _url(env: Mapping[str, str], name: str, raw: str, *, https_only: bool, path_allowed: bool) -> str:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(raw)
        host = parts.hostname
    except ValueError:
        parts, host = None, None
    if parts is None or parts.scheme not in ("http", "https") or not host:
        raise SettingsError(f"{name} must be a URL such as https://rest.iad-01.braze.com, got {raw!r}")
    if parts.username or parts.password:  # never echo it: the user part may hold a credential
        raise SettingsError(f"{name} must not contain a user name or password (the value is not shown)")
    if (parts.path.strip("/") and not path_allowed) or parts.query or parts.fragment:
        raise SettingsError(f"{name} must be the bare endpoint without path or query "
                            f"(e.g. https://{host}), got {raw!r}")
    if https_only and parts.scheme != "https" and not is_loopback_host(host):
        raise SettingsError(f"{name} must use https:// (plain http is only for a local emulator on "
                            f"127.0.0.1/localhost), got {raw!r}")
    return raw.rstrip("/")


def _secret(env: Mapping[str, str], name: str) -> Secret:
    raw = env.get(name, "")
    # A trailing newline from a secrets file is the usual culprit; say so without ever showing the value.
    if any(c.isspace() for c in raw) or not raw.isprintable():
        raise SettingsError(f"{name} contains whitespace or control characters (a trailing newline from a "
                            "secrets file?); the value is not shown")
    return Secret(raw)


def _matching(env: Mapping[str, str], name: str, pattern: re.Pattern[str], what: str) -> str:
    raw = env.get(name, "")
    if not pattern.match(raw):
        raise SettingsError(f"{name} must be {what}, got {raw!r}")
    return raw


def _s3_path(env: Mapping[str, str]) -> str:
    raw = env.get("LEXER_S3_PATH", "")
    path = raw.strip("/")
    steps = path.split("/") if path else []
    if "\\" in path or not path.isprintable() or any(s in ("", ".", "..") for s in steps):
        raise SettingsError("LEXER_S3_PATH must be a plain key prefix like 'exports/braze' (no '..', '.', "
                            f"empty steps or backslashes; blank if Braze has no path), got {raw!r}")
    return path


def _attribute_name(env: Mapping[str, str]) -> str:
    raw = env.get("LEXER_BRAZE_ATTRIBUTE") or "lexer_audience"
    # Braze custom attribute keys: at most 255 characters, not starting with '$' (reserved).
    if len(raw) > 255 or raw.startswith("$") or not raw.isprintable() or not raw.strip():
        raise SettingsError("LEXER_BRAZE_ATTRIBUTE must be a Braze custom attribute name (1-255 printable "
                            f"characters, not starting with '$'), got {raw!r}")
    return raw


@dataclass(frozen=True)
class BrazeSettings:
    endpoint: str
    api_key: Secret = field(repr=True)
    export_segment_id: str = DEFAULT_SEGMENT_ID
    attribute_name: str = "lexer_audience"
    batch_cap: int = 75
    batch_mode: str = "total"  # "total" (current docs) or "per_array" (older accounts)
    array_cap: int = 100
    rate_limit_requests: int = 3000
    rate_limit_window_s: float = 3.0
    max_in_flight: int = 8
    max_retries: int = 6
    export_fields: tuple[str, ...] = (
        "external_id", "braze_id", "user_aliases", "created_at", "first_name", "last_name", "email",
        "phone", "dob", "gender", "country", "home_city", "language", "time_zone", "total_revenue",
        "random_bucket", "email_subscribe", "push_subscribe", "custom_attributes", "custom_events",
        "purchases", "campaigns_received", "canvases_received",
    )

    @property
    def is_emulator(self) -> bool:
        return self.endpoint == LOCAL_EMULATOR_ENDPOINT


@dataclass(frozen=True)
class BucketSettings:
    """Where Braze writes segment exports: a local folder (local profile) or an S3 bucket (prod)."""

    local_root: Path | None
    bucket: str = ""
    region: str = ""
    path_prefix: str = ""  # must equal the path configured in Braze; empty allowed
    endpoint_url: str = ""
    access_key_id: str = ""
    secret_access_key: Secret = field(default_factory=lambda: Secret(""))

    @property
    def is_local(self) -> bool:
        return self.local_root is not None


@dataclass(frozen=True)
class SyncSettings:
    """The Braze sync's safety guard, retry rule and confirmation recipients."""

    max_drop_share: float = 0.5  # an audience shrinking by more than this share since the last sync blocks it
    max_removals: int = 50_000  # a run removing more values than this is blocked
    max_failed_runs: int = 3  # a change Braze refused in this many runs is parked (not retried)
    notify_smtp_host: str = ""
    notify_smtp_port: int = 25
    notify_from: str = "lexer-assets@localhost"
    notify_to: tuple[str, ...] = ()
    notify_webhook_url: str = ""


@dataclass(frozen=True)
class AutomationSettings:
    """Schedules, sensors, freshness windows and data-check thresholds (defs/automation.py, defs/checks.py)."""

    export_cron: str = "0 5 * * *"  # when braze/export_request runs (UTC)
    landing_sensor_interval_s: int = 30  # how often the bucket and the orders folder are looked at
    freshness_warn_hours: float = 25.0  # Braze chain, profiles, audiences, sync: daily, with slack
    freshness_fail_hours: float = 30.0
    orders_freshness_fail_hours: float = 48.0  # brands drop order files on their own cadence
    max_export_reject_rate: float = 0.01  # share of export lines rejected before braze/users fails its check
    max_order_reject_rate: float = 0.05  # share of order lines rejected before commerce/orders keeps the old orders
    max_order_amount: float = DEFAULT_MAX_ORDER_AMOUNT  # an order line above it is rejected as implausible
    min_profile_coverage: float = 1.0  # share of exported users that must have a profile row
    max_sync_failure_rate: float = 0.01  # share of sent changes Braze rejected before the sync check fails
    verify_sample: int = 200  # users read back from Braze by the verification check (0: off)


@dataclass(frozen=True)
class Settings:
    profile: str
    home: Path
    braze: BrazeSettings
    bucket: BucketSettings
    audiences_file: Path
    orders_dir: Path
    partitions_start: dt.date
    as_of: dt.date | None  # None: today (UTC)
    export_settle_seconds: float
    export_timeout_seconds: float
    # lifecycle thresholds (days since last order)
    active_days: int = 90
    lapsing_days: int = 180
    new_customer_days: int = 30
    # days of member lists kept per audience, counted back from its newest day (sizes are kept forever)
    membership_retention_days: int = 35
    sync: SyncSettings = field(default_factory=SyncSettings)
    automation: AutomationSettings = field(default_factory=lambda: AutomationSettings())

    # ---- derived paths (all runtime state lives under home) -------------------------------------------------
    @property
    def warehouse_path(self) -> Path:
        return self.home / "warehouse" / "hub.duckdb"

    @property
    def published_store_path(self) -> Path:
        return self.home / "store" / "profile_store.duckdb"

    @property
    def raw_exports_dir(self) -> Path:
        return self.home / "raw" / "braze-exports"

    @property
    def emulator_dir(self) -> Path:
        return self.home / "braze-emulator"

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster"

    def today(self) -> dt.date:
        return self.as_of or dt.datetime.now(dt.UTC).date()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        repo_root = Path(__file__).resolve().parent.parent
        home = Path(env.get("LEXER_HOME") or repo_root / "data").resolve()
        profile = _choice(env, "LEXER_PROFILE", "local", ("local", "prod"))

        if profile == "local":
            endpoint = env.get("BRAZE_REST_ENDPOINT") or LOCAL_EMULATOR_ENDPOINT
            api_key = _secret(env, "BRAZE_API_KEY") or Secret(LOCAL_EMULATOR_KEY)
            bucket = BucketSettings(
                local_root=Path(env.get("LEXER_BUCKET_DIR") or home / "bucket").resolve(),
                path_prefix=_s3_path(env),
            )
        else:
            missing = [n for n in ("BRAZE_REST_ENDPOINT", "BRAZE_API_KEY", "BRAZE_EXPORT_SEGMENT_ID",
                                   "LEXER_S3_BUCKET", "LEXER_S3_REGION") if not env.get(n)]
            if missing:
                raise SettingsError(f"LEXER_PROFILE=prod needs {', '.join(missing)} to be set")
            endpoint = env["BRAZE_REST_ENDPOINT"]
            api_key = _secret(env, "BRAZE_API_KEY")
            # Both or neither: with neither, boto3's default credential chain (instance role, AWS_PROFILE, ...).
            key_id, secret = env.get("AWS_ACCESS_KEY_ID", ""), _secret(env, "AWS_SECRET_ACCESS_KEY")
            if bool(key_id) != bool(secret):
                lacking = "AWS_SECRET_ACCESS_KEY" if key_id else "AWS_ACCESS_KEY_ID"
                raise SettingsError(f"{lacking} must be set together with "
                                    f"{'AWS_ACCESS_KEY_ID' if key_id else 'AWS_SECRET_ACCESS_KEY'} (or leave "
                                    "both unset to use the default AWS credential chain)")
            if key_id and not re.match(r"^[A-Z0-9]{16,128}$", key_id):
                raise SettingsError(f"AWS_ACCESS_KEY_ID must look like AKIA... (16-128 upper-case letters and "
                                    f"digits), got {key_id!r}")
            endpoint_url = env.get("LEXER_S3_ENDPOINT_URL", "")
            bucket = BucketSettings(
                local_root=None,
                bucket=_matching(env, "LEXER_S3_BUCKET", _S3_BUCKET,
                                 "an S3 bucket name (3-63 lower-case letters, digits, '.' and '-')"),
                region=_matching(env, "LEXER_S3_REGION", _AWS_REGION, "an AWS region such as us-east-1"),
                path_prefix=_s3_path(env),
                endpoint_url=_url(env, "LEXER_S3_ENDPOINT_URL", endpoint_url, https_only=False,
                                  path_allowed=True) if endpoint_url else "",
                access_key_id=key_id,
                secret_access_key=secret,
            )
        endpoint = _url(env, "BRAZE_REST_ENDPOINT", endpoint, https_only=profile == "prod", path_allowed=False)
        segment_id = env.get("BRAZE_EXPORT_SEGMENT_ID") or DEFAULT_SEGMENT_ID
        if not _SEGMENT_ID.match(segment_id):
            raise SettingsError("BRAZE_EXPORT_SEGMENT_ID must be the segment's API identifier (letters, digits, "
                                f"'-' and '_'), got {segment_id!r}")

        braze = BrazeSettings(
            endpoint=endpoint,
            api_key=api_key,
            export_segment_id=segment_id,
            attribute_name=_attribute_name(env),
            # Braze refuses more than 75 objects per /users/track request; some contracts allow only 50.
            batch_cap=_int(env, "LEXER_BRAZE_BATCH_CAP", 75, minimum=1, maximum=75),
            batch_mode=_choice(env, "LEXER_BRAZE_BATCH_MODE", "total", ("total", "per_array")),
            # Braze's array attribute limit is an account setting of at most 500 (older docs: 100).
            array_cap=_int(env, "LEXER_BRAZE_ARRAY_CAP", 100, minimum=1, maximum=500),
            rate_limit_requests=_int(env, "LEXER_BRAZE_RATE_LIMIT", 3000, minimum=1),
            rate_limit_window_s=_float(env, "LEXER_BRAZE_RATE_WINDOW_S", 3.0, positive=True),
            max_in_flight=_int(env, "LEXER_BRAZE_MAX_IN_FLIGHT", 8, minimum=1),
            max_retries=_int(env, "LEXER_BRAZE_MAX_RETRIES", 6),
        )
        return cls(
            profile=profile,
            home=home,
            braze=braze,
            bucket=bucket,
            audiences_file=Path(env.get("LEXER_AUDIENCES_FILE") or repo_root / "data" / "audiences.yaml"),
            orders_dir=Path(env.get("LEXER_ORDERS_DIR") or home / "commerce" / "orders"),
            partitions_start=_partitions_start(env),
            as_of=_as_of(env),
            export_settle_seconds=_float(env, "LEXER_EXPORT_SETTLE_S", 2.0),
            export_timeout_seconds=_float(env, "LEXER_EXPORT_TIMEOUT_S", 600.0, positive=True),
            active_days=_int(env, "LEXER_ACTIVE_DAYS", 90, minimum=1),
            lapsing_days=_lapsing_days(env),
            new_customer_days=_int(env, "LEXER_NEW_CUSTOMER_DAYS", 30, minimum=1),
            membership_retention_days=_int(env, "LEXER_MEMBERSHIP_RETENTION_DAYS", 35, minimum=1),
            sync=_sync_settings(env),
            automation=_automation_settings(env),
        )


def _automation_settings(env: Mapping[str, str]) -> AutomationSettings:
    return AutomationSettings(
        export_cron=_cron(env, "LEXER_EXPORT_CRON", "0 5 * * *"),
        landing_sensor_interval_s=_int(env, "LEXER_LANDING_SENSOR_INTERVAL_S", 30, minimum=1),
        freshness_warn_hours=_float(env, "LEXER_FRESHNESS_WARN_HOURS", 25.0, positive=True),
        freshness_fail_hours=_float(env, "LEXER_FRESHNESS_FAIL_HOURS", 30.0, positive=True),
        orders_freshness_fail_hours=_float(env, "LEXER_ORDERS_FRESHNESS_FAIL_HOURS", 48.0, positive=True),
        max_export_reject_rate=_share(env, "LEXER_MAX_EXPORT_REJECT_RATE", 0.01),
        max_order_reject_rate=_share(env, "LEXER_MAX_ORDER_REJECT_RATE", 0.05),
        max_order_amount=_order_amount(env),
        min_profile_coverage=_share(env, "LEXER_MIN_PROFILE_COVERAGE", 1.0),
        max_sync_failure_rate=_share(env, "LEXER_MAX_SYNC_FAILURE_RATE", 0.01),
        verify_sample=_int(env, "LEXER_VERIFY_SAMPLE", 200),
    )


def _sync_settings(env: Mapping[str, str]) -> SyncSettings:
    share = _float(env, "LEXER_SYNC_MAX_DROP_SHARE", 0.5)
    if not 0 <= share <= 1:
        raise SettingsError(f"LEXER_SYNC_MAX_DROP_SHARE must be between 0 and 1, got {share}")
    return SyncSettings(
        max_drop_share=share,
        max_removals=_int(env, "LEXER_SYNC_MAX_REMOVALS", 50_000),
        max_failed_runs=_int(env, "LEXER_SYNC_MAX_FAILED_RUNS", 3, minimum=1),
        notify_smtp_host=env.get("LEXER_NOTIFY_SMTP_HOST", ""),
        notify_smtp_port=_int(env, "LEXER_NOTIFY_SMTP_PORT", 25, minimum=1, maximum=65535),
        notify_from=env.get("LEXER_NOTIFY_FROM") or "lexer-assets@localhost",
        notify_to=tuple(a.strip() for a in env.get("LEXER_NOTIFY_TO", "").split(",") if a.strip()),
        notify_webhook_url=env.get("LEXER_NOTIFY_WEBHOOK_URL", ""),
    )
