"""The same loader, service and drain against a local 3-node Redis Cluster (redis.cluster = true),
and the loader's cluster writer against slots that move while it writes."""

import datetime as dt
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from fastapi.testclient import TestClient
from redis.crc import key_slot

from helpers import publish_sample
from nightrec.pipeline import drain_events
from nightrec.pipeline.publish import load_values
from nightrec.serving import loader as publisher
from nightrec.serving.api import create_app
from nightrec.serving.layout import Keys, encode, encode_segment_ref

KEYS = Keys("test")
RESHARD_PAUSE = 0.01  # seconds between two slot moves


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
    first = publish_sample(url, cluster=True)
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

        second = publish_sample(url, cluster=True)
        third = publish_sample(url, cluster=True)
        assert (second.previous, third.previous, third.deleted_versions) == (first.version, second.version,
                                                                             [first.version])
        assert not any(k.startswith(f"test:v:{first.version}:".encode()) for node in node_keys(url) for k in node)
        assert api.get("/v1/users/1/recommendations").json()["version"] == third.version

    drained = drain_events.run(cluster_settings, dt.date.today())
    assert drained.events == 1 and len(drained.files) == 1


def test_keys_rate_limits_and_opt_outs_on_a_cluster(cluster_settings):
    from nightrec.serving import auth

    url = cluster_settings.redis.url
    publish_sample(url, cluster=True)
    client = redis.RedisCluster.from_url(url)
    token = auth.create_key(client, KEYS, "shop", "admin", "test")[0]
    limited = cluster_settings.model_copy(update={"auth": cluster_settings.auth.model_copy(update={
        "enabled": True, "rate_limits": {**cluster_settings.auth.rate_limits,
                                         "admin": auth.RateLimit(per_second=1, burst=3)}})})
    headers = {"Authorization": f"Bearer {token}"}
    with TestClient(create_app(limited)) as api:
        assert api.get("/v1/users/2/recommendations").status_code == 401
        assert api.post("/v1/users/2/opt-out", headers=headers).status_code == 202
        assert api.get("/v1/users/2/recommendations", headers=headers).json()["source"] == "trending"
        assert api.get("/v1/users/3/recommendations", headers=headers).status_code == 200
        assert api.get("/v1/users/3/recommendations", headers=headers).status_code == 429
    assert client.get(KEYS.opted_out(2)).startswith(b"opt_out:") and client.xlen(KEYS.privacy) == 1


def user_values(ids) -> dict[int, bytes]:
    """Lists of varying length (1-100 items), and a segment reference every 97th user."""
    return {u: encode_segment_ref("gender=F") if u % 97 == 0 else
            encode(range(u, u + 1 + u % 100), [1.0 / (i + 1) for i in range(1 + u % 100)]) for u in ids}


def primaries(url: str) -> dict[str, redis.Redis]:
    """"host:port" -> a plain client of that primary (it answers only for the slots it owns)."""
    return {n.name: redis.Redis(host=n.host, port=n.port) for n in redis.RedisCluster.from_url(url).get_primaries()}


def assert_stored_on_owners(url: str, expected: dict[str, bytes], pattern: str) -> dict[str, int]:
    """Every key of `pattern` sits on the primary owning its slot (per a fresh slot map), every
    expected key is there byte for byte, and nothing else. Returns keys per node."""
    cluster = redis.RedisCluster.from_url(url)
    wanted: dict[str, set[bytes]] = defaultdict(set)
    for key in expected:
        wanted[cluster.get_node_from_key(key).name].add(key.encode())
    for name, node in primaries(url).items():
        stored = set(node.scan_iter(match=pattern, count=1000))
        assert stored == wanted[name], f"{name}: {len(stored - wanted[name])} keys too many, " \
                                       f"{len(wanted[name] - stored)} missing"
        pipe = node.pipeline(transaction=False)
        for key in sorted(stored):
            pipe.get(key)
        assert pipe.execute() == [expected[key.decode()] for key in sorted(stored)]
    return {name: len(keys) for name, keys in wanted.items()}


