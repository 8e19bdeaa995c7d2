"""Lookup service: recommendations, similar items and event capture, straight from the live Redis version.

A version is immutable once live, so what every request of it shares (meta, fallback lists,
category members, unavailable items) is read once per worker and kept; a lookup then costs one
Redis command (MGET of the user's list and the items the user consumed lately). The live version
id itself is re-read at most every `service.live_cache_seconds`.

GET /v1/users/{id}/recommendations is the hot path: a plainly valid request is answered by a small
ASGI layer in front of FastAPI's routing and validation (which cost more than the lookup itself);
anything else goes through FastAPI, so errors and docs come from one place. Both call Lookup.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
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
from redis.exceptions import RedisError

from nightrec.redis_layout import (GLOBAL_SEGMENT, MAX_CONSUMED, MAX_ID, Keys, check_version, decode, decode_consumed,
                                   decode_id_set, decode_user, encode_consumed)
from nightrec.resp import MultiplexedRedis
from nightrec.settings import Settings, load_settings

MAX_K = 100
MAX_EXCLUDE = 100
MAX_EXCLUDE_CHARS = 1200
MAX_CATEGORY_CHARS = 100
FUTURE_SLACK = dt.timedelta(minutes=5)  # clocks differ: events a little ahead of ours are accepted
MAX_EVENT_AGE = dt.timedelta(days=30)    # older events belong in landing files (a backfill), not the stream
REDIS_TIMEOUT = 1.0  # seconds; a slower Redis is reported as unavailable (503)
# Append an item to a user's consumed list, keep the newest MAX_CONSUMED, restart the expiry.
CONSUMED_SCRIPT = """
redis.call('APPEND', KEYS[1], ARGV[1])
local size = redis.call('STRLEN', KEYS[1])
local limit = tonumber(ARGV[2])
if size > limit then redis.call('SET', KEYS[1], redis.call('GETRANGE', KEYS[1], size - limit, -1)) end
return redis.call('EXPIRE', KEYS[1], ARGV[3])
"""
log = logging.getLogger("nightrec.service")

Source = Literal["personalized", "segment", "trending"]
UserId = Annotated[int, Path(ge=1, le=MAX_ID, description="positive 32-bit user id")]
ItemId = Annotated[int, Path(ge=1, le=MAX_ID, description="positive 32-bit item id")]
K = Annotated[int, Query(ge=1, le=MAX_K, description="how many items, 1..100")]
CategoryFilter = Annotated[str | None, Query(max_length=MAX_CATEGORY_CHARS, description="only items of this category")]
ExcludeFilter = Annotated[str | None, Query(max_length=MAX_EXCLUDE_CHARS,
                                            description="comma-separated item ids to leave out")]


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


class Accepted(BaseModel):
    id: str


@dataclass
class VersionData:
    """What all requests of one (immutable) version share."""

    model_version: str
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


def unreadable(what: str, version: str, error: ValueError) -> HTTPException:
    log.error("unreadable value for %s in version %s: %s", what, version, error)
    return HTTPException(503, f"stored recommendations of version {version} are unreadable")


def json_response(body: dict, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


class Lookup:
    """Everything a request needs: Redis clients, the live version, per-version caches."""

    def __init__(self, settings: Settings):
        self.keys = Keys(settings.redis.prefix)
        self.options = settings.service
        self.event_types = sorted(settings.events.weights)
        if settings.redis.cluster:
            self.redis = RedisCluster.from_url(settings.redis.url, socket_timeout=REDIS_TIMEOUT)
            self.hot = self.redis  # user and consumed keys share a hash tag: MGET works on a cluster
        else:
            self.redis = aioredis.Redis.from_url(settings.redis.url, socket_timeout=REDIS_TIMEOUT)
            self.hot = MultiplexedRedis(settings.redis.url, REDIS_TIMEOUT)
        self.live: tuple[str | None, float] = (None, 0.0)
        self.versions: dict[str, VersionData] = {}

    async def aclose(self) -> None:
        await self.redis.aclose()
        if self.hot is not self.redis:
            await self.hot.aclose()

    async def live_version(self) -> str:
        version, read_at = self.live
        if version is None or time.monotonic() - read_at >= self.options.live_cache_seconds:
            value = await self.redis.get(self.keys.live)
            if value is None:
                raise HTTPException(503, "no recommendations have been published yet")
            try:
                version = check_version(value.decode())
            except (UnicodeDecodeError, ValueError):
                raise HTTPException(503, "the live version pointer holds no valid version id") from None
            self.live = (version, time.monotonic())
        return version

    async def version_data(self, version: str) -> VersionData:
        if version not in self.versions:
            meta = {k.decode(): v.decode() for k, v in (await self.redis.hgetall(self.keys.meta(version))).items()}
            if not meta:
                raise HTTPException(503, f"live version {version} has no meta key")
            unavailable = await self.redis.get(self.keys.unavailable(version))
            try:
                data = VersionData(meta.get("model_version", ""), frozenset(json.loads(meta.get("categories", "[]"))),
                                   decode_id_set(unavailable) if unavailable else frozenset())
            except ValueError as error:  # JSONDecodeError too
                raise unreadable("meta or unavailable items", version, error) from None
            for old in list(self.versions)[:-1]:  # with the one added below: the live one and the one before
                del self.versions[old]
            self.versions[version] = data
        return self.versions[version]

    async def fallback(self, version: str, data: VersionData, segment: str) -> tuple[list[int], list[float]]:
        if segment not in data.fallbacks:
            value = await self.redis.get(self.keys.fallback(version, segment))
            if value is None:
                raise HTTPException(503, f"live version {version} has no {segment!r} list")
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
        version = await self.live_version()
        data = await self.version_data(version)
        keep_only = await self.category_members(version, data, category)
        value, consumed = await self.hot.mget(self.keys.user(version, user_id), self.keys.consumed(user_id))
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
        return {"user_id": user_id, "source": source, "segment": segment, "version": version,
                "model_version": data.model_version, "items": ranked(ids, scores, k, drops, keep_only)}

    async def similar(self, item_id: int, k: int, category: str | None, exclude: str | None) -> dict:
        drop = parse_exclude(exclude)
        version = await self.live_version()
        data = await self.version_data(version)
        keep_only = await self.category_members(version, data, category)
        value = await self.redis.get(self.keys.similar(version, item_id))
        if value is None:
            raise HTTPException(404, f"item {item_id} has no neighbours in version {version}")
        try:
            ids, scores = decode(value)
        except ValueError as error:
            raise unreadable(f"item {item_id}", version, error) from None
        return {"item_id": item_id, "version": version, "items": ranked(ids, scores, k, (drop, data.unavailable), keep_only)}

    async def record(self, event: Event) -> str:
        """Append to the stream; the item leaves the user's lists at once. Returns the stream id."""
        ts = event.ts or dt.datetime.now(dt.timezone.utc)
        if event.event_type.lower() not in self.event_types:
            raise invalid("event_type", f"unknown event type {event.event_type!r}; use one of {self.event_types}",
                          "body")
        fields = {"user_id": event.user_id, "item_id": event.item_id, "event_type": event.event_type.lower(),
                  "value": "" if event.value is None else repr(event.value), "ts": ts.isoformat()}
        # Filter first: repeating it is harmless, while a 503 after the XADD would invite a duplicate event.
        await self.redis.eval(CONSUMED_SCRIPT, 1, self.keys.consumed(event.user_id), encode_consumed(event.item_id),
                              4 * MAX_CONSUMED, int(self.options.consumed_ttl_days * 86400))
        stream_id = await self.redis.xadd(self.keys.events, fields, maxlen=self.options.events_max_len,
                                          approximate=True)
        return stream_id.decode()


