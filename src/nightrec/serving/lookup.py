"""The lookup: a user's recommendations, an item's neighbours and event capture, read from the live
Redis version. Both the HTTP API (its FastAPI routes and its fast path) and `nightrec recs` answer
through it, so they cannot disagree.

A version is immutable once live, so what every request of it shares (meta, fallback lists,
category members, unavailable items) is read once per process and kept; a lookup then costs one
Redis command (MGET of the user's list and the items the user consumed lately). The live version
id itself is re-read at most every `service.live_cache_seconds`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from redis.asyncio.cluster import RedisCluster

from nightrec.constants import GLOBAL_SEGMENT, MAX_ID, REQUEST_ID
from nightrec.serving import privacy
from nightrec.serving.audit import key_actor
from nightrec.serving.client import connect
from nightrec.serving.experiments import Experiment
from nightrec.serving.exploration import REFRESH_SECONDS, Explorer
from nightrec.serving.impressions import FIELD_NAMES, ImpressionLog, row
from nightrec.serving.layout import (
    LAYOUT,
    MAX_CONSUMED,
    Keys,
    check_version,
    decode,
    decode_consumed,
    decode_id_set,
    decode_item_stats,
    decode_user,
    encode_consumed,
)
from nightrec.serving.resp import MultiplexedRedis
from nightrec.settings import Settings

MAX_K = 100
MAX_EXCLUDE = 100
MAX_EXCLUDE_CHARS = 1200
MAX_CATEGORY_CHARS = 100
FUTURE_SLACK = dt.timedelta(minutes=5)  # clocks differ: events a little ahead of ours are accepted
MAX_EVENT_AGE = dt.timedelta(days=30)    # older events belong in landing files (a backfill), not the stream
REDIS_TIMEOUT = 1.0  # seconds; a slower Redis is reported as unavailable (503)
# Unless the user opted out (KEYS[2] exists: then 0, and nothing is stored), append an item to their
# consumed list, keep the newest MAX_CONSUMED and restart the expiry (1).
CONSUMED_SCRIPT = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('APPEND', KEYS[1], ARGV[1])
local size = redis.call('STRLEN', KEYS[1])
local limit = tonumber(ARGV[2])
if size > limit then redis.call('SET', KEYS[1], redis.call('GETRANGE', KEYS[1], size - limit, -1)) end
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""
log = logging.getLogger("nightrec.serving")


class LookupFailed(Exception):
    """An answer other than 200: the HTTP status and a detail (a message, or FastAPI-shaped errors)."""

    def __init__(self, status: int, detail):
        super().__init__(detail)
        self.status, self.detail = status, detail


class Event(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: int = Field(ge=1, le=MAX_ID)
    item_id: int = Field(ge=1, le=MAX_ID)
    event_type: str = Field(min_length=1, max_length=32)
    value: float | None = Field(None, ge=0, le=1e9)
    ts: dt.datetime | None = Field(None, description="when it happened (ISO-8601 with zone); default: now")
    request_id: str | None = Field(None, pattern=REQUEST_ID,
                                   description="the request_id of the answer the item was shown in (attribution)")
    position: int | None = Field(None, ge=1, le=MAX_K, description="the item's rank in that answer")

    @model_validator(mode="after")
    def _position_with_request(self) -> Event:
        if self.position is not None and self.request_id is None:
            raise ValueError("position needs the request_id of the answer it refers to")
        return self

    @field_validator("ts")
    @classmethod
    def _recent_with_zone(cls, ts: dt.datetime | None) -> dt.datetime | None:
        if ts is None:
            return None
        if ts.tzinfo is None:
            raise ValueError("ts needs a time zone, e.g. 2024-05-20T10:00:00Z")
        now = dt.datetime.now(dt.timezone.utc)
        try:
            ts = ts.astimezone(dt.timezone.utc)
        except OverflowError:
            raise ValueError("ts is out of range") from None
        if ts > now + FUTURE_SLACK:
            raise ValueError("ts lies in the future")
        if ts < now - MAX_EVENT_AGE:
            raise ValueError(f"ts is more than {MAX_EVENT_AGE.days} days old: load such history as landing files")
        return ts


@dataclass
class VersionData:
    """What all requests of one (immutable) version share."""

    model_version: str
    categories: frozenset[str]
    unavailable: frozenset[int]
    experiment: str | None = None  # Experiment.id whose variant lists the version holds
    variant_models: dict[str, str] = field(default_factory=dict)  # variant with lists -> its model version
    fallbacks: dict[str, tuple[list[int], list[float]]] = field(default_factory=dict)
    members: dict[str, frozenset[int]] = field(default_factory=dict)


def invalid(field_name: str, message: str, where: str = "query") -> LookupFailed:
    """A 422 shaped like FastAPI's own validation errors."""
    return LookupFailed(422, [{"loc": [where, field_name], "msg": message, "type": "value_error"}])


