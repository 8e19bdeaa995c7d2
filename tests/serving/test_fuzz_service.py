"""Fuzz-style: a few thousand random malformed requests against the live service never get a 5xx."""

import json
import random
import string
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from helpers import publish_sample
from nightrec.serving.api import create_app

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
    import redis

    from conftest import settings_environ
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
