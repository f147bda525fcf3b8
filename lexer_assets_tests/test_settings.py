"""Settings from the environment: every prod value, and every missing or malformed one failing at load with a
message that names the variable (and never shows a secret)."""

from __future__ import annotations

import re
from pathlib import Path

import dagster as dg
import pytest

from lexer_assets.defs.resources import resources_for
from lexer_assets.settings import Secret, Settings, SettingsError

REPO = Path(__file__).resolve().parent.parent
PROD = {
    "LEXER_PROFILE": "prod",
    "BRAZE_REST_ENDPOINT": "https://rest.fra-02.braze.eu/",
    "BRAZE_API_KEY": "0d6c2f6e-key-under-test",
    "BRAZE_EXPORT_SEGMENT_ID": "8a1f7c52-3b9e-4d0c-b6a2-5e7f9d1c3b4a",
    "LEXER_S3_BUCKET": "brand-braze-exports",
    "LEXER_S3_REGION": "eu-central-1",
    "LEXER_S3_PATH": "/braze/exports/",
    "LEXER_S3_ENDPOINT_URL": "",
    "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
}


def prod(tmp_path: Path, **changes: str | None) -> Settings:
    env = {**PROD, "LEXER_HOME": str(tmp_path)}
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return Settings.from_env(env)


def test_prod_values_are_read(tmp_path: Path) -> None:
    s = prod(tmp_path, LEXER_BRAZE_ATTRIBUTE="hub_audiences", LEXER_BRAZE_BATCH_CAP="50",
             LEXER_BRAZE_BATCH_MODE="per_array", LEXER_BRAZE_ARRAY_CAP="25", LEXER_BRAZE_RATE_LIMIT="50000",
             LEXER_BRAZE_RATE_WINDOW_S="60", LEXER_S3_ENDPOINT_URL="https://minio.internal:9000")
    assert s.profile == "prod"
    assert s.braze.endpoint == "https://rest.fra-02.braze.eu"  # trailing slash dropped
    assert s.braze.api_key.get() == "0d6c2f6e-key-under-test"
    assert s.braze.export_segment_id == "8a1f7c52-3b9e-4d0c-b6a2-5e7f9d1c3b4a"
    assert (s.braze.attribute_name, s.braze.batch_cap, s.braze.batch_mode, s.braze.array_cap) == \
        ("hub_audiences", 50, "per_array", 25)
    assert (s.braze.rate_limit_requests, s.braze.rate_limit_window_s) == (50000, 60.0)
    b = s.bucket
    assert not b.is_local
    assert (b.bucket, b.region, b.path_prefix, b.endpoint_url) == \
        ("brand-braze-exports", "eu-central-1", "braze/exports", "https://minio.internal:9000")
    assert b.access_key_id == "AKIAIOSFODNN7EXAMPLE"
    assert b.secret_access_key.get() == PROD["AWS_SECRET_ACCESS_KEY"]


def test_prod_defaults(tmp_path: Path) -> None:
    s = prod(tmp_path, LEXER_S3_PATH=None, AWS_ACCESS_KEY_ID=None, AWS_SECRET_ACCESS_KEY=None,
             LEXER_S3_ENDPOINT_URL=None)
    assert s.bucket.path_prefix == ""  # empty allowed: Braze's integration has no path
    assert s.bucket.access_key_id == "" and not s.bucket.secret_access_key  # the default AWS credential chain
    assert (s.braze.attribute_name, s.braze.batch_cap, s.braze.batch_mode, s.braze.array_cap) == \
        ("lexer_audience", 75, "total", 100)
    assert (s.braze.rate_limit_requests, s.braze.rate_limit_window_s) == (3000, 3.0)


@pytest.mark.parametrize("name", ["BRAZE_REST_ENDPOINT", "BRAZE_API_KEY", "BRAZE_EXPORT_SEGMENT_ID",
                                  "LEXER_S3_BUCKET", "LEXER_S3_REGION"])
@pytest.mark.parametrize("how", ["unset", "blank"])
def test_missing_prod_setting_is_named(tmp_path: Path, name: str, how: str) -> None:
    with pytest.raises(SettingsError, match=name):
        prod(tmp_path, **{name: None if how == "unset" else ""})


