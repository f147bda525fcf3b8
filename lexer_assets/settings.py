"""Typed settings, read once from the environment.

Two profiles: ``local`` (the default: Braze emulator + a folder playing the S3 bucket + a DuckDB file, all
under ``$LEXER_HOME``) and ``prod`` (real Braze REST endpoint and key, real S3 bucket). Every value has one
environment variable; a malformed value fails with a message naming that variable. Secrets are kept in
``Secret`` wrappers whose repr never shows the value.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

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


def _int(env: Mapping[str, str], name: str, default: int, *, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None


def _date(env: Mapping[str, str], name: str, default: dt.date | None) -> dt.date | None:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return dt.date.fromisoformat(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a date YYYY-MM-DD, got {raw!r}") from None


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = env.get(name) or default
    if raw not in choices:
        raise SettingsError(f"{name} must be one of {', '.join(choices)}; got {raw!r}")
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
            api_key = env.get("BRAZE_API_KEY") or LOCAL_EMULATOR_KEY
            bucket = BucketSettings(
                local_root=Path(env.get("LEXER_BUCKET_DIR") or home / "bucket").resolve(),
                path_prefix=env.get("LEXER_S3_PATH", "").strip("/"),
            )
        else:
            missing = [n for n in ("BRAZE_REST_ENDPOINT", "BRAZE_API_KEY", "BRAZE_EXPORT_SEGMENT_ID",
                                   "LEXER_S3_BUCKET", "LEXER_S3_REGION") if not env.get(n)]
            if missing:
                raise SettingsError(f"LEXER_PROFILE=prod needs {', '.join(missing)} to be set")
            endpoint = env["BRAZE_REST_ENDPOINT"]
            api_key = env["BRAZE_API_KEY"]
            bucket = BucketSettings(
                local_root=None,
                bucket=env["LEXER_S3_BUCKET"],
                region=env["LEXER_S3_REGION"],
                path_prefix=env.get("LEXER_S3_PATH", "").strip("/"),
                endpoint_url=env.get("LEXER_S3_ENDPOINT_URL", ""),
                access_key_id=env.get("AWS_ACCESS_KEY_ID", ""),
                secret_access_key=Secret(env.get("AWS_SECRET_ACCESS_KEY", "")),
            )
        if not endpoint.startswith(("http://", "https://")):
            raise SettingsError(f"BRAZE_REST_ENDPOINT must start with https:// (got {endpoint!r})")

        braze = BrazeSettings(
            endpoint=endpoint.rstrip("/"),
            api_key=Secret(api_key),
            export_segment_id=env.get("BRAZE_EXPORT_SEGMENT_ID") or DEFAULT_SEGMENT_ID,
            attribute_name=env.get("LEXER_BRAZE_ATTRIBUTE") or "lexer_audience",
            batch_cap=_int(env, "LEXER_BRAZE_BATCH_CAP", 75, minimum=1),
            batch_mode=_choice(env, "LEXER_BRAZE_BATCH_MODE", "total", ("total", "per_array")),
            array_cap=_int(env, "LEXER_BRAZE_ARRAY_CAP", 100, minimum=1),
            rate_limit_requests=_int(env, "LEXER_BRAZE_RATE_LIMIT", 3000, minimum=1),
            rate_limit_window_s=_float(env, "LEXER_BRAZE_RATE_WINDOW_S", 3.0),
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
            partitions_start=_date(env, "LEXER_PARTITIONS_START", dt.date(2026, 1, 1)),  # type: ignore[arg-type]
            as_of=_date(env, "LEXER_AS_OF", None),
            export_settle_seconds=_float(env, "LEXER_EXPORT_SETTLE_S", 2.0),
            export_timeout_seconds=_float(env, "LEXER_EXPORT_TIMEOUT_S", 600.0),
            active_days=_int(env, "LEXER_ACTIVE_DAYS", 90, minimum=1),
            lapsing_days=_int(env, "LEXER_LAPSING_DAYS", 180, minimum=1),
            new_customer_days=_int(env, "LEXER_NEW_CUSTOMER_DAYS", 30, minimum=1),
        )
