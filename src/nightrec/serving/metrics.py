"""Prometheus metrics of the lookup service (latency and status per route, answers by source), and
the ASGI middleware that records them, turns away oversized bodies and counts hung-up clients apart."""

from __future__ import annotations

import logging
import os
import time

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse

CLIENT_CLOSED = 499  # the status counted for a request its client gave up on (as nginx logs it)
log = logging.getLogger("nightrec.serving")


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
        self.impressions = Counter("nightrec_impressions", "Answers recorded as impressions, or dropped (buffer full) "
                                   "or failed (Redis error)", ["outcome"], registry=registry)

        self.auth_rejections = Counter("nightrec_auth_rejections", "Requests turned away: no key (missing), an "
                                       "unknown or revoked key, a key without the scope, over the rate limit",
                                       ["reason"], registry=registry)

    def count_impressions(self, outcome: str, n: int) -> None:
        self.impressions.labels(outcome).inc(n)

    def count_rejection(self, reason: str) -> None:
        self.auth_rejections.labels(reason).inc()

    def exposition(self) -> bytes:
        if self.multiprocess:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)


class BodyTooLarge(Exception):
    """Raised by Observe's receive once a request's body has grown past the limit."""


class Observe:
    """ASGI middleware in front of the FastAPI routes: latency and status per route for /metrics; the
    one body limit (413), on the declared length and on what arrives; and a client that goes away
    while its body is read is its own doing: one log line and a 499, not a 500 and its traceback."""

    def __init__(self, app, metrics: Metrics, max_body_bytes: int):
        self.app, self.metrics, self.max_body_bytes = app, metrics, max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500
        received = 0

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        async def receive_capped():  # bodies without a content-length are capped as they arrive
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body_bytes:
                raise BodyTooLarge
            return message

        length = dict(scope["headers"]).get(b"content-length", b"")
        try:
            if length and (not length.isdigit() or int(length) > self.max_body_bytes):
                raise BodyTooLarge
            await self.app(scope, receive_capped, send_status)
        except BodyTooLarge:
            await JSONResponse({"detail": f"request body over {self.max_body_bytes} bytes"}, 413)(
                scope, receive, send_status)
        except ClientDisconnect:
            status = CLIENT_CLOSED
            log.warning("%s %s: the client went away before its body was in; request dropped", scope["method"],
                        scope["path"])
        finally:
            route = scope.get("route")
            name = getattr(route, "path", "unmatched")
            self.metrics.latency.labels(name).observe(time.perf_counter() - started)
            self.metrics.responses.labels(name, str(status)).inc()
