"""Dagster resources, chosen per profile in one place (``resources_for``).

Local profile: the Braze client talks to the in-process emulator through an httpx ASGI transport (same client
code as prod), the bucket is a folder, the warehouse a DuckDB file, all under ``$LEXER_HOME``.
Prod profile: secrets are passed as ``dagster.EnvVar`` so the UI and run config only ever show the variable name.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import dagster as dg
import httpx

from lexer_assets.audiences.spec import Audience, load_audiences
from lexer_assets.braze.client import BrazeClient
from lexer_assets.commerce.order_limits import DEFAULT_MAX_ORDER_AMOUNT
from lexer_assets.profiles.build import LifecycleThresholds
from lexer_assets.settings import LOCAL_EMULATOR_ENDPOINT, Settings, SettingsError
from lexer_assets.storage.object_store import LocalFolderStore, ObjectStore, S3Store
from lexer_assets.storage.warehouse import Warehouse


class WarehouseResource(dg.ConfigurableResource):
    """The DuckDB working file runs write, and the published copy analysts read."""

    path: str
    published_path: str

    def get(self) -> Warehouse:
        return Warehouse(Path(self.path), Path(self.published_path))


class _MasksSecrets:
    """Resolved resources hold secrets in plain fields: keep them out of repr/str (logs, errors, tracebacks)."""

    _secret_fields: ClassVar[tuple[str, ...]] = ()

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():  # type: ignore[misc]
            yield name, ("***" if name in self._secret_fields and value else value)


class BucketResource(_MasksSecrets, dg.ConfigurableResource):
    """The bucket Braze exports into: a local folder, or S3 through dagster-aws."""

    _secret_fields: ClassVar[tuple[str, ...]] = ("secret_access_key",)

    local_root: str = ""
    bucket: str = ""
    region: str = ""
    path_prefix: str = ""
    endpoint_url: str = ""
    access_key_id: str = ""
    secret_access_key: str = ""

    def store(self) -> ObjectStore:
        if self.local_root:
            return LocalFolderStore(Path(self.local_root))
        from dagster_aws.s3 import S3Resource

        kwargs: dict[str, Any] = {"region_name": self.region or None}
        if self.endpoint_url:
            kwargs["endpoint_url"] = self.endpoint_url
        if self.access_key_id:
            kwargs["aws_access_key_id"] = self.access_key_id
            kwargs["aws_secret_access_key"] = self.secret_access_key
        return S3Store(S3Resource(**kwargs).get_client(), self.bucket)


class BrazeResource(_MasksSecrets, dg.ConfigurableResource):
    """Braze REST API (or the local emulator, in-process, when endpoint is the emulator's)."""

    _secret_fields: ClassVar[tuple[str, ...]] = ("api_key",)

    endpoint: str
    api_key: str
    export_segment_id: str
    attribute_name: str = "lexer_audience"
    batch_cap: int = 75
    batch_mode: str = "total"
    array_cap: int = 100
    rate_limit_requests: int = 3000
    rate_limit_window_s: float = 3.0
    max_in_flight: int = 8
    max_retries: int = 6
    export_fields: list[str] = []
    emulator_dir: str = ""
    emulator_bucket_root: str = ""
    emulator_path_prefix: str = ""

    def client(self) -> BrazeClient:
        transport: httpx.AsyncBaseTransport | None = None
        if self.endpoint == LOCAL_EMULATOR_ENDPOINT:
            transport = httpx.ASGITransport(app=self.emulator_app())
        return BrazeClient(
            self.endpoint, self.api_key, transport=transport, batch_cap=self.batch_cap,
            batch_mode=self.batch_mode, rate_limit_requests=self.rate_limit_requests,
            rate_limit_window_s=self.rate_limit_window_s, max_in_flight=self.max_in_flight,
            max_retries=self.max_retries,
        )

    def emulator_app(self) -> Any:
        from lexer_assets.braze.emulator import EmulatorConfig, make_app

        config = EmulatorConfig(bucket_root=Path(self.emulator_bucket_root),
                                bucket_path_prefix=self.emulator_path_prefix, export_delay_s=0)
        return make_app(Path(self.emulator_dir), config=config)


class SyncResource(_MasksSecrets, dg.ConfigurableResource):
    """The Braze sync's safety guard limits, retry rule and confirmation recipients (LEXER_SYNC_*, LEXER_NOTIFY_*)."""

    _secret_fields: ClassVar[tuple[str, ...]] = ("webhook_url",)  # chat webhook URLs embed a token

    max_drop_share: float = 0.5
    max_removals: int = 50_000
    max_failed_runs: int = 3
    smtp_host: str = ""
    smtp_port: int = 25
    notify_from: str = "lexer-assets@localhost"
    notify_to: list[str] = []
    webhook_url: str = ""


class PipelineResource(dg.ConfigurableResource):
    """Everything else a run needs to know: where inputs and state live, the as-of date, thresholds."""

    home: str
    audiences_file: str
    orders_dir: str
    bucket_path_prefix: str = ""
    as_of: str = ""  # YYYY-MM-DD; empty = today (UTC)
    export_settle_seconds: float = 2.0
    export_timeout_seconds: float = 600.0
    new_customer_days: int = 30
    active_days: int = 90
    lapsing_days: int = 180
    max_order_reject_rate: float = 0.05
    max_order_amount: float = DEFAULT_MAX_ORDER_AMOUNT
    membership_retention_days: int = 35

    def today(self) -> dt.date:
        return dt.date.fromisoformat(self.as_of) if self.as_of else dt.datetime.now(dt.UTC).date()

    def thresholds(self) -> LifecycleThresholds:
        return LifecycleThresholds(new_customer_days=self.new_customer_days, active_days=self.active_days,
                                   lapsing_days=self.lapsing_days)

    def audiences(self) -> list[Audience]:
        return load_audiences(Path(self.audiences_file))

    @property
    def raw_exports_dir(self) -> Path:
        return Path(self.home) / "raw" / "braze-exports"


def resources_for(settings: Settings) -> dict[str, dg.ConfigurableResource]:
    """The one place resources are chosen per profile."""
    prod = settings.profile == "prod"
    braze = settings.braze
    bucket = settings.bucket
    if prod:
        # Dagster resolves the EnvVars below from this process's environment when a run starts: settings read
        # from any other mapping would silently run with different secrets.
        for name, secret in (("BRAZE_API_KEY", braze.api_key), ("AWS_SECRET_ACCESS_KEY", bucket.secret_access_key)):
            if os.environ.get(name, "") != secret.get():
                raise SettingsError(f"{name} in the process environment differs from the prod settings given "
                                    "(Dagster reads secrets from the environment); the values are not shown")
    return {
        "warehouse": WarehouseResource(path=str(settings.warehouse_path),
                                       published_path=str(settings.published_store_path)),
        "bucket": BucketResource(
            local_root=str(bucket.local_root or ""),
            bucket=bucket.bucket, region=bucket.region, path_prefix=bucket.path_prefix,
            endpoint_url=bucket.endpoint_url, access_key_id=bucket.access_key_id,
            secret_access_key=dg.EnvVar("AWS_SECRET_ACCESS_KEY") if prod and bucket.secret_access_key else "",
        ),
        "braze": BrazeResource(
            endpoint=braze.endpoint,
            api_key=dg.EnvVar("BRAZE_API_KEY") if prod else braze.api_key.get(),
            export_segment_id=braze.export_segment_id, attribute_name=braze.attribute_name,
            batch_cap=braze.batch_cap, batch_mode=braze.batch_mode, array_cap=braze.array_cap,
            rate_limit_requests=braze.rate_limit_requests, rate_limit_window_s=braze.rate_limit_window_s,
            max_in_flight=braze.max_in_flight, max_retries=braze.max_retries,
            export_fields=list(braze.export_fields),
            emulator_dir=str(settings.emulator_dir) if not prod else "",
            emulator_bucket_root=str(bucket.local_root or ""),
            emulator_path_prefix=bucket.path_prefix,
        ),
        "sync": SyncResource(
            max_drop_share=settings.sync.max_drop_share, max_removals=settings.sync.max_removals,
            max_failed_runs=settings.sync.max_failed_runs, smtp_host=settings.sync.notify_smtp_host,
            smtp_port=settings.sync.notify_smtp_port, notify_from=settings.sync.notify_from,
            notify_to=list(settings.sync.notify_to),
            # a chat webhook URL embeds a token: in prod the UI only shows the variable name
            webhook_url=dg.EnvVar("LEXER_NOTIFY_WEBHOOK_URL") if prod and settings.sync.notify_webhook_url
            else settings.sync.notify_webhook_url,
        ),
        "pipeline": PipelineResource(
            home=str(settings.home), audiences_file=str(settings.audiences_file),
            orders_dir=str(settings.orders_dir), bucket_path_prefix=bucket.path_prefix,
            as_of=settings.as_of.isoformat() if settings.as_of else "",
            export_settle_seconds=settings.export_settle_seconds,
            export_timeout_seconds=settings.export_timeout_seconds,
            new_customer_days=settings.new_customer_days, active_days=settings.active_days,
            lapsing_days=settings.lapsing_days,
            max_order_reject_rate=settings.automation.max_order_reject_rate,
            max_order_amount=settings.automation.max_order_amount,
            membership_retention_days=settings.membership_retention_days,
        ),
    }
