"""The emulator's HTTP API (Starlette): Braze's endpoints, auth, rate limits, exports, fault injection.

Braze endpoints: ``POST /users/track``, ``POST /users/export/segment``, ``GET /segments/list``,
``POST /users/export/ids``. Test hooks under ``/_emulator/`` (no auth): ``GET stats`` (request log),
``POST config`` (change fault knobs and limits at runtime), ``POST reset-stats`` (request log and rate windows).

Fault injection (dropped connections in particular) is meant for the served emulator: in-process through
``httpx.ASGITransport`` a dropped connection surfaces as an exception from the app instead.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import logging
import math
import random
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from lexer_assets.braze.emulator.export_writer import (
    Bucket,
    LocalFolderBucket,
    S3Bucket,
    export_folder,
    project_fields,
    write_export,
)
from lexer_assets.braze.emulator.state import EmulatorState

log = logging.getLogger(__name__)

MAX_EXPORT_IDS = 50
SEGMENTS_PAGE_SIZE = 100


@dataclass
class EmulatorConfig:
    """How the emulated workspace behaves. Every field has a Braze-like default except the bucket."""

    bucket_root: Path | None = None  # local folder playing the bucket
    s3_endpoint_url: str | None = None  # with s3_bucket: write exports to S3 through boto3 instead
    s3_bucket: str | None = None
    s3_region: str | None = None
    aws_access_key_id: str | None = dataclasses.field(default=None, repr=False)
    aws_secret_access_key: str | None = dataclasses.field(default=None, repr=False)
    bucket_path_prefix: str = ""
    # Braze writes files a little after answering; 0 writes them before the answer (the in-process local
    # profile needs 0: a Dagster step process may exit right after the request).
    export_delay_s: float = 1.0
    users_per_file: int = 5000
    duplicate_rate: float = 0.002
    max_array_length: int = 100
    track_batch_cap: int = 75
    track_batch_mode: str = "total"  # or "per_array"
    track_rate_limit: int = 3000
    track_rate_window_s: float = 3.0
    other_rate_limit: int = 250_000
    other_rate_window_s: float = 3600.0
    # fault knobs (probabilities per request, and added latency)
    fault_429_rate: float = 0.0
    fault_5xx_rate: float = 0.0
    fault_drop_rate: float = 0.0
    latency_s: float = 0.0
    latency_jitter_s: float = 0.0
    fault_seed: int = 0
    # an attributes object carrying this key makes the whole request a 400 (to exercise bisection)
    bad_request_marker: str = "__emulator_bad_request__"
    # when set, every applied /users/track request appends one JSON line here: its attributes objects and
    # the values it added to users who already held them (tests check the sync never does either)
    journal_path: str = ""

    def to_json(self) -> str:
        return json.dumps({k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()})

    @classmethod
    def from_json(cls, text: str) -> EmulatorConfig:
        raw = json.loads(text)
        if raw.get("bucket_root"):
            raw["bucket_root"] = Path(raw["bucket_root"])
        return cls(**raw)

    def bucket(self) -> Bucket | None:
        if self.s3_bucket:
            return S3Bucket(
                self.s3_bucket,
                endpoint_url=self.s3_endpoint_url,
                region=self.s3_region,
                access_key_id=self.aws_access_key_id,
                secret_access_key=self.aws_secret_access_key,
            )
        if self.bucket_root is not None:
            return LocalFolderBucket(self.bucket_root)
        return None


class FixedWindowCounter:
    """Braze-style fixed windows aligned to the epoch; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._windows: dict[str, tuple[int, int]] = {}

    def hit(self, group: str, limit: int, window_s: float, now: float | None = None) -> tuple[bool, dict[str, str]]:
        """Count one request; returns (allowed, rate-limit headers)."""
        now = time.time() if now is None else now
        index = int(now // window_s)
        with self._lock:
            current, count = self._windows.get(group, (index, 0))
            if current != index:
                count = 0
            allowed = count < limit
            if allowed:
                count += 1
            self._windows[group] = (index, count)
        reset = math.ceil((index + 1) * window_s)
        headers = {
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Remaining": str(max(0, limit - count)),
            "X-RateLimit-Reset": str(reset),
        }
        return allowed, headers


class _DroppedConnection(Response):
    """Starts an answer and dies mid-body: the server closes the connection, the client sees it dropped."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"4096")],
            }
        )
        await send({"type": "http.response.body", "body": b'{"message":', "more_body": True})
        raise ConnectionAbortedError("emulator fault injection: connection dropped")


class _Emulator:
    def __init__(self, state_dir: Path, config: EmulatorConfig) -> None:
        self.state = EmulatorState(state_dir)
        self.config = config
        self.counter = FixedWindowCounter()
        self.random = random.Random(config.fault_seed)
        self.request_log: deque[dict] = deque(maxlen=50_000)
        self._perm_cache: dict[str, tuple[float, frozenset[str] | None]] = {}
        self._log_lock = threading.Lock()

    # ---- common request handling ---------------------------------------------------------------------
    def _permissions(self, key: str) -> frozenset[str] | None:
        now = time.monotonic()
        cached = self._perm_cache.get(key)
        if cached is not None and now - cached[0] < 1.0:
            return cached[1]
        perms = self.state.key_permissions(key)
        self._perm_cache[key] = (now, perms)
        return perms

    def _record(self, path: str, status: int, headers: dict[str, str], objects: int = 0) -> None:
        with self._log_lock:
            self.request_log.append(
                {
                    "t": time.time(),
                    "path": path,
                    "status": status,
                    "objects": objects,
                    "reset": headers.get("X-RateLimit-Reset"),
                    "remaining": headers.get("X-RateLimit-Remaining"),
                }
            )

    def _answer(self, path: str, status: int, body: dict, headers: dict[str, str], objects: int = 0) -> Response:
        self._record(path, status, headers, objects)
        return JSONResponse(body, status_code=status, headers=headers)

    async def _guard(self, request: Request, permission: str, group: str) -> tuple[Response | None, dict]:
        """Latency, auth, rate limit and injected faults; returns (early answer or None, headers)."""
        cfg = self.config
        path = request.url.path
        if cfg.latency_s or cfg.latency_jitter_s:
            await asyncio.sleep(cfg.latency_s + self.random.uniform(0, cfg.latency_jitter_s))
        auth = request.headers.get("authorization", "")
        key = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        perms = self._permissions(key) if key else None
        if perms is None:
            # Braze echoes the key it did not recognise; clients must not pass this body on verbatim.
            return self._answer(path, 401, {"message": f"Invalid API key: {key}"}, {}), {}
        if permission not in perms:
            return self._answer(path, 403, {"message": "Access Denied"}, {}), {}
        if group == "track":
            allowed, headers = self.counter.hit(group, cfg.track_rate_limit, cfg.track_rate_window_s)
        else:
            allowed, headers = self.counter.hit(group, cfg.other_rate_limit, cfg.other_rate_window_s)
        if not allowed or (cfg.fault_429_rate and self.random.random() < cfg.fault_429_rate):
            if allowed:  # injected: pretend the window is spent
                headers = {**headers, "X-RateLimit-Remaining": "0"}
            return self._answer(path, 429, {"message": "API rate limit exceeded"}, headers), headers
        if cfg.fault_5xx_rate and self.random.random() < cfg.fault_5xx_rate:
            status = self.random.choice((500, 502, 503))
            return self._answer(path, status, {"message": "Internal server error"}, headers), headers
        if cfg.fault_drop_rate and self.random.random() < cfg.fault_drop_rate:
            self._record(path, 0, headers)
            return _DroppedConnection(), headers
        return None, headers

    @staticmethod
    async def _json_body(request: Request) -> Any:
        try:
            raw = await request.body()
        except ClientDisconnect:  # the client gave up (e.g. its timeout); nobody reads the answer
            return _INVALID
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return _INVALID

    # ---- endpoints -------------------------------------------------------------------------------------
    async def track(self, request: Request) -> Response:
        early, headers = await self._guard(request, "users.track", "track")
        if early is not None:
            return early
        path = "/users/track"
        body = await self._json_body(request)
        if body is _INVALID or not isinstance(body, dict):
            return self._answer(path, 400, {"message": "Request body must be a JSON object"}, headers)
        arrays = {name: body.get(name) or [] for name in ("attributes", "events", "purchases")}
        for name, value in arrays.items():
            if not isinstance(value, list):
                return self._answer(path, 400, {"message": f"'{name}' must be an array"}, headers)
        cap = self.config.track_batch_cap
        sizes = [len(v) for v in arrays.values()]
        too_many = (sum(sizes) > cap) if self.config.track_batch_mode == "total" else (max(sizes) > cap)
        if too_many:
            return self._answer(
                path,
                400,
                {"message": f"Too many objects in one request: at most {cap} ({self.config.track_batch_mode})"},
                headers,
                sum(sizes),
            )
        if not any(sizes):
            return self._answer(
                path,
                400,
                {"message": "Valid data must be provided in the 'attributes', 'events', or 'purchases' fields."},
                headers,
            )
        attributes = arrays["attributes"]
        marker = self.config.bad_request_marker
        if marker and any(isinstance(o, dict) and marker in o for o in attributes):
            return self._answer(path, 400, {"message": "Malformed attributes object"}, headers, len(attributes))
        outcome = self.state.apply_track(attributes, max_array_length=self.config.max_array_length)
        if self.config.journal_path:
            line = json.dumps({"t": time.time(), "attributes": attributes, "readds": outcome.readds})
            with self._log_lock, open(self.config.journal_path, "a") as journal:
                journal.write(line + "\n")
        answer: dict[str, Any] = {"message": "success"}
        if attributes:
            answer["attributes_processed"] = outcome.processed
        if arrays["events"]:
            answer["events_processed"] = len(arrays["events"])  # accepted, not stored
        if arrays["purchases"]:
            answer["purchases_processed"] = len(arrays["purchases"])
        if outcome.errors:
            answer["errors"] = outcome.errors
        return self._answer(path, 201, answer, headers, len(attributes))

    async def export_segment(self, request: Request) -> Response:
        early, headers = await self._guard(request, "users.export.segment", "other")
        if early is not None:
            return early
        path = "/users/export/segment"
        body = await self._json_body(request)
        if not isinstance(body, dict):
            return self._answer(path, 400, {"message": "Request body must be a JSON object"}, headers)
        segment_id = body.get("segment_id")
        fields = body.get("fields_to_export")
        output_format = body.get("output_format") or "zip"
        custom = body.get("custom_attributes_to_export")
        if not isinstance(segment_id, str) or not segment_id:
            return self._answer(path, 400, {"message": "'segment_id' is required"}, headers)
        if not isinstance(fields, list) or not fields:
            return self._answer(path, 400, {"message": "'fields_to_export' is required"}, headers)
        if output_format not in ("zip", "gzip"):
            return self._answer(path, 400, {"message": "'output_format' must be 'zip' or 'gzip'"}, headers)
        if custom is not None and (not isinstance(custom, list) or len(custom) > 500):
            return self._answer(
                path, 400, {"message": "'custom_attributes_to_export' must be an array of at most 500 names"}, headers
            )
        if self.state.segment_rule(segment_id) is None:
            return self._answer(path, 400, {"message": f"Segment {segment_id} not found"}, headers)
        bucket = self.config.bucket()
        if bucket is None:
            return self._answer(path, 400, {"message": "No bucket is connected to the emulator"}, headers)
        object_prefix = f"{uuid.uuid4()}-{int(time.time())}"
        if not self.state.start_export(segment_id, object_prefix):
            return self._answer(
                path, 429, {"message": f"An export of segment {segment_id} is already running"}, headers
            )
        folder = export_folder(
            self.config.bucket_path_prefix, segment_id, dt.datetime.now(dt.UTC).strftime("%Y-%m-%d"), object_prefix
        )
        job = (segment_id, fields, custom, output_format, bucket, folder, object_prefix)
        if self.config.export_delay_s <= 0:
            await run_in_threadpool(self._run_export, *job)
        else:
            threading.Thread(
                target=self._run_export,
                args=job,
                kwargs={"delay": self.config.export_delay_s},
                name=f"emulator-export-{object_prefix}",
                daemon=True,
            ).start()
        return self._answer(path, 201, {"message": "success", "object_prefix": object_prefix}, headers)

    def _run_export(
        self,
        segment_id: str,
        fields: list[str],
        custom: list[str] | None,
        output_format: str,
        bucket: Bucket,
        folder: str,
        object_prefix: str,
        delay: float = 0.0,
    ) -> None:
        if delay:
            time.sleep(delay)
        files = users = 0
        try:
            projected = (project_fields(u, fields, custom) for u in self.state.segment_users(segment_id))
            keys, users = write_export(
                projected,
                bucket,
                folder,
                output_format=output_format,
                users_per_file=self.config.users_per_file,
                duplicate_rate=self.config.duplicate_rate,
            )
            files = len(keys)
        except Exception as exc:  # recorded, and the export stops blocking its segment
            log.exception("emulator export %s failed", object_prefix)
            self.state.finish_export(object_prefix, files=files, users=users, error=str(exc)[:500])
            return
        self.state.finish_export(object_prefix, files=files, users=users)

    async def segments_list(self, request: Request) -> Response:
        early, headers = await self._guard(request, "segments.list", "other")
        if early is not None:
            return early
        path = "/segments/list"
        try:
            page = int(request.query_params.get("page", "0"))
        except ValueError:
            return self._answer(path, 400, {"message": "'page' must be a whole number"}, headers)
        direction = request.query_params.get("sort_direction", "asc")
        if page < 0 or direction not in ("asc", "desc"):
            return self._answer(path, 400, {"message": "invalid 'page' or 'sort_direction'"}, headers)
        segments = self.state.segments()
        if direction == "desc":
            segments.reverse()
        chunk = segments[page * SEGMENTS_PAGE_SIZE : (page + 1) * SEGMENTS_PAGE_SIZE]
        return self._answer(path, 200, {"message": "success", "segments": chunk}, headers)

    async def export_ids(self, request: Request) -> Response:
        early, headers = await self._guard(request, "users.export.ids", "other")
        if early is not None:
            return early
        path = "/users/export/ids"
        body = await self._json_body(request)
        if not isinstance(body, dict):
            return self._answer(path, 400, {"message": "Request body must be a JSON object"}, headers)
        external_ids = body.get("external_ids") or []
        aliases = body.get("user_aliases") or []
        if not isinstance(external_ids, list) or not isinstance(aliases, list):
            return self._answer(path, 400, {"message": "'external_ids' and 'user_aliases' must be arrays"}, headers)
        if len(external_ids) + len(aliases) > MAX_EXPORT_IDS:
            return self._answer(path, 400, {"message": f"At most {MAX_EXPORT_IDS} ids per request"}, headers)
        alias_keys = []
        for a in aliases:
            if not (isinstance(a, dict) and a.get("alias_name") and a.get("alias_label")):
                return self._answer(path, 400, {"message": "user_aliases need alias_name and alias_label"}, headers)
            alias_keys.append((a["alias_label"], a["alias_name"]))
        users, missing = self.state.lookup(
            external_ids=[str(e) for e in external_ids],
            aliases=alias_keys,
            braze_id=body.get("braze_id"),
            email=body.get("email_address"),
            phone=body.get("phone"),
        )
        fields = body.get("fields_to_export")
        if isinstance(fields, list) and fields:
            users = [project_fields(u, fields, None) for u in users]
        return self._answer(path, 201, {"users": users, "invalid_user_ids": missing, "message": "success"}, headers)

    # ---- test hooks --------------------------------------------------------------------------------------
    async def stats(self, request: Request) -> Response:
        with self._log_lock:
            entries = list(self.request_log)
        return JSONResponse({"requests": entries, "exports": self.state.exports()})

    async def reset_stats(self, request: Request) -> Response:
        with self._log_lock:
            self.request_log.clear()
        self.counter = FixedWindowCounter()  # rate windows start empty too
        return JSONResponse({"message": "success"})

    async def set_config(self, request: Request) -> Response:
        changes = await request.json()
        known = {f.name for f in dataclasses.fields(EmulatorConfig)}
        unknown = set(changes) - known
        if unknown:
            return JSONResponse({"message": f"unknown config fields {sorted(unknown)}"}, status_code=400)
        if "bucket_root" in changes and changes["bucket_root"]:
            changes["bucket_root"] = Path(changes["bucket_root"])
        self.config = dataclasses.replace(self.config, **changes)
        if "fault_seed" in changes:
            self.random = random.Random(self.config.fault_seed)
        return JSONResponse({"message": "success"})


_INVALID = object()


def make_app(state_dir: Path, *, config: EmulatorConfig | None = None) -> Starlette:
    """The emulator as an ASGI app over the state in ``state_dir`` (usable with httpx.ASGITransport)."""
    emulator = _Emulator(Path(state_dir), config or EmulatorConfig())
    app = Starlette(
        routes=[
            Route("/users/track", emulator.track, methods=["POST"]),
            Route("/users/export/segment", emulator.export_segment, methods=["POST"]),
            Route("/segments/list", emulator.segments_list, methods=["GET"]),
            Route("/users/export/ids", emulator.export_ids, methods=["POST"]),
            Route("/_emulator/stats", emulator.stats, methods=["GET"]),
            Route("/_emulator/reset-stats", emulator.reset_stats, methods=["POST"]),
            Route("/_emulator/config", emulator.set_config, methods=["POST"]),
        ]
    )
    app.state.emulator = emulator
    return app