class FastRecommendations:
    """The service's outermost ASGI layer: answers plainly valid GET /v1/users/{id}/recommendations
    itself; every other request (and one it does not accept verbatim) goes on to the FastAPI app."""

    PATH = re.compile(r"^/v1/users/([1-9][0-9]{0,9})/recommendations$")
    QUERY = re.compile(r"^[A-Za-z0-9_=&,.-]*$")  # no escapes: anything fancier is FastAPI's to parse
    ROUTE = "/v1/users/{user_id}/recommendations"

    def __init__(self, app: FastAPI, metrics: Metrics):
        self.app, self.metrics = app, metrics
        self.latency = metrics.latency.labels(self.ROUTE)  # label lookups cost as much as the rest: once
        self.sources = {name: metrics.sources.labels(name) for name in ("personalized", "segment", "trending")}
        self.responses: dict[int, object] = {}

    def arguments(self, scope) -> dict | None:
        match = self.PATH.match(scope["path"])
        query = scope["query_string"]
        if match is None or scope["method"] != "GET" or not self.QUERY.match(query.decode("latin-1")):
            return None
        user_id = int(match[1])
        args = {"user_id": user_id, "k": 10, "category": None, "exclude": None}
        seen = set()
        for pair in query.decode().split("&") if query else ():
            name, _, value = pair.partition("=")
            if name in seen or name not in ("k", "category", "exclude") or not value:
                return None
            seen.add(name)
            args[name] = value
        if len(args["category"] or "") > MAX_CATEGORY_CHARS or len(args["exclude"] or "") > MAX_EXCLUDE_CHARS:
            return None
        k = args["k"]
        if isinstance(k, str):
            if not k.isdigit() or not 1 <= int(k) <= MAX_K:
                return None
            args["k"] = int(k)
        return args if user_id <= MAX_ID else None

    async def __call__(self, scope, receive, send):
        args = self.arguments(scope) if scope["type"] == "http" else None
        if args is None:
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        try:
            body, status = await self.app.state.lookup.recommendations(**args), 200
            self.sources[body["source"]].inc()
        except HTTPException as error:
            body, status = {"detail": error.detail}, error.status_code
        except RedisError as error:
            log.warning("redis error on %s: %r", scope["path"], error)
            body, status = {"detail": "recommendation store unavailable"}, 503
        payload = orjson.dumps(body)
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})
        self.latency.observe(time.perf_counter() - started)
        if status not in self.responses:
            self.responses[status] = self.metrics.responses.labels(self.ROUTE, str(status))
        self.responses[status].inc()


