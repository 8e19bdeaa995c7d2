"""The `nightrec` command: demo data, pipeline runs through Airflow, single stages, serving."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="nightrec: nightly recommendations from interaction logs to Redis.",
                  no_args_is_help=True, add_completion=False)
console = Console(soft_wrap=True)  # long paths and messages stay greppable

DsOption = Annotated[str, typer.Option("--ds", help="logical date YYYY-MM-DD")]


def _settings():
    from nightrec.settings import load_settings

    return load_settings()


def _date(value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a date in YYYY-MM-DD form") from None


@app.command("demo-data")
def demo_data(landing: Annotated[Optional[Path], typer.Option(help="landing folder (default: settings)")] = None):
    """Download MovieLens-100K and write it into the landing zone."""
    from nightrec.data import movielens

    settings = _settings()
    target = landing or Path(settings.path("landing"))
    with console.status("downloading MovieLens-100K (PyPI wheel recbole==1.2.1)"):
        wheel = movielens.fetch_wheel(Path(settings.home) / "var" / "cache")
    with console.status(f"writing landing files into {target}"):
        counts = movielens.convert(wheel, target)
    console.print(f"[green]landing zone ready[/] {target}: {counts}")


@app.command()
def synth(out: Annotated[Path, typer.Argument(help="landing folder to write")],
          users: Annotated[int, typer.Option(min=1, max=2**31 - 1, help="users in users.parquet (ids 1..N)")],
          items: Annotated[int, typer.Option(min=1, max=2**31 - 1, help="items in items.parquet (ids 1..M)")],
          events: Annotated[int, typer.Option(min=0, help="interaction rows in total, over all days")],
          days: Annotated[int, typer.Option(min=1, help="landing days, ending at --end")],
          seed: Annotated[int, typer.Option(min=0, help="same seed, same files")] = 0,
          end: Annotated[str, typer.Option(help="last day, YYYY-MM-DD")] = "2024-06-30",
          zipf_exponent: Annotated[float, typer.Option(min=0.5, max=3.0,
                                                       help="item popularity ~ rank^-exponent")] = 1.05,
          overwrite: Annotated[bool, typer.Option(help="replace the landing data already in OUT")] = False):
    """Write synthetic landing data (interactions, items, users) with a realistic shape, for tests,
    benchmarks and sizing. Prints one JSON summary line."""
    from nightrec.data import synth as synthetic

    config = synthetic.Config(users=users, items=items, events=events, days=days, seed=seed, end=_date(end),
                              zipf_exponent=zipf_exponent)
    progress = Console(stderr=True)
    try:
        with progress.status("building the catalog and users") as status:
            summary = synthetic.generate(config, out, overwrite, progress=status.update)
    except FileExistsError as error:
        progress.print(f"[red]{error}[/]", highlight=False)
        raise typer.Exit(1) from None
    typer.echo(json.dumps(summary))


@app.command()
def run(ds: DsOption,
        lookback_days: Annotated[int, typer.Option(min=1, help="landing days ending at ds to (re)ingest")] = 1,
        landing: Annotated[Optional[str], typer.Option(help="landing zone: a folder or s3://bucket/prefix "
                                                               "(default: settings)")] = None):
    """Run the nightrec_nightly DAG for one logical date and follow it to the end: on Airflow's scheduler
    (the API server of airflow.api_url, or an Airflow started for the night), or in one process
    (airflow.runner = "in-process", the laptop's)."""
    code = _nights([_date(ds)], lookback_days, landing, resume=False)
    if code != 0:
        raise typer.Exit(code)


@app.command()
def backfill(start: Annotated[str, typer.Option("--start", help="first night, YYYY-MM-DD")],
             end: Annotated[str, typer.Option("--end", help="last night, YYYY-MM-DD")],
             lookback_days: Annotated[int, typer.Option(min=1, help="landing days each night (re)ingests")] = 1,
             landing: Annotated[Optional[str], typer.Option(help="landing zone (default: settings)")] = None):
    """Run the nights from --start to --end in order, one DAG run each, stopping at the first that fails.
    Nights Airflow records as succeeded are skipped, so the same command resumes after a failure."""
    first, last = _date(start), _date(end)
    if last < first:
        raise typer.BadParameter(f"--end {last} is before --start {first}")
    days = [first + dt.timedelta(days=n) for n in range((last - first).days + 1)]
    code = _nights(days, lookback_days, landing, resume=True)
    if code != 0:
        raise typer.Exit(code)


def _nights(days: list[dt.date], lookback_days: int, landing: str | None, resume: bool) -> int:
    """Each night in turn, on the scheduler (airflow.runner) or in this machine's one process per night."""
    from nightrec.pipeline import airflow_runs
    from nightrec.pipeline.orchestration import airflow_environment

    settings = _settings()
    env = airflow_environment(settings)
    if landing is not None:
        if settings.airflow.api_url:
            raise typer.BadParameter("the running scheduler reads the landing zone of its own settings "
                                     "(paths.landing); --landing applies only without airflow.api_url")
        env["NIGHTREC_PATHS__LANDING"] = _landing_zone(landing)
    log_dir = Path(env["AIRFLOW_HOME"]) / "logs" / "nightrec-runs"
    log_dir.mkdir(parents=True, exist_ok=True)
    conf = {"lookback_days": lookback_days}
    try:
        if settings.airflow.runner == "in-process":
            with console.status("preparing the Airflow metadata database"):
                airflow_runs.migrate_database(env)
            nights = contextlib.nullcontext(lambda day, log_path: _night_in_process(env, day, conf, resume, log_path))
        else:
            nights = _nights_on_scheduler(settings, env, conf, resume)
        with nights as run_night:
            for day in days:
                if not _reported(day, *run_night(day, log_dir / f"run-{day}-{time.strftime('%Y%m%dT%H%M%S')}.log")):
                    if resume and day != days[-1]:
                        console.print(f"stopped at {day}; once it is fixed, the same command resumes there")
                    return 1
    except airflow_runs.AirflowError as error:
        console.print(f"[red]{error}[/]", highlight=False)
        return 1
    return 0


@contextlib.contextmanager
def _nights_on_scheduler(settings, env: dict, conf: dict, resume: bool):
    """One Airflow (the configured API server, or one started for these nights) for every night."""
    from nightrec.pipeline import airflow_runs
    from nightrec.pipeline.orchestration import DAG_ID

    with contextlib.ExitStack() as airflow:
        with console.status(f"starting: {settings.airflow.api_url or 'an Airflow for these nights'}"):
            api = airflow.enter_context(airflow_runs.airflow_for_nights(settings, env, DAG_ID))

        def run_night(day: dt.date, log_path: Path):
            if resume and api.succeeded(DAG_ID, day):
                return {"already_done": True}, log_path, {}
            return _night_on_scheduler(api, day, conf, log_path)
        yield run_night


def _landing_zone(landing: str) -> str:
    from nightrec.data import storage

    if not storage.is_s3(landing):
        if not Path(landing).is_dir():
            raise typer.BadParameter(f"landing folder {landing} does not exist")
        return str(Path(landing).resolve())
    if not storage.listdir(landing):
        raise typer.BadParameter(f"landing zone {landing} holds nothing")
    return landing


FAILED_TASK = "AirflowFailException: "  # how a stage's PermanentError ends a task


def _task_line(task: str, state: str, seconds: float | None = None) -> None:
    if state == "running":
        console.print(f"  task {task:<12} started")
    elif seconds is not None:
        console.print(f"  task {task:<12} {state} after {seconds:6.1f} s")
    else:
        console.print(f"  task {task:<12} {state}")


def _stage_line(line: str) -> None:
    """A stage's progress and summary lines, shown as they come."""
    if (m := re.search(r"(\[\w+ +[\d.]+ s\] .*)", line)):
        console.print(f"    {m[1]}", style="dim", highlight=False, markup=False)
    elif line.startswith('{"stage"'):
        console.print(f"    {line.strip()}", style="dim", highlight=False, markup=False)


def _night_on_scheduler(api, day: dt.date, conf: dict, log_path: Path) -> tuple[dict, Path, dict]:
    """Trigger one night, show task progress and stage summaries as they come, keep every task's log in
    log_path; Airflow's record of the run, the log's path, and each task's log lines."""
    from nightrec.pipeline import airflow_runs
    from nightrec.pipeline.orchestration import DAG_ID

    run_id = api.trigger(DAG_ID, day, conf)
    console.print(f"running DAG [bold]{DAG_ID}[/] for {day} on Airflow ({api.url}, run {run_id}); "
                  f"full log: {log_path}")
    with open(log_path, "w") as log, console.status("queued") as status:
        def on_line(task: str, line: str) -> None:
            log.write(f"[{task}] {line}\n")
            _stage_line(line)

        def on_task(task: str, instance: dict) -> None:
            log.write(f"[{task}] task {instance['state']}\n")
            log.flush()
            _task_line(task, instance["state"], instance.get("duration"))
            if instance["state"] == "running":
                status.update(f"task [bold]{task}[/] running")

        followed = airflow_runs.follow(api, DAG_ID, run_id, on_line, on_task)
    record = {"dag_id": DAG_ID, "run_id": run_id, "state": followed.state,
              **{k: followed.run.get(k) for k in ("start_date", "end_date", "duration")},
              "tasks": {t: {k: ti.get(k) for k in ("state", "start_date", "end_date", "duration", "try_number")}
                        for t, ti in followed.tasks.items()}}
    return record, log_path, followed.logs


def _night_in_process(env: dict, day: dt.date, conf: dict, resume: bool, log_path: Path) -> tuple[dict, Path, dict]:
    """One night in a process of its own (`nightrec run-in-process`), its output kept in log_path and
    followed for task progress and stage summaries; Airflow's record of the run, log path and lines."""
    from nightrec.pipeline.airflow_runs import RECORD
    from nightrec.pipeline.orchestration import DAG_ID

    command = [str(Path(sys.executable).with_name("nightrec")), "run-in-process", "--ds", day.isoformat(),
               "--conf", json.dumps(conf), *(["--skip-succeeded"] if resume else [])]
    record: dict = {}
    lines: list[str] = []
    started: dict[str, float] = {}
    state = "ended"  # the newest task state Airflow logged
    console.print(f"night {day}: DAG [bold]{DAG_ID}[/] in one process; full log: {log_path}")
    with open(log_path, "w") as log, subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                                      stderr=subprocess.STDOUT, text=True) as proc:
        with console.status("starting") as status:
            for line in proc.stdout:
                if line.startswith(RECORD):
                    record = json.loads(line.removeprefix(RECORD)) or {}
                    continue
                log.write(line)
                lines.append(line)
                if (m := re.search(r"\[DAG TEST\] starting task_id=(\w+)", line)):
                    started[m[1]] = time.monotonic()
                    _task_line(m[1], "running")
                    status.update(f"task [bold]{m[1]}[/] running")
                elif (m := re.search(r"\[DAG TEST\] end task task_id=(\w+)", line)):
                    _task_line(m[1], state, time.monotonic() - started.get(m[1], time.monotonic()))
                elif (m := re.search(r"Task instance state updated .* new_state=(\w+)", line)):
                    state = m[1]
                else:
                    _stage_line(line)
    if proc.returncode != 0 and record.get("state") != "failed":
        record = {**record, "state": "failed"}
    return record, log_path, {"night": lines}


