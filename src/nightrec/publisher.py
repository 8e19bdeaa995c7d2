"""Bulk-load a new Redis version from Spark, verify it, then flip the live pointer (docs/redis-layout.md).

Each Spark task opens its own connection and writes its rows in bounded MSET batches (one reply per
batch; per slot on a Redis Cluster). Connection errors and timeouts are retried with backoff: every
write is an idempotent SET of a key nobody reads yet. Readers keep the old version until the final
flip, so a load that dies half-way changes nothing they see; the next publish deletes its leftovers.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import redis
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from redis.backoff import ExponentialWithJitterBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

from nightrec.redis_layout import GLOBAL_SEGMENT, Keys, decode_user, encode, encode_id_set, encode_many, \
    encode_segment_ref

BATCH = 1000        # keys per MSET
RETRIES = 5         # per command, on connection errors and timeouts
SAMPLE_SIZE = 50    # users read back and compared before the flip
# One atomic step: point readers at the new version and remember the one it replaces.
FLIP_SCRIPT = """
local old = redis.call('GET', KEYS[1])
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
class PublishResult:
    version: str
    previous: str | None
    users: int
    similar_items: int
    deleted_versions: list[str]


def connect(url: str, cluster: bool = False) -> redis.Redis | RedisCluster:
    """A client for `url` (redis://, rediss:// for TLS, password in the URL), retrying transient errors."""
    retry = Retry(ExponentialWithJitterBackoff(base=0.05, cap=2.0), RETRIES)
    if cluster:
        return RedisCluster.from_url(url, retry=retry)
    return redis.Redis.from_url(url, retry=retry, retry_on_timeout=True)


def new_version_id(client, keys: Keys, ds: dt.date) -> str:
    """e.g. 19980422.17: the day and a counter, short because every key of the version repeats it."""
    return f"{ds:%Y%m%d}.{client.incr(keys.sequence)}"


def _write_lists(batches, *, url: str, cluster: bool, prefix: str, version: str, kind: str):
    """Runs in Spark tasks: (id, item_ids, scores[, segment]) batches -> MSETs; yields rows written."""
    keys = Keys(prefix)
    keys_of = keys.users if kind == "user" else keys.similars
    client = connect(url, cluster)
    written = 0
    try:
        for batch in batches:
            for start in range(0, batch.num_rows, BATCH):
                chunk = batch.slice(start, BATCH)
                mapping = dict(zip(keys_of(version, chunk.column(0).to_pylist()), _values(chunk)))
                if cluster:
                    client.mset_nonatomic(mapping)
                else:
                    client.mset(mapping)
                written += len(mapping)
    finally:
        client.close()
    yield pa.RecordBatch.from_pydict({"written": [written]})


def _values(chunk: pa.RecordBatch) -> list[bytes]:
    ids, scores = chunk.column(1), chunk.column(2)
    offsets = ids.offsets.to_numpy()  # of this slice: relative to the batch's first row
    if not np.array_equal(np.diff(offsets), np.diff(scores.offsets.to_numpy())):
        raise PublishError("item_ids and scores differ in length for some rows")
    values = encode_many(offsets - offsets[0], ids.flatten().to_numpy(zero_copy_only=False),
                         scores.flatten().to_numpy(zero_copy_only=False))
    if chunk.num_columns > 3:  # users whose list is a segment's: a reference, not a copy
        for row, segment in enumerate(chunk.column(3).to_pylist()):
            if segment is not None:
                values[row] = encode_segment_ref(segment)
    return values


def load_lists(frame: DataFrame, *, url: str, cluster: bool, prefix: str, version: str, kind: str) -> int:
    """Write every row of frame under the version; returns how many keys were written."""
    options = dict(url=url, cluster=cluster, prefix=prefix, version=version, kind=kind)
    counts = frame.mapInArrow(lambda batches: _write_lists(batches, **options), "written long")
    return int(counts.agg(F.sum("written")).first()[0] or 0)


