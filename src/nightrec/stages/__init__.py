"""Pipeline stages. Each has run(spark, settings, ds, ...) -> result and main(argv)."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import time
from collections.abc import Callable, Sequence

from nightrec.settings import load_settings

STAGES = ("drain_events", "ingest", "validate", "train", "score", "publish", "smoke", "housekeeping")


def window(ds: dt.date, days: int) -> list[dt.date]:
    """The `days` dates ending with ds, oldest first."""
    if days < 1:
        raise ValueError(f"a window needs at least one day, got {days}")
    return [ds - dt.timedelta(days=n) for n in range(days - 1, -1, -1)]


def parse_args(argv: Sequence[str] | None, stage: str, lookback: bool = False) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"nightrec-{stage}", description=f"nightrec {stage} stage")
    parser.add_argument("--ds", required=True, type=dt.date.fromisoformat, help="logical date YYYY-MM-DD")
    parser.add_argument("--env", default=None, help="settings environment (conf/<env>.toml)")
    if lookback:
        parser.add_argument("--lookback-days", type=int, default=1,
                            help="also (re)process the days before ds, e.g. for an initial load")
    return parser.parse_args(argv)


def stage_main(stage: str, run: Callable, argv: Sequence[str] | None, *, lookback: bool = False,
               needs_spark: bool = True) -> dict:
    """Parse arguments, build the one SparkSession, run the stage, print one JSON summary line."""
    args = parse_args(argv, stage, lookback)
    settings = load_settings(args.env)
    extra = {"lookback_days": args.lookback_days} if lookback else {}
    started = time.monotonic()
    if needs_spark:
        from nightrec.spark import get_spark

        result = run(get_spark(settings, f"nightrec-{stage}"), settings, args.ds, **extra)
    else:
        result = run(settings, args.ds, **extra)
    summary = {"stage": stage, "ds": args.ds.isoformat(), "seconds": round(time.monotonic() - started, 1),
               **dataclasses.asdict(result)}
    print(json.dumps(summary, default=str), flush=True)
    return summary

