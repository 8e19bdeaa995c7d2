"""An experiment served from a real Redis: variant lists loaded byte for byte, users answered from
their variant's list, request ids, impressions in the stream and events attributed to them."""

import datetime as dt
import time

import pytest
import redis
from fastapi.testclient import TestClient

from helpers import Rows
from nightrec.serving import loader
from nightrec.serving.api import create_app
from nightrec.serving.experiments import Experiment, parse_variant
from nightrec.serving.impressions import FIELDS, rows
from nightrec.serving.layout import Keys, encode, encode_segment_ref

KEYS = Keys("test")
AB = Experiment("ab1", (parse_variant("control=champion:50"), parse_variant("treatment=challenger:50")),
                "2026-11-30T10:00:00+00:00")
USERS = range(1, 201)


def champion_list(user: int) -> bytes:
    return encode(range(user, user + 20), [1.0 - i / 20 for i in range(20)])


def treatment_list(user: int) -> bytes:
    return encode(range(user + 1000, user + 1020), [2.0 - i / 20 for i in range(20)])


def treated(users) -> list[int]:
    return [u for u in users if AB.assign(u).name == "treatment"]


def publish(redis_url: str, experiment: Experiment | None = AB) -> loader.PublishResult:
    rows = [(u, champion_list(u)) for u in USERS] + [(300, encode_segment_ref("gender=F"))]
    variants = None
    if experiment is not None:
        variants = loader.VariantLists(experiment.id, {
            "treatment": (Rows([(u, treatment_list(u)) for u in treated(USERS)]), "nightrec/9")})
    extras = loader.Extras({"global": ([50, 40, 30], [0.9, 0.5, 0.1]), "gender=F": ([60, 61], [2.0, 1.0])})
    return loader.publish(Rows(rows), extras, url=redis_url, prefix="test", ds=dt.date(2026, 11, 30),
                          model_version="nightrec/7", variants=variants)


@pytest.fixture
def settings(redis_url, make_settings):
    return make_settings(redis_url, service__live_cache_seconds=0)


@pytest.fixture
def client(redis_url):
    return redis.Redis.from_url(redis_url)


@pytest.fixture
def in_treatment(redis_url, client) -> int:
    """A version published for AB, AB running: a user of its treatment."""
    publish(redis_url)
    client.set(KEYS.experiment, AB.to_json())
    return treated(USERS)[0]


def ids(body: dict) -> list[int]:
    return [item["item_id"] for item in body["items"]]


def test_variant_lists_are_loaded_byte_for_byte_only_for_the_variants_users(redis_url, client):
    result = publish(redis_url)
    treated_users = treated(USERS)
    assert result.variant_users == {"treatment": len(treated_users)} and 70 < len(treated_users) < 130
    stored = {k.decode() for k in client.scan_iter(match=f"test:v:{result.version}:x:*")}
    assert stored == {KEYS.variant_user(result.version, "treatment", u) for u in treated_users}
    assert all(client.get(KEYS.variant_user(result.version, "treatment", u)) == treatment_list(u)
               for u in treated_users)
    assert all(client.get(KEYS.user(result.version, u)) == champion_list(u) for u in USERS)  # everyone keeps it
    meta = client.hgetall(KEYS.meta(result.version))
    assert meta[b"layout"] == b"2"
    assert meta[b"experiment"] == (b'{"id": "ab1@2026-11-30T10:00:00+00:00", '
                                   b'"variants": {"treatment": "nightrec/9"}}')


def test_users_get_their_variants_list_with_a_request_id(redis_url, client, settings):
    publish(redis_url)
    client.set(KEYS.experiment, AB.to_json())
    with TestClient(create_app(settings)) as api:
        answers = {u: api.get(f"/v1/users/{u}/recommendations", params={"k": 3}).json() for u in USERS}
        unknown = api.get("/v1/users/100000/recommendations").json()
        fallback = api.get("/v1/users/300/recommendations").json()
    for user, body in answers.items():
        assert body["experiment"] == "ab1" and body["variant"] == AB.assign(user).name
        if body["variant"] == "treatment":
            assert ids(body) == [user + 1000, user + 1001, user + 1002] and body["model_version"] == "nightrec/9"
        else:
            assert ids(body) == [user, user + 1, user + 2] and body["model_version"] == "nightrec/7"
    assert len({body["request_id"] for body in answers.values()}) == len(USERS)
    # users without a list of their own are in the experiment too, and get the same fallbacks in both arms
    assert unknown["variant"] == AB.assign(100000).name and unknown["source"] == "trending"
    assert fallback["variant"] == AB.assign(300).name and ids(fallback) == [60, 61]


