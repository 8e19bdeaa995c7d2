"""Fuzz-style: a few thousand random malformed requests against the live service never get a 5xx;
and hostile bytes, sent over a socket to `nightrec serve` as an attacker would, get an answer that
tells the truth about what was done."""

import itertools
import json
import os
import random
import string
import time
from urllib.parse import quote

import pytest
import redis
from fastapi.testclient import TestClient

from conftest import settings_environ
from helpers import counter, lookup_service, publish_sample, send_raw
from nightrec.serving import auth
from nightrec.serving.api import create_app
from nightrec.serving.layout import Keys

SEED = 20261123


def junk(rng: random.Random) -> str:
    pick = rng.randrange(9)
    if pick == 0:
        return str(rng.choice([0, -1, 2**31, 2**63, 10**40, rng.randrange(1, 2**31)]))
    if pick == 1:
        return "".join(rng.choice(string.printable) for _ in range(rng.randrange(1, 30)))
    if pick == 2:
        return rng.choice(["1e3", "0x10", "1.5", "NaN", "inf", "-0", " 7", "", "%00", "../..", "null"])
    if pick == 3:
        return "é中\u202e" * rng.randrange(1, 5)
    if pick == 4:
        return ",".join(str(rng.randrange(-5, 2**32)) for _ in range(rng.randrange(0, 150)))
    if pick == 5:
        return "9" * rng.randrange(1, 400)
    if pick == 6:
        return rng.choice(["comedy", "Drama", "western", "{x}", "*", "a b"])
    return str(rng.randrange(1, 200))


def random_body(rng: random.Random) -> bytes:
    pick = rng.randrange(7)
    if pick == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(0, 200)))
    if pick == 1:
        return b"x" * rng.choice([70_000, 1_000_000])
    if pick == 2:
        return json.dumps([1, 2, {"a": None}]).encode()
    if pick == 3:
        return (b'{"user_id": 1, "item_id": 2, "event_type": "click", "ts": "' + junk(rng).encode("utf-8", "replace")
                + b'"}')
    fields = {"user_id": junk(rng), "item_id": junk(rng), "event_type": junk(rng), "value": junk(rng), "ts": junk(rng)}
    for name in list(fields):
        if rng.random() < 0.3:
            del fields[name]
        elif rng.random() < 0.5:
            fields[name] = rng.choice([None, True, [], {}, 1.5, -3, 10**30, fields[name]])
    return json.dumps(fields).encode()


@pytest.fixture(scope="module")
def api(redis_server, tmp_path_factory):
    from nightrec.settings import load_settings

    redis.Redis.from_url(redis_server).flushall()
    publish_sample(redis_server)
    settings = load_settings("local", settings_environ(tmp_path_factory.mktemp("fuzz"), redis_server))
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.mark.parametrize("chunk", range(4))
def test_random_malformed_requests_never_get_a_5xx(api, chunk):
    rng = random.Random(SEED + chunk)
    statuses = {}
    for _ in range(500):
        kind = rng.randrange(4)
        if kind == 0:
            params = {name: junk(rng) for name in ("k", "category", "exclude", "other") if rng.random() < 0.6}
            response = api.get(f"/v1/users/{quote(junk(rng), safe='')}/recommendations", params=params)
        elif kind == 1:
            params = {name: junk(rng) for name in ("k", "category", "exclude") if rng.random() < 0.6}
            response = api.get(f"/v1/items/{quote(junk(rng), safe='')}/similar", params=params)
        elif kind == 2:
            headers = {"content-type": rng.choice(["application/json", "text/plain",
                                                   "application/x-www-form-urlencoded"])}
            response = api.post("/v1/events", content=random_body(rng), headers=headers)
        else:
            method = rng.choice(["GET", "POST", "PUT", "DELETE", "PATCH"])
            path = rng.choice(["/v1/users/1/recommendations", "/v1/events", "/v1/items/1/similar", "/v1/x", "/"])
            response = api.request(method, path + rng.choice(["", "?k=" + quote(junk(rng)),
                                                              "/" + quote(junk(rng), safe="")]))
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert response.status_code < 500, (response.request.method, str(response.request.url), response.text[:300])
    assert len(statuses) >= 4  # the generator reaches answers of several kinds, not one error over and over


