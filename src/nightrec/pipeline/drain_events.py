"""Drain events: what the lookup service appended to the Redis event stream (POST /v1/events) ->
landing files, one JSONL file per event day, which the ingest stage then reads like any other.

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


def stream_id(value: bytes) -> tuple[int, int]:
    millis, _, seq = value.partition(b"-")
    return int(millis), int(seq or 0)


def read_new(client, keys: Keys) -> tuple[list[tuple[bytes, dict]], bytes | None]:
    """Entries after the drained position up to the newest one now; later ones wait for the next drain."""
    newest = client.xrevrange(keys.events, count=1)
    if not newest:
        return [], None
    last = newest[0][0]
    start = client.get(keys.events_drained)
    oldest = client.xrange(keys.events, count=1)[0][0]
    if start and stream_id(oldest) > stream_id(start):
        # The stream's cap (service.events_max_len) trimmed entries nobody drained: say so, keep going.
        log.error("events between stream ids %s and %s were trimmed before they were drained: they are lost",
                  start.decode(), oldest.decode())
    entries = []
    cursor = b"(" + start if start else b"-"
    while True:
        page = client.xrange(keys.events, min=cursor, max=last, count=PAGE)
        entries.extend(page)
        if len(page) < PAGE:
            return entries, last
        cursor = b"(" + page[-1][0]


def as_landing_row(fields: dict) -> dict:
    text = {k.decode(): v.decode() for k, v in fields.items()}
    return {"user_id": text.get("user_id"), "item_id": text.get("item_id"), "event_type": text.get("event_type"),
            "value": text.get("value") or None, "ts": text.get("ts")}


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
        entries, last = read_new(client, keys)
        if not entries:
            return DrainResult(0)
        by_day: dict[dt.date, list[str]] = {}
        for _, fields in entries:
            row = as_landing_row(fields)
            day = dt.datetime.fromisoformat(row["ts"]).astimezone(dt.timezone.utc).date()
            by_day.setdefault(day, []).append(json.dumps(row) + "\n")
        name = f"stream-{entries[0][0].decode().replace('-', '_')}.jsonl"
        files = []
        for day, lines in sorted(by_day.items()):
            path = day_folder(settings.path("landing"), day) / name
            write_atomically(path, lines)
            files.append(str(path))
        client.set(keys.events_drained, last)
        client.xtrim(keys.events, minid=last, approximate=False)  # the newest entry stays: the stream keeps its last id
        return DrainResult(len(entries), files, last.decode())
    finally:
        client.close()


def main(argv=None) -> dict:
    return stage_main("drain_events", run, argv, needs_spark=False)


if __name__ == "__main__":
    main(sys.argv[1:])