def parse_exclude(raw: str | None) -> set[int]:
    if not raw:
        return set()
    parts = raw.split(",")
    if len(parts) > MAX_EXCLUDE:
        raise invalid("exclude", f"at most {MAX_EXCLUDE} item ids")
    if len(raw) > MAX_EXCLUDE_CHARS or not all(p.isascii() and p.isdigit() for p in parts):
        raise invalid("exclude", f"comma-separated positive integer item ids, e.g. 12,345 "
                                 f"(at most {MAX_EXCLUDE_CHARS} characters)")
    ids = {int(p) for p in parts}
    if any(i < 1 or i > MAX_ID for i in ids):
        raise invalid("exclude", "item ids must be in 1..2^31-1")
    return ids


def ranked(ids: list[int], scores: list[float], k: int, drops: tuple[set[int] | frozenset[int], ...],
           keep_only: frozenset[int] | None = None) -> list[dict]:
    """The first k items in none of the drop sets (and in keep_only, when given), ranked from 1."""
    drops = tuple(d for d in drops if d)  # usually none: then no set is probed at all
    items = []
    for item, score in zip(ids, scores):
        if (drops and any(item in d for d in drops)) or (keep_only is not None and item not in keep_only):
            continue
        items.append({"item_id": item, "rank": len(items) + 1, "score": round(score, 4)})
        if len(items) == k:
            break
    return items


def unreadable(what: str, version: str, error: ValueError) -> LookupFailed:
    log.error("unreadable value for %s in version %s: %s", what, version, error)
    return LookupFailed(503, f"stored recommendations of version {version} are unreadable")