# --- hostile bytes over a socket, to `nightrec serve` --------------------------------------------------

KEYS = Keys("test")
USERS = itertools.count(1000)  # each case its own user


@pytest.fixture(scope="module")
def served(redis_server, tmp_path_factory):
    """`nightrec serve`, one worker, auth on: yields (base URL, an admin key's header line, its log file)."""
    home = tmp_path_factory.mktemp("served")
    client = redis.Redis.from_url(redis_server)
    publish_sample(redis_server)
    token = auth.create_key(client, KEYS, "fuzz-admin", "admin", "test")[0]
    env = {**os.environ, **settings_environ(home, redis_server), "NIGHTREC_AUTH__ENABLED": "true"}
    with lookup_service(env, workers=1, log=home / "serve.log") as base:
        yield base, f"Authorization: Bearer {token}\r\n".encode(), home / "serve.log"


def responses(base: str, route: str, status: int | None = None) -> float:
    """How many answers of this route (of this status) the service has counted."""
    return counter(base, "nightrec_responses", route=route, **({"status": str(status)} if status else {}))


def wait_for(condition, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


PRIVACY = [("DELETE", "/v1/users/{}", "/v1/users/{user_id}", "erasure"),
           ("POST", "/v1/users/{}/opt-out", "/v1/users/{user_id}/opt-out", "opt_out")]


@pytest.mark.parametrize("method, path, route, kind", PRIVACY)
@pytest.mark.parametrize("body", [b"zz\r\n", b"1\r\na\r\nzz\r\n", b"0\r\nno colon here\r\n\r\n"])
def test_a_privacy_request_answered_400_for_a_malformed_chunked_body_did_nothing(served, redis_server, method,
                                                                                path, route, kind, body):
    base, key, _ = served
    client = redis.Redis.from_url(redis_server)
    user = next(USERS)

    def request(chunked_body: bytes) -> int:
        head = f"{method} {path.format(user)} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n".encode()
        return send_raw(base, head + key + b"\r\n" + chunked_body)[0]

    handled, dropped = responses(base, route), responses(base, route, 499)
    assert request(body) == 400
    wait_for(lambda: responses(base, route) > handled)  # the service is done with the request
    assert not client.exists(KEYS.opted_out(user))
    assert str(user).encode() not in {f[b"user_id"] for _, f in client.xrange(KEYS.privacy)}
    assert str(user).encode() not in {f[b"target"] for _, f in client.xrange(KEYS.audit)}
    assert responses(base, route, 499) == dropped + 1  # counted as the client's doing
    assert request(b"0\r\n\r\n") == 202  # the same request, whole, is carried out
    assert client.get(KEYS.opted_out(user)).startswith(kind.encode())


def test_an_aborted_upload_is_one_log_line_and_no_server_error(served, redis_server):
    base, key, log = served
    events = redis.Redis.from_url(redis_server).xlen(KEYS.events)
    handled, dropped, logged = responses(base, "/v1/events"), responses(base, "/v1/events", 499), log.read_bytes()
    head = b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n"
    send_raw(base, head + key + b'\r\n{"user_id": 1, "item_id"', hang_up=True)
    wait_for(lambda: responses(base, "/v1/events") > handled)
    new = log.read_bytes().removeprefix(logged).decode()
    assert new == "POST /v1/events: the client went away before its body was in; request dropped\n"
    assert responses(base, "/v1/events", 499) == dropped + 1 and responses(base, "/v1/events", 500) == 0
    assert redis.Redis.from_url(redis_server).xlen(KEYS.events) == events


def test_a_get_carrying_a_body_over_the_limit_gets_413_on_both_paths(served):
    base, key, _ = served
    answers = []
    for query in ("k=3", "k=%33"):  # the fast path's, and FastAPI's (a percent-escape)
        head = f"GET /v1/users/2/recommendations?{query} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n"
        answers.append(send_raw(base, head.encode() + key + b"\r\n" + b"x" * 1_000_000))
        small = send_raw(base, head.replace("1000000", "5").encode() + key + b"\r\nhello")
        assert small[0] == 200, small  # a body within the limit is left unread, as before
    (fast, _, fast_body), (slow, _, slow_body) = answers
    assert fast == slow == 413 and fast_body == slow_body == b'{"detail":"request body over 65536 bytes"}'
