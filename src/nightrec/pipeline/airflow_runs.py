"""Nights on a real Airflow: its scheduler runs the DAG (LocalExecutor: tasks that do not depend on each
other run at once) and records each run's and task's true start and end. `nightrec run` triggers a
night through Airflow's REST API and follows it to the end, on the API server the settings name
(`airflow.api_url`), or on an Airflow it starts for the night (API server, scheduler, DAG
processor) and stops afterwards."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from nightrec.serving.redis_server import free_port
from nightrec.settings import Settings

COMPONENTS = ("api-server", "scheduler", "dag-processor")
STARTUP_SECONDS = 180
FINISHED = {"success", "failed", "upstream_failed", "skipped", "removed"}


class AirflowError(RuntimeError):
    pass


@dataclass
class Api:
    """The few calls of Airflow's REST API (v2) a night needs."""

    url: str
    token: str = ""
    client: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=30, trust_env=False))

    @classmethod
    def connect(cls, url: str, username: str = "", password: str = "") -> Api:
        api = cls(url.rstrip("/"))
        if password:  # an API server with users (an open one, started by nightrec on loopback, needs none)
            answer = api.client.post(f"{api.url}/auth/token", json={"username": username, "password": password})
            if answer.status_code >= 400:
                raise AirflowError(f"Airflow at {url} refused user {username!r} ({answer.status_code}): check "
                                   f"airflow.api_username and NIGHTREC_AIRFLOW__API_PASSWORD")
            api.token = answer.json()["access_token"]
        return api

    def call(self, method: str, path: str, headers: dict | None = None, **kwargs) -> httpx.Response:
        headers = {**(headers or {}), **({"Authorization": f"Bearer {self.token}"} if self.token else {})}
        try:
            return self.client.request(method, f"{self.url}{path}", headers=headers, **kwargs)
        except httpx.TransportError as error:
            raise AirflowError(f"Airflow's API server at {self.url} does not answer: {error}") from None

    def json(self, method: str, path: str, **kwargs) -> dict:
        answer = self.call(method, path, **kwargs)
        if answer.status_code >= 400:
            raise AirflowError(f"{method} {path}: {answer.status_code} {answer.text[:500]}")
        return answer.json()

    def health(self) -> dict:
        return self.json("GET", "/api/v2/monitor/health")

    def wait_for_dag(self, dag_id: str, seconds: float) -> None:
        """Until the DAG processor has parsed the DAG (it is unknown to the API before)."""
        deadline = time.monotonic() + seconds
        while self.call("GET", f"/api/v2/dags/{dag_id}").status_code == 404:
            if time.monotonic() > deadline:
                errors = self.json("GET", "/api/v2/importErrors").get("import_errors", [])
                raise AirflowError(f"Airflow has not parsed DAG {dag_id} within {seconds:.0f} s"
                                   + (f"; import errors: {errors}" if errors else ""))
            time.sleep(1)

    def trigger(self, dag_id: str, ds: dt.date, conf: dict) -> str:
        """A run of the DAG for logical date ds; its run id. Airflow keeps one run per logical date: a
        finished one is replaced (as a rerun of the night), a queued or running one is followed."""
        self.json("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False})  # else it stays queued
        for existing in self.runs_of(dag_id, ds):
            if existing["state"] in ("queued", "running"):
                return existing["dag_run_id"]
            answer = self.call("DELETE", f"/api/v2/dags/{dag_id}/dagRuns/{existing['dag_run_id']}")
            if answer.status_code >= 400:
                raise AirflowError(f"cannot replace run {existing['dag_run_id']}: {answer.status_code} {answer.text}")
        run_id = f"nightrec__{ds.isoformat()}__{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}"
        self.json("POST", f"/api/v2/dags/{dag_id}/dagRuns", json={
            "dag_run_id": run_id, "logical_date": _midnight(ds), "conf": conf, "note": "triggered by nightrec"})
        return run_id

    def runs_of(self, dag_id: str, ds: dt.date, state: str | None = None) -> list[dict]:
        """The runs of logical date ds (at most one: Airflow keeps one per logical date)."""
        return self.json("GET", f"/api/v2/dags/{dag_id}/dagRuns", params={
            "logical_date_gte": _midnight(ds), "logical_date_lte": _midnight(ds),
            **({"state": state} if state else {})})["dag_runs"]

    def succeeded(self, dag_id: str, ds: dt.date) -> bool:
        """Whether the run of logical date ds has succeeded (a backfill resumes after it)."""
        return bool(self.runs_of(dag_id, ds, "success"))

    def run(self, dag_id: str, run_id: str) -> dict:
        return self.json("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")

    def tasks(self, dag_id: str, run_id: str) -> list[dict]:
        return self.json("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]

    def log(self, dag_id: str, run_id: str, task_id: str, try_number: int,
            token: str | None) -> tuple[list[str], str | None]:
        """New lines of a task's log since `token`, and the token to continue from (None: the log is complete)."""
        answer = self.json("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}",
                           params={"token": token} if token else {}, headers={"Accept": "application/json"})
        lines = [line for message in answer.get("content") or [] for line in _text(message).splitlines()]
        return lines, answer.get("continuation_token")


def _midnight(ds: dt.date) -> str:
    return f"{ds.isoformat()}T00:00:00+00:00"


def _text(message: dict | str) -> str:
    """A structured log message as text: its event, and an exception's type and message (not its frames:
    a stage's own errors say what to do)."""
    if isinstance(message, str):
        return message
    errors = [f"{e.get('exc_type')}: {e.get('exc_value')}" for e in message.get("error_detail") or []]
    return "\n".join([str(message.get("event", "")), *errors])


def airflow_binary() -> str:
    return str(Path(sys.executable).with_name("airflow"))


def migrate_database(env: dict[str, str]) -> None:
    """Create or upgrade Airflow's metadata DB (`airflow db migrate`); its own error when it cannot."""
    done = subprocess.run([airflow_binary(), "db", "migrate"], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        last = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        database = env.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN") or f"SQLite in {env.get('AIRFLOW_HOME')}"
        raise AirflowError(f"`airflow db migrate` failed on {database}:\n{last}")


@contextlib.contextmanager
def airflow_for_nights(settings: Settings, env: dict[str, str], dag_id: str) -> Iterator[Api]:
    """The configured API server; or, without one, Airflow's components started on loopback for the
    night (with env: the project's Airflow environment) and stopped afterwards."""
    if settings.airflow.api_url:
        api = Api.connect(settings.airflow.api_url, settings.airflow.api_username, settings.airflow.api_password)
        api.wait_for_dag(dag_id, 60)
        yield api
        return
    port = free_port()
    env = {**env, **own_airflow_environment(port)}
    migrate_database(env)
    with started_components(env, Path(env["AIRFLOW_HOME"]) / "logs" / "nightrec-services") as processes:
        api = Api.connect(f"http://127.0.0.1:{port}")
        wait_until_healthy(api, processes)
        api.wait_for_dag(dag_id, STARTUP_SECONDS)
        yield api


def own_airflow_environment(port: int) -> dict[str, str]:
    """An Airflow nightrec starts for a night: its API server on a free loopback port, open to this
    machine only (no users), the task processes pointed at it."""
    return {"AIRFLOW__API__PORT": str(port), "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port())}


@contextlib.contextmanager
def started_components(env: dict[str, str], log_dir: Path, components=COMPONENTS) -> Iterator[dict]:
    """Airflow's components as child processes (each logging to log_dir/<component>.log), stopped on exit."""
    log_dir.mkdir(parents=True, exist_ok=True)
    processes: dict[str, subprocess.Popen] = {}
    try:
        for name in components:
            with open(log_dir / f"{name}.log", "ab") as out:
                processes[name] = subprocess.Popen([airflow_binary(), name], env=env, stdout=out,
                                                   stderr=subprocess.STDOUT, start_new_session=True)
        yield processes
    finally:
        for proc in processes.values():
            stop(proc)


def stop(proc: subprocess.Popen, seconds: float = 60) -> None:
    """End a service started in a session of its own, with the processes it started (API workers,
    task processes)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def wait_until_healthy(api: Api, processes: dict[str, subprocess.Popen], seconds: float = STARTUP_SECONDS) -> None:
    """Until the API server answers and reports a live scheduler and DAG processor."""
    deadline = time.monotonic() + seconds
    while True:
        dead = [name for name, proc in processes.items() if proc.poll() is not None]
        if dead:
            raise AirflowError(f"Airflow's {', '.join(dead)} exited while starting; see its log under "
                               f"$AIRFLOW_HOME/logs/nightrec-services/")
        try:
            health = api.health()
            if all((health.get(part) or {}).get("status") == "healthy" for part in ("scheduler", "dag_processor")):
                return
        except AirflowError:
            pass
        if time.monotonic() > deadline:
            raise AirflowError(f"Airflow did not become healthy within {seconds:.0f} s")
        time.sleep(1)


@dataclass
class Followed:
    state: str
    run: dict
    tasks: dict[str, dict]                       # task id -> its task instance, as Airflow recorded it
    logs: dict[str, list[str]] = field(default_factory=dict)


def follow(api: Api, dag_id: str, run_id: str, on_line: Callable[[str, str], None],
           on_task: Callable[[str, dict], None], poll_seconds: float = 1.0) -> Followed:
    """Until the run ends: each task's log lines as they come (on_line(task, line)), and each task's
    state changes (on_task(task, instance))."""
    tokens: dict[tuple[str, int], str | None] = {}
    done: set[tuple[str, int]] = set()       # (task, try) whose log was read to its end
    states: dict[str, str] = {}
    logs: dict[str, list[str]] = {}
    while True:
        run = api.run(dag_id, run_id)
        instances = sorted(api.tasks(dag_id, run_id), key=lambda t: t.get("start_date") or "~")
        for ti in instances:
            task, tries = ti["task_id"], ti.get("try_number") or 0
            if states.get(task) != ti["state"] and ti["state"] in ("running", *FINISHED, "up_for_retry"):
                states[task] = ti["state"]
                if ti["state"] != "running":
                    _drain(api, dag_id, run_id, ti, tokens, done, logs, on_line)
                on_task(task, ti)
            elif ti["state"] == "running" and tries:
                _drain(api, dag_id, run_id, ti, tokens, done, logs, on_line)
        if run["state"] in ("success", "failed"):
            for ti in instances:
                _drain(api, dag_id, run_id, ti, tokens, done, logs, on_line)
            return Followed(run["state"], run, {ti["task_id"]: ti for ti in instances}, logs)
        time.sleep(poll_seconds)


def _drain(api, dag_id, run_id, ti, tokens, done, logs, on_line) -> None:
    task, tries = ti["task_id"], ti.get("try_number") or 0
    key = (task, tries)
    if not tries or key in done:
        return
    while True:
        lines, token = api.log(dag_id, run_id, task, tries, tokens.get(key))
        for line in lines:
            logs.setdefault(task, []).append(line)
            on_line(task, line)
        tokens[key] = token
        if token is None:
            if ti["state"] in FINISHED or ti["state"] == "up_for_retry":
                done.add(key)
            return
        if not lines:
            return


# The embedded profile: a night in one process, as `airflow dags test` runs it (one Spark JVM for every
# task; no scheduler to start), recorded in the same metadata DB with the run's true start.

RECORD = "nightrec-run-record "  # prefix of the line `nightrec run-in-process` ends with


def run_in_process(dag_id: str, ds: dt.date, conf: dict, skip_succeeded: bool) -> dict:
    """Run the DAG for logical date ds in this process; Airflow's record of the run (as `record`).

    `DAG.test` records a run as starting on its logical date (a two-minute night of 1998 would read
    as lasting 28 years in the UI): the run is created here with the moment it really starts."""
    from airflow.models import dagrun
    from airflow.utils import timezone
    from airflow.utils.cli import get_bagged_dag

    if skip_succeeded and (done := _stored_run(dag_id, ds, "success")):
        return {**done, "already_done": True}
    dag = get_bagged_dag(None, dag_id)  # as `airflow dags test` finds it
    create = dagrun.get_or_create_dagrun

    def started_now(**kwargs):
        return create(**{**kwargs, "start_date": timezone.utcnow()})

    dagrun.get_or_create_dagrun = started_now
    try:
        dag.test(logical_date=dt.datetime.combine(ds, dt.time(), dt.timezone.utc), run_conf=conf)
    finally:
        dagrun.get_or_create_dagrun = create
    return _stored_run(dag_id, ds)


def _stored_run(dag_id: str, ds: dt.date, state: str | None = None) -> dict | None:
    """The metadata DB's run of logical date ds and its task instances, in the REST API's terms."""
    from airflow.models import DagRun, TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        query = select(DagRun).where(DagRun.dag_id == dag_id,
                                     DagRun.logical_date == dt.datetime.combine(ds, dt.time(), dt.timezone.utc))
        run = session.scalar(query if state is None else query.where(DagRun.state == state))
        if run is None:
            return None
        instances = session.scalars(select(TaskInstance).where(TaskInstance.dag_id == dag_id,
                                                               TaskInstance.run_id == run.run_id)).all()
        return {"dag_id": dag_id, "run_id": run.run_id, "state": _value(run.state),
                **_times(run.start_date, run.end_date),
                "tasks": {ti.task_id: {"state": _value(ti.state), **_times(ti.start_date, ti.end_date),
                                       "try_number": ti.try_number} for ti in instances}}


def _value(state) -> str | None:
    return getattr(state, "value", state)


def _times(start: dt.datetime | None, end: dt.datetime | None) -> dict:
    return {"start_date": start and start.isoformat(), "end_date": end and end.isoformat(),
            "duration": (end - start).total_seconds() if start and end else None}
