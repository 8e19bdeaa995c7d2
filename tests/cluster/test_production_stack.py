"""The whole production stack on this machine, one night of a small synthetic log through it: the S3
server holding every store, PostgreSQL under Airflow and MLflow, MLflow's tracking server, Airflow's
scheduler (LocalExecutor), API server and DAG processor, a Spark standalone master + 2 workers, Redis;
`nightrec run` triggers the night on the scheduler; the lookup serves the published lists."""

import datetime as dt
import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import boto3
import httpx
import pytest
import redis
from deltalake import DeltaTable
from mlflow import MlflowClient

from conftest import settings_environ
from helpers import days_ending, lookup_service, write_landing
from nightrec.constants import STAGES
from nightrec.data import storage
from nightrec.data.spark import CHECKPOINT_FOLDER
from nightrec.pipeline.local_stack import Stack, production_stack
from nightrec.serving.layout import Keys, decode_user
from nightrec.serving.redis_server import free_port
from nightrec.settings import load_settings

pytestmark = [pytest.mark.cluster, pytest.mark.airflow, pytest.mark.redis]

DAY = dt.date(2024, 7, 31)
USERS = 30
TOP_K = 20  # settings_environ's model.top_k


def small_recipe(folder: Path) -> str:
    """The tests' small recipe with ALS running 10 iterations: at the 10th it checkpoints, so the
    executors write and read the checkpoint folder."""
    text = (Path(__file__).parents[1] / "data" / "recipe_small.toml").read_text()
    recipe = folder / "recipe.toml"
    recipe.write_text(re.sub(r"(?m)^max_iter\s*=\s*\d+", "max_iter = 10", text))
    return str(recipe)


def events(folder: Path) -> list[dict]:
    """Every listener event of every application in a Spark event log folder (all complete: none in progress)."""
    logs = sorted(folder.iterdir())
    assert logs and not [log.name for log in logs if log.name.endswith(".inprogress")]
    return [json.loads(line) for log in logs for line in log.read_text().splitlines() if line]


@dataclass
class Production:
    stack: Stack
    event_log: Path   # Spark's event log folder: where every task ran
    ui_port: int


@pytest.fixture
def production(tmp_path, redis_url, s3_endpoint, spark_cluster):
    """The services started as an operator would, with the settings of this night: the tasks run in the
    scheduler's environment, so the Spark cluster is the scheduler's setting, not `nightrec run`'s."""
    bucket = "production-night"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    event_log = tmp_path / "spark-events"
    event_log.mkdir()
    ui_port = free_port()
    environ = {
        **settings_environ(tmp_path, redis_url, s3_endpoint=s3_endpoint, model__recipe=small_recipe(tmp_path)),
        "NIGHTREC_SPARK__PACKAGES_ON_WORKERS": "true",
        "NIGHTREC_SPARK__MASTER": spark_cluster.url,
        "NIGHTREC_SPARK__DRIVER_MEMORY": "1g",
        "NIGHTREC_SPARK__EXECUTOR_MEMORY": "512m",
        "NIGHTREC_SPARK__EXECUTOR_CORES": "1",
        "NIGHTREC_SPARK__SHUFFLE_PARTITIONS": "2",
        "NIGHTREC_SPARK__UI_PORT": str(ui_port),
        "NIGHTREC_SPARK__CONF": json.dumps({  # an event log of plain JSON lines, to see where every task ran
            "spark.eventLog.enabled": True, "spark.eventLog.dir": event_log.as_uri(),
            "spark.eventLog.rolling.enabled": False, "spark.eventLog.compress": False}),
    }
    with production_stack(tmp_path / "stack", bucket, s3_endpoint, environ) as stack:
        yield Production(stack, event_log, ui_port)


