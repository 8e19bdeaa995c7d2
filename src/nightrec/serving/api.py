"""The lookup service's HTTP API: recommendations, similar items and event capture, straight from the
live Redis version (nightrec.serving.lookup), with OpenAPI docs, Prometheus metrics and a health check.

GET /v1/users/{id}/recommendations is the hot path: a plainly valid request is answered by a small
ASGI layer in front of FastAPI (nightrec.serving.fastpath); anything else goes through FastAPI.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import Annotated, Literal

import orjson
from fastapi import FastAPI, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field, ValidationError
from redis.exceptions import RedisError

from nightrec.constants import MAX_ID
from nightrec.serving import freshness
from nightrec.serving.auth import Guard
from nightrec.serving.fastpath import FastRecommendations
from nightrec.serving.layout import Keys
from nightrec.serving.lookup import MAX_CATEGORY_CHARS, MAX_EXCLUDE_CHARS, MAX_K, Event, Lookup, LookupFailed
from nightrec.serving.metrics import Metrics, Observe
from nightrec.settings import Settings, load_settings

log = logging.getLogger("nightrec.serving")

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
    score: float = Field(description="the model's score; for an explored item, its Thompson draw")
    explored: bool = Field(False, description="present (true) on items placed by bandit exploration")


class Recommendations(BaseModel):
    user_id: int
    source: Source = Field(description="personalized; segment: the user's segment list; trending: unknown user")
    segment: str | None
    version: str
    model_version: str
    experiment: str | None = Field(description="the running experiment the user takes part in, if any")
    variant: str | None = Field(description="the user's variant in that experiment")
    request_id: str = Field(description="names this answer: send it with events on its items (attribution)")
    items: list[Item]


class SimilarItems(BaseModel):
    item_id: int
    version: str
    items: list[Item]


class Accepted(BaseModel):
    id: str | None = Field(description="the event's stream id; null when it was dropped (the user opted out)")
    stored: bool


class PrivacyRequest(BaseModel):
    request_id: str = Field(description="names the request in privacy/requests and `nightrec privacy status`")
    user_id: int
    kind: Literal["opt_out", "erasure"]


def json_response(body: dict, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")




def create_app(settings: Settings | None = None, internal: bool = False):
    """The ASGI app: the FastAPI service behind its fast path (see FastRecommendations), both behind
    the API key check when auth is on (nightrec.serving.auth.Guard). An internal app (the smoke
    stage's in-process checks of the service itself) records no impressions, as its answers are not
    users' traffic, and needs no key, as it takes no requests from outside."""
    settings = settings or load_settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.lookup = Lookup(settings, not internal, metrics.count_impressions)
        yield
        await app.state.lookup.aclose()

    app = FastAPI(title="nightrec lookup", version="1", lifespan=lifespan,
                  description="Precomputed recommendations from the live Redis version. Layout: docs/redis-layout.md")
    app.add_middleware(Observe, metrics=metrics, max_body_bytes=settings.service.max_body_bytes)

    @app.exception_handler(LookupFailed)
    async def lookup_failed(request: Request, exc: LookupFailed):
        return JSONResponse(status_code=exc.status, content={"detail": exc.detail})

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
        try:
            event = Event.model_validate_json(await request.body())  # capped by Observe (413)
        except ValidationError as error:
            details = [{"loc": ["body", *e["loc"]], "msg": e["msg"], "type": e["type"]} for e in error.errors()]
            raise LookupFailed(422, details) from None
        stream_id = await request.app.state.lookup.record(event)
        return json_response({"id": stream_id, "stored": stream_id is not None}, status=202)

    async def privacy_request(request: Request, kind: str, user_id: int) -> Response:
        # The body (none is expected) is read to its end first: a request cut short or malformed on the
        # way (uvicorn answers 400 then) must not have been carried out.
        await request.body()
        key = request.scope.get("nightrec.key")  # absent when auth is off
        request_id = await request.app.state.lookup.privacy_request(kind, user_id, key.name if key else "-")
        return json_response({"request_id": request_id, "user_id": user_id, "kind": kind}, status=202)

    @app.post("/v1/users/{user_id}/opt-out", status_code=202, response_model=PrivacyRequest)
    async def opt_out(request: Request, user_id: UserId):
        """The user opts out of personalisation: from now on they get the global list, their events
        are dropped, their lists and consumed items are deleted (docs/privacy.md). Scope events."""
        return await privacy_request(request, "opt_out", user_id)

    @app.delete("/v1/users/{user_id}", status_code=202, response_model=PrivacyRequest)
    async def erase(request: Request, user_id: UserId):
        """Erase the user: an opt-out at once, and the next night deletes every row of theirs from
        the lake, the landing zone and Redis (docs/privacy.md). Scope admin."""
        return await privacy_request(request, "erasure", user_id)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus(request: Request):
        lookup = request.app.state.lookup
        data = freshness.gauges(await freshness.read(lookup.redis, lookup.keys))
        return Response(metrics.exposition() + data, media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    async def healthz(request: Request):
        """ok, or degraded (status service.degraded_status) once the live version is older than
        service.max_age_hours; with the live version's night and age and the last night's state."""
        lookup = request.app.state.lookup
        fresh = await freshness.read(lookup.redis, lookup.keys)
        max_age = settings.service.max_age_hours
        status = settings.service.degraded_status if fresh.degraded(max_age) else 200
        return json_response(fresh.health(max_age), status=status)

    service = FastRecommendations(app, metrics)
    if internal or not settings.auth.enabled:
        return service
    return Guard(service, settings.auth, Keys(settings.redis.prefix), lambda: app.state.lookup.redis,
                 metrics.count_rejection)
