"""Lookup service: recommendations, similar items and event capture, straight from the live Redis version.

A version is immutable once live, so what every request of it shares (meta, fallback lists,
category members, unavailable items) is read once per worker and kept; a request then costs one
Redis round trip (the user's list and the items the user consumed since the publish). The live
version id itself is re-read at most every `service.live_cache_seconds`.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Literal

import orjson
import redis.asyncio as aioredis
from fastapi import FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from redis.asyncio.cluster import RedisCluster

from nightrec.redis_layout import GLOBAL_SEGMENT, MAX_ID, Keys, decode, decode_id_set, decode_user
from nightrec.settings import Settings, load_settings

MAX_K = 100
MAX_EXCLUDE = 100
FUTURE_SLACK = dt.timedelta(minutes=5)  # clocks differ: events a little ahead of ours are accepted
log = logging.getLogger("nightrec.service")

Source = Literal["personalized", "segment", "trending"]
UserId = Annotated[int, Path(ge=1, le=MAX_ID, description="positive 32-bit user id")]
ItemId = Annotated[int, Path(ge=1, le=MAX_ID, description="positive 32-bit item id")]
K = Annotated[int, Query(ge=1, le=MAX_K, description="how many items, 1..100")]
CategoryFilter = Annotated[str | None, Query(max_length=100, description="only items of this category")]
ExcludeFilter = Annotated[str | None, Query(max_length=1200, description="comma-separated item ids to leave out")]


class Item(BaseModel):
    item_id: int
    rank: int
    score: float


class Recommendations(BaseModel):
    user_id: int
    source: Source = Field(description="personalized; segment: the user's segment list; trending: unknown user")
    segment: str | None
    version: str
    model_version: str
    items: list[Item]


class SimilarItems(BaseModel):
    item_id: int
    version: str
    items: list[Item]


class Event(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: int = Field(ge=1, le=MAX_ID)
    item_id: int = Field(ge=1, le=MAX_ID)
    event_type: str = Field(min_length=1, max_length=32)
    value: float | None = Field(None, ge=0, le=1e9)
    ts: dt.datetime | None = Field(None, description="when it happened (ISO-8601 with zone); default: now")

    @field_validator("ts")
    @classmethod
    def _with_zone(cls, ts: dt.datetime | None) -> dt.datetime | None:
        if ts is not None and ts.tzinfo is None:
            raise ValueError("ts needs a time zone, e.g. 2024-05-20T10:00:00Z")
        return ts


class Accepted(BaseModel):
    id: str


@dataclass
class VersionData:
    """What all requests of one (immutable) version share."""

    model_version: str
    segments: frozenset[str]
    categories: frozenset[str]
    unavailable: frozenset[int]
    fallbacks: dict[str, tuple[list[int], list[float]]] = field(default_factory=dict)
    members: dict[str, frozenset[int]] = field(default_factory=dict)


class Metrics:
    def __init__(self):
        # Several workers: each process writes its own files, /metrics adds them up.
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.registry = CollectorRegistry()
        registry = None if self.multiprocess else self.registry
        self.latency = Histogram("nightrec_request_seconds", "Request latency", ["route"], registry=registry,
                                 buckets=(.0005, .001, .002, .003, .005, .0075, .01, .02, .05, .1, .25, 1))
        self.responses = Counter("nightrec_responses", "Responses by route and status", ["route", "status"],
                                 registry=registry)
        self.sources = Counter("nightrec_recommendation_source", "Recommendation answers by source "
                               "(the fallback rate is segment + trending over all)", ["source"], registry=registry)

    def exposition(self) -> bytes:
        if self.multiprocess:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)


class Observe:
    """ASGI middleware: latency and status per route for /metrics; 413 for a declared oversize body."""

    def __init__(self, app, metrics: Metrics, max_body_bytes: int):
        self.app, self.metrics, self.max_body_bytes = app, metrics, max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        length = dict(scope["headers"]).get(b"content-length", b"")
        try:
            if length and (not length.isdigit() or int(length) > self.max_body_bytes):
                await JSONResponse({"detail": f"request body over {self.max_body_bytes} bytes"}, 413)(
                    scope, receive, send_status)
            else:
                await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            name = getattr(route, "path", "unmatched")
            self.metrics.latency.labels(name).observe(time.perf_counter() - started)
            self.metrics.responses.labels(name, str(status)).inc()


def invalid(field_name: str, message: str, where: str = "query") -> HTTPException:
    """A 422 shaped like FastAPI's own validation errors."""
    return HTTPException(422, [{"loc": [where, field_name], "msg": message, "type": "value_error"}])


