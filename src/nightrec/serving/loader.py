"""Bulk-load a new Redis version, verify it, then flip the live pointer (docs/redis-layout.md).

The score stage stores every list already packed as Redis keeps it (gold `value` columns), so the
load only moves bytes. The values come from a ValueSource (the publish stage's is a Spark
DataFrame: nightrec.pipeline.publish): each Spark task opens its own connection and writes its rows
in bounded MSET batches (one reply per batch). On a Redis Cluster each task holds one connection per primary and
sends every node its share of a batch as one pipelined stream of SETs (ClusterWriter). Connection
errors and timeouts are retried with backoff: every write is an idempotent SET of a key nobody reads
yet. Readers keep the old version until the final flip, so a load that dies half-way changes nothing
they see; the next publish deletes its leftovers.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections import defaultdict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

import redis
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.connection import Connection, parse_url
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.exceptions import AskError, ClusterDownError, MovedError, RedisClusterException, ResponseError, TryAgainError
from redis.retry import Retry

from nightrec.constants import GLOBAL_SEGMENT
from nightrec.serving import privacy
from nightrec.serving.client import RETRIES, connect
from nightrec.serving.layout import LAYOUT, Keys, decode, decode_user, encode, encode_id_set

BATCH = 2000        # keys per MSET
IN_FLIGHT = 2       # MSETs a task may have handed to its sender thread and not seen answered
LOAD_GRACE = 6 * 3600  # s: an unfinished load younger than this may still be running: never deleted
SAMPLE_SIZE = 50    # users read back and compared before the flip
# One atomic step: point readers at the new version and remember the one it replaces.
# Refuses (returns an error) when a load that started later is already live: two publishes racing
# must not end with the older one live.
FLIP_SCRIPT = """
local old = redis.call('GET', KEYS[1])
if old and old ~= ARGV[1] then
  local mine, theirs = redis.call('ZSCORE', KEYS[3], ARGV[1]), redis.call('ZSCORE', KEYS[3], old)
  if mine and theirs and tonumber(theirs) > tonumber(mine) then
    return redis.error_reply('a newer version is live: ' .. old)
  end
end
redis.call('SET', KEYS[1], ARGV[1])
if old and old ~= ARGV[1] then redis.call('SET', KEYS[2], old) end
return old
"""


class PublishError(RuntimeError):
    pass


@dataclass
class Extras:
    """What a version holds besides the users' lists (all small enough for the driver)."""

    fallbacks: dict[str, tuple[list[int], list[float]]]  # segment -> ranked list; "global" required
    categories: dict[str, list[int]] = field(default_factory=dict)  # category -> item ids
    unavailable: list[int] = field(default_factory=list)


@dataclass
class VariantLists:
    """An experiment's own lists for a version: variant -> (its users' (user_id, value) rows, model version)."""

    experiment_id: str
    lists: dict[str, tuple[ValueSource, str]]


@dataclass
class PublishResult:
    version: str
    previous: str | None
    users: int
    similar_items: int
    deleted_versions: list[str]
    variant_users: dict[str, int] = field(default_factory=dict)


class ValueSource(Protocol):
    """Rows of (id, value) to load, wherever they live: the loader counts them, has them written
    (`write` runs write_values over every batch of rows, where the rows are, and sums what it
    yields), and reads a sample back."""

    def count(self) -> int: ...

    def write(self, write_batches) -> int: ...

    def sample(self, n: int) -> list[tuple[int, bytes]]: ...


def new_version_id(client, keys: Keys, ds: dt.date) -> str:
    """e.g. 19980422.17: the day and a counter, short because every key of the version repeats it."""
    return f"{ds:%Y%m%d}.{client.incr(keys.sequence)}"


def write_values(batches, *, url: str, cluster: bool, prefix: str, version: str, kind: str, variant: str | None = None):
    """Arrow (id, value) batches -> MSETs (on a cluster: SETs grouped by node); yields the number of
    rows written, once. Runs where the rows are (in Spark: in each task). kind "user" with a variant
    writes that experiment variant's lists.

    A sender thread writes one batch while this one prepares the next (the socket wait releases the
    GIL), at most IN_FLIGHT batches ahead.
    """
    keys = Keys(prefix)
    keys_of = keys.users if kind == "user" else keys.similars
    if variant is not None:
        def keys_of(version: str, user_ids: list[int]) -> list[str]:
            return keys.variant_users(version, variant, user_ids)
    if cluster:
        writer = ClusterWriter(url)
        write, close = writer.write, writer.close
    else:
        client = connect(url)
        write, close = partial(_mset, client), client.close
    written = 0
    pending: deque[Future] = deque()
    try:
        with ThreadPoolExecutor(max_workers=1) as sender:
            for batch in batches:
                if batch.column(1).null_count:
                    missing = batch.filter(batch.column(1).is_null()).column(0)[0]
                    raise PublishError(f"{kind} {missing} has no value: gold was not written by the score stage")
                for start in range(0, batch.num_rows, BATCH):
                    chunk = batch.slice(start, BATCH)
                    pending.append(sender.submit(write, keys_of(version, chunk.column(0).to_pylist()),
                                                 chunk.column(1).to_pylist()))
                    written += chunk.num_rows
                    if len(pending) >= IN_FLIGHT:
                        pending.popleft().result()
            while pending:
                pending.popleft().result()  # raises what the sender met after its retries
    finally:
        close()
    yield written


