"""The lookup service against a real redis-server, with versions written by the real loader."""

import datetime as dt

import pytest
import redis
from fastapi.testclient import TestClient

from nightrec import publisher
from nightrec.redis_layout import Keys
from nightrec.service import create_app

DAY = dt.date(2024, 1, 1)


@pytest.fixture
def api(spark, redis_url, make_settings):
    settings = make_settings(redis_url)
    recs = spark.createDataFrame([(u, list(range(u, u + 100)), [1.0 - i / 100 for i in range(100)]) for u in (1, 2, 3)],
                                 "user_id int, item_ids array<int>, scores array<float>")
    publisher.publish(recs, ([50, 40, 30], [0.9, 0.5, 0.1]), url=redis_url, prefix=settings.redis.prefix,
                      ds=DAY, model_version="nightrec-als/7")
    with TestClient(create_app(settings)) as client:
        yield client


def test_known_user_gets_k_ranked_items(api):
    response = api.get("/v1/users/2/recommendations", params={"k": 10})
    assert response.status_code == 200
    body = response.json()
    assert body["source"] == "personalized" and body["model_version"] == "nightrec-als/7"
    assert [i["item_id"] for i in body["items"]] == list(range(2, 12))
    assert [i["rank"] for i in body["items"]] == list(range(1, 11))
    assert body["items"][0]["score"] == pytest.approx(1.0) and body["items"][9]["score"] == pytest.approx(0.91, abs=1e-3)
    assert len(api.get("/v1/users/2/recommendations", params={"k": 100}).json()["items"]) == 100
    assert len(api.get("/v1/users/2/recommendations").json()["items"]) == 10  # default k


def test_unknown_user_gets_popular_items_marked_as_such(api):
    body = api.get("/v1/users/777/recommendations", params={"k": 2}).json()
    assert body["source"] == "popular" and [i["item_id"] for i in body["items"]] == [50, 40]


@pytest.mark.parametrize("path", [
    "/v1/users/1/recommendations?k=0", "/v1/users/1/recommendations?k=101", "/v1/users/1/recommendations?k=ten",
    "/v1/users/abc/recommendations", "/v1/users/0/recommendations", "/v1/users/-5/recommendations",
    "/v1/users/2147483648/recommendations", "/v1/users/1.5/recommendations",
])
def test_bad_requests_get_a_4xx_that_names_the_problem(api, path):
    response = api.get(path)
    assert response.status_code == 422
    detail = response.json()["detail"][0]
    assert detail["loc"][-1] in ("k", "user_id") and detail["msg"]


def test_a_corrupt_stored_value_is_a_503_that_says_so(api, redis_url):
    client = redis.Redis.from_url(redis_url)
    keys = Keys("test")
    client.set(keys.user(client.get(keys.live).decode(), 3), b"\x01garbage")
    response = api.get("/v1/users/3/recommendations")
    assert response.status_code == 503 and "unreadable" in response.json()["detail"]


def test_healthz_reports_the_live_version(api, redis_url):
    body = api.get("/healthz").json()
    assert body["status"] == "ok"
    assert body["live_version"] == redis.Redis.from_url(redis_url).get(Keys("test").live).decode()


def test_nothing_published_yet_is_a_503_not_a_500(redis_url, make_settings):
    with TestClient(create_app(make_settings(redis_url))) as client:
        response = client.get("/v1/users/1/recommendations")
    assert response.status_code == 503 and "no recommendations have been published" in response.json()["detail"]


def test_redis_down_is_a_503_not_a_500(make_settings):
    with TestClient(create_app(make_settings("redis://127.0.0.1:1/0"))) as client:
        response = client.get("/v1/users/1/recommendations")
    assert response.status_code == 503 and response.json()["detail"] == "recommendation store unavailable"