def slot_of(key: str) -> int:
    return key_slot(key.encode())


def node_id(node: redis.Redis) -> str:
    return node.execute_command("CLUSTER", "MYID").decode()


def owner_of(url: str, slot: int) -> str:
    """The slot's primary per a fresh slot map."""
    return redis.RedisCluster.from_url(url).nodes_manager.get_node_from_slot(slot).name


class SlotMover:
    """Moves slots between the primaries as `redis-cli --cluster reshard` does: the target imports,
    the source migrates (answering ASK for keys it does not hold), the keys go over with MIGRATE,
    then every node learns the new owner. Every slot moved goes home in restore()."""

    def __init__(self, url: str):
        self.url, self.nodes = url, primaries(url)
        self.ids = {name: node_id(node) for name, node in self.nodes.items()}
        self.owners: dict[int, str] = {}  # slot -> owner, for the slots moved here (nobody else moves them)
        self.home: dict[int, str] = {}
        self.open: dict[int, tuple[str, str]] = {}  # slot -> (source, target) of a move not finished

    def owner(self, slot: int) -> str:
        if slot not in self.owners:
            self.owners[slot] = self.home[slot] = owner_of(self.url, slot)
        return self.owners[slot]

    def next_node(self, slot: int) -> str:
        names = sorted(self.nodes)
        return names[(names.index(self.owner(slot)) + 1) % len(names)]

    def start(self, slot: int, to: str) -> str:
        source = self.owner(slot)
        self.nodes[to].execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", self.ids[source])
        self.nodes[source].execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", self.ids[to])
        self.open[slot] = (source, to)
        return source

    def finish(self, slot: int, source: str, to: str) -> None:
        address = self.nodes[to].connection_pool.connection_kwargs
        while keys := self.nodes[source].execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
            self.nodes[source].execute_command("MIGRATE", address["host"], address["port"], "", 0, 5000, "REPLACE",
                                               "KEYS", *keys)
        for name in sorted(self.nodes, key=lambda n: (n != to, n != source)):  # the new owner first
            self.nodes[name].execute_command("CLUSTER", "SETSLOT", slot, "NODE", self.ids[to])
        self.owners[slot] = to
        self.open.pop(slot, None)

    def move(self, slot: int, to: str) -> None:
        self.finish(slot, self.start(slot, to), to)

    def restore(self) -> None:
        for slot, (source, to) in list(self.open.items()):  # a test that failed half-way through a move
            self.finish(slot, source, to)
        for slot, home in self.home.items():
            if self.owners[slot] != home:
                self.move(slot, home)

    def settle(self, seconds: float = 30, quiet: float = 0.5) -> None:
        """Until every node has had the same slot map, with each slot moved here where it was moved
        and none migrating, for `quiet` seconds. Gossip still in flight from before a move can hand
        a slot back on one node (it carries a higher config epoch); that node is told again."""
        deadline, agreed_since = time.monotonic() + seconds, None
        while True:
            views = {name: node.cluster("nodes") for name, node in self.nodes.items()}
            maps = [sorted((tuple(span), info["node_id"]) for info in view.values() for span in info["slots"])
                    for view in views.values()]
            migrating = [m for view in views.values() for info in view.values() for m in info["migrations"]]
            stale = [(name, slot) for name, view in views.items() for slot, owner in self.owners.items()
                     if owner_in(view, slot) != self.ids[owner]]
            for name, slot in stale:
                self.nodes[name].execute_command("CLUSTER", "SETSLOT", slot, "NODE", self.ids[self.owners[slot]])
            if stale or migrating or any(m != maps[0] for m in maps):
                agreed_since = None
            elif agreed_since is None:
                agreed_since = time.monotonic()
            elif time.monotonic() - agreed_since >= quiet:
                return
            assert time.monotonic() < deadline, f"the cluster did not settle: {migrating or stale or 'maps differ'}"
            time.sleep(0.05)


