"""The CLI's local-only commands: what they need from the environment, and that `query` stays read-only."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lexer_assets.cli import main
from lexer_assets.storage.warehouse import Warehouse
from lexer_assets_tests.conftest import COMMITTED_AUDIENCES, local_settings


def _env(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    for name in list(os.environ):
        if name.startswith(("LEXER_", "BRAZE_", "AWS_")):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def store_home(tmp_path: Path) -> Path:
    """A LEXER_HOME with a published (empty) store and the committed audiences file."""
    home = tmp_path / "home"
    settings = local_settings(home)
    wh = Warehouse(settings.warehouse_path, settings.published_store_path)
    with wh.connect() as conn:
        conn.execute("INSERT INTO commerce.orders (order_id, customer_id, order_date, units, amount, source_file, "
                     "source_line) VALUES ('o1', 'c1', DATE '2026-11-30', 2, 19.5, 'orders.csv', 2)")
    wh.publish()
    shutil.copyfile(COMMITTED_AUDIENCES, home / "audiences.yaml")
    return home


def test_query_and_validate_work_under_prod_without_braze_or_s3(store_home: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    _env(monkeypatch, LEXER_PROFILE="prod", LEXER_HOME=str(store_home),
         LEXER_AUDIENCES_FILE=str(store_home / "audiences.yaml"))
    assert main(["query", "SELECT order_id, amount FROM commerce.orders"]) == 0
    out = capsys.readouterr().out
    assert "o1" in out and "19.5" in out
    assert main(["audiences", "validate"]) == 0
    assert "0 problem(s)" in capsys.readouterr().out
    # What talks to Braze still needs its settings, and says which.
    with pytest.raises(SystemExit, match="BRAZE_REST_ENDPOINT.*BRAZE_API_KEY"):
        main(["verify"])


def test_query_cannot_write_or_read_files(store_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    _env(monkeypatch, LEXER_HOME=str(store_home))
    target = tmp_path / "emails.csv"
    assert main(["query", f"COPY (SELECT * FROM commerce.orders) TO '{target}'"]) == 1
    assert not target.exists()
    secret = tmp_path / "secret.txt"
    secret.write_text("not for SQL\n")
    assert main(["query", f"SELECT * FROM read_text('{secret}')"]) == 1
    assert "not for SQL" not in capsys.readouterr().out
    assert main(["query", "DELETE FROM commerce.orders"]) == 1  # the store is opened read-only
    assert main(["query", "SELECT count(*) FROM commerce.orders"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].strip() == "1"


def test_query_refuses_a_limit_below_one_and_an_unreadable_store_gets_one_clear_line(
        store_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _env(monkeypatch, LEXER_HOME=str(store_home))
    for bad in ("0", "-1", "ten", "99999999999999999999"):
        with pytest.raises(SystemExit):
            main(["query", "SELECT 1", "--limit", bad])
        assert "--limit" in capsys.readouterr().err
    assert main(["query", "  "]) == 2
    assert "no SQL given" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["emulator", "serve", "--port", "99999"])
    assert "--port: must be between 1 and 65,535" in capsys.readouterr().err
    store = local_settings(store_home).published_store_path
    store.chmod(0o644)
    store.write_bytes(b"not a database")
    assert main(["query", "SELECT 1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"cannot open the profile store {store}:") and "Traceback" not in err


def test_backfill_prints_each_failure_on_one_line(tmp_path: Path) -> None:
    from lexer_assets.demo import prepare_inputs, run_loop
    from lexer_assets_tests.test_bad_input import BROKEN_AUDIENCE

    home = tmp_path / "home"
    audiences = home / "audiences.yaml"
    audiences.parent.mkdir(parents=True)
    shutil.copyfile(COMMITTED_AUDIENCES, audiences)
    settings = local_settings(home, LEXER_AUDIENCES_FILE=str(audiences))
    prepare_inputs(settings, orders_file=None, customers=200, seed=5, say=lambda _m: None)
    assert run_loop(settings, quiet=True).success
    audiences.write_text(audiences.read_text() + BROKEN_AUDIENCE)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEXER_", "BRAZE_", "AWS_"))}
    day = settings.today().isoformat()
    # As a user runs it: a process of its own, so Dagster's console logging reaches the output as it would.
    out = subprocess.run([sys.executable, "-c", "import sys; from lexer_assets.cli import main; "
                          "sys.exit(main(sys.argv[1:]))", "audiences", "backfill", day, day],
                         env={**env, "LEXER_HOME": str(home), "LEXER_AUDIENCES_FILE": str(audiences)},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 1
    failed = [line for line in out.stderr.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 1 and failed[0].startswith("FAILED audiences/broken_spenders:") and "revnue" in failed[0]
    assert "Stack Trace" not in out.stderr + out.stdout and "Traceback" not in out.stderr + out.stdout
    assert "audience(s) x 1 day(s) computed" in out.stdout
