"""The nightly DAG through `nightrec run` with its Spark work on a real standalone cluster (master + 2 workers)."""

import datetime as dt
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
import redis

from conftest import settings_environ
from helpers import days_ending, write_landing
from nightrec.constants import STAGES
from nightrec.data import storage
from nightrec.data.spark import CHECKPOINT_FOLDER
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


def test_the_night_runs_on_a_standalone_cluster(tmp_path, redis_url, spark_cluster, s3_endpoint):
    """Every store on the S3 server: the workers share no disk with the driver but the jars' cache
    (as an image would hold it)."""
    bucket = "cluster-night"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    environ = settings_environ(tmp_path, redis_url, stores=f"s3://{bucket}", s3_endpoint=s3_endpoint,
                               model__recipe=small_recipe(tmp_path))
    write_landing(tmp_path / "delivered", days_ending(DAY, 3), users=USERS, items=60)
    settings = load_settings("local", environ)
    storage.upload_folder(tmp_path / "delivered", settings.path("landing"))
    event_log = tmp_path / "spark-events"
    event_log.mkdir()
    ui_port = free_port()
    env = {
        **os.environ,
        **environ,
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
    nightrec = str(Path(sys.executable).with_name("nightrec"))
    result = subprocess.run([nightrec, "run", "--ds", str(DAY), "--lookback-days", "3"], env=env,
                            capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:] + "\n" + spark_cluster.logs()

    # every task ran and its stage reported
    for stage in STAGES:
        assert re.search(rf"task {stage}\s+ended", result.stdout), stage
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
    run_log = max((Path(os.environ["AIRFLOW_HOME"]) / "logs" / "nightrec-runs").glob(f"run-{DAY}-*.log")).read_text()
    logged = re.findall(r"Spark UI for nightrec-(\w+): http://[\w.-]+:(\d+)", run_log)
    assert {"ingest", "validate", "train", "score", "publish"} <= {stage for stage, _ in logged}
    assert {int(port) for _, port in logged} <= set(range(ui_port, ui_port + 17))  # the setting, or the next free
