"""How a stage runs as an Airflow task (the DAG names each stage's `main`), how the CLI runs one by
name, and the environment the airflow CLI gets. Imports nothing heavy: the DAG files import it."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from nightrec.constants import STAGES, TUNE
from nightrec.errors import PermanentError
from nightrec.settings import Settings

DAG_ID = "nightrec_nightly"
# stages that may (re)process several landing days (DAG param `lookback_days`)
WINDOWED = ("ingest", "validate", "analyze")


def stage_argv(ds: str, lookback_days: int | None = None) -> list[str]:
    return ["--ds", ds] + ([] if lookback_days is None else ["--lookback-days", str(int(lookback_days))])


def airflow_task(main: Callable[[list[str]], dict], ds: str, lookback_days: int | None = None) -> dict:
    """Run a stage's main() as an Airflow task; returns its JSON summary (the task's XCom). Bad data
    or settings fail the task without pointless retries."""
    from airflow.sdk.exceptions import AirflowFailException

    if getattr(sys, "tracebacklimit", None) == 0:  # set by an earlier task of this process (below)
        del sys.tracebacklimit
    try:
        return main(stage_argv(ds, lookback_days))
    except PermanentError as error:
        # Bad data or settings: the message names the problem and what to do, and a stack trace would
        # only bury it at the end of the task log. Airflow logs the exception with Python's traceback
        # formatting, which prints no frames under this limit.
        sys.tracebacklimit = 0
        raise AirflowFailException(f"{type(error).__name__}: {error}") from None


def task_failed(context: Mapping) -> None:
    """Every task's on_failure_callback (after its retries): one alert per failed night (a rerun failing
    in the same task again within alerts.fold_hours is folded into it; one failing elsewhere is news)."""
    from nightrec.pipeline import alerts, nights
    from nightrec.settings import load_settings

    settings = load_settings()
    ti, ds, error = context["ti"], context["ds"], context.get("exception")
    reason = next(iter(str(error).strip().splitlines()), "") if error else ""
    tries = ti.try_number
    alerts.raise_alert(settings, alerts.Alert(
        cause=f"night_failed:{ti.dag_id}:{ds}:{ti.task_id}", night=ds, stage=ti.task_id,
        summary=f"{ti.task_id} failed after {tries} {'try' if tries == 1 else 'tries'}: "
                f"{reason or 'see the task log'}",
        command=f"fix the cause, then `nightrec run --ds {ds}` (task log: {ti.log_url})",
        report=nights.report_uri(settings, ds)))


def run_stage(stage: str, ds: str, lookback_days: int = 1) -> dict:
    """Run a stage by name, like `python jobs/<stage>.py --ds ...` would (`nightrec stage NAME`)."""
    if stage not in (*STAGES, TUNE):
        raise ValueError(f"unknown stage {stage!r}; stages are {(*STAGES, TUNE)}")
    module = importlib.import_module(f"nightrec.pipeline.{stage}")
    return module.main(stage_argv(ds, lookback_days if stage in WINDOWED else None))


def airflow_environment(settings: Settings, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for the airflow CLI on this project: its own home, this checkout's dags/, over
    `environ` (default: this process's environment).

    Values already set in the environment win, so a real deployment keeps its own.
    """
    environ = os.environ if environ is None else environ
    defaults = {
        "AIRFLOW_HOME": settings.path("airflow_home"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(Path(settings.home) / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": str(settings.airflow.parallelism),
        **({"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": settings.airflow.database} if settings.airflow.database else {}),
        "NIGHTREC_HOME": str(settings.home),
        "NIGHTREC_ENV": settings.env,
        # A warning the airflow CLI prints on every run, about its own optional graph rendering: nothing
        # a user of nightrec can or needs to act on.
        "PYTHONWARNINGS": "ignore:Could not import graphviz",
    }
    env = {**environ, **{k: v for k, v in defaults.items() if k not in environ}}
    # `airflow standalone` starts its components as `airflow ...` found on PATH: use this environment's.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env