def test_an_experiment_serves_only_from_a_version_published_for_it_and_stops_at_once(redis_url, client, settings):
    publish(redis_url, experiment=None)
    client.set(KEYS.experiment, AB.to_json())
    user = treated(USERS)[0]
    with TestClient(create_app(settings)) as api:
        before = api.get(f"/v1/users/{user}/recommendations").json()
        assert before["variant"] is None and ids(before)[0] == user  # no lists for it yet: nobody is in it
        publish(redis_url)
        during = api.get(f"/v1/users/{user}/recommendations").json()
        assert during["variant"] == "treatment" and ids(during)[0] == user + 1000
        client.delete(KEYS.experiment)  # experiment stop
        after = api.get(f"/v1/users/{user}/recommendations").json()
        assert after["variant"] is None and ids(after)[0] == user
        client.set(KEYS.experiment, "{not json")  # a broken definition never takes the service down
        assert api.get(f"/v1/users/{user}/recommendations").json()["variant"] is None


def impressions(client) -> list[dict]:
    return [answer for _, fields in client.xrange(KEYS.impressions) for answer in rows(fields)]


def recorded(client) -> int:
    return len(impressions(client))


def wait_for(predicate, seconds: float = 5.0):
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_answers_are_recorded_as_impressions_and_events_carry_their_request_id(in_treatment, client, settings):
    user = in_treatment
    with TestClient(create_app(settings)) as api:
        answer = api.get(f"/v1/users/{user}/recommendations", params={"k": 4}).json()
        unknown = api.get("/v1/users/100000/recommendations", params={"k": 2}).json()
        wait_for(lambda: recorded(client) == 2)
        clicked = answer["items"][1]
        posted = api.post("/v1/events", json={"user_id": user, "item_id": clicked["item_id"], "event_type": "click",
                                              "request_id": answer["request_id"], "position": clicked["rank"]})
        assert posted.status_code == 202
        lone = api.post("/v1/events", json={"user_id": user, "item_id": 5, "event_type": "click", "position": 2})
        assert lone.status_code == 422 and "position needs the request_id" in lone.text
        bad = api.post("/v1/events", json={"user_id": user, "item_id": 5, "event_type": "click", "request_id": "X!"})
        assert bad.status_code == 422
        metrics_text = api.get("/metrics").text
    first, second = impressions(client)
    assert set(first) == set(FIELDS)
    assert first["request_id"] == answer["request_id"] and first["user_id"] == user
    assert (first["experiment"], first["variant"], first["source"]) == (AB.id, "treatment", "personalized")
    assert first["items"] == ids(answer) and first["model_version"] == "nightrec/9"
    assert abs(first["ts"] / 1000 - time.time()) < 60 and first["explored"] == []
    assert second["request_id"] == unknown["request_id"] and second["source"] == "trending"
    assert (second["experiment"], second["variant"]) == (AB.id, AB.assign(100000).name)
    (_, event), = client.xrange(KEYS.events)
    assert event[b"request_id"] == answer["request_id"].encode() and event[b"position"] == b"2"
    assert 'nightrec_impressions_total{outcome="recorded"} 2.0' in metrics_text


def test_a_slow_redis_costs_impressions_never_answers():
    """The buffer is bounded: what does not fit is dropped and counted while the writer is stuck."""
    import asyncio

    from nightrec.serving.impressions import MAX_BUFFERED, ImpressionLog

    async def main() -> dict:
        stuck, counts = asyncio.Event(), {}
        log = ImpressionLog(lambda rows: stuck.wait(), 1.0,
                            lambda outcome, n: counts.__setitem__(outcome, counts.get(outcome, 0) + n))
        for user in range(MAX_BUFFERED + 100):
            log.add(user + 1, lambda: b"[]")
        await asyncio.sleep(0.1)  # the writer takes the buffer and hangs on it
        for user in range(10):
            log.add(user + 1, lambda: b"[]")
        stuck.set()
        await log.aclose()
        return counts

    assert asyncio.run(main()) == {"dropped": 100, "recorded": MAX_BUFFERED + 10}