def publish(recs: DataFrame, extras: Extras, *, url: str, prefix: str, ds: dt.date, model_version: str,
            similar: DataFrame | None = None, cluster: bool = False) -> PublishResult:
    """recs: (user_id, item_ids, scores, segment) with segment null for personal lists;
    similar: (item_id, item_ids, scores). Live readers see the old version until the final flip."""
    if GLOBAL_SEGMENT not in extras.fallbacks:
        raise PublishError(f"no {GLOBAL_SEGMENT!r} fallback list: unknown users would get nothing")
    keys = Keys(prefix)
    client = connect(url, cluster)
    try:
        version = new_version_id(client, keys, ds)
        started = dt.datetime.now(dt.timezone.utc).timestamp()
        client.zadd(keys.versions, {version: started})
        if "segment" not in recs.columns:
            recs = recs.withColumn("segment", F.lit(None).cast("string"))
        recs = recs.select("user_id", "item_ids", "scores", "segment")
        expected = recs.count()
        written = load_lists(recs, url=url, cluster=cluster, prefix=prefix, version=version, kind="user")
        if written != expected:
            raise PublishError(f"version {version}: wrote {written} users, expected {expected}; live version unchanged")
        n_similar = 0
        if similar is not None:
            similar = similar.select("item_id", "item_ids", "scores")
            n_similar = load_lists(similar, url=url, cluster=cluster, prefix=prefix, version=version, kind="similar")
        _write_extras(client, keys, version, extras)
        verify(client, keys, version, recs)
        client.hset(keys.meta(version), mapping={
            "ds": ds.isoformat(), "model_version": model_version, "users": expected,
            "similar_items": n_similar, "layout": 1,
            "segments": json.dumps(sorted(extras.fallbacks)), "categories": json.dumps(sorted(extras.categories)),
            "published_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        })
        previous = flip(client, keys, version)
        deleted = delete_stale_versions(client, keys, started_before=started)
    finally:
        client.close()
    return PublishResult(version, previous, expected, n_similar, deleted)


def _write_extras(client, keys: Keys, version: str, extras: Extras) -> None:
    pipe = client.pipeline(transaction=False)
    for segment, (ids, scores) in extras.fallbacks.items():
        pipe.set(keys.fallback(version, segment), encode(ids, scores))
    for name, ids in extras.categories.items():
        pipe.set(keys.category(version, name), encode_id_set(ids))
    pipe.set(keys.unavailable(version), encode_id_set(extras.unavailable))
    pipe.execute()


def verify(client, keys: Keys, version: str, recs: DataFrame) -> None:
    """A sample of users reads back equal to what was loaded, segment references resolve."""
    for row in recs.limit(SAMPLE_SIZE).collect():
        stored = client.get(keys.user(version, row.user_id))
        value = decode_user(stored) if stored is not None else None
        wanted = row.segment if row.segment is not None else list(row.item_ids)
        if stored is None or (value if isinstance(value, str) else value[0]) != wanted:
            raise PublishError(f"version {version}: user {row.user_id} reads back wrong; live version unchanged")
        if isinstance(value, str) and not client.exists(keys.fallback(version, value)):
            raise PublishError(f"version {version}: user {row.user_id} refers to segment {value!r}, "
                               "which has no list; live version unchanged")


def flip(client, keys: Keys, version: str) -> str | None:
    if not client.exists(keys.meta(version)):
        raise PublishError(f"version {version} has no meta key: refusing to make an unfinished load live")
    old = client.eval(FLIP_SCRIPT, 2, keys.live, keys.previous, version)
    return old.decode() if old else None


def delete_stale_versions(client, keys: Keys, started_before: float) -> list[str]:
    """Drop versions older than ours except the live and the previous one (abandoned loads included).

    Loads that started after ours are left alone: another publisher may still be writing them.
    """
    keep = {v.decode() for v in (client.get(keys.live), client.get(keys.previous)) if v}
    older = client.zrangebyscore(keys.versions, "-inf", f"({started_before}")
    stale = [v.decode() for v in older if v.decode() not in keep]
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