class Lookup:
    """Everything a request needs: Redis clients, the live version, per-version caches."""

    def __init__(self, settings: Settings, record_impressions: bool = False,
                 count_impressions: Callable[[str, int], None] | None = None):
        self.keys = Keys(settings.redis.prefix)
        self.url, self.cluster = settings.redis.url, settings.redis.cluster
        self.options = settings.service
        self.event_types = sorted(settings.events.weights)
        if settings.redis.cluster:
            self.redis = RedisCluster.from_url(settings.redis.url, socket_timeout=REDIS_TIMEOUT)
            self.hot = self.redis  # user and consumed keys share a hash tag: MGET works on a cluster
        else:
            self.redis = aioredis.Redis.from_url(settings.redis.url, socket_timeout=REDIS_TIMEOUT)
            self.hot = MultiplexedRedis(settings.redis.url, REDIS_TIMEOUT)
        self.live: tuple[str | None, Experiment | None, float] = (None, None, 0.0)
        self.versions: dict[str, VersionData] = {}
        self.impressions = ImpressionLog(self._append_impressions, self.options.impression_sample_rate,
                                         count_impressions) if record_impressions else None
        worker = os.urandom(6).hex()  # request ids are unique over workers and restarts
        self.request_ids = (f"{worker}{n:08x}" for n in itertools.count())
        self.explorer = Explorer(settings.exploration.every) if settings.exploration.enabled else None
        self.explore_read_at = -REFRESH_SECONDS

    async def _append_impressions(self, rows: list[bytes]) -> None:
        await self.redis.xadd(self.keys.impressions, {"fields": FIELD_NAMES, "rows": b"\n".join(rows)},
                              maxlen=self.options.impressions_max_batches, approximate=True)

    async def aclose(self) -> None:
        if self.impressions is not None:
            await self.impressions.aclose()
        await self.redis.aclose()
        if self.hot is not self.redis:
            await self.hot.aclose()

    async def live_version(self) -> str:
        return (await self.live_state())[0]

    async def live_state(self) -> tuple[str, Experiment | None]:
        """The live version id and the running experiment (None: none runs)."""
        version, experiment, read_at = self.live
        if version is None or time.monotonic() - read_at >= self.options.live_cache_seconds:
            value, definition = await self.redis.mget(self.keys.live, self.keys.experiment)  # one slot: {prefix}
            if value is None:
                raise LookupFailed(503, "no recommendations have been published yet")
            try:
                version = check_version(value.decode())
            except (UnicodeDecodeError, ValueError):
                raise LookupFailed(503, "the live version pointer holds no valid version id") from None
            experiment = self._experiment(definition)
            self.live = (version, experiment, time.monotonic())
        return version, experiment

    def _experiment(self, definition: bytes | None) -> Experiment | None:
        if definition is None:
            return None
        try:
            return Experiment.from_json(definition)
        except (ValueError, KeyError, TypeError) as error:  # answers go on, without variants
            log.error("%s holds no valid experiment, serving without one: %r", self.keys.experiment, error)
            return None

    async def version_data(self, version: str) -> VersionData:
        if version not in self.versions:
            meta = {k.decode(): v.decode() for k, v in (await self.redis.hgetall(self.keys.meta(version))).items()}
            if not meta:
                raise LookupFailed(503, f"live version {version} has no meta key")
            if int(meta.get("layout", "1")) > LAYOUT:
                raise LookupFailed(503, f"live version {version} has Redis layout {meta['layout']}; this lookup reads "
                                        f"layouts up to {LAYOUT}: upgrade nightrec")
            unavailable = await self.redis.get(self.keys.unavailable(version))
            try:
                experiment = json.loads(meta.get("experiment", "null")) or {}
                data = VersionData(meta.get("model_version", ""), frozenset(json.loads(meta.get("categories", "[]"))),
                                   decode_id_set(unavailable) if unavailable else frozenset(),
                                   experiment.get("id"), dict(experiment.get("variants", {})))
            except (ValueError, AttributeError) as error:  # JSONDecodeError too
                raise unreadable("meta or unavailable items", version, error) from None
            for old in list(self.versions)[:-1]:  # with the one added below: the live one and the one before
                del self.versions[old]
            self.versions[version] = data
        return self.versions[version]

    async def fallback(self, version: str, data: VersionData, segment: str) -> tuple[list[int], list[float]]:
        if segment not in data.fallbacks:
            value = await self.redis.get(self.keys.fallback(version, segment))
            if value is None:
                raise LookupFailed(503, f"live version {version} has no {segment!r} list")
            try:
                data.fallbacks[segment] = decode(value)
            except ValueError as error:
                raise unreadable(f"segment {segment!r}", version, error) from None
        return data.fallbacks[segment]

    async def category_members(self, version: str, data: VersionData, category: str | None) -> frozenset[int] | None:
        if category is None:
            return None
        name = category.strip().lower()
        if name not in data.categories:
            shown = ", ".join(sorted(data.categories)[:30]) or "none published"
            raise invalid("category", f"unknown category {category!r}; known: {shown}")
        if name not in data.members:
            value = await self.redis.get(self.keys.category(version, name))
            try:
                data.members[name] = decode_id_set(value) if value is not None else frozenset()
            except ValueError as error:
                raise unreadable(f"category {name!r}", version, error) from None
        return data.members[name]

    async def recommendations(self, user_id: int, k: int, category: str | None, exclude: str | None) -> dict:
        drop = parse_exclude(exclude)
        version, experiment = await self.live_state()
        data = await self.version_data(version)
        keep_only = await self.category_members(version, data, category)
        # An experiment serves from the first version published for it (which holds its variants' lists).
        variant = experiment.assign(user_id) if experiment is not None and experiment.id == data.experiment else None
        model_version = data.model_version
        # One MGET: the user's keys share a hash tag. An opted-out user's keys are deleted when they
        # opt out; their mark also covers a list a load wrote meanwhile.
        if variant is not None and variant.name in data.variant_models:
            value, variant_value, consumed, opted_out = await self.hot.mget(
                self.keys.user(version, user_id), self.keys.variant_user(version, variant.name, user_id),
                self.keys.consumed(user_id), self.keys.opted_out(user_id))
            if variant_value is not None:  # users without history have none: their segment's list is the same
                value, model_version = variant_value, data.variant_models[variant.name]
        else:
            value, consumed, opted_out = await self.hot.mget(
                self.keys.user(version, user_id), self.keys.consumed(user_id), self.keys.opted_out(user_id))
        if opted_out is not None:  # the global list, outside any experiment, not recorded
            value, variant, model_version = None, None, data.model_version
        drops = (drop, data.unavailable, decode_consumed(consumed))
        # Without a category filter the first k + (items that may be dropped) entries are enough.
        needed = k + sum(map(len, drops)) if keep_only is None else None
        try:
            stored = decode_user(value, needed) if value is not None else GLOBAL_SEGMENT
        except ValueError as error:
            raise unreadable(f"user {user_id}", version, error) from None
        if isinstance(stored, str):
            segment = stored
            source = "trending" if segment == GLOBAL_SEGMENT else "segment"
            ids, scores = await self.fallback(version, data, segment)
        else:
            source, segment = "personalized", None
            ids, scores = stored
        items = ranked(ids, scores, k, drops, keep_only)
        if self.explorer is not None:
            await self.refresh_explore_pool()
            items = self.explorer.fill(items, k, lambda item: not any(item in d for d in drops if d)
                                       and (keep_only is None or item in keep_only))
        answer = {"user_id": user_id, "source": source, "segment": segment, "version": version,
                  "model_version": model_version, "experiment": experiment.name if variant else None,
                  "variant": variant.name if variant else None, "request_id": next(self.request_ids),
                  "items": items}
        if self.impressions is not None and opted_out is None:
            explored = [item["rank"] for item in items if item.get("explored")] if self.explorer else []
            self.impressions.add(user_id, lambda: row(answer, variant and experiment.id, explored))
        return answer

    async def refresh_explore_pool(self) -> None:
        if time.monotonic() - self.explore_read_at < REFRESH_SECONDS:
            return
        self.explore_read_at = time.monotonic()
        value = await self.redis.get(self.keys.explore)
        if value is None:
            return
        try:
            self.explorer.set_pool(*decode_item_stats(value))
        except ValueError as error:  # answers go on as they were
            log.error("%s holds no valid item stats: %r", self.keys.explore, error)

    async def similar(self, item_id: int, k: int, category: str | None, exclude: str | None) -> dict:
        drop = parse_exclude(exclude)
        version = await self.live_version()
        data = await self.version_data(version)
        keep_only = await self.category_members(version, data, category)
        value = await self.redis.get(self.keys.similar(version, item_id))
        if value is None:
            raise LookupFailed(404, f"item {item_id} has no neighbours in version {version}")
        try:
            ids, scores = decode(value)
        except ValueError as error:
            raise unreadable(f"item {item_id}", version, error) from None
        return {"item_id": item_id, "version": version,
                "items": ranked(ids, scores, k, (drop, data.unavailable), keep_only)}

    async def record(self, event: Event) -> str | None:
        """Append to the stream; the item leaves the user's lists at once. Returns the stream id, or
        None when the user opted out (the event is dropped)."""
        ts = event.ts or dt.datetime.now(dt.timezone.utc)
        if event.event_type.lower() not in self.event_types:
            raise invalid("event_type", f"unknown event type {event.event_type!r}; use one of {self.event_types}",
                          "body")
        fields = {"user_id": event.user_id, "item_id": event.item_id, "event_type": event.event_type.lower(),
                  "value": "" if event.value is None else repr(event.value), "ts": ts.isoformat()}
        if event.request_id is not None:
            fields |= {"request_id": event.request_id, "position": "" if event.position is None else event.position}
        # Filter first: repeating it is harmless, while a 503 after the XADD would invite a duplicate event.
        stored = await self.redis.eval(CONSUMED_SCRIPT, 2, self.keys.consumed(event.user_id),
                                       self.keys.opted_out(event.user_id), encode_consumed(event.item_id),
                                       4 * MAX_CONSUMED, int(self.options.consumed_ttl_days * 86400))
        if not stored:
            return None
        stream_id = await self.redis.xadd(self.keys.events, fields, maxlen=self.options.events_max_len,
                                          approximate=True)
        return stream_id.decode()

    async def privacy_request(self, kind: str, user_id: int, requester: str) -> str:
        """An opt-out or erasure (nightrec.serving.privacy); returns the request id. Rare: it runs on
        a thread with a client of its own rather than duplicating the steps for the async client."""
        def run() -> str:
            client = connect(self.url, self.cluster, timeout=REDIS_TIMEOUT)
            try:
                return privacy.request(client, self.keys, kind, [user_id], requester, key_actor(requester))[0]
            finally:
                client.close()

        return await asyncio.to_thread(run)