def owner_in(view: dict, slot: int) -> str | None:
    """The id of the node owning `slot` in one node's CLUSTER NODES view."""
    for info in view.values():
        for span in info["slots"]:
            if int(span[0]) <= slot <= int(span[-1]):
                return info["node_id"]
    return None


@pytest.fixture
def slots(cluster_settings):
    mover = SlotMover(cluster_settings.redis.url)
    mover.settle()
    yield mover
    mover.restore()
    mover.settle()


def test_loader_writes_every_key_to_the_node_owning_its_slot(spark, cluster_settings):
    url = cluster_settings.redis.url
    users = user_values(range(1, 5001))
    items = {i: encode([i + 1, i + 2], [0.5, 0.25]) for i in range(1, 1001)}
    load = dict(url=url, cluster=True, prefix="test", version="7")
    frame = spark.createDataFrame(list(users.items()), "user_id int, value binary").repartition(2)
    assert load_values(frame, kind="user", **load) == len(users)
    similar = spark.createDataFrame(list(items.items()), "item_id int, value binary").repartition(2)
    assert load_values(similar, kind="similar", **load) == len(items)

    per_node = assert_stored_on_owners(url, {KEYS.user("7", u): v for u, v in users.items()}, "test:v:7:u:*")
    assert len(per_node) == 3 and min(per_node.values()) > 1500  # about a third each
    per_node = assert_stored_on_owners(url, {KEYS.similar("7", i): v for i, v in items.items()}, "test:v:7:sim:*")
    assert len(per_node) == 3 and sum(per_node.values()) == len(items)


def test_a_stale_slot_map_is_refreshed_and_every_key_written(cluster_settings, slots):
    expected = {KEYS.user("7", u): v for u, v in user_values(range(1, 2001)).items()}
    writer = publisher.ClusterWriter(cluster_settings.redis.url)  # reads the slot map now
    try:
        moved = {slot_of(KEYS.user("7", u)): None for u in range(1, 11)}
        for slot in moved:
            moved[slot] = slots.next_node(slot)
            slots.move(slot, moved[slot])
        writer.write(list(expected), list(expected.values()))  # MOVED for those slots' keys
    finally:
        writer.close()
    assert {slot: owner_of(cluster_settings.redis.url, slot) for slot in moved} == moved
    assert_stored_on_owners(cluster_settings.redis.url, expected, "test:v:7:u:*")


def test_keys_of_a_migrating_slot_follow_ask_to_the_importing_node(cluster_settings, slots):
    expected = {KEYS.user("7", u): v for u, v in user_values(range(1, 2001)).items()}
    slot = slot_of(KEYS.user("7", 1))
    target = slots.next_node(slot)
    source = slots.start(slot, target)
    in_slot = sum(1 for key in expected if slot_of(key) == slot)
    writer = publisher.ClusterWriter(cluster_settings.redis.url)
    try:
        writer.write(list(expected), list(expected.values()))  # ASK for that slot's keys
    finally:
        writer.close()
    assert slots.nodes[target].execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == in_slot
    assert slots.nodes[source].execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
    slots.finish(slot, source, target)
    assert_stored_on_owners(cluster_settings.redis.url, expected, "test:v:7:u:*")


