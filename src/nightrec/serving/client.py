"""Redis clients for everything but the lookup's hot path (which multiplexes: nightrec.serving.resp)."""

from __future__ import annotations

import time

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException
from redis.retry import Retry

RETRIES = 5  # per command, on connection errors and timeouts (the cluster writer: per batch, redirects included)


def connect(url: str, cluster: bool = False, timeout: float | None = None) -> redis.Redis | RedisCluster:
    """A client for `url` (redis://, rediss:// for TLS, password in the URL), retrying transient errors;
    `timeout`: seconds a command may take (default: none)."""
    backoff = ExponentialWithJitterBackoff(base=0.05, cap=2.0)
    retry = Retry(backoff, RETRIES)
    if not cluster:
        return redis.Redis.from_url(url, retry=retry, retry_on_timeout=True, socket_timeout=timeout)
    # A cluster client reads the slot map as it is built: a connection cut then, or nodes caught
    # disagreeing mid-reshard, fails the constructor, which its own retry does not cover.
    for attempt in range(1, RETRIES):
        try:
            return RedisCluster.from_url(url, retry=retry, socket_timeout=timeout)
        except (RedisClusterException, redis.ConnectionError, redis.TimeoutError):
            time.sleep(backoff.compute(attempt))
    return RedisCluster.from_url(url, retry=retry, socket_timeout=timeout)  # the last try's error is the caller's