def parse_exclude(raw: str | None) -> set[int]:
    if not raw:
        return set()
    parts = raw.split(",")
    if len(parts) > MAX_EXCLUDE:
        raise invalid("exclude", f"at most {MAX_EXCLUDE} item ids")
    try:
        ids = {int(p) for p in parts}
    except ValueError:
        raise invalid("exclude", "comma-separated positive integer item ids, e.g. 12,345") from None
    if any(i < 1 or i > MAX_ID for i in ids):
        raise invalid("exclude", "item ids must be in 1..2^31-1")
    return ids


def ranked(ids: list[int], scores: list[float], k: int, drop: set[int] | frozenset[int],
           keep_only: frozenset[int] | None = None) -> list[dict]:
    items = []
    for item, score in zip(ids, scores):
        if item in drop or (keep_only is not None and item not in keep_only):
            continue
        items.append({"item_id": item, "rank": len(items) + 1, "score": round(score, 4)})
        if len(items) == k:
            break
    return items


def json_response(body: dict, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    keys = Keys(settings.redis.prefix)
    options = settings.service
    event_types = sorted(settings.events.weights)
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if settings.redis.cluster:
            app.state.redis = RedisCluster.from_url(settings.redis.url)
        else:
            app.state.redis = aioredis.Redis.from_url(settings.redis.url)
        app.state.live = (None, 0.0)
        app.state.versions = {}
        yield
        await app.state.redis.aclose()

    app = FastAPI(title="nightrec lookup", version="1", lifespan=lifespan,
                  description="Precomputed recommendations from the live Redis version. Layout: docs/redis-layout.md")

    app.add_middleware(Observe, metrics=metrics, max_body_bytes=options.max_body_bytes)

    @app.exception_handler(aioredis.RedisError)
    async def redis_unavailable(request: Request, exc: aioredis.RedisError):
        log.warning("redis error on %s: %r", request.url.path, exc)  # details stay in the log, not the answer
        return JSONResponse(status_code=503, content={"detail": "recommendation store unavailable"})

    async def live_version(request: Request) -> str:
        state = request.app.state
        version, read_at = state.live
        if version is None or time.monotonic() - read_at >= options.live_cache_seconds:
            value = await state.redis.get(keys.live)
            if value is None:
                raise HTTPException(503, "no recommendations have been published yet")
            version = value.decode()
            state.live = (version, time.monotonic())
        return version

    async def version_data(request: Request, version: str) -> VersionData:
        known = request.app.state.versions
        if version not in known:
            client = request.app.state.redis
            meta = {k.decode(): v.decode() for k, v in (await client.hgetall(keys.meta(version))).items()}
            if not meta:
                raise HTTPException(503, f"live version {version} has no meta key")
            unavailable = await client.get(keys.unavailable(version))
            data = VersionData(meta.get("model_version", ""), frozenset(json.loads(meta.get("segments", "[]"))),
                               frozenset(json.loads(meta.get("categories", "[]"))),
                               decode_id_set(unavailable) if unavailable else frozenset())
            for old in list(known)[:-2]:  # the live one and the one before are enough
                del known[old]
            known[version] = data
        return known[version]

    async def fallback(request: Request, version: str, data: VersionData, segment: str):
        if segment not in data.fallbacks:
            value = await request.app.state.redis.get(keys.fallback(version, segment))
            if value is None:
                raise HTTPException(503, f"live version {version} has no {segment!r} list")
            data.fallbacks[segment] = decode(value)
        return data.fallbacks[segment]

    async def category_members(request: Request, version: str, data: VersionData, category: str | None):
        if category is None:
            return None
        name = category.strip().lower()
        if name not in data.categories:
            shown = ", ".join(sorted(data.categories)[:30]) or "none published"
            raise invalid("category", f"unknown category {category!r}; known: {shown}")
        if name not in data.members:
            value = await request.app.state.redis.get(keys.category(version, name))
            data.members[name] = decode_id_set(value) if value is not None else frozenset()
        return data.members[name]

    def unreadable(what: str, version: str, error: ValueError) -> HTTPException:
        log.error("unreadable value for %s in version %s: %s", what, version, error)
        return HTTPException(503, f"stored recommendations of version {version} are unreadable")

    @app.get("/v1/users/{user_id}/recommendations", response_model=Recommendations,
             responses={422: {"description": "invalid user id, k, category or exclude"},
                        503: {"description": "Redis unreachable or nothing published"}})
    async def recommendations(request: Request, user_id: UserId, k: K = 10, category: CategoryFilter = None,
                              exclude: ExcludeFilter = None):
        """The user's top k, best first, without excluded, unavailable and recently consumed items.
        Users without a personal list get their segment's list or the global trending one."""
        drop = parse_exclude(exclude)
        version = await live_version(request)
        data = await version_data(request, version)
        keep_only = await category_members(request, version, data, category)
        async with request.app.state.redis.pipeline(transaction=False) as pipe:
            pipe.get(keys.user(version, user_id))
            pipe.zrange(keys.consumed(user_id), 0, -1)
            value, consumed = await pipe.execute()
        segment = GLOBAL_SEGMENT
        try:
            stored = decode_user(value) if value is not None else GLOBAL_SEGMENT
        except ValueError as error:
            raise unreadable(f"user {user_id}", version, error) from None
        if isinstance(stored, str):
            segment = stored
            source = "trending" if segment == GLOBAL_SEGMENT else "segment"
            ids, scores = await fallback(request, version, data, segment)
        else:
            source, segment = "personalized", None
            ids, scores = stored
        drop |= data.unavailable
        drop.update(int(i) for i in consumed)
        metrics.sources.labels(source).inc()
        return json_response({"user_id": user_id, "source": source, "segment": segment, "version": version,
                              "model_version": data.model_version,
                              "items": ranked(ids, scores, k, drop, keep_only)})

    @app.get("/v1/items/{item_id}/similar", response_model=SimilarItems,
             responses={404: {"description": "the item has no neighbours in the live version"},
                        422: {"description": "invalid item id, k, category or exclude"}})
    async def similar(request: Request, item_id: ItemId, k: K = 10, category: CategoryFilter = None,
                      exclude: ExcludeFilter = None):
        """Items most often taken by the same users as this one (precomputed nightly)."""
        drop = parse_exclude(exclude)
        version = await live_version(request)
        data = await version_data(request, version)
        keep_only = await category_members(request, version, data, category)
        value = await request.app.state.redis.get(keys.similar(version, item_id))
        if value is None:
            raise HTTPException(404, f"item {item_id} has no neighbours in version {version}")
        try:
            ids, scores = decode(value)
        except ValueError as error:
            raise unreadable(f"item {item_id}", version, error) from None
        return json_response({"item_id": item_id, "version": version,
                              "items": ranked(ids, scores, k, drop | data.unavailable, keep_only)})

    @app.post("/v1/events", status_code=202, response_model=Accepted,
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": Event.model_json_schema()}}}},
              responses={413: {"description": "body too large"}, 422: {"description": "invalid event"}})
    async def post_event(request: Request):
        """Record an interaction: appended to the event stream (the nightly run drains it into the
        landing zone) and the item is left out of the user's recommendations from now on."""
        body = await request.body()
        if len(body) > options.max_body_bytes:
            raise HTTPException(413, f"request body over {options.max_body_bytes} bytes")
        try:
            event = Event.model_validate_json(body)
        except ValidationError as error:
            details = [{"loc": ["body", *e["loc"]], "msg": e["msg"], "type": e["type"]} for e in error.errors()]
            raise HTTPException(422, details) from None
        now = dt.datetime.now(dt.timezone.utc)
        ts = event.ts or now
        if event.event_type.lower() not in event_types:
            raise invalid("event_type", f"unknown event type {event.event_type!r}; use one of {event_types}", "body")
        if ts > now + FUTURE_SLACK:
            raise invalid("ts", "ts lies in the future", "body")
        ttl = int(options.consumed_ttl_days * 86400)
        fields = {"user_id": event.user_id, "item_id": event.item_id, "event_type": event.event_type.lower(),
                  "value": "" if event.value is None else repr(event.value),
                  "ts": ts.astimezone(dt.timezone.utc).isoformat()}
        async with request.app.state.redis.pipeline(transaction=False) as pipe:
            pipe.xadd(keys.events, fields, maxlen=options.events_max_len, approximate=True)
            pipe.zadd(keys.consumed(event.user_id), {event.item_id: now.timestamp()})  # kept from arrival
            pipe.zremrangebyscore(keys.consumed(event.user_id), "-inf", now.timestamp() - ttl)
            pipe.expire(keys.consumed(event.user_id), ttl)
            stream_id, *_ = await pipe.execute()
        return json_response({"id": stream_id.decode()}, status=202)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus():
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    async def healthz(request: Request):
        await request.app.state.redis.ping()
        version = await request.app.state.redis.get(keys.live)
        return {"status": "ok", "live_version": version.decode() if version else None}

    return app

