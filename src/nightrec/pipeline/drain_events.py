"""Drain events: what the lookup service appended to its Redis streams -> landing JSONL files per
day: events (POST /v1/events) into interactions/, which the ingest stage then reads like any other
file, and impressions (the answers it gave) into impressions/, for the nightly analysis. The audit
stream of admin actions goes into the audit/log table (nightrec.pipeline.records).

Safe to re-run, to kill, and to run more often than nightly (at high traffic, hourly keeps Redis
small): the streams are read a page at a time, each page's files are named after its first stream
id and written whole (a local temporary file renamed, or one S3 PUT), so a drain that restarts
from the same place rewrites them instead of adding duplicates. Only then is the drained position
saved; the stream is trimmed at the end.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from nightrec.data import storage
from nightrec.data.landing import day_folder
from nightrec.pipeline import records
from nightrec.pipeline.runtime import stage_main
from nightrec.serving import impressions
from nightrec.serving.client import connect
from nightrec.serving.layout import Keys
from nightrec.settings import Settings

PAGE = 10_000  # events per file at most
IMPRESSION_PAGE = 20  # impression entries per file: each holds a flush, usually a few hundred answers
log = logging.getLogger("nightrec.drain_events")


@dataclass
class DrainResult:
    events: int
    files: list[str] = field(default_factory=list)
    drained_to: str | None = None
    impressions: int = 0
    impression_files: list[str] = field(default_factory=list)
    audit_entries: int = 0


@dataclass(frozen=True)
class Stream:
    """One stream to drain: its key, the key of its drained position, where its rows land, and how."""

    key: str
    drained: str
    kind: str                                # landing folder: interactions | impressions
    rows: Callable[[dict], list[dict]]       # stream entry fields -> landing rows (with an ISO `ts`)
    page: int                                # entries read and written at a time


def pages(client, stream: Stream):
    """Pages of the entries after the drained position, up to the newest one now (later ones wait for
    the next drain)."""
    newest = client.xrevrange(stream.key, count=1)
    if not newest:
        return
    last = newest[0][0]
    start = client.get(stream.drained)
    oldest = client.xrange(stream.key, count=1)[0][0]
    if start and records.order(oldest.decode()) > records.order(start.decode()):
        # The stream's cap (service.*_max_*) trimmed entries nobody drained: say so, keep going.
        log.error("%s between stream ids %s and %s were trimmed before they were drained: they are lost",
                  stream.kind, start.decode(), oldest.decode())
    cursor = b"(" + start if start else b"-"
    while True:
        page = client.xrange(stream.key, min=cursor, max=last, count=stream.page)
        if page:
            yield page
        if len(page) < stream.page:
            return
        cursor = b"(" + page[-1][0]


def as_landing_row(fields: dict) -> dict:
    text = {k.decode(): v.decode() for k, v in fields.items()}
    return {"user_id": text.get("user_id"), "item_id": text.get("item_id"), "event_type": text.get("event_type"),
            "value": text.get("value") or None, "ts": text.get("ts"), "request_id": text.get("request_id") or None,
            "position": text.get("position") or None}


def as_impression_rows(fields: dict) -> list[dict]:
    """One entry holds the answers of one flush (nightrec.serving.impressions)."""
    return [{**answer, "ts": dt.datetime.fromtimestamp(answer["ts"] / 1000, dt.timezone.utc).isoformat(
        timespec="milliseconds")} for answer in impressions.rows(fields)]


def run(settings: Settings, ds: dt.date) -> DrainResult:
    keys = Keys(settings.redis.prefix)
    client = connect(settings.redis.url, settings.redis.cluster)
    try:
        events, files, last = drain(client, Stream(keys.events, keys.events_drained, "interactions",
                                           lambda fields: [as_landing_row(fields)], PAGE),
                                    settings.path("landing"))
        impressions, impression_files, _ = drain(
            client, Stream(keys.impressions, keys.impressions_drained, "impressions", as_impression_rows,
                   IMPRESSION_PAGE),
            settings.path("landing"))
        audited = records.drain(client, keys, records.AUDIT, settings)
        return DrainResult(events, files, last, impressions, impression_files, audited)
    finally:
        client.close()


def drain(client, stream: Stream, landing: str) -> tuple[int, list[str], str | None]:
    """The stream's new entries -> landing files, one per page and day (named after the page's first
    id: a drain that restarts rewrites them); the position is saved after each page, the stream
    trimmed at the end. Returns (rows, files, position drained to)."""
    rows, files, last = 0, [], None
    for page in pages(client, stream):
        by_day: dict[dt.date, list[str]] = {}
        for _, fields in page:
            for row in stream.rows(fields):
                day = dt.datetime.fromisoformat(row["ts"]).astimezone(dt.timezone.utc).date()
                by_day.setdefault(day, []).append(json.dumps(row) + "\n")
                rows += 1
        name = f"stream-{page[0][0].decode().replace('-', '_')}.jsonl"
        for day, lines in sorted(by_day.items()):
            uri = storage.join(day_folder(landing, day, stream.kind), name)
            storage.write_bytes(uri, "".join(lines).encode())  # whole or not at all
            files.append(uri)
        last = page[-1][0]
        client.set(stream.drained, last)
    if last is not None:
        client.xtrim(stream.key, minid=last, approximate=False)  # the newest entry stays: the stream keeps its id
    return rows, files, last.decode() if last else None


def main(argv=None) -> dict:
    return stage_main("drain_events", run, argv, needs_spark=False)
