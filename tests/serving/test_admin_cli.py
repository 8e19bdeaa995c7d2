"""`nightrec keys` and `nightrec audit` against a real redis-server, and the audit stream's nightly
drain into the audit/log Delta table."""

import datetime as dt

import pytest
import redis
from deltalake import DeltaTable
from typer.testing import CliRunner

from conftest import settings_environ
from nightrec.cli import app
from nightrec.pipeline import drain_events
from nightrec.serving.layout import Keys

KEYS = Keys("test")


@pytest.fixture
def run_cli(redis_url, tmp_path, monkeypatch):
    for name, value in settings_environ(tmp_path, redis_url).items():
        monkeypatch.setenv(name, value)
    runner = CliRunner()

    def run(*args: str, code: int = 0) -> str:
        result = runner.invoke(app, list(args))
        assert result.exit_code == code, result.output
        return result.output

    return run


def test_keys_are_created_listed_and_revoked(run_cli, redis_url):
    out = run_cli("keys", "create", "--name", "shop", "--scope", "read")
    token = out.strip().splitlines()[-1]
    assert token.startswith("nrk_") and "shown only now" in out
    run_cli("keys", "create", "--name", "collector", "--scope", "events")
    listed = run_cli("keys", "list")
    assert "shop" in listed and "collector" in listed and token not in listed
    assert "a live key is already named 'shop'" in run_cli("keys", "create", "--name", "shop", "--scope", "read",
                                                           code=1)
    assert "revoked key shop" in run_cli("keys", "revoke", "shop")
    assert "shop" not in run_cli("keys", "list") and "shop" in run_cli("keys", "list", "--revoked")
    assert "no live key has the id or name 'shop'" in run_cli("keys", "revoke", "shop", code=1)
    assert redis.Redis.from_url(redis_url).hlen(KEYS.api_keys) == 2


def test_the_audit_log_shows_actions_before_and_after_the_nightly_drain(run_cli, redis_url, make_settings):
    run_cli("keys", "create", "--name", "shop", "--scope", "read")
    run_cli("keys", "revoke", "shop")
    before = run_cli("audit")
    assert "key_created" in before and "key_revoked" in before and "cli:" in before
    settings = make_settings(redis_url)
    assert drain_events.run(settings, dt.date.today()).audit_entries == 2
    assert drain_events.run(settings, dt.date.today()).audit_entries == 0  # nothing twice
    run_cli("keys", "create", "--name", "app2", "--scope", "admin")  # pending in the stream
    table = DeltaTable(settings.table("audit/log")).to_pyarrow_table()
    assert table["action"].to_pylist() == ["key_created", "key_revoked"]
    after = run_cli("audit")
    assert [line.split("│")[2].strip() for line in after.splitlines() if "key_" in line] == [
        "key_created", "key_revoked", "key_created"]
    assert "app2" in run_cli("audit", "--action", "key_created", "--limit", "1")
    assert "key_" not in run_cli("audit", "--since", (dt.date.today() + dt.timedelta(days=1)).isoformat())