def _reported(day: dt.date, record: dict, log_path: Path, logs: dict[str, list[str]]) -> bool:
    """Print how the night went and keep Airflow's record of it beside its log; whether it succeeded."""
    if record.get("already_done"):
        console.print(f"night {day}: already done (a succeeded run in Airflow)")
        if log_path.exists() and not log_path.stat().st_size:
            log_path.unlink()
        return True
    log_path.with_suffix(".json").write_text(json.dumps(record, indent=1))
    if record.get("state") != "success":
        console.print(f"[red]night {day} failed[/]; see {log_path}")
        errors = _first_error(logs)
        if errors:
            console.print("\n".join(errors), style="red", highlight=False)
        return False
    console.print(f"night {day} done in {record.get('duration') or 0:.0f} s (Airflow's record of the run)")
    return True


def _first_error(logs: dict[str, list[str]]) -> list[str]:
    """The first nightrec error a failed task logged, with its indented details."""
    for lines in logs.values():
        for n, line in enumerate(lines):
            text = line.split(FAILED_TASK, 1)[1] if FAILED_TASK in line else line
            if line.startswith("nightrec.") or FAILED_TASK in line:
                details = [d.rstrip() for d in lines[n + 1:n + 6] if d.startswith("  ") and not d.startswith("  File")]
                return [text.rstrip(), *details]
    return []


