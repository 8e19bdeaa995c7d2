"""The record of every stage run (`ops/stage_runs`): when, how long, whether it succeeded, and its
summary or its error. The night's report, `/healthz`'s last night and the metric alerts read it; a
rerun adds rows and the newest per stage counts. Written in the stage's process with delta-rs (a
row per stage run, no Spark), and never the reason a stage fails."""

from __future__ import annotations

import datetime as dt
import json
import logging

import pyarrow as pa

from nightrec.settings import Settings

log = logging.getLogger("nightrec.pipeline.nights")

STAGE_RUNS = "ops/stage_runs"
SCHEMA = pa.schema([("night", pa.string()), ("stage", pa.string()), ("state", pa.string()),
                    ("finished_at", pa.timestamp("us", tz="UTC")), ("seconds", pa.float64()),
                    ("summary", pa.string()), ("error", pa.string())])


def record_stage(settings: Settings, night: dt.date, stage: str, state: str, seconds: float,
                 summary: dict | None = None, error: str | None = None) -> None:
    from nightrec.data import lake

    try:
        row = {"night": night.isoformat(), "stage": stage, "state": state,
               "finished_at": dt.datetime.now(dt.timezone.utc), "seconds": round(seconds, 1),
               "summary": json.dumps(summary, default=str) if summary else None, "error": error}
        lake.append_small(settings.table(STAGE_RUNS), pa.Table.from_pylist([row], schema=SCHEMA))
    except Exception:  # the stage's own work is done (or failed) either way
        log.exception("%s of %s not recorded in %s", stage, night, STAGE_RUNS)


def stage_runs(settings: Settings, first: dt.date | None = None) -> dict[str, dict[str, dict]]:
    """night -> stage -> its newest run (summary parsed), for nights from `first` on."""
    from nightrec.data import lake

    root = settings.table(STAGE_RUNS)
    if not lake.table_exists(root):
        return {}
    nights: dict[str, dict[str, dict]] = {}
    for row in sorted(lake.small_table(root).to_pylist(), key=lambda r: r["finished_at"]):
        if first is None or row["night"] >= first.isoformat():
            row["summary"] = json.loads(row["summary"]) if row["summary"] else {}
            nights.setdefault(row["night"], {})[row["stage"]] = row
    return nights


def report_uri(settings: Settings, night: dt.date | str) -> str:
    """Where the night's report is (beside its validation docs)."""
    return f"{settings.path('data_docs').rstrip('/')}/dt={night}/report.html"
