"""Prometheus metrics of the lookup service (latency and status per route, answers by source), and
the ASGI middleware that records them and turns away oversized bodies."""

from __future__ import annotations

import os
import time

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from starlette.responses import JSONResponse


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