@app.command("run-in-process", hidden=True)
def run_in_process(ds: DsOption, conf: Annotated[str, typer.Option(help="the run's conf, JSON")],
                   skip_succeeded: bool = False):
    """One night in this process (how `nightrec run` runs a night when airflow.runner = "in-process");
    ends with Airflow's record of the run as one line."""
    from nightrec.pipeline.airflow_runs import RECORD
    from nightrec.pipeline.airflow_runs import run_in_process as run_night
    from nightrec.pipeline.orchestration import DAG_ID

    record = run_night(DAG_ID, _date(ds), json.loads(conf), skip_succeeded)
    typer.echo(RECORD + json.dumps(record))
    if record is None or record["state"] != "success":
        raise typer.Exit(1)


@app.command()
def stage(name: Annotated[str, typer.Argument(help="drain_events|privacy|ingest|validate|analyze|train|score|"
                                                   "publish|smoke|housekeeping, or tune")],
          ds: DsOption,
          lookback_days: Annotated[int, typer.Option(min=1)] = 1):
    """Run one stage directly (no Airflow), e.g. to debug or re-run a single step."""
    from nightrec.pipeline.orchestration import run_stage

    run_stage(name, _date(ds).isoformat(), lookback_days)


@app.command("spark-packages")
def spark_packages():
    """Resolve Spark's JVM packages (Delta, the s3a connector) into their cache, once: `make` runs it."""
    from nightrec.data.spark import SPARK_PACKAGES, cached_jars, get_spark

    settings = _settings()
    cache = Path(settings.spark.packages_cache).expanduser()
    if not cached_jars(cache):
        with console.status(f"resolving {', '.join(SPARK_PACKAGES)} from Maven Central into {cache}"):
            get_spark(settings, "nightrec-spark-packages").stop()
    jars = cached_jars(cache)
    console.print(f"{len(jars)} jars, {sum(j.stat().st_size for j in jars) / 1e6:.0f} MB, in {cache / 'jars'}")