def test_a_night_on_the_production_stack(tmp_path, redis_url, spark_cluster, production):
    """Every store on the S3 server: the workers share no disk with the driver but the jars' cache
    (as an image would hold it)."""
    stack, event_log, ui_port = production.stack, production.event_log, production.ui_port
    rows = write_landing(tmp_path / "delivered", days_ending(DAY, 3), users=USERS, items=60)
    settings = load_settings("production", stack.environ)
    storage.upload_folder(tmp_path / "delivered", settings.path("landing"))
    nightrec = str(Path(sys.executable).with_name("nightrec"))
    before = time.time()
    result = subprocess.run([nightrec, "run", "--ds", str(DAY), "--lookback-days", "3"], env=stack.environ,
                            capture_output=True, text=True, timeout=900)
    wall = time.time() - before
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:] + "\n" + spark_cluster.logs()
    assert stack.airflow_url in result.stdout  # triggered on the running scheduler, not an Airflow of its own

    # every task ran and its stage reported
    for stage in STAGES:
        assert re.search(rf"task {stage}\s+success after", result.stdout), stage
        assert f'{{"stage": "{stage}"' in result.stdout, stage

    # the live version has every user's list
    client = redis.Redis.from_url(redis_url)
    keys = Keys("test")
    live = client.get(keys.live).decode()
    lists = {key: decode_user(client.get(key)) for key in client.scan_iter(match=keys.user_prefix(live) + "*")}
    assert len(lists) == USERS
    assert all(not isinstance(stored, str) and len(stored[0]) == TOP_K for stored in lists.values())

    # the Spark work ran on the cluster's executors, on both workers, sized by the settings
    log = events(event_log)
    apps = {e["App ID"] for e in log if e["Event"] == "SparkListenerApplicationStart"}
    assert apps
    executors = {e["Executor ID"]: e["Executor Info"] for e in log if e["Event"] == "SparkListenerExecutorAdded"}
    ran_on = {e["Task Info"]["Executor ID"] for e in log if e["Event"] == "SparkListenerTaskEnd"}
    assert "driver" not in ran_on and ran_on <= set(executors)
    worker_ports = {re.search(r"//127\.0\.0\.1:(\d+)/", info["Log Urls"]["stdout"])[1]
                    for executor, info in executors.items() if executor in ran_on}
    assert worker_ports == {url.rsplit(":", 1)[1] for url in spark_cluster.worker_webs}

    master = spark_cluster.master_state()
    finished = {app["id"]: app for app in master["completedapps"]}
    assert apps <= set(finished), (apps, finished.keys())
    for app in apps:
        assert finished[app]["state"] == "FINISHED"
        assert finished[app]["memoryperexecutor"] == 512
    for index in range(len(spark_cluster.worker_webs)):
        ran_here = {e["appid"] for e in spark_cluster.worker_state(index)["finishedexecutors"]}
        assert ran_here & apps, f"no executor of the night's applications on worker {index}"

    # ALS checkpointed (10 iterations) and the executors read the checkpoint back; the folder was under the
    # lake and left with its application
    reread = [e for e in log if e["Event"] == "SparkListenerStageCompleted"
              and any(rdd["Name"] == "ReliableCheckpointRDD" for rdd in e["Stage Info"]["RDD Info"])]
    assert reread, "ALS never read a checkpoint back: does the recipe still run it for 10 iterations?"
    assert all("Failure Reason" not in e["Stage Info"] for e in reread)
    assert storage.walk(storage.join(settings.path("lake"), CHECKPOINT_FOLDER)) == []

    # the lake is on S3 alone: no Delta log entry names a local file, no lake folder on this disk
    logs = [e.uri for e in storage.walk(settings.path("lake")) if "/_delta_log/" in e.uri and e.uri.endswith(".json")]
    assert logs and not [uri for uri in logs if b"file:" in storage.read_bytes(uri)]
    assert not (tmp_path / "lake").exists() and not list(spark_cluster.folder.rglob("_delta_log"))

    # each stage logged where its Spark UI was
    run_log = newest_run(stack).read_text()
    logged = re.findall(r"Spark UI for nightrec-(\w+): http://[\w.-]+:(\d+)", run_log)
    assert {"ingest", "validate", "train", "score", "publish"} <= {stage for stage, _ in logged}
    assert {int(port) for _, port in logged} <= set(range(ui_port, ui_port + 17))  # the setting, or the next free

    # Airflow's record of the run is the wall clock's, to the minute; every task inside it
    record = json.loads(newest_run(stack).with_suffix(".json").read_text())
    assert record["state"] == "success" and abs(record["duration"] - wall) < 60, (record["duration"], wall)
    start, end = (dt.datetime.fromisoformat(record[k]).timestamp() for k in ("start_date", "end_date"))
    assert before <= start < end <= before + wall
    train = record["tasks"]["train"]
    train_start, train_end = (dt.datetime.fromisoformat(train[k]).timestamp() for k in ("start_date", "end_date"))

    # MLflow's training run spans the training (it opens before the data is read, closes after the
    # model is registered), and the model version leads to the exact silver it was trained on
    client = MlflowClient(stack.mlflow_url)
    experiment = client.get_experiment_by_name(settings.mlflow.experiment)
    [training] = client.search_runs([experiment.experiment_id], f"tags.ds = '{DAY}'")
    run_start, run_end = training.info.start_time / 1000, training.info.end_time / 1000
    assert train_start <= run_start < run_end <= train_end
    assert run_end - run_start > 0.5 * train["duration"], (run_end - run_start, train["duration"])
    [version] = client.search_model_versions(f"name = '{settings.mlflow.registered_model}'")
    assert version.run_id == training.info.run_id
    [dataset] = training.inputs.dataset_inputs
    source = json.loads(dataset.dataset.source)
    assert dataset.dataset.name == "silver/interactions" and source["path"] == settings.table("silver/interactions")
    input_tags = {tag.key: tag.value for tag in dataset.tags}
    assert version.tags["silver_version"] == input_tags["delta_table_version"] == \
        str(source.get("delta_table_version", 0))  # (MLflow's JSON of the source leaves out a version 0)
    silver = DeltaTable(source["path"], version=int(version.tags["silver_version"]),
                        storage_options=storage.delta_rs_options(source["path"]))
    assert silver.to_pyarrow_table().num_rows == rows  # that version holds the night's events
    assert experiment.artifact_location.startswith("mlflow-artifacts:")  # artifacts through the server ...
    assert storage.walk(settings.mlflow.artifact_root)  # ... into the bucket

    # the lookup serves the published lists, with a key (the production profile requires one)
    keys = subprocess.run([nightrec, "keys", "create", "--name", "app", "--scope", "read"], env=stack.environ,
                          capture_output=True, text=True, check=True)
    token = keys.stdout.strip().splitlines()[-1]
    some_user = next(iter(user_ids(lists, keys_of=Keys("test"), live=live)))
    with lookup_service(stack.environ, workers=1, seconds=60) as base:
        answer = httpx.get(f"{base}/v1/users/{some_user}/recommendations", params={"k": 5},
                           headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["items"]) == 5
        assert httpx.get(f"{base}/v1/users/{some_user}/recommendations").status_code == 401


def newest_run(stack: Stack) -> Path:
    """`nightrec run`'s log of the newest night (Airflow's record of it beside, as JSON)."""
    runs = Path(stack.environ["AIRFLOW_HOME"]) / "logs" / "nightrec-runs"
    return max(runs.glob(f"run-{DAY}-*.log"), key=lambda p: p.stat().st_mtime)


def user_ids(lists: dict, keys_of: Keys, live: str) -> list[int]:
    prefix = keys_of.user_prefix(live).encode()
    return [int(key.removeprefix(prefix).strip(b"{}")) for key in lists]