MALFORMED = [
    ("LEXER_PROFILE", "production"),
    ("BRAZE_REST_ENDPOINT", "rest.iad-01.braze.com"),  # no scheme
    ("BRAZE_REST_ENDPOINT", "http://rest.iad-01.braze.com"),  # prod talks https
    ("BRAZE_REST_ENDPOINT", "https://rest.iad-01.braze.com/users/track"),  # a path, not the endpoint
    ("BRAZE_REST_ENDPOINT", "https://"),
    ("BRAZE_EXPORT_SEGMENT_ID", "../../etc"),
    ("BRAZE_EXPORT_SEGMENT_ID", "segment id with spaces"),
    ("LEXER_S3_BUCKET", "Brand_Exports"),
    ("LEXER_S3_BUCKET", "s3://brand-exports"),
    ("LEXER_S3_REGION", "Frankfurt"),
    ("LEXER_S3_PATH", "exports/../other"),
    ("LEXER_S3_PATH", "exports//daily"),
    ("LEXER_S3_PATH", "exports\\daily"),
    ("LEXER_S3_ENDPOINT_URL", "minio:9000"),
    ("AWS_ACCESS_KEY_ID", "not a key id"),
    ("LEXER_BRAZE_ATTRIBUTE", "$reserved"),
    ("LEXER_BRAZE_ATTRIBUTE", "a" * 256),
    ("LEXER_BRAZE_BATCH_CAP", "76"),
    ("LEXER_BRAZE_BATCH_CAP", "0"),
    ("LEXER_BRAZE_BATCH_CAP", "seventy"),
    ("LEXER_BRAZE_BATCH_MODE", "sum"),
    ("LEXER_BRAZE_ARRAY_CAP", "501"),
    ("LEXER_BRAZE_RATE_LIMIT", "0"),
    ("LEXER_BRAZE_RATE_LIMIT", "3000/3s"),
    ("LEXER_BRAZE_RATE_WINDOW_S", "0"),
    ("LEXER_BRAZE_RATE_WINDOW_S", "nan"),
    ("LEXER_BRAZE_MAX_IN_FLIGHT", "0"),
    ("LEXER_EXPORT_TIMEOUT_S", "-5"),
    ("LEXER_EXPORT_SETTLE_S", "two"),
    ("LEXER_AS_OF", "2026-13-01"),
    ("LEXER_PARTITIONS_START", "yesterday"),
    ("LEXER_ACTIVE_DAYS", "0"),
    ("LEXER_ACTIVE_DAYS", "400"),
    ("LEXER_AS_OF", "2099-01-01"),  # no partition after today
    ("LEXER_AS_OF", "2025-06-01"),  # before LEXER_PARTITIONS_START (2026-01-01)
    ("LEXER_PARTITIONS_START", "2099-01-01"),
    ("LEXER_NOTIFY_SMTP_PORT", "99999"),  # more than LEXER_LAPSING_DAYS (180): nobody could be lapsing
    ("LEXER_MAX_ORDER_AMOUNT", "1e13"),
    ("LEXER_MAX_ORDER_AMOUNT", "0"),
    ("LEXER_MEMBERSHIP_RETENTION_DAYS", "0"),
]


@pytest.mark.parametrize(("name", "value"), MALFORMED, ids=[f"{n}={v[:20]}" for n, v in MALFORMED])
def test_malformed_setting_is_named(tmp_path: Path, name: str, value: str) -> None:
    with pytest.raises(SettingsError) as err:
        prod(tmp_path, **{name: value})
    assert name in str(err.value)