@app.command()
def tune(ds: DsOption):
    """Search hyperparameters and blend weights on the window ending DS; the chosen recipe is what the
    following nights fit (the weekly DAG nightrec_tune does this on schedule)."""
    from nightrec.constants import TUNE
    from nightrec.pipeline.orchestration import run_stage

    run_stage(TUNE, _date(ds).isoformat())


@app.command()
def recs(user_id: int, k: Annotated[int, typer.Option(min=1, max=100)] = 10,
         category: Annotated[Optional[str], typer.Option(help="only items of this category")] = None,
         exclude: Annotated[Optional[str], typer.Option(help="comma-separated item ids to leave out")] = None):
    """Print a user's live recommendations, exactly as the lookup API answers them, with item titles
    when the lake has them."""
    import asyncio

    from redis.exceptions import RedisError
    from rich.markup import escape

    from nightrec.serving.lookup import Lookup, LookupFailed

    settings = _settings()

    async def ask() -> dict:
        lookup = Lookup(settings)
        try:
            return await lookup.recommendations(user_id, k, category, exclude)
        finally:
            await lookup.aclose()

    try:
        answer = asyncio.run(ask())
    except (LookupFailed, RedisError) as error:
        detail = error.detail if isinstance(error, LookupFailed) else f"Redis unreachable: {error}"
        if isinstance(detail, list):  # FastAPI-shaped validation errors
            detail = "; ".join(f"{item['loc'][-1]}: {item['msg']}" for item in detail)
        console.print(escape(str(detail)), style="red", highlight=False)
        raise typer.Exit(1) from None
    source = answer["source"] + (f" {answer['segment']}" if answer["source"] == "segment" else "")
    titles = _item_titles(settings)
    table = Table(title=f"user {user_id}: {source}, version {answer['version']}, model {answer['model_version']}")
    for column in ("rank", "item_id", "score", "title"):
        table.add_column(column)
    for item in answer["items"]:
        table.add_row(str(item["rank"]), str(item["item_id"]), f"{item['score']:.4f}",
                      titles.get(str(item["item_id"]), ""))
    console.print(table)


def _item_titles(settings) -> dict[str, str]:
    """Titles from the lake's latest item file; none where the pipeline is not installed (serve only)."""
    try:
        from nightrec.data import lake
    except ImportError:
        return {}

    root = settings.table("bronze/items")
    latest = max(lake.partitions(root), default=None) if lake.table_exists(root) else None
    if latest is None:
        return {}
    rows = lake.small_table(root, ["item_id", "attributes"], [dt.date.fromisoformat(latest)]).to_pylist()
    return {row["item_id"]: dict(row["attributes"]).get("title", "") for row in rows}


@app.command()
def status(count: Annotated[bool, typer.Option(help="also count users and list lengths in the live version")] = False):
    """Show the live and previous Redis versions, and the MLflow champion with its metrics."""
    from nightrec.serving.client import connect
    from nightrec.serving.layout import Keys, decode_user

    settings = _settings()
    keys = Keys(settings.redis.prefix)
    client = connect(settings.redis.url, settings.redis.cluster)
    live = client.get(keys.live)
    for label, key in (("live", keys.live), ("previous", keys.previous)):
        version = client.get(key)
        meta = {k.decode(): v.decode()
                for k, v in client.hgetall(keys.meta(version.decode())).items()} if version else {}
        console.print(f"redis {label:>8}: {version.decode() if version else '-'} {meta or ''}", highlight=False)
    running = client.get(keys.experiment)
    if running:
        from nightrec.serving.experiments import Experiment

        e = Experiment.from_json(running)
        console.print(f"experiment: {e.name} since {e.started_at}: "
                      + ", ".join(f"{v.name} {v.model} x{v.weight}" for v in e.variants), highlight=False)
    if count and live:
        lengths: dict[int, int] = {}
        for key in client.scan_iter(match=keys.user_prefix(live.decode()) + "*", count=1000):
            value = client.get(key)
            stored = decode_user(value) if value is not None else None
            n = "segment list" if isinstance(stored, str) else len(stored[0]) if stored else 0
            lengths[n] = lengths.get(n, 0) + 1
        console.print(f"redis users by list length: {lengths}", highlight=False)
    console.print(_champion_summary(settings), highlight=False)
    console.print(_last_night(settings), highlight=False)


