"""Ledgers: small append-only Delta tables fed from Redis streams (the audit log of admin actions).

Whatever acts (the CLI, the lookup service, a nightly stage) appends an entry to the ledger's
stream at once; the nightly drain moves the entries into the Delta table, keyed by stream id, so a
drain that restarts adds nothing twice. Readers see the table and the entries not drained yet.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import pyarrow as pa

from nightrec.data import lake
from nightrec.serving import audit, privacy
from nightrec.serving.layout import Keys
from nightrec.settings import Settings


@dataclass(frozen=True)
class Ledger:
    table: str                                  # under the lake, e.g. audit/log
    key: str                                    # the stream: this attribute of Keys, e.g. "audit"
    schema: pa.Schema                           # `id` (the stream id) first, then the entry's fields
    as_row: Callable[[dict], dict[str, str]]    # stream entry fields -> row (strings)

    def stream(self, keys: Keys) -> str:
        return getattr(keys, self.key)

    def drained(self, keys: Keys) -> str:
        return f"{self.stream(keys)}:drained"


PRIVACY = Ledger("privacy/requests", "privacy", pa.schema([
    ("id", pa.string()), ("at", pa.timestamp("ms", tz="UTC")), ("kind", pa.string()), ("user_id", pa.int64()),
    ("requester", pa.string())]), partial(audit.as_row, columns=privacy.COLUMNS))
AUDIT = Ledger("audit/log", "audit", pa.schema([("id", pa.string()), ("at", pa.timestamp("ms", tz="UTC")),
                                       ("action", pa.string()), ("actor", pa.string()), ("target", pa.string()),
                                       ("detail", pa.string())]), audit.as_row)


def _arrow(ledger: Ledger, entries: list[tuple[bytes, dict]]) -> pa.Table:
    rows = [{"id": stream_id.decode(), **ledger.as_row(fields)} for stream_id, fields in entries]
    for row in rows:
        row["at"] = dt.datetime.fromisoformat(row["at"])
        if "user_id" in row:
            row["user_id"] = int(row["user_id"])
    return pa.Table.from_pylist(rows, schema=ledger.schema)


def order(stream_id: str) -> tuple[int, int]:
    """A Redis stream id ("<ms>-<seq>") as a sortable pair."""
    millis, _, seq = stream_id.partition("-")
    return int(millis), int(seq or 0)


def drain(client, keys: Keys, ledger: Ledger, settings: Settings) -> int:
    """Move the stream's entries into the ledger's table; returns how many were added."""
    root = settings.table(ledger.table)
    start = client.get(ledger.drained(keys))
    entries = client.xrange(ledger.stream(keys), min=b"(" + start if start else b"-")
    if not entries:
        return 0
    last = entries[-1][0]
    if lake.table_exists(root):  # a drain killed after its commit: leave out what the table has
        stored = lake.small_table(root, ["id"])["id"].to_pylist()
        newest = max(stored, key=order, default="0-0")
        entries = [(i, f) for i, f in entries if order(i.decode()) > order(newest)]
    if entries:
        lake.append_small(root, _arrow(ledger, entries))
    client.set(ledger.drained(keys), last)
    # Entries may name users (opt-outs, erasures): none stays once in the table. The stream keeps its
    # last id when emptied, so later entries still sort after the drained position.
    client.xtrim(ledger.stream(keys), minid=last, approximate=False)
    client.xdel(ledger.stream(keys), last)
    return len(entries)


def read(client, keys: Keys, ledger: Ledger, settings: Settings) -> list[dict]:
    """Every row, the table's and the stream's not yet drained, oldest first."""
    root = settings.table(ledger.table)
    rows = lake.small_table(root).to_pylist() if lake.table_exists(root) else []
    start = client.get(ledger.drained(keys))
    pending = client.xrange(ledger.stream(keys), min=b"(" + start if start else b"-")
    rows += _arrow(ledger, pending).to_pylist() if pending else []
    return sorted(rows, key=lambda row: order(row["id"]))
