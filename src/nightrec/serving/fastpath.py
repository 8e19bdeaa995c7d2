"""The service's outermost ASGI layer: GET /v1/users/{id}/recommendations answered without FastAPI.

FastAPI's routing, validation and response models cost more than the lookup itself, so a plainly
valid request is answered here, through the same Lookup; anything else (and anything this layer
does not accept verbatim) goes on to the FastAPI app, so errors and docs come from one place.
"""

from __future__ import annotations

import logging
import re
import time

import orjson
from redis.exceptions import RedisError

from nightrec.constants import MAX_ID
from nightrec.serving.lookup import MAX_CATEGORY_CHARS, MAX_EXCLUDE_CHARS, MAX_K, LookupFailed
from nightrec.serving.metrics import Metrics

log = logging.getLogger("nightrec.serving")


class FastRecommendations:
    """The service's outermost ASGI layer: answers plainly valid GET /v1/users/{id}/recommendations
    itself; every other request (and one it does not accept verbatim) goes on to the FastAPI app."""

    PATH = re.compile(r"^/v1/users/([1-9][0-9]{0,9})/recommendations$")
    QUERY = re.compile(r"^[A-Za-z0-9_=&,.-]*$")  # no escapes: anything fancier is FastAPI's to parse
    ROUTE = "/v1/users/{user_id}/recommendations"
    BODY = (b"content-length", b"transfer-encoding")  # a GET that carries a body is not plainly valid

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics
        self.latency = metrics.latency.labels(self.ROUTE)  # label lookups cost as much as the rest: once
        self.sources = {name: metrics.sources.labels(name) for name in ("personalized", "segment", "trending")}
        self.responses: dict[int, object] = {}

    def arguments(self, scope) -> dict | None:
        match = self.PATH.match(scope["path"])
        query = scope["query_string"]
        if match is None or scope["method"] != "GET" or not self.QUERY.match(query.decode("latin-1")):
            return None
        if any(name in self.BODY for name, _ in scope["headers"]):  # FastAPI's layers apply the body limit
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
        except LookupFailed as error:
            body, status = {"detail": error.detail}, error.status
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