def _last_night(settings) -> str:
    from nightrec.pipeline import nights
    from nightrec.pipeline.report import night_state

    runs = nights.stage_runs(settings)
    if not runs:
        return "last night: none recorded"
    night = max(runs)
    state, failed = night_state(runs[night])
    return (f"last night: {night} {state}{' in ' + failed if failed else ''}; "
            f"report: {nights.report_uri(settings, night)}")


def _champion_summary(settings) -> str:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from nightrec.modeling import registry, tracking

    tracking.configure(settings)
    client = MlflowClient()
    lines = []
    for alias in (registry.CHAMPION, registry.CHALLENGER):
        try:
            version = client.get_model_version_by_alias(settings.mlflow.registered_model, alias)
        except MlflowException:
            lines.append(f"mlflow: no {alias!r} alias on {settings.mlflow.registered_model} yet")
            continue
        metrics = {k: round(v, 4) for k, v in client.get_run(version.run_id).data.metrics.items()
                   if k in ("holdout_ndcg_at_10", "holdout_recall_at_10", "holdout_precision_at_10",
                            "holdout_map_at_10")}
        lines.append(f"mlflow: {settings.mlflow.registered_model}@{alias} = version {version.version} "
                     f"({version.tags.get('candidate')}, {version.tags.get('ds')}) {metrics}")
        if registry.SCORING_TAG in version.tags:
            lines.append(f"  scored {version.tags[registry.SCORING_TAG]}")
    return "\n".join(lines)


@app.command()
def rollback(ds: DsOption,
             to: Annotated[Optional[str],
                           typer.Option(help="model version (default: the one the champion replaced)")] = None):
    """Move `champion` back to an earlier version and republish its recommendations for DS."""
    from nightrec.modeling import registry, tracking
    from nightrec.pipeline.orchestration import run_stage
    from nightrec.serving import audit

    day = _date(ds)
    settings = _settings()
    tracking.configure(settings)
    old, new = registry.rollback(settings.mlflow.registered_model, to)
    audit.record(settings, "rollback", audit.cli_actor(), settings.mlflow.registered_model,
                 **{"from": old, "to": new, "reason": "by hand"})
    console.print(f"champion: version {old} -> {new}; republishing for {day}", highlight=False)
    for stage_name in ("score", "publish"):
        run_stage(stage_name, day.isoformat())


experiment_app = typer.Typer(help="Online A/B experiments: variants served from Redis, analysed nightly "
                                    "(docs/experiments.md).", no_args_is_help=True)
app.add_typer(experiment_app, name="experiment")


@experiment_app.command("start")
def experiment_start(
        name: Annotated[str, typer.Argument(help="1-32 of a-z 0-9 _ -")],
        variant: Annotated[list[str], typer.Option(help="NAME=MODEL:WEIGHT[:max_per_category=N]; MODEL is champion "
                                                        "(followed nightly), challenger (pinned now) or a version")],
        until: Annotated[Optional[str], typer.Option(help="last day it runs, YYYY-MM-DD")] = None):
    """Start an experiment; it serves from the next published version (the score stage writes its lists)."""
    from nightrec.modeling import experiment_store
    from nightrec.serving.experiments import ExperimentError, parse_variant

    settings = _settings()
    try:
        stored = experiment_store.start(settings, name, [parse_variant(v) for v in variant],
                                        _date(until) if until else None)
    except ExperimentError as error:
        console.print(f"[red]{error}[/]", highlight=False)
        raise typer.Exit(1) from None
    _print_experiment(stored)
    console.print("serves from the next published version; in MLflow: experiment "
                  f"{settings.experiments.mlflow_experiment!r}, run {stored.run_id}", highlight=False)