def create_app(settings: Settings | None = None) -> FastRecommendations:
    """The ASGI app: the FastAPI service behind its fast path (see FastRecommendations)."""
    settings = settings or load_settings()
    metrics = Metrics()
    max_body = settings.service.max_body_bytes

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.lookup = Lookup(settings)
        yield
        await app.state.lookup.aclose()

    app = FastAPI(title="nightrec lookup", version="1", lifespan=lifespan,
                  description="Precomputed recommendations from the live Redis version. Layout: docs/redis-layout.md")
    app.add_middleware(Observe, metrics=metrics, max_body_bytes=max_body)

    @app.exception_handler(RedisError)
    async def redis_unavailable(request: Request, exc: RedisError):
        log.warning("redis error on %s: %r", request.url.path, exc)  # details stay in the log, not the answer
        return JSONResponse(status_code=503, content={"detail": "recommendation store unavailable"})

    @app.get("/v1/users/{user_id}/recommendations", response_model=Recommendations,
             responses={422: {"description": "invalid user id, k, category or exclude"},
                        503: {"description": "Redis unreachable or nothing published"}})
    async def recommendations(request: Request, user_id: UserId, k: K = 10, category: CategoryFilter = None,
                              exclude: ExcludeFilter = None):
        """The user's top k, best first, without excluded, unavailable and recently consumed items.
        Users without a personal list get their segment's list or the global trending one."""
        body = await request.app.state.lookup.recommendations(user_id, k, category, exclude)
        metrics.sources.labels(body["source"]).inc()
        return json_response(body)

    @app.get("/v1/items/{item_id}/similar", response_model=SimilarItems,
             responses={404: {"description": "the item has no neighbours in the live version"},
                        422: {"description": "invalid item id, k, category or exclude"}})
    async def similar(request: Request, item_id: ItemId, k: K = 10, category: CategoryFilter = None,
                      exclude: ExcludeFilter = None):
        """Items most often taken by the same users as this one (precomputed nightly)."""
        return json_response(await request.app.state.lookup.similar(item_id, k, category, exclude))

    @app.post("/v1/events", status_code=202, response_model=Accepted,
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": Event.model_json_schema()}}}},
              responses={413: {"description": "body too large"}, 422: {"description": "invalid event"}})
    async def post_event(request: Request):
        """Record an interaction: appended to the event stream (the nightly run drains it into the
        landing zone) and the item is left out of the user's recommendations from now on."""
        body = bytearray()
        async for chunk in request.stream():  # bodies without a content-length are capped as they arrive
            body += chunk
            if len(body) > max_body:
                raise HTTPException(413, f"request body over {max_body} bytes")
        try:
            event = Event.model_validate_json(body)
        except ValidationError as error:
            details = [{"loc": ["body", *e["loc"]], "msg": e["msg"], "type": e["type"]} for e in error.errors()]
            raise HTTPException(422, details) from None
        return json_response({"id": await request.app.state.lookup.record(event)}, status=202)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus():
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    async def healthz(request: Request):
        lookup = request.app.state.lookup
        await lookup.redis.ping()
        version = await lookup.redis.get(lookup.keys.live)
        return {"status": "ok", "live_version": version.decode() if version else None}

    return FastRecommendations(app, metrics)
