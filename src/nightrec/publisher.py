"""Bulk-load recommendations into a new Redis version, verify it, then flip the live pointer."""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass

import redis
from pyspark.sql import DataFrame

from nightrec.redis_layout import Keys, decode, encode

BATCH = 500
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
class PublishResult:
    version: str
    previous: str | None
    users: int
    deleted_versions: list[str]


def connect(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


def new_version_id(ds: dt.date) -> str:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    return f"{ds:%Y%m%d}-{stamp}-{secrets.token_hex(2)}"


def _load_partition(rows, url: str, prefix: str, version: str):
    """Runs on executors: pipelined SETs in bounded batches, yields the number of users written."""
    keys = Keys(prefix)
    client = connect(url)
    written = 0
    pipe = client.pipeline(transaction=False)
    for row in rows:
        pipe.set(keys.user(version, row.user_id), encode(row.item_ids, row.scores))
        if len(pipe) >= BATCH:
            written += sum(1 for ok in pipe.execute() if ok)
    if len(pipe):
        written += sum(1 for ok in pipe.execute() if ok)
    client.close()
    yield written


def publish(recs: DataFrame, fallback: tuple[list[int], list[float]], *, url: str, prefix: str,
            ds: dt.date, model_version: str, sample_size: int = 20) -> PublishResult:
    """recs: (user_id, item_ids, scores). Live readers see the old version until the final flip."""
    keys = Keys(prefix)
    client = connect(url)
    version = new_version_id(ds)
    started = dt.datetime.now(dt.timezone.utc).timestamp()
    client.zadd(keys.versions, {version: started})
    recs = recs.select("user_id", "item_ids", "scores")
    expected = recs.count()
    written = recs.rdd.mapPartitions(lambda rows: _load_partition(rows, url, prefix, version)).sum()
    if written != expected:
        raise PublishError(f"version {version}: wrote {written} users, expected {expected}; live version unchanged")
    for row in recs.limit(sample_size).collect():
        stored = client.get(keys.user(version, row.user_id))
        if stored is None or decode(stored)[0] != list(row.item_ids):
            raise PublishError(f"version {version}: user {row.user_id} reads back wrong; live version unchanged")
    client.set(keys.fallback(version), encode(*fallback))
    client.hset(keys.meta(version), mapping={
        "ds": ds.isoformat(), "model_version": model_version, "users": expected, "codec": 1,
        "published_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    })
    previous = flip(client, keys, version)
    deleted = delete_stale_versions(client, keys, started_before=started)
    client.close()
    return PublishResult(version, previous, expected, deleted)


def flip(client: redis.Redis, keys: Keys, version: str) -> str | None:
    if not client.exists(keys.meta(version)):
        raise PublishError(f"version {version} has no meta key: refusing to make an unfinished load live")
    old = client.eval(FLIP_SCRIPT, 2, keys.live, keys.previous, version)
    return old.decode() if old else None


def delete_stale_versions(client: redis.Redis, keys: Keys, started_before: float) -> list[str]:
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