@experiment_app.command("stop")
def experiment_stop(reason: Annotated[str, typer.Option(help="why, for the record")] = "stopped by hand"):
    """Stop the running experiment: every user gets the champion's lists again within seconds."""
    from nightrec.modeling import experiment_store
    from nightrec.serving.experiments import ExperimentError

    try:
        stored = experiment_store.end(_settings(), reason)
    except ExperimentError as error:
        console.print(f"[red]{error}[/]", highlight=False)
        raise typer.Exit(1) from None
    _print_experiment(stored)


@experiment_app.command("status")
def experiment_status():
    """The running experiment (else the latest one), its variants and state."""
    from nightrec.modeling import experiment_store

    settings = _settings()
    stored = experiment_store.running(settings) or next(iter(experiment_store.all_experiments(settings)), None)
    if stored is None:
        console.print("no experiment has been started")
        return
    _print_experiment(stored)


@experiment_app.command("list")
def experiment_list():
    """Every experiment started, newest first."""
    from nightrec.modeling import experiment_store

    table = Table("name", "status", "started", "until", "ended", "variants", "reason")
    for stored in experiment_store.all_experiments(_settings()):
        e = stored.experiment
        table.add_row(e.name, stored.status, e.started_at, e.until or "", stored.ended_at,
                      "; ".join(f"{v.name}: {experiment_store.describe(v)}" for v in e.variants), stored.reason)
    console.print(table)


def _print_experiment(stored) -> None:
    from nightrec.modeling import experiment_store

    e = stored.experiment
    line = f"experiment {e.name}: {stored.status}, started {e.started_at}" + (f", until {e.until}" if e.until else "")
    line += (f", ended {stored.ended_at}" if stored.ended_at else "") + (f" ({stored.reason})" if stored.reason else "")
    console.print(line, highlight=False)
    total = sum(v.weight for v in e.variants)
    for v in e.variants:
        console.print(f"  {v.name:<16} {v.weight / total:6.1%}  {experiment_store.describe(v)}", highlight=False)


