"""Opt-out and erasure as the service and the CLI take them, against a real redis-server: at once
the user gets the global list, their events are dropped, their keys are gone from every version."""

import json

import pytest
import redis
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from conftest import settings_environ
from helpers import publish_sample
from nightrec.cli import app as cli
from nightrec.serving import auth, privacy
from nightrec.serving.api import create_app
from nightrec.serving.layout import Keys

KEYS = Keys("test")


@pytest.fixture
def client(redis_url):
    return redis.Redis.from_url(redis_url)


@pytest.fixture
def versions(redis_url):
    """Two versions held (live and previous), both with user 2's list."""
    first = publish_sample(redis_url)
    return first.version, publish_sample(redis_url).version


@pytest.fixture
def settings(redis_url, make_settings):
    return make_settings(redis_url, service__live_cache_seconds=0, auth__enabled="true", auth__refresh_seconds=0.01)


def bearer(client, scope: str) -> dict:
    return {"Authorization": f"Bearer {auth.create_key(client, KEYS, scope + '-app', scope, 'test')[0]}"}


def event(user: int, item: int = 9) -> dict:
    return {"user_id": user, "item_id": item, "event_type": "click"}


def test_an_opted_out_user_gets_the_global_list_and_their_events_are_dropped(client, versions, settings):
    events, read = bearer(client, "events"), bearer(client, "read")
    with TestClient(create_app(settings)) as api:
        assert api.post("/v1/events", json=event(2), headers=events).json()["stored"] is True
        assert client.exists(KEYS.consumed(2))
        response = api.post("/v1/users/2/opt-out", headers=events)
        assert response.status_code == 202
        body = response.json()
        assert body["user_id"] == 2 and body["kind"] == "opt_out"
        answer = api.get("/v1/users/2/recommendations?k=2", headers=read).json()
        assert answer["source"] == "trending" and [i["item_id"] for i in answer["items"]] == [50, 40]
        dropped = api.post("/v1/events", json=event(2, 10), headers=events)
        assert dropped.status_code == 202 and dropped.json() == {"id": None, "stored": False}
        assert api.post("/v1/events", json=event(3), headers=events).json()["stored"] is True  # others: as before
        assert api.get("/v1/users/3/recommendations", headers=read).json()["source"] == "personalized"
    for version in versions:  # gone from the live and the previous version
        assert not client.exists(KEYS.user(version, 2)) and client.exists(KEYS.user(version, 3))
    assert not client.exists(KEYS.consumed(2))
    stream = [f[b"user_id"] for _, f in client.xrange(KEYS.events)]
    assert stream == [b"2", b"3"]  # the one before the opt-out and user 3's
    (request_id, request), = client.xrange(KEYS.privacy)
    assert request_id.decode() == body["request_id"]
    assert (request[b"kind"], request[b"user_id"], request[b"requester"]) == (b"opt_out", b"2", b"events-app")
    actions = [(f[b"action"], f[b"actor"], f[b"target"]) for _, f in client.xrange(KEYS.audit)][-1]
    assert actions == (b"opt_out", b"key:events-app", b"2")


def test_a_list_loaded_after_the_opt_out_is_not_served(client, versions, settings):
    privacy.request(client, KEYS, "opt_out", [1], "test", "test")
    client.set(KEYS.user(versions[1], 1), client.get(KEYS.user(versions[1], 3)))  # a load racing the request
    read = bearer(client, "read")
    with TestClient(create_app(settings)) as api:
        answer = api.get("/v1/users/1/recommendations", headers=read).json()
    assert answer["source"] == "trending"


def test_erasure_needs_the_admin_scope_and_the_mark_names_the_latest_request(client, versions, settings):
    read, events, admin = (bearer(client, scope) for scope in ("read", "events", "admin"))
    with TestClient(create_app(settings)) as api:
        assert api.post("/v1/users/2/opt-out", headers=read).status_code == 403
        assert api.delete("/v1/users/2", headers=events).status_code == 403
        erasure = api.delete("/v1/users/2", headers=admin).json()
        assert erasure["kind"] == "erasure"
        assert client.get(KEYS.opted_out(2)).decode() == f"erasure:{erasure['request_id']}"
        opt_out = api.post("/v1/users/2/opt-out", headers=admin).json()
        assert api.delete("/v1/users/0", headers=admin).status_code == 422
    assert client.get(KEYS.opted_out(2)).decode() == f"opt_out:{opt_out['request_id']}"
    assert [f[b"kind"] for _, f in client.xrange(KEYS.privacy)] == [b"erasure", b"opt_out"]


def test_nightrec_forget_requests_erasure(client, versions, redis_url, tmp_path, monkeypatch):
    for name, value in settings_environ(tmp_path, redis_url).items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(cli, ["forget", "2", "3"])
    assert result.exit_code == 0, result.output
    assert "user 2: erasure requested" in result.output and "user 3: erasure requested" in result.output
    assert {f[b"user_id"] for _, f in client.xrange(KEYS.privacy)} == {b"2", b"3"}
    assert client.get(KEYS.opted_out(3)).startswith(b"erasure:") and not client.exists(KEYS.user(versions[1], 3))
    status = CliRunner().invoke(cli, ["privacy", "status", "2"]).output
    assert "marked erasure" in status and "pending: the next night carries it out" in status
    assert "no opt-out or erasure requested" in CliRunner().invoke(cli, ["privacy", "status", "1"]).output
    bad = CliRunner().invoke(cli, ["forget", "0"])
    assert bad.exit_code != 0 and client.xlen(KEYS.privacy) == 2


def test_the_loader_leaves_out_users_who_opted_out_during_the_night(client, redis_url):
    privacy.request(client, KEYS, "opt_out", [1], "test", "test")
    result = publish_sample(redis_url)
    assert not client.exists(KEYS.user(result.version, 1)) and client.exists(KEYS.user(result.version, 2))
    assert json.loads(client.hget(KEYS.meta(result.version), "users")) == 4  # what was loaded, then swept


def test_an_erasure_done_leaves_a_later_request_and_an_earlier_opt_out_marked(client, make_settings, redis_url):
    from nightrec.pipeline import privacy as privacy_stage
    from nightrec.pipeline import records

    settings = make_settings(redis_url)
    privacy.request(client, KEYS, "opt_out", [5], "test", "test")     # opted out, then erased
    erase_5, erase_6 = (privacy.request(client, KEYS, "erasure", [u], "test", "test")[0] for u in (5, 6))
    later = privacy.request(client, KEYS, "opt_out", [6], "test", "test")[0]  # asked again meanwhile
    erase_7 = privacy.request(client, KEYS, "erasure", [7], "test", "test")[0]
    records.drain(client, KEYS, records.PRIVACY, settings)
    privacy_stage.unmark(client, KEYS, settings, {erase_5: 5, erase_6: 6, erase_7: 7})
    assert client.get(KEYS.opted_out(5)).startswith(b"opt_out:")  # their opt-out outlives the erasure
    assert client.get(KEYS.opted_out(6)).decode() == f"opt_out:{later}"
    assert not client.exists(KEYS.opted_out(7))  # nothing of theirs is left
