"""Lookup service: recommendations for a user straight from the live Redis version."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Annotated, Literal

import logging

import redis.asyncio as aioredis
from fastapi import FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from nightrec.redis_layout import Keys, decode
from nightrec.settings import Settings, load_settings
from nightrec.validation import MAX_ID

MAX_K = 100
log = logging.getLogger("nightrec.service")


class Item(BaseModel):
    item_id: int
    rank: int
    score: float


class Recommendations(BaseModel):
    user_id: int
    source: Literal["personalized", "popular"]
    version: str
    model_version: str
    items: list[Item]


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    keys = Keys(settings.redis.prefix)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.redis = aioredis.Redis.from_url(settings.redis.url)
        yield
        await app.state.redis.aclose()

    app = FastAPI(title="nightrec lookup", version="1", lifespan=lifespan)

    @app.exception_handler(aioredis.RedisError)
    async def redis_unavailable(request: Request, exc: aioredis.RedisError):
        log.warning("redis error on %s: %r", request.url.path, exc)  # details stay in the log, not the answer
        return JSONResponse(status_code=503, content={"detail": "recommendation store unavailable"})

    async def live_version(request: Request) -> str:
        version = await request.app.state.redis.get(keys.live)
        if version is None:
            raise HTTPException(503, "no recommendations have been published yet")
        return version.decode()

    @app.get("/v1/users/{user_id}/recommendations", response_model=Recommendations)
    async def recommendations(
        request: Request,
        user_id: Annotated[int, Path(ge=1, le=MAX_ID, description="positive 32-bit user id")],
        k: Annotated[int, Query(ge=1, le=MAX_K, description="how many items, 1..100")] = 10,
    ) -> Recommendations:
        version = await live_version(request)
        async with request.app.state.redis.pipeline(transaction=False) as pipe:
            pipe.get(keys.user(version, user_id))
            pipe.get(keys.fallback(version))
            pipe.hget(keys.meta(version), "model_version")
            personal, fallback, model_version = await pipe.execute()
        value, source = (personal, "personalized") if personal is not None else (fallback, "popular")
        if value is None:
            raise HTTPException(503, f"live version {version} has no fallback list")
        try:
            ids, scores = decode(value)
        except ValueError as error:
            log.error("unreadable value for user %s in version %s: %s", user_id, version, error)
            raise HTTPException(503, f"stored recommendations of version {version} are unreadable") from None
        items = [Item(item_id=i, rank=r, score=round(s, 4))
                 for r, (i, s) in enumerate(zip(ids[:k], scores[:k]), start=1)]
        return Recommendations(user_id=user_id, source=source, version=version,
                               model_version=(model_version or b"").decode(), items=items)

    @app.get("/healthz")
    async def healthz(request: Request):
        await request.app.state.redis.ping()
        version = await request.app.state.redis.get(keys.live)
        return {"status": "ok", "live_version": version.decode() if version else None}

    return app