keys_app = typer.Typer(help="API keys of the lookup service (docs/security.md).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


def _redis(settings):
    from nightrec.serving.client import connect
    from nightrec.serving.layout import Keys

    return connect(settings.redis.url, settings.redis.cluster), Keys(settings.redis.prefix)


@keys_app.command("create")
def keys_create(name: Annotated[str, typer.Option(help="who uses it, e.g. shop-frontend (unique among live keys)")],
                scope: Annotated[str, typer.Option(help="read: recommendations; events: POST events and opt-outs; "
                                                        "admin: everything, erasure too")]):
    """Create a key and print it, once: only a salted hash of it is stored."""
    from nightrec.serving import audit, auth

    client, keys = _redis(_settings())
    try:
        token, record = auth.create_key(client, keys, name, scope, audit.cli_actor())
    except auth.KeyCommandError as error:
        console.print(f"[red]{error}[/]", highlight=False)
        raise typer.Exit(1) from None
    console.print(f"key {record.name} (id {record.id}, scope {record.scope}); shown only now, keep it secret:",
                  highlight=False)
    typer.echo(token)


@keys_app.command("list")
def keys_list(revoked: Annotated[bool, typer.Option(help="show revoked keys too")] = False):
    """The keys (never their secrets)."""
    from nightrec.serving import auth

    client, keys = _redis(_settings())
    table = Table("id", "name", "scope", "created", "by", "revoked")
    for key in auth.list_keys(client, keys):
        if revoked or key.revoked_at is None:
            table.add_row(key.id, key.name, key.scope, key.created_at, key.created_by,
                          f"{key.revoked_at} by {key.revoked_by}" if key.revoked_at else "")
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(key: Annotated[str, typer.Argument(help="the key's id or name")]):
    """Revoke a key: every worker refuses it within auth.refresh_seconds."""
    from nightrec.serving import audit, auth

    settings = _settings()
    client, keys = _redis(settings)
    try:
        revoked = auth.revoke_key(client, keys, key, audit.cli_actor())
    except auth.KeyCommandError as error:
        console.print(f"[red]{error}[/]", highlight=False)
        raise typer.Exit(1) from None
    for record in revoked:
        console.print(f"revoked key {record.name} (id {record.id}); refused everywhere within "
                      f"{settings.auth.refresh_seconds:g} s", highlight=False)


@app.command()
def forget(user_ids: Annotated[list[int], typer.Argument(min=1, max=2**31 - 1, help="user ids to erase")]):
    """Request erasure of users: at once they get only the global list and their events are dropped;
    the next night deletes their rows everywhere (docs/privacy.md)."""
    from nightrec.serving import audit, privacy

    client, keys = _redis(_settings())
    actor = audit.cli_actor()
    for user_id, request_id in zip(user_ids, privacy.request(client, keys, "erasure", user_ids, actor, actor)):
        console.print(f"user {user_id}: erasure requested ({request_id}); the next night carries it out",
                      highlight=False)


privacy_app = typer.Typer(help="Opt-out and erasure requests (docs/privacy.md).", no_args_is_help=True)
app.add_typer(privacy_app, name="privacy")


@privacy_app.command("status")
def privacy_status(user_id: int):
    """A user's requests, and for each erasure carried out what was removed, where and when."""
    from nightrec.data import lake
    from nightrec.pipeline import records
    from nightrec.pipeline.privacy import REPORTS

    settings = _settings()
    client, keys = _redis(settings)
    requests = [r for r in records.read(client, keys, records.PRIVACY, settings) if r["user_id"] == user_id]
    reports = {}
    if lake.table_exists(settings.table(REPORTS)):
        reports = {r["request_id"]: r for r in lake.small_table(settings.table(REPORTS)).to_pylist()
                   if r["user_id"] == user_id}
    if not requests:
        console.print(f"user {user_id}: no opt-out or erasure requested")
        return
    mark = client.get(keys.opted_out(user_id))
    console.print(f"user {user_id}: " + (f"marked {mark.decode()} in Redis (global list, events dropped)" if mark
                                         else "no mark in Redis"), highlight=False)
    for r in requests:
        line = f"  {r['at'].isoformat(timespec='seconds')}  {r['kind']:<8} by {r['requester']}  request {r['id']}"
        if r["kind"] == "erasure":
            report = reports.get(r["id"])
            line += (f"\n    done {report['done_at'].isoformat(timespec='seconds')}: removed {report['removed']}"
                     if report else "\n    pending: the next night carries it out")
        console.print(line, highlight=False)


alerts_app = typer.Typer(help="Alerts raised, and silences for planned events (docs/runbook.md).",
                         no_args_is_help=True)
app.add_typer(alerts_app, name="alerts")


@alerts_app.command("list")
def alerts_list(night: Annotated[Optional[str], typer.Option(help="only this night's, YYYY-MM-DD")] = None,
                limit: Annotated[int, typer.Option(min=1, help="the newest this many")] = 20):
    """Alerts kept in ops/alerts: when, what, where they went (or why not)."""
    from nightrec.pipeline import alerts

    rows = alerts.recorded(_settings(), str(_date(night)) if night else None)
    table = Table("at (UTC)", "severity", "night", "stage", "summary", "went to")
    for row in rows[-limit:]:
        went = ("silenced by " + row["silenced"] if row.get("silenced") else "folded" if row["folded"]
                else ", ".join(row["sent_to"]) + (f" (failed: {', '.join(row['failed'])})" if row["failed"] else ""))
        table.add_row(row["at"].isoformat(timespec="seconds").removesuffix("+00:00"), row["severity"],
                      row["night"] or "", row["stage"] or "", row["summary"], went or "-")
    console.print(table)


@alerts_app.command("silence")
def alerts_silence(prefix: Annotated[str, typer.Argument(help="alerts whose cause starts with this, e.g. "
                                                               "volume:2026-11-27 or stale_version")],
                   hours: Annotated[float, typer.Option(min=0.01, help="for how long from now")],
                   reason: Annotated[str, typer.Option(help="why: kept with the silence")]):
    """Hold back matching alerts for a planned event (kept in ops/alerts, not sent). A silenced volume
    check of a night also accepts that night's volume."""
    from nightrec.pipeline import alerts
    from nightrec.serving import audit

    until = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=hours)
    try:
        alerts.silence(_settings(), prefix, until, reason, audit.cli_actor())
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    console.print(f"alerts with causes starting {prefix!r} silenced until {until:%Y-%m-%d %H:%M} UTC", highlight=False)


@app.command()
def report(ds: DsOption,
           open_it: Annotated[bool, typer.Option("--open", help="open it in the browser")] = False):
    """Write the night's report (one HTML page, tonight against the nights before) and print its gist."""
    from nightrec.pipeline import report as night_report

    result = night_report.run(_settings(), _date(ds))
    colour = {"success": "green", "failed": "red"}.get(result.state, "yellow")
    console.print(f"night {ds}: [{colour}]{result.state}[/]"
                  + (f" in {result.failed_stage}" if result.failed_stage else "")
                  + f", {result.alerts} alert{'s' if result.alerts != 1 else ''}", highlight=False)
    for line in result.summary:
        console.print(f"  {line}", highlight=False)
    console.print(f"report: {result.report}", highlight=False)
    if open_it:
        import webbrowser

        webbrowser.open(result.report if "://" in result.report else Path(result.report).as_uri())