def test_a_load_during_resharding_writes_every_key(spark, cluster_settings, slots):
    """1024 slots go round the nodes, keys and all, while 10000 users in those slots are loaded."""
    hot = set(range(0, 16384, 16))
    ids = [u for u in range(1, 200_000) if slot_of(KEYS.user("7", u)) in hot][:10_000]
    users = user_values(ids)
    frame = spark.createDataFrame(list(users.items()), "user_id int, value binary").repartition(2).cache()
    frame.count()
    stop, moved = threading.Event(), []

    def reshard():
        while not stop.is_set():
            for slot in sorted(hot):
                if stop.is_set():
                    return
                slots.move(slot, slots.next_node(slot))
                moved.append(slot)
                # as a resharding tool pauses: back-to-back moves outrun gossip, and nodes that
                # disagree on a slot's owner redirect to each other until the cluster is repaired
                time.sleep(RESHARD_PAUSE)

    with ThreadPoolExecutor(max_workers=1) as pool:
        resharding = pool.submit(reshard)
        while not moved and not resharding.done():
            time.sleep(0.01)
        try:
            moved_before = len(moved)
            written = load_values(frame, url=cluster_settings.redis.url, cluster=True, prefix="test",
                                            version="7", kind="user")
            moved_during = len(moved) - moved_before
        finally:
            stop.set()
        resharding.result()
    frame.unpersist()
    assert len(users) == 10_000 and written == len(users)
    # the point is keys written while slots move: a few moves suffice (82 here, 9 on a busier machine)
    assert moved_during >= 2, f"only {moved_during} slots moved during the load"
    assert_stored_on_owners(cluster_settings.redis.url, {KEYS.user("7", u): v for u, v in users.items()},
                            "test:v:7:u:*")


def test_a_load_whose_connections_are_cut_again_and_again_writes_every_key(spark, cluster_settings):
    from pyspark.sql import functions as F

    url = cluster_settings.redis.url
    nodes = list(primaries(url).values())
    users = spark.range(1, 100_001, numPartitions=4).select(F.col("id").cast("int").alias("user_id"),
                                                            F.col("id").cast("string").cast("binary").alias("value"))
    users = users.cache()
    users.count()
    kills, stop = [], threading.Event()

    def drop_connections():  # a flaky network: every loader connection to every node is cut, again and again
        while not stop.is_set():
            if sum(node.dbsize() for node in nodes) > 10_000:
                kills.extend(node.client_kill_filter(_type="normal", skipme=True) for node in nodes)
            time.sleep(0.2)

    cutter = threading.Thread(target=drop_connections)
    cutter.start()
    try:
        written = load_values(users, url=url, cluster=True, prefix="test", version="7", kind="user")
    finally:
        stop.set()
        cutter.join(10)
    users.unpersist()
    assert sum(kills) > 0  # connections really were cut during the load
    assert written == 100_000 and sum(node.dbsize() for node in nodes) == 100_000
    cluster = redis.RedisCluster.from_url(url)
    assert all(cluster.get(KEYS.user("7", u)) == str(u).encode() for u in range(1, 100_001, 997))


def test_a_slot_nobody_accepts_fails_the_load_loudly(cluster_settings, slots):
    """The owner sends its keys elsewhere (ASK) and the node named refuses them (MOVED back): after
    the retries the write fails instead of dropping the keys."""
    expected = {KEYS.user("7", u): v for u, v in user_values(range(1, 101)).items()}
    slot = slot_of(KEYS.user("7", 1))
    owner, other = slots.owner(slot), slots.next_node(slot)
    slots.nodes[owner].execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", node_id(slots.nodes[other]))
    writer = publisher.ClusterWriter(cluster_settings.redis.url)
    try:
        with pytest.raises(publisher.PublishError, match=r"keys not written to the cluster after 5 retries"):
            writer.write(list(expected), list(expected.values()))
    finally:
        writer.close()
        slots.nodes[owner].execute_command("CLUSTER", "SETSLOT", slot, "STABLE")


def test_a_write_the_cluster_refuses_fails_the_load(cluster_settings):
    node = next(iter(primaries(cluster_settings.redis.url).values()))
    node.config_set("maxmemory", 1)  # every write to it: OOM
    writer = publisher.ClusterWriter(cluster_settings.redis.url)
    try:
        with pytest.raises(publisher.PublishError, match="refused .*maxmemory"):
            writer.write([KEYS.user("7", u) for u in range(1, 101)], [b"x"] * 100)
    finally:
        writer.close()
        node.config_set("maxmemory", 0)
