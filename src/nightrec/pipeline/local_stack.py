"""The production profile's services on one machine, started the way an operator starts them: a
PostgreSQL for Airflow's and MLflow's metadata, MLflow's tracking server (`nightrec mlflow-server`)
proxying artifacts to S3, and Airflow's API server, scheduler (LocalExecutor) and DAG processor on
that database. For the whole-stack test and the production-profile benchmark; the S3 server, Redis
and the Spark master are the caller's (they have helpers of their own)."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from nightrec.pipeline import airflow_runs
from nightrec.pipeline.orchestration import DAG_ID, airflow_environment
from nightrec.pipeline.postgres_server import private_postgres
from nightrec.serving.redis_server import free_port
from nightrec.settings import load_settings

STARTUP_SECONDS = 180


@dataclass(frozen=True)
class Stack:
    environ: dict[str, str]      # NIGHTREC_*, AIRFLOW_* and AWS_* of the production profile on these services
    airflow_url: str
    mlflow_url: str
    database_url: str            # the PostgreSQL server (append /airflow or /mlflow)


def production_environ(home: Path, bucket: str, s3_endpoint: str, database: str, airflow_port: int,
                       mlflow_port: int, password: str) -> dict[str, str]:
    return {
        "NIGHTREC_ENV": "production",
        "NIGHTREC_PATHS__LANDING": f"s3://{bucket}/landing", "NIGHTREC_PATHS__LAKE": f"s3://{bucket}/lake",
        "NIGHTREC_PATHS__DATA_DOCS": f"s3://{bucket}/data_docs", "NIGHTREC_MLFLOW__ARTIFACT_ROOT": f"s3://{bucket}/mlflow",
        "NIGHTREC_PATHS__AIRFLOW_HOME": str(home / "airflow"), "AIRFLOW_HOME": str(home / "airflow"),
        "NIGHTREC_STORAGE__S3_ENDPOINT": s3_endpoint, "NIGHTREC_STORAGE__S3_PATH_STYLE": "true",
        "NIGHTREC_AIRFLOW__DATABASE": f"postgresql+psycopg2://{database.removeprefix('postgresql://')}/airflow",
        "NIGHTREC_AIRFLOW__API_URL": f"http://127.0.0.1:{airflow_port}",
        "NIGHTREC_AIRFLOW__API_PASSWORD": password,
        "NIGHTREC_AIRFLOW__SCHEDULE": "",  # nights run when triggered: a trial stack starts none of its own
        "NIGHTREC_MLFLOW__TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
        "NIGHTREC_MLFLOW__BACKEND_STORE": f"postgresql+psycopg2://{database.removeprefix('postgresql://')}/mlflow",
        # Airflow's components agree on their secrets and on where the API server is
        "AIRFLOW__API__HOST": "127.0.0.1", "AIRFLOW__API__PORT": str(airflow_port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{airflow_port}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{airflow_port}/execution/",
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
        "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "airflow" / "passwords.json"),
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
    }


@contextlib.contextmanager
def production_stack(home: Path, bucket: str, s3_endpoint: str,
                     environ: dict[str, str] | None = None) -> Iterator[Stack]:
    """Start the services (their logs under home/services/); yields once Airflow has parsed the DAG and
    MLflow answers; stops them on exit. `environ`: the rest of the caller's settings (Redis, Spark)."""
    logs = home / "services"
    logs.mkdir(parents=True, exist_ok=True)
    (home / "airflow").mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(16)
    (home / "airflow" / "passwords.json").write_text(json.dumps({"admin": password}))
    with private_postgres(("airflow", "mlflow")) as database:
        airflow_port, mlflow_port = free_port(), free_port()
        env = {**os.environ, **(environ or {}),
               **production_environ(home, bucket, s3_endpoint, database, airflow_port, mlflow_port, password)}
        settings = load_settings("production", env)
        with _mlflow_server(env, mlflow_port, logs) as mlflow_url:
            airflow_env = airflow_environment(settings, env)  # the tasks' settings too
            airflow_runs.migrate_database(airflow_env)
            with airflow_runs.started_components(airflow_env, logs) as processes:
                airflow_runs.wait_until_healthy(airflow_runs.Api(f"http://127.0.0.1:{airflow_port}"), processes)
                api = airflow_runs.Api.connect(f"http://127.0.0.1:{airflow_port}", "admin", password)
                api.wait_for_dag(DAG_ID, STARTUP_SECONDS)
                yield Stack(env, api.url, mlflow_url, database)


@contextlib.contextmanager
def _mlflow_server(env: dict[str, str], port: int, logs: Path) -> Iterator[str]:
    nightrec = str(Path(sys.executable).with_name("nightrec"))
    url = f"http://127.0.0.1:{port}"
    with open(logs / "mlflow.log", "ab") as out:
        proc = subprocess.Popen([nightrec, "mlflow-server", "--port", str(port)], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2, trust_env=False).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the MLflow server did not start; see {logs / 'mlflow.log'}")
            time.sleep(0.5)
        yield url
    finally:
        airflow_runs.stop(proc)