@app.command()
def watch():
    """Look once for a stale live version and a night late past its deadline, and alert (run it every
    few minutes: the nightrec_watch DAG does, or cron)."""
    from nightrec.pipeline.watch import main

    found = main()
    for summary in found:
        console.print(f"[yellow]{summary}[/]", highlight=False)
    if not found:
        console.print("live version fresh, no night late")


@alerts_app.command("unsilence")
def alerts_unsilence(prefix: Annotated[str, typer.Argument(help="the prefix of the silence to end now")]):
    """End a silence before its time."""
    from nightrec.pipeline import alerts
    from nightrec.serving import audit

    settings = _settings()
    if not any(row["prefix"] == prefix for row in alerts.silences(settings)):
        console.print(f"[red]no silence of {prefix!r} is in force[/] (`nightrec alerts silences`)", highlight=False)
        raise typer.Exit(1)
    alerts.silence(settings, prefix, dt.datetime.now(dt.timezone.utc), "ended", audit.cli_actor())
    console.print(f"alerts with causes starting {prefix!r} are sent again", highlight=False)


@alerts_app.command("silences")
def alerts_silences():
    """The silences in force."""
    from nightrec.pipeline import alerts

    table = Table("cause prefix", "until (UTC)", "reason", "by")
    for row in alerts.silences(_settings()):
        table.add_row(row["prefix"], f"{row['until']:%Y-%m-%d %H:%M}", row["reason"], row["by"])
    console.print(table)


@app.command("audit")
def audit_log(since: Annotated[Optional[str], typer.Option(help="from this day on, YYYY-MM-DD")] = None,
              action: Annotated[Optional[str], typer.Option(help="only this action, e.g. key_revoked")] = None,
              limit: Annotated[int, typer.Option(min=1, help="the newest this many")] = 50):
    """Admin actions: keys, opt-outs, erasures, rollbacks, experiments (the audit/log table and what
    the nightly drain has not moved there yet)."""
    from nightrec.pipeline import records

    settings = _settings()
    client, keys = _redis(settings)
    rows = records.read(client, keys, records.AUDIT, settings)
    if since:
        rows = [r for r in rows if r["at"].date() >= _date(since)]
    if action:
        rows = [r for r in rows if r["action"] == action]
    table = Table("at (UTC)", "action", "actor", "target", "detail")
    for row in rows[-limit:]:
        table.add_row(row["at"].isoformat(timespec="seconds").removesuffix("+00:00"), row["action"], row["actor"],
                      row["target"], row["detail"])
    console.print(table)


@app.command()
def serve(host: str = "127.0.0.1", port: int = 8000,
          workers: Annotated[int, typer.Option(min=1, help="worker processes (default: one per core)")] = 0,
          log_level: str = "info", access_log: bool = False):
    """Start the lookup service (FastAPI under uvicorn, uvloop + httptools)."""
    import tempfile

    import uvicorn

    from nightrec.serving.auth import exposure_warning

    warning = exposure_warning(host, _settings().auth)
    if warning:
        Console(stderr=True).print(f"[yellow]warning:[/] {warning}", highlight=False)
    workers = workers or os.cpu_count() or 1
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # /metrics adds up every worker's counters from files in this folder (prometheus_client multiprocess mode)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="nightrec-metrics-")
    uvicorn.run("nightrec.serving.api:create_app", factory=True, host=host, port=port, workers=workers,
                log_level=log_level, access_log=access_log, proxy_headers=False,
                http="nightrec.serving.protocol:HeadersOnly")  # trailers never pass for headers


@app.command("mlflow-server")
def mlflow_server(host: str = "127.0.0.1", port: int = 5000):
    """Start MLflow's tracking server and UI on the settings' store (mlflow.backend_store, or the local
    one), proxying artifacts to mlflow.artifact_root when mlflow.serve_artifacts is on."""
    from nightrec.modeling.tracking import server_command

    settings = _settings()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    if settings.storage.endpoint():  # artifacts on an S3-compatible server: the server's boto3 goes there
        os.environ.setdefault("MLFLOW_S3_ENDPOINT_URL", settings.storage.endpoint())
    mlflow = str(Path(sys.executable).with_name("mlflow"))
    os.execv(mlflow, [mlflow, *server_command(settings, host, port)])


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def airflow(ctx: typer.Context):
    """Run the airflow CLI on this project (its AIRFLOW_HOME and dags/), e.g. `nightrec airflow standalone`."""
    from nightrec.pipeline.orchestration import airflow_environment

    binary = str(Path(sys.executable).with_name("airflow"))
    os.execve(binary, [binary, *ctx.args], airflow_environment(_settings()))


if __name__ == "__main__":
    app()