@pytest.mark.parametrize(("present", "missing"), [("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"),
                                                  ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID")])
def test_aws_keys_come_in_pairs(tmp_path: Path, present: str, missing: str) -> None:
    with pytest.raises(SettingsError) as err:
        prod(tmp_path, **{missing: None})
    assert str(err.value).startswith(missing)
    assert PROD["AWS_SECRET_ACCESS_KEY"] not in str(err.value)


@pytest.mark.parametrize("name", ["BRAZE_API_KEY", "AWS_SECRET_ACCESS_KEY"])
def test_secret_with_a_trailing_newline_is_named_but_never_shown(tmp_path: Path, name: str) -> None:
    value = "s3cr3t-value-7c1e\n"
    with pytest.raises(SettingsError) as err:
        prod(tmp_path, **{name: value})
    assert name in str(err.value)
    assert "s3cr3t-value-7c1e" not in str(err.value)


def test_endpoint_credentials_are_refused_without_echo(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as err:
        prod(tmp_path, BRAZE_REST_ENDPOINT="https://admin:hunter2pass@rest.iad-01.braze.com")
    assert "BRAZE_REST_ENDPOINT" in str(err.value) and "hunter2pass" not in str(err.value)


def test_plain_http_is_allowed_only_on_loopback(tmp_path: Path) -> None:
    assert prod(tmp_path, BRAZE_REST_ENDPOINT="http://127.0.0.1:8765").braze.endpoint == "http://127.0.0.1:8765"
    assert prod(tmp_path, BRAZE_REST_ENDPOINT="http://localhost:8765").braze.endpoint == "http://localhost:8765"
    with pytest.raises(SettingsError, match="BRAZE_REST_ENDPOINT"):
        prod(tmp_path, BRAZE_REST_ENDPOINT="http://10.0.0.5:8765")


def test_local_profile_needs_nothing_and_still_checks_values(tmp_path: Path) -> None:
    s = Settings.from_env({"LEXER_HOME": str(tmp_path)})
    assert s.profile == "local" and s.bucket.is_local
    with pytest.raises(SettingsError, match="LEXER_S3_PATH"):
        Settings.from_env({"LEXER_HOME": str(tmp_path), "LEXER_S3_PATH": "../outside"})


def test_secrets_never_show_in_reprs(tmp_path: Path) -> None:
    s = prod(tmp_path)
    text = repr(s) + str(s) + repr(s.braze) + repr(s.bucket)
    assert PROD["BRAZE_API_KEY"] not in text and PROD["AWS_SECRET_ACCESS_KEY"] not in text
    assert repr(Secret("abc")) == "Secret('***')" and "abc" not in f"{Secret('abc')}"


def test_prod_resources_take_secrets_from_env_vars(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("BRAZE_API_KEY", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, PROD[name])
    res = resources_for(prod(tmp_path))
    # Dagster stores the variable's name and resolves it when a run starts; the UI shows only the name.
    assert res["braze"].api_key == dg.EnvVar("BRAZE_API_KEY")
    assert res["bucket"].secret_access_key == dg.EnvVar("AWS_SECRET_ACCESS_KEY")
    shown = repr(res["braze"]) + repr(res["bucket"])
    assert PROD["BRAZE_API_KEY"] not in shown and PROD["AWS_SECRET_ACCESS_KEY"] not in shown


def test_prod_settings_differing_from_the_environment_are_refused(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRAZE_API_KEY", "another-key-in-the-environment")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", PROD["AWS_SECRET_ACCESS_KEY"])
    with pytest.raises(SettingsError, match="BRAZE_API_KEY") as err:
        resources_for(prod(tmp_path))
    assert "another-key" not in str(err.value) and PROD["BRAZE_API_KEY"] not in str(err.value)


def _env_example(*, commented: bool) -> dict[str, str]:
    """NAME -> value of .env.example's lines; with ``commented``, also the optional '# NAME=default' lines."""
    values = {}
    for line in (REPO / ".env.example").read_text().splitlines():
        m = re.match(r"^(#\s*)?([A-Z][A-Z0-9_]*)=(\S*)", line.strip())
        if m and (commented or not m.group(1)):
            values[m.group(2)] = m.group(3).strip('"')
    return values


def test_env_example_lists_every_variable_settings_reads() -> None:
    source = (REPO / "lexer_assets" / "settings.py").read_text()
    read = set(re.findall(r'"((?:LEXER|BRAZE|AWS)_[A-Z0-9_]+)"', source))
    listed = set(_env_example(commented=True))
    assert read - listed == set(), "add these to .env.example"
    assert {"LEXER_PROFILE", "BRAZE_REST_ENDPOINT", "BRAZE_API_KEY", "BRAZE_EXPORT_SEGMENT_ID", "LEXER_S3_BUCKET",
            "LEXER_S3_REGION", "LEXER_S3_PATH", "LEXER_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY"} <= listed


def test_env_example_uncommented_values_load_as_prod(tmp_path: Path) -> None:
    env = {k: v for k, v in _env_example(commented=False).items() if v}
    env["LEXER_HOME"] = str(tmp_path)
    s = Settings.from_env(env)
    assert s.profile == "prod"
