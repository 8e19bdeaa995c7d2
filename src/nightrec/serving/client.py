"""Redis clients for everything but the lookup's hot path (which multiplexes: nightrec.serving.resp)."""

from __future__ import annotations

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

RETRIES = 5  # per command, on connection errors and timeouts (the cluster writer: per batch, redirects included)


def connect(url: str, cluster: bool = False) -> redis.Redis | RedisCluster:
    """A client for `url` (redis://, rediss:// for TLS, password in the URL), retrying transient errors."""
    retry = Retry(ExponentialWithJitterBackoff(base=0.05, cap=2.0), RETRIES)
    if cluster:
        return RedisCluster.from_url(url, retry=retry)
    return redis.Redis.from_url(url, retry=retry, retry_on_timeout=True)
