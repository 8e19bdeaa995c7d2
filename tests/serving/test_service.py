"""The lookup service against a real redis-server, with versions written by the real loader."""

import datetime as dt
import json
import time

import pytest
import redis
from fastapi.testclient import TestClient

from helpers import publish_sample
from nightrec.pipeline import drain_events
from nightrec.serving.api import create_app
from nightrec.serving.layout import Keys


@pytest.fixture
def settings(redis_url, make_settings):
    return make_settings(redis_url, service__live_cache_seconds=0)


@pytest.fixture
def api(redis_url, settings):
    publish_sample(redis_url)
    with TestClient(create_app(settings)) as client:
        yield client


def item_ids(response) -> list[int]:
    assert response.status_code == 200, response.text
    return [i["item_id"] for i in response.json()["items"]]


def test_known_user_gets_k_ranked_available_items(api):
    response = api.get("/v1/users/2/recommendations", params={"k": 10})
    body = response.json()
    assert body["source"] == "personalized" and body["segment"] is None and body["model_version"] == "nightrec/7"
    assert item_ids(response) == [2, 3, 4, 6, 7, 8, 9, 10, 11, 12]  # 5 is unavailable
    assert [i["rank"] for i in body["items"]] == list(range(1, 11))
    assert body["items"][0]["score"] == pytest.approx(1.0) and body["items"][9]["score"] == pytest.approx(0.9, abs=1e-3)
    assert len(item_ids(api.get("/v1/users/2/recommendations", params={"k": 100}))) == 99
    assert len(item_ids(api.get("/v1/users/2/recommendations"))) == 10  # default k


def test_category_and_exclude_filter_the_stored_list(api):
    assert item_ids(api.get("/v1/users/2/recommendations", params={"k": 5, "category": "Comedy"})) == [2, 4, 6, 8, 10]
    assert item_ids(api.get("/v1/users/3/recommendations", params={"category": "drama"})) == [3, 7, 11]
    assert item_ids(api.get("/v1/users/2/recommendations", params={"k": 4, "exclude": "3,4,99"})) == [2, 6, 7, 8]
    response = api.get("/v1/users/2/recommendations", params={"category": "western"})
    assert response.status_code == 422 and "known: comedy, drama" in response.json()["detail"][0]["msg"]


@pytest.mark.parametrize("user", [2, 4, 777])
def test_the_fast_path_and_fastapi_answer_alike(api, user):
    # Percent-escapes send a request through FastAPI's own parsing; plain ones take the fast path.
    for plain, escaped in (("k=3&category=comedy", "k=3&category=%63omedy"), ("exclude=2,3", "exclude=2%2C3"),
                           ("k=7&category=Western", "k=7&category=%57estern"), ("", "k=%310")):
        fast = api.get(f"/v1/users/{user}/recommendations?{plain}")
        slow = api.get(f"/v1/users/{user}/recommendations?{escaped}")
        fast_body, slow_body = fast.json(), slow.json()
        if "request_id" in fast_body:  # each answer has its own
            assert fast_body.pop("request_id") != slow_body.pop("request_id")
        assert (fast.status_code, fast_body) == (slow.status_code, slow_body)


def test_users_without_a_personal_list_get_a_fallback_that_says_which(api):
    unknown = api.get("/v1/users/777/recommendations", params={"k": 2}).json()
    assert unknown["source"] == "trending" and unknown["segment"] == "global"
    assert [i["item_id"] for i in unknown["items"]] == [50, 40]
    segment = api.get("/v1/users/4/recommendations").json()
    assert segment["source"] == "segment" and segment["segment"] == "gender=F"
    assert [i["item_id"] for i in segment["items"]] == [60, 61, 62]


def test_similar_items(api):
    assert item_ids(api.get("/v1/items/10/similar", params={"k": 3})) == [11, 12, 13]
    assert item_ids(api.get("/v1/items/10/similar", params={"category": "comedy", "exclude": "12"})) == [14]
    missing = api.get("/v1/items/999/similar")
    assert missing.status_code == 404 and "no neighbours" in missing.json()["detail"]


