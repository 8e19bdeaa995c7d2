"""Impressions: what the service answered, appended to the Redis stream `{<p>}:impressions` off the
hot path. A request only appends one JSON line to an in-memory buffer; a background task writes the
buffer every FLUSH_SECONDS (or sooner when it fills) as one stream entry: `fields` (the names, in
order) and `rows` (one JSON array per answer, newline-separated). One XADD per flush instead of one
per answer keeps Redis' share of the cost small. The buffer is bounded: when Redis is slower than the
traffic, impressions are dropped and counted (`nightrec_impressions_total{outcome}` in /metrics);
answers never wait.

Sampling is by user, not by request (a sampled user's every answer is recorded), so per-user
metrics in the nightly analysis stay whole.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import orjson

from nightrec.serving.experiments import BUCKETS, mix64

FLUSH_SECONDS = 0.05
FLUSH_AT = 500           # entries: write at once rather than wait for the timer
MAX_BUFFERED = 20_000    # answers held while Redis is slow; beyond this they are dropped
CLOSE_SECONDS = 5.0      # at shutdown, how long the writer may take to finish its batch
SAMPLE_SALT = 0x6E696768747265  # any constant: which users are sampled must not depend on an experiment
FIELDS = ("request_id", "user_id", "experiment", "variant", "version", "model_version", "source", "items",
          "explored", "ts")
FIELD_NAMES = ",".join(FIELDS)
log = logging.getLogger("nightrec.serving")


def sampled(user_id: int, rate: float) -> bool:
    return rate >= 1.0 or mix64(SAMPLE_SALT ^ user_id) % BUCKETS < rate * BUCKETS


def row(answer: dict, experiment_id: str | None, explored: list[int]) -> bytes:
    """An answer as one JSON array in FIELDS order (ts in unix milliseconds)."""
    return orjson.dumps((answer["request_id"], answer["user_id"], experiment_id, answer["variant"],
                         answer["version"], answer["model_version"], answer["source"],
                         [item["item_id"] for item in answer["items"]], explored, int(time.time() * 1000)))


def rows(fields: dict[bytes, bytes]) -> list[dict]:
    """A stream entry back into one dict per answer."""
    names = fields[b"fields"].decode().split(",")
    return [dict(zip(names, orjson.loads(line))) for line in fields[b"rows"].split(b"\n")]


class ImpressionLog:
    """Buffer + background writer. `append(rows)` writes a batch to the stream (any Redis client)."""

    def __init__(self, append: Callable[[list[bytes]], Awaitable[None]], rate: float,
                 count: Callable[[str, int], None] | None = None):
        self.append, self.rate = append, rate
        self.count = count or (lambda outcome, n: None)  # outcome: recorded | dropped | failed
        self.buffer: list[bytes] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closing = False

    def add(self, user_id: int, values: Callable[[], bytes]) -> None:
        """Record one answer if its user is sampled; `values` builds its row only then."""
        if self.rate <= 0 or not sampled(user_id, self.rate):
            return
        if len(self.buffer) >= MAX_BUFFERED:
            self.count("dropped", 1)
            return
        self.buffer.append(values())
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        if len(self.buffer) >= FLUSH_AT:
            self._wake.set()

    async def _run(self) -> None:
        while not self._closing:
            try:
                await asyncio.wait_for(self._wake.wait(), FLUSH_SECONDS)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        batch, self.buffer = self.buffer, []
        if not batch:
            return
        try:
            await self.append(batch)
            self.count("recorded", len(batch))
        except asyncio.CancelledError:  # shut down while Redis hung
            self.count("failed", len(batch))
            raise
        except Exception as error:  # Redis away: the answers went out, these impressions are lost (and counted)
            self.count("failed", len(batch))
            log.warning("%d impressions not recorded: %r", len(batch), error)

    async def aclose(self) -> None:
        """Write what is buffered: the writer finishes its batch (within CLOSE_SECONDS), then the rest."""
        if self._task is not None:
            self._closing = True
            self._wake.set()
            try:
                await asyncio.wait_for(self._task, CLOSE_SECONDS)
            except asyncio.TimeoutError:
                pass  # cancelled by wait_for; its batch counted as failed
        await self.flush()