def test_impressions_are_sampled_by_user_and_off_for_the_services_own_checks(redis_url, client, make_settings):
    publish(redis_url)
    sampled = make_settings(redis_url, service__live_cache_seconds=0, service__impression_sample_rate=0.3)
    with TestClient(create_app(sampled)) as api:
        for user in (*USERS, *USERS):  # every user asks twice
            api.get(f"/v1/users/{user}/recommendations")
    seen = [answer["user_id"] for answer in impressions(client)]
    users = set(seen)
    assert 0.2 * len(USERS) < len(users) < 0.4 * len(USERS)
    assert sorted(seen) == sorted(2 * list(users))  # a sampled user's every answer, no one else's
    assert client.xlen(KEYS.impressions) < len(seen) / 3  # written in batches (every 50 ms), not one per answer
    client.delete(KEYS.impressions)
    with TestClient(create_app(sampled, internal=True)) as api:
        api.get("/v1/users/1/recommendations")
    assert client.xlen(KEYS.impressions) == 0


def test_a_version_of_a_newer_layout_is_refused_plainly(redis_url, client, settings):
    result = publish(redis_url)
    client.hset(KEYS.meta(result.version), "layout", 3)
    with TestClient(create_app(settings)) as api:
        response = api.get("/v1/users/1/recommendations")
    assert response.status_code == 503 and "layout 3" in response.json()["detail"]


def test_the_drain_lands_impressions_and_attributed_events(in_treatment, client, settings):
    import json

    from nightrec.pipeline import drain_events

    user = in_treatment
    with TestClient(create_app(settings)) as api:
        answer = api.get(f"/v1/users/{user}/recommendations", params={"k": 3}).json()
        wait_for(lambda: recorded(client) == 1)
        api.post("/v1/events", json={"user_id": user, "item_id": answer["items"][0]["item_id"], "event_type": "click",
                                     "request_id": answer["request_id"], "position": 1})
        api.post("/v1/events", json={"user_id": user, "item_id": 77, "event_type": "view"})
    drained = drain_events.run(settings, dt.date.today())
    assert (drained.events, drained.impressions) == (2, 1)
    (impression_file,) = drained.impression_files
    assert "/impressions/dt=" in impression_file
    (row,) = [json.loads(line) for line in open(impression_file)]
    assert row == {"request_id": answer["request_id"], "user_id": user, "experiment": AB.id, "variant": "treatment",
                   "version": answer["version"], "model_version": "nightrec/9", "source": "personalized",
                   "items": ids(answer), "explored": [], "ts": row["ts"]}
    assert dt.datetime.fromisoformat(row["ts"]).tzinfo is not None
    events = [json.loads(line) for line in open(drained.files[0])]
    assert [(e["request_id"], e["position"]) for e in events] == [(answer["request_id"], "1"), (None, None)]
    assert drain_events.run(settings, dt.date.today()).impressions == 0  # nothing twice


def test_exploration_fills_every_tenth_rank_from_the_pool_and_the_impression_says_so(redis_url, client,
                                                                                    make_settings):
    from nightrec.serving.layout import encode_item_stats

    publish(redis_url, experiment=None)
    explore = make_settings(redis_url, service__live_cache_seconds=0, exploration__enabled="true")
    client.set(KEYS.explore, encode_item_stats([9001, 9002, 9003], [0, 5, 0], [0, 1, 0]))
    with TestClient(create_app(explore)) as api:
        api.post("/v1/events", json={"user_id": 1, "item_id": 9003, "event_type": "click"})  # consumed: never shown
        body = api.get("/v1/users/1/recommendations", params={"k": 20}).json()
        wait_for(lambda: recorded(client) == 1)
        plain = TestClient(create_app(make_settings(redis_url)))
    explored = [item for item in body["items"] if item.get("explored")]
    assert [item["rank"] for item in explored] == [10, 20] and {i["item_id"] for i in explored} == {9001, 9002}
    assert [i["item_id"] for i in body["items"] if not i.get("explored")] == list(range(1, 19))
    assert impressions(client)[0]["explored"] == [10, 20]
    with plain as api:  # exploration off (the default): the list as published
        assert ids(api.get("/v1/users/1/recommendations", params={"k": 20}).json()) == list(range(1, 21))
