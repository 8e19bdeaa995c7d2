"""What an Airflow task calls: one stage's main() with the run's logical date, in the task process."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

from nightrec.errors import PermanentError
from nightrec.settings import Settings
from nightrec.stages import STAGES

DAG_ID = "nightrec_nightly"
TUNE = "tune"  # the weekly DAG nightrec_tune's one stage

# Stages that may (re)process several landing days in one run (DAG param `lookback_days`).
WINDOWED = ("ingest", "validate")


def stage_argv(stage: str, ds: str, lookback_days: int = 1) -> list[str]:
    if stage not in (*STAGES, TUNE):
        raise ValueError(f"unknown stage {stage!r}; stages are {(*STAGES, TUNE)}")
    argv = ["--ds", ds]
    if stage in WINDOWED:
        argv += ["--lookback-days", str(int(lookback_days))]
    return argv


def run_stage(stage: str, ds: str, lookback_days: int = 1) -> dict:
    """Run a stage like `python jobs/<stage>.py --ds ...` would; returns its JSON summary (for XCom)."""
    module = importlib.import_module(f"nightrec.stages.{stage}")
    return module.main(stage_argv(stage, ds, lookback_days))


def run_airflow_task(stage: str, ds: str, lookback_days: int = 1) -> dict:
    """run_stage for an Airflow task: bad data or settings fail the task without pointless retries."""
    from airflow.sdk.exceptions import AirflowFailException

    if getattr(sys, "tracebacklimit", None) == 0:  # set by an earlier task of this process (below)
        del sys.tracebacklimit
    try:
        return run_stage(stage, ds, lookback_days)
    except PermanentError as error:
        # Bad data or settings: the message names the problem and what to do, and a stack trace would
        # only bury it at the end of the task log. Airflow logs the exception with Python's traceback
        # formatting, which prints no frames under this limit.
        sys.tracebacklimit = 0
        raise AirflowFailException(f"{type(error).__name__}: {error}") from None


def airflow_environment(settings: Settings) -> dict[str, str]:
    """Environment for the airflow CLI on this project: its own home, this checkout's dags/.

    Values already set in the environment win, so a real deployment keeps its own.
    """
    defaults = {
        "AIRFLOW_HOME": settings.path("airflow_home"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(Path(settings.home) / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "NIGHTREC_HOME": str(settings.home),
        "NIGHTREC_ENV": settings.env,
        # Two warnings the airflow CLI prints on every run, about its own optional extras (graph
        # rendering, and the in-process API that `dags test` drives through Starlette's test client):
        # nothing a user of nightrec can or needs to act on.
        "PYTHONWARNINGS": ",".join(f"ignore:{message}" for message in (
            "Could not import graphviz", "Using `httpx` with `starlette.testclient` is deprecated")),
    }
    env = {**os.environ, **{k: v for k, v in defaults.items() if k not in os.environ}}
    # `airflow standalone` starts its components as `airflow ...` found on PATH: use this environment's.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env