def test_a_posted_event_is_streamed_and_filters_the_item_at_once(api, redis_url):
    assert item_ids(api.get("/v1/users/2/recommendations", params={"k": 1})) == [2]
    ts = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) - dt.timedelta(hours=1)
    response = api.post("/v1/events", json={"user_id": 2, "item_id": 2, "event_type": "Purchase",
                                            "ts": ts.isoformat().replace("+00:00", "Z")})
    assert response.status_code == 202
    assert item_ids(api.get("/v1/users/2/recommendations", params={"k": 1})) == [3]
    assert item_ids(api.get("/v1/users/1/recommendations", params={"k": 2})) == [1, 2]  # other users unaffected
    entries = redis.Redis.from_url(redis_url).xrange(Keys("test").events)
    assert [e[0].decode() for e in entries] == [response.json()["id"]]
    assert entries[0][1] == {b"user_id": b"2", b"item_id": b"2", b"event_type": b"purchase", b"value": b"",
                             b"ts": ts.isoformat().encode()}


@pytest.mark.parametrize("body, field", [
    ({"user_id": 1, "item_id": 2, "event_type": "teleport"}, "event_type"),
    ({"user_id": 0, "item_id": 2, "event_type": "click"}, "user_id"),
    ({"user_id": 1, "item_id": 2**31, "event_type": "click"}, "item_id"),
    ({"user_id": 1, "item_id": 2, "event_type": "click", "ts": "yesterday"}, "ts"),
    ({"user_id": 1, "item_id": 2, "event_type": "click", "ts": "2024-01-02T10:00:00"}, "ts"),
    ({"user_id": 1, "item_id": 2, "event_type": "click", "ts": "2999-01-01T00:00:00Z"}, "ts"),
    ({"user_id": 1, "item_id": 2, "event_type": "click", "ts": "2001-01-01T00:00:00Z"}, "ts"),
    ({"user_id": 1, "item_id": 2, "event_type": "click", "ts": "0001-01-01T00:00:00+01:00"}, "ts"),
    ({"user_id": 1, "item_id": 2, "event_type": "click", "value": -1}, "value"),
    ({"user_id": 1, "item_id": 2, "event_type": "click", "color": "red"}, "color"),
    ({"item_id": 2, "event_type": "click"}, "user_id"),
])
def test_bad_events_get_a_422_naming_the_field(api, body, field):
    response = api.post("/v1/events", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"][-1] == field


def test_malformed_and_oversize_bodies_are_4xx(api):
    assert api.post("/v1/events", content=b"{not json", headers={"content-type": "application/json"}).status_code == 422
    assert api.post("/v1/events", content=b"[]").status_code == 422
    huge = json.dumps({"user_id": 1, "item_id": 2, "event_type": "click", "pad": "x" * 70000})
    assert api.post("/v1/events", content=huge).status_code == 413
    chunked = api.post("/v1/events", content=iter([huge[:40000].encode(), huge[40000:].encode()]))  # no length
    assert chunked.status_code == 413 and "over 65536 bytes" in chunked.json()["detail"]


@pytest.mark.parametrize("path", [
    "/v1/users/1/recommendations?k=0", "/v1/users/1/recommendations?k=101", "/v1/users/1/recommendations?k=ten",
    "/v1/users/abc/recommendations", "/v1/users/0/recommendations", "/v1/users/-5/recommendations",
    "/v1/users/2147483648/recommendations", "/v1/users/1.5/recommendations",
    "/v1/users/1/recommendations?exclude=a,b", "/v1/users/1/recommendations?exclude=0",
    "/v1/items/0/similar", "/v1/items/1/similar?k=1000",
])
def test_bad_requests_get_a_4xx_that_names_the_problem(api, path):
    response = api.get(path)
    assert response.status_code == 422
    detail = response.json()["detail"][0]
    assert detail["loc"][-1] in ("k", "user_id", "item_id", "exclude") and detail["msg"]


def test_metrics_count_latency_sources_and_errors(api):
    api.get("/v1/users/2/recommendations")
    api.get("/v1/users/777/recommendations")
    api.get("/v1/users/0/recommendations")
    text = api.get("/metrics").text
    assert 'nightrec_request_seconds_count{route="/v1/users/{user_id}/recommendations"} 3.0' in text
    assert 'nightrec_responses_total{route="/v1/users/{user_id}/recommendations",status="422"} 1.0' in text
    assert 'nightrec_recommendation_source_total{source="trending"} 1.0' in text
    assert 'nightrec_recommendation_source_total{source="personalized"} 1.0' in text


def test_openapi_docs_describe_every_endpoint(api):
    assert api.get("/docs").status_code == 200
    paths = api.get("/openapi.json").json()["paths"]
    assert {"/v1/users/{user_id}/recommendations", "/v1/items/{item_id}/similar", "/v1/events"} <= set(paths)
    assert "event_type" in json.dumps(paths["/v1/events"]["post"]["requestBody"])


def test_a_corrupt_stored_value_is_a_503_that_says_so(api, redis_url):
    client = redis.Redis.from_url(redis_url)
    keys = Keys("test")
    client.set(keys.user(client.get(keys.live).decode(), 3), b"\x01garbage")
    response = api.get("/v1/users/3/recommendations")
    assert response.status_code == 503 and "unreadable" in response.json()["detail"]


def test_healthz_reports_the_live_version(api, redis_url):
    response = api.get("/healthz")
    body = response.json()
    assert response.status_code == 200 and body["status"] == "ok"
    assert body["live_version"] == redis.Redis.from_url(redis_url).get(Keys("test").live).decode()
    assert body["live_night"] == "2024-01-01" and 0 <= body["live_age_hours"] < 0.1
    assert body["last_night"] is None  # no night has reported yet


def test_a_version_that_goes_stale_turns_healthz_degraded_and_shows_in_metrics(redis_url, make_settings):
    settings = make_settings(redis_url, service__max_age_hours="0.001", service__degraded_status="503")
    publish_sample(redis_url)
    with TestClient(create_app(settings)) as client:
        assert client.get("/healthz").status_code == 200
        time.sleep(4)  # past 3.6 s
        stale = client.get("/healthz")
        metrics = client.get("/metrics").text
    assert stale.status_code == 503 and stale.json()["status"] == "degraded"
    assert stale.json()["live_age_hours"] > 0.001 and stale.json()["max_age_hours"] == 0.001
    age = next(line for line in metrics.splitlines() if line.startswith("nightrec_live_version_age_seconds "))
    assert float(age.split()[1]) > 3.6


def test_nothing_published_yet_is_a_503_not_a_500(settings):
    with TestClient(create_app(settings)) as client:
        response = client.get("/v1/users/1/recommendations")
    assert response.status_code == 503 and "no recommendations have been published" in response.json()["detail"]


def test_redis_down_is_a_503_not_a_500(make_settings):
    with TestClient(create_app(make_settings("redis://127.0.0.1:1/0"))) as client:
        response = client.get("/v1/users/1/recommendations")
        assert client.post("/v1/events", json={"user_id": 1, "item_id": 2, "event_type": "click"}).status_code == 503
    assert response.status_code == 503 and response.json()["detail"] == "recommendation store unavailable"


def test_the_nightly_drain_writes_posted_events_to_landing_once(spark, api, settings):
    from nightrec.data.landing import inspect_day, read_interactions
    from nightrec.data.validation import typed

    today = dt.datetime.now(dt.timezone.utc).date()
    day1, day2 = today - dt.timedelta(days=2), today - dt.timedelta(days=1)
    for item, ts in ((7, f"{day1}T23:59:00Z"), (8, f"{day2}T00:01:00+01:00"), (9, f"{day2}T08:00:00Z")):
        assert api.post("/v1/events", json={"user_id": 1, "item_id": item, "event_type": "click", "value": 2,
                                            "ts": ts}).status_code == 202
    first = drain_events.run(settings, day2)
    assert first.events == 3 and len(first.files) == 2
    assert drain_events.run(settings, day2).events == 0  # nothing twice
    api.post("/v1/events", json={"user_id": 2, "item_id": 9, "event_type": "view", "ts": f"{day2}T09:00:00Z"})
    assert drain_events.run(settings, day2).events == 1
    files = [f for day in (day1, day2) for f in inspect_day(settings.path("landing"), day, 1 << 20)]
    frame = read_interactions(spark, files)
    rows = sorted((r.user_id, r.item_id, r.event_type, r.value, str(r.dt)) for r in typed(frame).collect())
    assert rows == [(1, 7, "click", 2.0, str(day1)), (1, 8, "click", 2.0, str(day1)),
                    (1, 9, "click", 2.0, str(day2)), (2, 9, "view", 1.0, str(day2))]
    assert len(redis.Redis.from_url(settings.redis.url).xrange(Keys("test").events)) == 1  # trimmed to the newest
