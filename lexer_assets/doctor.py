"""`lexer-assets doctor`: check a configuration end to end, without changing any data, and say how to fix it.

Braze side (one REST key, one endpoint):
  endpoint on a Braze REST host (``rest.<cluster>.braze.com|eu``) or a local emulator; reachable; the key
  accepted (401 = wrong key *or* a key of another cluster); each permission the pipeline uses, probed with a
  request Braze must refuse as malformed (empty body): 403 means the permission is missing, a 400 (or 2xx)
  means the key passed the permission check and nothing was changed; the export segment id among the
  segments Braze lists (every page).
Bucket side: credentials found; the bucket exists, in the configured region; the export prefix
  ``[path/]segment-export/<segment>/`` listable; objects readable (an existing export file, or else a key that
  cannot exist: S3 answers 404 when reading is allowed and 403 when it is not).

Nothing here prints the REST key or the AWS secret: answers from Braze are scrubbed of the key before use.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx

from lexer_assets.braze.client import SEGMENTS_PAGE_SIZE
from lexer_assets.braze.export_landing import segment_prefix
from lexer_assets.settings import (
    BRAZE_REST_HOST,
    LOCAL_EMULATOR_ENDPOINT,
    BucketSettings,
    Settings,
    is_loopback_host,
)

Status = Literal["ok", "warn", "fail", "skip"]
NEW_KEY_REMEDY = ("REST keys cannot be edited: create a new key in Braze (Settings > APIs and Identifiers) with "
                  "users.track, users.export.segment, users.export.ids and segments.list, and set BRAZE_API_KEY")
MAX_SEGMENT_PAGES = 2000  # 200,000 segments: a safety stop, far beyond any workspace


@dataclass(frozen=True)
class Check:
    """One line of the checklist; ``remedy`` says what to change when ``status`` is fail (or warn)."""

    name: str
    status: Status
    detail: str
    remedy: str = ""


@dataclass
class _Answer:
    status: int | None  # None: no HTTP answer at all
    message: str
    body: Any = None


@dataclass
class DoctorReport:
    checks: list[Check] = field(default_factory=list)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == "fail"]

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def lines(self) -> list[str]:
        width = max((len(c.name) for c in self.checks), default=0)
        out = []
        for c in self.checks:
            out.append(f"  {c.status.upper() if c.status == 'fail' else c.status:<5} {c.name:<{width}}  {c.detail}")
            if c.remedy and c.status in ("fail", "warn"):
                out.append(f"  {'':<5} {'':<{width}}  fix: {c.remedy}")
        failed = len(self.failed)
        out.append(f"doctor: {failed} problem(s) found" if failed else "doctor: everything checked is in order")
        return out


# ---- Braze ----------------------------------------------------------------------------------------------
def endpoint_check(endpoint: str) -> Check:
    host = urlsplit(endpoint).hostname or ""
    if endpoint == LOCAL_EMULATOR_ENDPOINT:
        return Check("Braze endpoint", "ok", "the in-process local emulator (local profile)")
    if BRAZE_REST_HOST.match(host):
        cluster = host.split(".")[1]
        if not endpoint.startswith("https://"):
            return Check("Braze endpoint", "fail", f"{endpoint} is a Braze host but not https",
                         f"use https://{host}")
        return Check("Braze endpoint", "ok", f"{endpoint} is a Braze REST host (cluster {cluster})")
    if is_loopback_host(host):
        return Check("Braze endpoint", "ok", f"{endpoint} is a local emulator on loopback (not a Braze host)")
    return Check("Braze endpoint", "fail", f"{endpoint} is not a Braze REST host (rest.<cluster>.braze.com or .eu)",
                 "use the REST endpoint of your dashboard's cluster, e.g. dashboard-01.braze.com -> "
                 "https://rest.iad-01.braze.com, dashboard-01.braze.eu -> https://rest.fra-01.braze.eu "
                 "(Braze docs: 'API and SDK endpoints')")


class _Prober:
    """Raw, single-attempt requests (no retries: a doctor should answer fast), with the key scrubbed."""

    def __init__(self, endpoint: str, api_key: str, transport: httpx.AsyncBaseTransport | None,
                 timeout_s: float) -> None:
        self._key = api_key
        self._http = httpx.AsyncClient(base_url=endpoint, transport=transport, timeout=timeout_s,
                                       headers={"Authorization": f"Bearer {api_key}",
                                                "Content-Type": "application/json",
                                                "User-Agent": "lexer-assets-doctor"})

    def scrub(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    async def ask(self, method: str, path: str, *, body: bytes | None = None, params: dict | None = None
                  ) -> _Answer:
        try:
            response = await self._http.request(method, path, content=body, params=params)
        except httpx.HTTPError as exc:
            return _Answer(None, self.scrub(f"{type(exc).__name__}: {exc}"[:300]))
        try:
            parsed = response.json()
        except ValueError:
            parsed = None
        text = parsed.get("message") if isinstance(parsed, dict) else None
        return _Answer(response.status_code, self.scrub(str(text or response.text)[:300]), parsed)

    async def close(self) -> None:
        await self._http.aclose()


def _permission_check(permission: str, answer: _Answer, how: str) -> Check:
    name = f"permission {permission}"
    if answer.status == 403:
        return Check(name, "fail", f"Braze refused {how} with 403 Access Denied: the key lacks {permission}",
                     NEW_KEY_REMEDY)
    if answer.status == 429:
        return Check(name, "fail", f"rate limited (429) on {how}; could not tell",
                     "run the doctor again in a minute (another job may be using the rate limit)")
    if answer.status is not None and (answer.status == 400 or 200 <= answer.status < 300):
        return Check(name, "ok", f"granted ({how} with an empty body answered {answer.status}; nothing changed)")
    return Check(name, "fail", f"{how} answered {answer.status}: {answer.message}",
                 "run the doctor again; if it persists, check status.braze.com")


async def _braze_checks(endpoint: str, api_key: str, segment_id: str,
                        transport: httpx.AsyncBaseTransport | None, timeout_s: float) -> list[Check]:
    checks = [endpoint_check(endpoint)]
    host = urlsplit(endpoint).netloc
    prober = _Prober(endpoint, api_key, transport, timeout_s)
    try:
        started = time.monotonic()
        first = await prober.ask("GET", "/segments/list", params={"page": 0, "sort_direction": "asc"})
        elapsed_ms = (time.monotonic() - started) * 1000
        skip_rest = ["REST key", "permission segments.list", "export segment", "permission users.export.segment",
                     "permission users.export.ids", "permission users.track"]
        if first.status is None:
            checks.append(Check("Braze reachable", "fail", f"no answer from {host}: {first.message}",
                                "check BRAZE_REST_ENDPOINT's spelling, DNS, and that outbound HTTPS to it is "
                                "allowed (proxy, firewall, VPC egress)"))
            return checks + [Check(n, "skip", "Braze not reachable") for n in skip_rest]
        if first.status >= 500:
            checks.append(Check("Braze reachable", "fail", f"{host} answered HTTP {first.status}: {first.message}",
                                "a Braze-side problem: check status.braze.com and run the doctor again"))
            return checks + [Check(n, "skip", "Braze answered with a server error") for n in skip_rest]
        checks.append(Check("Braze reachable", "ok", f"{host} answered in {elapsed_ms:.0f} ms"))
        if first.status == 401 and endpoint == LOCAL_EMULATOR_ENDPOINT:
            checks.append(Check("REST key", "fail", "the local emulator does not know this key (401)",
                                "run `lexer-assets demo` once: it seeds the emulator and its key"))
            return checks + [Check(n, "skip", "the key was rejected") for n in skip_rest[1:]]
        if first.status == 401:
            checks.append(Check(
                "REST key", "fail", "Braze rejected the key (401): it is wrong, deleted, or belongs to another "
                "cluster than this endpoint",
                f"copy the key from Settings > APIs and Identifiers of the workspace whose dashboard matches "
                f"{host} (a key only works on its own cluster's REST endpoint), and set BRAZE_API_KEY"))
            return checks + [Check(n, "skip", "the key was rejected") for n in skip_rest[1:]]
        checks.append(Check("REST key", "ok", "accepted"))

        checks.append(_permission_check("segments.list", first, "GET /segments/list")
                      if first.status != 200 else
                      Check("permission segments.list", "ok", "granted (GET /segments/list answered 200)"))
        if first.status == 200:
            checks.append(await _segment_check(prober, first, segment_id))
        else:
            checks.append(Check("export segment", "skip", "cannot list segments without segments.list"))

        for permission, path in (("users.export.segment", "/users/export/segment"),
                                 ("users.export.ids", "/users/export/ids"), ("users.track", "/users/track")):
            # An empty JSON object names no segment, no user and no attribute: Braze can only refuse it (400)
            # after the permission check, or refuse the permission (403). Nothing is exported or written.
            answer = await prober.ask("POST", path, body=b"{}")
            checks.append(_permission_check(permission, answer, f"POST {path}"))
        return checks
    finally:
        await prober.close()


async def _segment_check(prober: _Prober, first: _Answer, segment_id: str) -> Check:
    name = "export segment"
    listed = 0
    page, answer = 0, first
    while True:
        segments = (answer.body or {}).get("segments") if isinstance(answer.body, dict) else None
        segments = segments if isinstance(segments, list) else []
        listed += len(segments)
        for seg in segments:
            if isinstance(seg, dict) and seg.get("id") == segment_id:
                return Check(name, "ok", f"{segment_id} is {seg.get('name')!r} (segment list page {page + 1})")
        if len(segments) < SEGMENTS_PAGE_SIZE or page + 1 >= MAX_SEGMENT_PAGES:
            break
        page += 1
        answer = await prober.ask("GET", "/segments/list", params={"page": page, "sort_direction": "asc"})
        if answer.status != 200:
            return Check(name, "fail", f"GET /segments/list page {page} answered {answer.status}: "
                         f"{answer.message}", "run the doctor again")
    return Check(name, "fail", f"BRAZE_EXPORT_SEGMENT_ID {segment_id} is not among the {listed} segments Braze "
                 f"lists ({page + 1} page(s))",
                 "copy the segment's 'API Identifier' from Segments > (the segment) in the same workspace as the "
                 "key; archived segments are not listed and cannot be exported")


def braze_checks(endpoint: str, api_key: str, segment_id: str, *,
                 transport: httpx.AsyncBaseTransport | None = None, timeout_s: float = 10.0) -> list[Check]:
    """Every Braze-side check for one endpoint and key (see the module docstring)."""
    return asyncio.run(_braze_checks(endpoint, api_key, segment_id, transport, timeout_s))


# ---- bucket -----------------------------------------------------------------------------------------------
def _aws_error(exc: Exception) -> tuple[str, int | None, dict]:
    response = getattr(exc, "response", None) or {}
    code = str((response.get("Error") or {}).get("Code") or type(exc).__name__)
    meta = response.get("ResponseMetadata") or {}
    return code, meta.get("HTTPStatusCode"), meta.get("HTTPHeaders") or {}


def _s3_client(bucket: BucketSettings) -> Any:
    import boto3
    from botocore.config import Config

    kwargs: dict[str, Any] = {"region_name": bucket.region or None,
                              "config": Config(retries={"max_attempts": 1, "mode": "standard"},
                                               connect_timeout=5, read_timeout=10)}
    if bucket.endpoint_url:
        kwargs["endpoint_url"] = bucket.endpoint_url
    if bucket.access_key_id:
        kwargs["aws_access_key_id"] = bucket.access_key_id
        kwargs["aws_secret_access_key"] = bucket.secret_access_key.get()
    return boto3.session.Session().client("s3", **kwargs)


def _masked_key_id(key_id: str) -> str:
    return f"{key_id[:4]}...{key_id[-4:]}" if len(key_id) > 8 else "***"


def s3_checks(bucket: BucketSettings, segment_id: str, *, client_factory: Callable[[BucketSettings], Any]
              = _s3_client) -> list[Check]:
    """Credentials, bucket and region, listing and reading under the export prefix. Reads only."""
    name = bucket.bucket
    where = f"s3://{name}" + (f" at {bucket.endpoint_url}" if bucket.endpoint_url else "")
    checks: list[Check] = []
    if bucket.access_key_id:
        checks.append(Check("AWS credentials", "ok", f"access key {_masked_key_id(bucket.access_key_id)} from "
                            "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"))
    else:
        import boto3

        creds = boto3.session.Session().get_credentials()
        if creds is None:
            checks.append(Check("AWS credentials", "fail", "none set and none found by the default AWS chain",
                                "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or give the machine/pod a role "
                                "(instance profile, IRSA) or an AWS_PROFILE"))
            return checks + [Check(n, "skip", "no credentials") for n in ("S3 bucket", "S3 listable", "S3 readable")]
        checks.append(Check("AWS credentials", "ok", f"default AWS credential chain ({creds.method})"))
    client = client_factory(bucket)
    rest = ("S3 listable", "S3 readable")

    try:
        head = client.head_bucket(Bucket=name)
        region = (head.get("ResponseMetadata", {}).get("HTTPHeaders") or {}).get("x-amz-bucket-region")
        problem = None
    except Exception as exc:  # botocore raises many types; the code and status decide
        code, status, headers = _aws_error(exc)
        region, problem = headers.get("x-amz-bucket-region"), (code, status, exc)
    if problem is not None:
        code, status, exc = problem
        if status == 404 or code in ("404", "NoSuchBucket"):
            checks.append(Check("S3 bucket", "fail", f"{where} does not exist",
                                "set LEXER_S3_BUCKET to the bucket named in Braze's Amazon S3 integration "
                                "(Partner Integrations > Technology Partners > Amazon S3)"))
            return checks + [Check(n, "skip", "no bucket") for n in rest]
        if status in (301, 400) and region and region != bucket.region:
            pass  # wrong region: reported below with the bucket's real region
        elif status == 403:
            checks.append(Check("S3 bucket", "fail", f"access to {where} denied (403)",
                                f"allow s3:ListBucket on arn:aws:s3:::{name} and s3:GetObject on "
                                f"arn:aws:s3:::{name}/* for these credentials"))
            return checks + [Check(n, "skip", "bucket not accessible") for n in rest]
        else:
            checks.append(Check("S3 bucket", "fail", f"{where} could not be reached: {code} "
                                f"({str(exc)[:200]})",
                                "check LEXER_S3_ENDPOINT_URL (blank for AWS), LEXER_S3_REGION and network egress"))
            return checks + [Check(n, "skip", "bucket not reachable") for n in rest]
    if not region:
        try:
            region = client.get_bucket_location(Bucket=name).get("LocationConstraint") or "us-east-1"
        except Exception:  # GetBucketLocation may be denied; the region then stays unverified
            region = None
    if region and region != bucket.region:
        checks.append(Check("S3 bucket", "fail", f"{where} is in region {region}, LEXER_S3_REGION is "
                            f"{bucket.region}", f"set LEXER_S3_REGION={region}"))
        return checks + [Check(n, "skip", "wrong region") for n in rest]
    checks.append(Check("S3 bucket", "ok", f"{where} exists, region {region or bucket.region}"
                        + ("" if region else " (not verifiable: GetBucketLocation denied)")))

    prefix = segment_prefix(bucket.path_prefix, segment_id)
    try:
        page = client.list_objects_v2(Bucket=name, Prefix=prefix, MaxKeys=1000)
    except Exception as exc:
        code, status, _ = _aws_error(exc)
        checks.append(Check("S3 listable", "fail", f"listing s3://{name}/{prefix} failed: {code} ({status})",
                            f"allow s3:ListBucket on arn:aws:s3:::{name} (for the prefix {prefix})"))
        return checks + [Check("S3 readable", "skip", "listing failed")]
    objects = page.get("Contents") or []
    if objects:
        checks.append(Check("S3 listable", "ok", f"s3://{name}/{prefix} lists "
                            f"{'1,000+' if page.get('IsTruncated') else len(objects)} object(s)"))
    else:
        checks.append(Check("S3 listable", "ok", f"s3://{name}/{prefix} is listable and empty (no export yet)"))
        hint = _path_hint(client, name, bucket.path_prefix)
        if hint:
            checks.append(Check("S3 path", "warn", hint[0], hint[1]))

    key = objects[0]["Key"] if objects else f"{prefix}lexer-doctor-probe-{int(time.time())}-missing"
    try:
        client.get_object(Bucket=name, Key=key, Range="bytes=0-0")["Body"].close()
        checks.append(Check("S3 readable", "ok", f"read the first byte of {key}"))
    except Exception as exc:
        code, status, _ = _aws_error(exc)
        if not objects and (status == 404 or code in ("NoSuchKey", "404")):
            checks.append(Check("S3 readable", "ok", "reading is allowed (a missing key answers 404, not 403)"))
        else:
            checks.append(Check("S3 readable", "fail", f"reading s3://{name}/{key} failed: {code} ({status})",
                                f"allow s3:GetObject on arn:aws:s3:::{name}/{prefix}*"))
    return checks


def _path_hint(client: Any, name: str, path: str) -> tuple[str, str] | None:
    """If exports sit under another path than LEXER_S3_PATH, say so (Braze's path and ours must be equal)."""
    try:
        top = client.list_objects_v2(Bucket=name, Delimiter="/", MaxKeys=1000)
    except Exception:
        return None
    folders = [p.get("Prefix", "") for p in top.get("CommonPrefixes") or []]
    if path and "segment-export/" in folders:
        return (f"exports exist at the bucket root (segment-export/) but LEXER_S3_PATH is {path!r}",
                "LEXER_S3_PATH must equal the path in Braze's S3 integration: blank if it has none")
    if not path and folders and "segment-export/" not in folders:
        return (f"nothing under segment-export/ at the bucket root; top-level folders: {', '.join(folders[:5])}",
                "if Braze's S3 integration has a path, set LEXER_S3_PATH to it")
    return None


def local_bucket_checks(bucket: BucketSettings) -> list[Check]:
    root = bucket.local_root
    assert root is not None
    if not root.exists():
        return [Check("bucket folder", "ok", f"{root} (created by the first export)")]
    if not root.is_dir():
        return [Check("bucket folder", "fail", f"{root} is not a folder", "set LEXER_BUCKET_DIR to a folder")]
    try:
        entries = sum(1 for _ in root.iterdir())
    except OSError as exc:
        return [Check("bucket folder", "fail", f"{root} cannot be listed: {exc.strerror}",
                      "give this user read access to the folder")]
    return [Check("bucket folder", "ok", f"{root} is listable ({entries} entries)")]


# ---- everything -------------------------------------------------------------------------------------------
def emulator_transport(settings: Settings) -> httpx.AsyncBaseTransport | None:
    """The in-process emulator (local profile's default endpoint), exactly as the Braze resource builds it."""
    if settings.braze.endpoint != LOCAL_EMULATOR_ENDPOINT:
        return None
    from lexer_assets.braze.emulator import EmulatorConfig, make_app

    config = EmulatorConfig(bucket_root=settings.bucket.local_root, bucket_path_prefix=settings.bucket.path_prefix,
                            export_delay_s=0)
    return httpx.ASGITransport(app=make_app(settings.emulator_dir, config=config))


def run_doctor(settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None,
               timeout_s: float = 10.0) -> DoctorReport:
    transport = transport or emulator_transport(settings)
    checks = braze_checks(settings.braze.endpoint, settings.braze.api_key.get(),
                          settings.braze.export_segment_id, transport=transport, timeout_s=timeout_s)
    if settings.bucket.is_local:
        checks += local_bucket_checks(settings.bucket)
    else:
        checks += s3_checks(settings.bucket, settings.braze.export_segment_id)
    return DoctorReport(checks)


def header(settings: Settings) -> str:
    b = settings.bucket
    bucket = (f"local folder {b.local_root}" if b.is_local else
              f"s3://{b.bucket}/{b.path_prefix} ({b.region})".replace("/ (", " ("))
    return (f"lexer-assets doctor: profile {settings.profile}, Braze {settings.braze.endpoint}, "
            f"segment {settings.braze.export_segment_id}, bucket {bucket}")
