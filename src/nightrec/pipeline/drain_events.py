"""Drain events: what the lookup service appended to its Redis streams -> landing files, one JSONL
file per day: events (POST /v1/events) into interactions/, which the ingest stage then reads like
any other file, and impressions (the answers it gave) into impressions/, for the experiment analysis.

Safe to re-run and to kill: the files of one drain are named after its first stream id and written
whole (temp file + rename), so a drain that restarts from the same place rewrites them instead of
adding duplicates. Only then is the drained position saved and the stream trimmed.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from nightrec.data.landing import day_folder
from nightrec.pipeline.runtime import stage_main
from nightrec.serving.client import connect
from nightrec.serving.layout import Keys
from nightrec.settings import Settings

PAGE = 10_000
log = logging.getLogger("nightrec.drain_events")


@dataclass
class DrainResult:
    events: int
    files: list[str] = field(default_factory=list)
    drained_to: str | None = None
    impressions: int = 0
    impression_files: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Stream:
    """One stream to drain: its key, the key of its drained position, where its rows land, and how."""

    key: str
    drained: str
    kind: str                         # landing folder: interactions | impressions
    row: Callable[[dict], dict]       # stream entry fields -> landing row (with an ISO `ts`)


def stream_id(value: bytes) -> tuple[int, int]:
    millis, _, seq = value.partition(b"-")
    return int(millis), int(seq or 0)


def read_new(client, stream: Stream) -> tuple[list[tuple[bytes, dict]], bytes | None]:
    """Entries after the drained position up to the newest one now; later ones wait for the next drain."""
    newest = client.xrevrange(stream.key, count=1)
    if not newest:
        return [], None
    last = newest[0][0]
    start = client.get(stream.drained)
    oldest = client.xrange(stream.key, count=1)[0][0]
    if start and stream_id(oldest) > stream_id(start):
        # The stream's cap (service.*_max_len) trimmed entries nobody drained: say so, keep going.
        log.error("%s between stream ids %s and %s were trimmed before they were drained: they are lost",
                  stream.kind, start.decode(), oldest.decode())
    entries = []
    cursor = b"(" + start if start else b"-"
    while True:
        page = client.xrange(stream.key, min=cursor, max=last, count=PAGE)
        entries.extend(page)
        if len(page) < PAGE:
            return entries, last
        cursor = b"(" + page[-1][0]


def as_landing_row(fields: dict) -> dict:
    text = {k.decode(): v.decode() for k, v in fields.items()}
    return {"user_id": text.get("user_id"), "item_id": text.get("item_id"), "event_type": text.get("event_type"),
            "value": text.get("value") or None, "ts": text.get("ts"), "request_id": text.get("request_id") or None,
            "position": text.get("position") or None}


def as_impression_row(fields: dict) -> dict:
    text = {k.decode(): v.decode() for k, v in fields.items()}
    ts = dt.datetime.fromtimestamp(int(text["ts"]) / 1000, dt.timezone.utc)
    return {"request_id": text["request_id"], "user_id": int(text["user_id"]),
            "experiment": text.get("experiment") or None, "variant": text.get("variant") or None,
            "version": text.get("version"), "model_version": text.get("model_version"), "source": text.get("source"),
            "items": [int(i) for i in text.get("items", "").split(",") if i],
            "explored": [int(p) for p in text.get("explored", "").split(",") if p],
            "ts": ts.isoformat(timespec="milliseconds")}


def write_atomically(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")  # hidden: ingest skips dot files
    with open(temporary, "w") as handle:
        handle.write("".join(lines))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def run(settings: Settings, ds: dt.date) -> DrainResult:
    keys = Keys(settings.redis.prefix)
    client = connect(settings.redis.url, settings.redis.cluster)
    try:
        events, files, last = drain(client, Stream(keys.events, keys.events_drained, "interactions", as_landing_row),
                                    settings.path("landing"))
        impressions, impression_files, _ = drain(
            client, Stream(keys.impressions, keys.impressions_drained, "impressions", as_impression_row),
            settings.path("landing"))
        return DrainResult(events, files, last, impressions, impression_files)
    finally:
        client.close()


def drain(client, stream: Stream, landing: str) -> tuple[int, list[str], str | None]:
    """The stream's new entries -> one landing file per day; returns (entries, files, position drained to)."""
    entries, last = read_new(client, stream)
    if not entries:
        return 0, [], None
    by_day: dict[dt.date, list[str]] = {}
    for _, fields in entries:
        row = stream.row(fields)
        day = dt.datetime.fromisoformat(row["ts"]).astimezone(dt.timezone.utc).date()
        by_day.setdefault(day, []).append(json.dumps(row) + "\n")
    name = f"stream-{entries[0][0].decode().replace('-', '_')}.jsonl"
    files = []
    for day, lines in sorted(by_day.items()):
        path = day_folder(landing, day, stream.kind) / name
        write_atomically(path, lines)
        files.append(str(path))
    client.set(stream.drained, last)
    client.xtrim(stream.key, minid=last, approximate=False)  # the newest entry stays: the stream keeps its last id
    return len(entries), files, last.decode()


def main(argv=None) -> dict:
    return stage_main("drain_events", run, argv, needs_spark=False)


if __name__ == "__main__":
    main(sys.argv[1:])
