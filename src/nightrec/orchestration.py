"""What an Airflow task calls: one stage's main() with the run's logical date, in the task process."""

from __future__ import annotations

import importlib

from nightrec.stages import STAGES

# Stages that may (re)process several landing days in one run (DAG param `lookback_days`).
WINDOWED = ("ingest", "validate")


def stage_argv(stage: str, ds: str, lookback_days: int = 1) -> list[str]:
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages are {STAGES}")
    argv = ["--ds", ds]
    if stage in WINDOWED:
        argv += ["--lookback-days", str(int(lookback_days))]
    return argv


def run_stage(stage: str, ds: str, lookback_days: int = 1) -> dict:
    """Run a stage like `python jobs/<stage>.py --ds ...` would; returns its JSON summary (for XCom)."""
    module = importlib.import_module(f"nightrec.stages.{stage}")
    return module.main(stage_argv(stage, ds, lookback_days))
