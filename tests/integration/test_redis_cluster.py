"""The same loader, service and drain against a local 3-node Redis Cluster (redis.cluster = true)."""

import datetime as dt

import pytest
import redis
from fastapi.testclient import TestClient

from helpers import publish_sample
from nightrec.redis_layout import Keys
from nightrec.service import create_app
from nightrec.stages import drain_events


@pytest.fixture
def cluster_settings(redis_cluster, make_settings):
    for node in redis.RedisCluster.from_url(redis_cluster).get_primaries():
        redis.Redis(host=node.host, port=node.port).flushall()
    return make_settings(redis_cluster, redis__cluster="true", service__live_cache_seconds=0)


def node_keys(url: str) -> list[set[bytes]]:
    return [set(redis.Redis(host=n.host, port=n.port).keys("*"))
            for n in redis.RedisCluster.from_url(url).get_primaries()]


def test_publish_serve_and_drain_on_a_cluster(spark, cluster_settings):
    url = cluster_settings.redis.url
    first = publish_sample(spark, url, cluster=True)
    keys = Keys("test")
    per_node = node_keys(url)
    assert len(per_node) == 3 and all(per_node)  # data keys spread over every node
    control = {keys.live.encode(), keys.previous.encode(), keys.versions.encode(), keys.sequence.encode()}
    assert sum(1 for node in per_node if node & control) == 1  # control keys share one slot

    with TestClient(create_app(cluster_settings)) as api:
        body = api.get("/v1/users/2/recommendations", params={"k": 3, "category": "comedy"}).json()
        assert body["version"] == first.version and [i["item_id"] for i in body["items"]] == [2, 4, 6]
        assert api.get("/v1/users/4/recommendations").json()["segment"] == "gender=F"
        assert api.get("/v1/users/999/recommendations").json()["source"] == "trending"
        assert [i["item_id"] for i in api.get("/v1/items/10/similar", params={"k": 2}).json()["items"]] == [11, 12]
        assert api.post("/v1/events", json={"user_id": 2, "item_id": 2, "event_type": "click"}).status_code == 202
        assert api.get("/v1/users/2/recommendations", params={"k": 1}).json()["items"][0]["item_id"] == 3

        second = publish_sample(spark, url, cluster=True)
        third = publish_sample(spark, url, cluster=True)
        assert (second.previous, third.previous, third.deleted_versions) == (first.version, second.version,
                                                                             [first.version])
        assert not any(k.startswith(f"test:v:{first.version}:".encode()) for node in node_keys(url) for k in node)
        assert api.get("/v1/users/1/recommendations").json()["version"] == third.version

    drained = drain_events.run(cluster_settings, dt.date.today())
    assert drained.events == 1 and len(drained.files) == 1