def _mset(client: redis.Redis, keys: list[str], values: list[bytes]):
    flat = [b""] * (2 * len(keys))  # k1 v1 k2 v2 ...: no dict, no per-pair Python loop
    flat[0::2], flat[1::2] = keys, values
    return client.execute_command("MSET", *flat)


Failure = tuple[bytes, bytes, Exception]  # a key, its value, and why it was not written
Route = tuple[str, bool]  # "host:port" of a primary, and whether to send ASKING first (slot migrating there)


class ClusterWriter:
    """SETs many keys on a Redis Cluster, each on the primary that owns its slot.

    A user key carries its own hash tag, so a batch of 2000 users touches ~2000 slots. redis-py's
    mset_nonatomic sends one MSET per slot through its cluster pipeline, whose bookkeeping cost
    ~13 us of client CPU per command on our 2-core box. Here each primary gets its share of a batch
    as one pipelined stream of SETs, packed in one go, all primaries written before any reply is
    read: ~2.5 us of client CPU per key.

    Every SET is idempotent, so whatever did not get an OK is simply sent again, up to RETRIES more
    rounds per batch: MOVED (the slot has a new owner) resends to the node named and refreshes the
    slot map for the keys to come; ASK (the slot is migrating) resends to the node named, after
    ASKING; connection errors, timeouts, TRYAGAIN and CLUSTERDOWN refresh the map and back off, as
    does a second round of redirects. Any other error, or a key still not written after the last
    round, fails the load. One writer per thread: its connections carry pipelined replies in order.
    """

    def __init__(self, url: str):
        self._options = parse_url(url)  # password, TLS: the same for every node
        self._options.pop("db", None)   # a cluster has database 0 only
        self._connection_class = self._options.pop("connection_class", Connection)  # SSLConnection for rediss://
        self._cluster = connect(url, cluster=True)  # knows the slot map and how to refresh it
        self._connections: dict[str, Connection] = {}  # "host:port" -> our one connection to that node
        self._backoff = ExponentialWithJitterBackoff(base=0.05, cap=2.0)
        self._owners = self._slot_owners()

    def write(self, keys: list[str], values: list[bytes]) -> None:
        todo = [(key.encode(), value) for key, value in zip(keys, values)]
        redirects: dict[bytes, Route] = {}
        for attempt in range(RETRIES + 1):
            failed = self._send(todo, redirects)
            if not failed:
                return
            if attempt == RETRIES:
                key, _, error = failed[0]
                raise PublishError(f"{len(failed)} keys not written to the cluster after {RETRIES} retries, "
                                   f"e.g. {key.decode()}: {error}")
            todo, redirects = self._plan_retry(failed, attempt)

    def close(self) -> None:
        for connection in self._connections.values():
            connection.disconnect()
        self._cluster.close()

    def _slot_owners(self) -> list[str]:
        """slot -> "host:port" of the primary that serves it."""
        get = self._cluster.nodes_manager.get_node_from_slot
        return [get(slot).name for slot in range(REDIS_CLUSTER_HASH_SLOTS)]

    def _refresh(self) -> None:
        try:
            self._cluster.nodes_manager.initialize()
        except (redis.RedisError, RedisClusterException):
            return  # no node answered: keep the old map, the next round tries again
        self._owners = self._slot_owners()
        for name in set(self._connections) - set(self._owners):  # nodes that serve no slot any more
            self._connections.pop(name).disconnect()

    def _send(self, todo: list[tuple[bytes, bytes]], redirects: dict[bytes, Route]) -> list[Failure]:
        """One round: every node gets its keys in one write, then every reply is read.
        Returns the (key, value) pairs not written, each with the error it met."""
        groups: dict[Route, list[tuple[bytes, bytes]]] = defaultdict(list)
        owners = self._owners
        for key, value in todo:
            route = redirects.get(key) or (owners[key_slot(key)], False)
            groups[route].append((key, value))
        failed: list[Failure] = []
        sent = []
        for (node, asked), pairs in groups.items():
            try:
                self._connection(node).send_packed_command([_pack_sets(pairs, asked)], check_health=False)
                sent.append((node, asked, pairs))
            except (redis.ConnectionError, redis.TimeoutError) as error:
                failed += [(key, value, error) for key, value in pairs]
        for node, asked, pairs in sent:
            failed += self._read_replies(self._connection(node), pairs, asked)
        return failed

    def _read_replies(self, connection: Connection, pairs: list[tuple[bytes, bytes]], asked: bool) -> list[Failure]:
        replies = 2 if asked else 1  # ASKING's OK, then the SET's
        failed = []
        read = 0
        try:
            for key, value in pairs:
                error = None
                for _ in range(replies):
                    try:
                        connection.read_response(disable_decoding=True)
                    except ResponseError as reply:  # this key only: the replies after it stay in order
                        error = reply
                if error is not None:
                    failed.append((key, value, error))
                read += 1
        except (redis.ConnectionError, redis.TimeoutError) as error:
            # redis-py closed the connection: the replies from this key on will never come.
            failed += [(key, value, error) for key, value in pairs[read:]]
        return failed

    def _plan_retry(self, failed: list[Failure], attempt: int) -> tuple[list[tuple[bytes, bytes]], dict[bytes, Route]]:
        """What to send next round and where; refreshes the slot map or waits when the errors say so."""
        redirects, moved, refresh, wait = {}, {}, False, False
        for key, _, error in failed:
            if isinstance(error, AskError):  # MOVED too (a subclass)
                node, asking = f"{error.host}:{error.port}", not isinstance(error, MovedError)
                redirects[key] = (node, asking)
                if not asking:
                    moved[error.slot_id] = node
                    refresh = True
            elif isinstance(error, (redis.ConnectionError, redis.TimeoutError, TryAgainError, ClusterDownError)):
                refresh = wait = True
            else:
                raise PublishError(f"cluster refused {key.decode()}: {error}")
        if wait or attempt > 0:  # a redirect is followed at once; trouble again means the cluster is changing
            time.sleep(self._backoff.compute(attempt + 1))
        if refresh:
            self._refresh()
        for slot, node in moved.items():  # the node's word beats a map read from a node not yet told
            self._owners[slot] = node
        return [(key, value) for key, value, _ in failed], redirects

    def _connection(self, node: str) -> Connection:
        if node not in self._connections:
            host, port = node.rsplit(":", 1)
            # No retries down here: a failed write comes back to write(), which knows the slot map.
            self._connections[node] = self._connection_class(**{**self._options, "host": host, "port": int(port)},
                                                             retry=Retry(NoBackoff(), 0))
        return self._connections[node]


