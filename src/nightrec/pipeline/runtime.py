"""The stage runtime: every stage module has run(spark, settings, ds, ...) -> result (what tests call)
and main(argv) = stage_main(...) (what Airflow, spark-submit and the CLI call)."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import time
from collections.abc import Callable, Sequence

from nightrec.pipeline import nights
from nightrec.settings import load_settings


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
    try:
        if needs_spark:
            from nightrec.data.spark import get_spark

            result = run(get_spark(settings, f"nightrec-{stage}"), settings, args.ds, **extra)
        else:
            result = run(settings, args.ds, **extra)
    except Exception as error:
        reason = next(iter(str(error).strip().splitlines()), "")
        nights.record_stage(settings, args.ds, stage, "failed", time.monotonic() - started,
                            error=f"{type(error).__name__}: {reason}")
        raise
    seconds = time.monotonic() - started
    summary = {"stage": stage, "ds": args.ds.isoformat(), "seconds": round(seconds, 1), **dataclasses.asdict(result)}
    nights.record_stage(settings, args.ds, stage, "success", seconds, summary)
    print(json.dumps(summary, default=str), flush=True)
    return summary

