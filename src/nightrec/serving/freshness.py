"""How fresh the service's data is, for /healthz and /metrics: the live version's night and age (its
meta in Redis) and the last night's record (written by the night's report: nightrec.pipeline.report).
A version older than `service.max_age_hours` makes the service "degraded": /healthz answers with
`service.degraded_status`, which load balancers' readiness checks treat as not ready."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

from nightrec.serving.layout import Keys

STATES = ("success", "failed", "incomplete")


@dataclass(frozen=True)
class Freshness:
    live_version: str | None
    live_night: str | None
    age_hours: float | None
    last_night: dict | None  # the night's record

    def degraded(self, max_age_hours: float) -> bool:
        return self.age_hours is not None and self.age_hours > max_age_hours

    def health(self, max_age_hours: float) -> dict:
        last = self.last_night or {}
        return {"status": "degraded" if self.degraded(max_age_hours) else "ok", "live_version": self.live_version,
                "live_night": self.live_night,
                "live_age_hours": None if self.age_hours is None else round(self.age_hours, 4),
                "max_age_hours": max_age_hours,
                "last_night": {k: last.get(k) for k in ("night", "state", "failed_stage", "finished_at")} if last
                else None}


async def read(redis, keys: Keys, now: dt.datetime | None = None) -> Freshness:
    """Two round trips: the live version and the night record, then the version's meta."""
    live, night = await redis.mget(keys.live, keys.night)  # one slot: {prefix}
    record = json.loads(night) if night else None
    if not live:
        return Freshness(None, None, None, record)
    version = live.decode()
    ds, published = await redis.hmget(keys.meta(version), "ds", "published_at")
    age = None
    if published:
        now = now or dt.datetime.now(dt.timezone.utc)
        age = (now - dt.datetime.fromisoformat(published.decode())).total_seconds() / 3600
    return Freshness(version, ds.decode() if ds else None, age, record)


def gauges(fresh: Freshness) -> bytes:
    """The data's gauges in Prometheus' text format (read at scrape time, from Redis)."""
    families = []

    def gauge(name: str, doc: str, value, labels: dict[str, str] | None = None):
        if value is None:
            return
        family = GaugeMetricFamily(name, doc, labels=list(labels or {}))
        family.add_metric(list((labels or {}).values()), float(value))
        families.append(family)

    gauge("nightrec_live_version_age_seconds", "Age of the live version (since it was published)",
          None if fresh.age_hours is None else fresh.age_hours * 3600)
    night = fresh.last_night or {}
    if night:
        state = GaugeMetricFamily("nightrec_last_night_state", "The last night's state (1 for its state)",
                                  labels=["state"])
        for name in STATES:
            state.add_metric([name], 1.0 if night.get("state") == name else 0.0)
        families.append(state)
        stages = GaugeMetricFamily("nightrec_last_night_stage_seconds", "Seconds of each stage of the last night",
                                   labels=["stage"])
        for stage, seconds in night.get("stage_seconds", {}).items():
            stages.add_metric([stage], float(seconds))
        families.append(stages)
    for key, doc in (("rows_ingested", "Rows ingested by the last night"),
                     ("rows_quarantined", "Rows the last night's validation quarantined"),
                     ("champion_holdout_ndcg", "Holdout NDCG of the champion after the last night"),
                     ("champion_coverage", "Catalog coverage of the champion's holdout lists, last night"),
                     ("users_published", "Users the last night published lists for"),
                     ("redis_used_memory_bytes", "Redis memory after the last night's publish")):
        gauge(f"nightrec_{key}", doc, night.get(key))

    class Collected:
        def collect(self):
            return families

    registry = CollectorRegistry()
    registry.register(Collected())
    return generate_latest(registry)