def _pack_sets(pairs: list[tuple[bytes, bytes]], asking: bool) -> bytes:
    """SET commands in Redis' wire format (RESP), each after an ASKING when asked."""
    prefix = b"*1\r\n$6\r\nASKING\r\n" if asking else b""
    return b"".join([b"%b*3\r\n$3\r\nSET\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (prefix, len(key), key, len(value), value)
                     for key, value in pairs])


def publish(users: ValueSource, extras: Extras, *, url: str, prefix: str, ds: dt.date, model_version: str,
            similar: ValueSource | None = None, cluster: bool = False,
            variants: VariantLists | None = None) -> PublishResult:
    """users: (user_id, value), similar: (item_id, value), values packed by the layout's codecs;
    variants: an experiment's own lists. Live readers see the old version until the final flip."""
    if GLOBAL_SEGMENT not in extras.fallbacks:
        raise PublishError(f"no {GLOBAL_SEGMENT!r} fallback list: unknown users would get nothing")
    keys = Keys(prefix)
    client = connect(url, cluster)
    try:
        version = new_version_id(client, keys, ds)
        started = dt.datetime.now(dt.timezone.utc).timestamp()
        client.zadd(keys.versions, {version: started})
        options = dict(url=url, cluster=cluster, prefix=prefix, version=version)
        expected = write_all(users, partial(write_values, kind="user", **options), version, "users")
        n_similar = 0
        if similar is not None:
            n_similar = similar.write(partial(write_values, kind="similar", **options))
        variant_users = {}
        for name, (rows, _) in (variants.lists.items() if variants else ()):
            variant_users[name] = write_all(rows, partial(write_values, kind="user", variant=name, **options),
                                            version, f"users of variant {name}")
            verify(client, keys, version, rows.sample(SAMPLE_SIZE), variant=name,
                   opted_out=privacy.pending_users(client, keys))
        _write_extras(client, keys, version, extras)
        verify(client, keys, version, users.sample(SAMPLE_SIZE), opted_out=privacy.pending_users(client, keys))
        meta = {"ds": ds.isoformat(), "model_version": model_version, "users": expected,
                "similar_items": n_similar, "layout": LAYOUT,
                "segments": json.dumps(sorted(extras.fallbacks)), "categories": json.dumps(sorted(extras.categories)),
                "published_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        if variants is not None:
            meta["experiment"] = json.dumps({"id": variants.experiment_id,
                                             "variants": {name: model for name, (_, model) in variants.lists.items()}})
        client.hset(keys.meta(version), mapping=meta)
        # Users who opted out while tonight's lists were computed: not in the version that goes live.
        privacy.sweep(client, keys, version, variants.lists if variants else (), privacy.pending_users(client, keys))
        previous = flip(client, keys, version)
        deleted = delete_stale_versions(client, keys, started_before=started)
    finally:
        client.close()
    return PublishResult(version, previous, expected, n_similar, deleted, variant_users)


def _write_extras(client, keys: Keys, version: str, extras: Extras) -> None:
    pipe = client.pipeline(transaction=False)
    for segment, (ids, scores) in extras.fallbacks.items():
        pipe.set(keys.fallback(version, segment), encode(ids, scores))
    for name, ids in extras.categories.items():
        pipe.set(keys.category(version, name), encode_id_set(ids))
    pipe.set(keys.unavailable(version), encode_id_set(extras.unavailable))
    pipe.execute()


def write_all(rows: ValueSource, write_batches, version: str, what: str) -> int:
    """Every row written, or the load fails; returns how many."""
    expected = rows.count()
    written = rows.write(write_batches)
    if written != expected:
        raise PublishError(f"version {version}: wrote {written} {what}, expected {expected}; live version unchanged")
    return written


def verify(client, keys: Keys, version: str, sample: list[tuple[int, bytes]], variant: str | None = None,
           opted_out: set[int] = frozenset()) -> None:
    """A sample of users reads back byte for byte as loaded, and decodes; segment references resolve.
    A variant's users hold ranked lists only. Users who opted out meanwhile may have lost theirs."""
    of = "" if variant is None else f" of variant {variant}"
    for user_id, loaded in sample:
        if user_id in opted_out:
            continue
        stored = client.get(keys.user(version, user_id) if variant is None
                            else keys.variant_user(version, variant, user_id))
        if stored != loaded:
            raise PublishError(f"version {version}: user {user_id}{of} reads back wrong; live version unchanged")
        try:
            value = decode_user(stored) if variant is None else decode(stored)
        except ValueError as error:
            raise PublishError(f"version {version}: user {user_id}{of} holds an unreadable value ({error}); "
                               "live version unchanged") from None
        if isinstance(value, str) and not client.exists(keys.fallback(version, value)):
            raise PublishError(f"version {version}: user {user_id} refers to segment {value!r}, "
                               "which has no list; live version unchanged")


def flip(client, keys: Keys, version: str) -> str | None:
    if not client.exists(keys.meta(version)):
        raise PublishError(f"version {version} has no meta key: refusing to make an unfinished load live")
    try:
        old = client.eval(FLIP_SCRIPT, 3, keys.live, keys.previous, keys.versions, version)
    except redis.ResponseError as error:
        raise PublishError(f"version {version} not made live: {error}") from None
    return old.decode() if old else None


def delete_stale_versions(client, keys: Keys, started_before: float) -> list[str]:
    """Drop versions older than ours except the live and the previous one, and loads that never
    finished (no meta) once they are LOAD_GRACE old.

    Loads that started after ours, or unfinished ones younger than that, are left alone: another
    publisher may still be writing them.
    """
    keep = {v.decode() for v in (client.get(keys.live), client.get(keys.previous)) if v}
    older = client.zrangebyscore(keys.versions, "-inf", f"({started_before}", withscores=True)
    now = dt.datetime.now(dt.timezone.utc).timestamp()
    stale = [v.decode() for v, started in older if v.decode() not in keep
             and (client.exists(keys.meta(v.decode())) or now - started > LOAD_GRACE)]
    for version in stale:
        batch = []
        for key in client.scan_iter(match=keys.version_pattern(version), count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                client.unlink(*batch)
                batch = []
        if batch:
            client.unlink(*batch)
        client.zrem(keys.versions, version)
    return stale

