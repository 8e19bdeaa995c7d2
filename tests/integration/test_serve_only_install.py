"""`pip install "nightrec[serve]"` in a fresh virtualenv: the lookup service and `nightrec recs`
work there against a real Redis, without Spark, MLflow or Airflow installed."""

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from helpers import publish_sample
from nightrec.serving.redis_server import free_port

REPO = Path(__file__).parents[2]
PIPELINE_ONLY = ("pyspark", "mlflow", "airflow", "great_expectations", "deltalake", "pandas", "pyarrow", "numba")


@pytest.fixture(scope="module")
def serve_venv(tmp_path_factory):
    venv = tmp_path_factory.mktemp("serve") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "-c", str(REPO / "constraints.txt"),
                    f"{REPO}[serve]"], check=True, timeout=900)
    return venv / "bin"


def test_the_serve_install_holds_none_of_the_pipeline(serve_venv):
    probe = "import importlib.util, json; print(json.dumps({m: importlib.util.find_spec(m) is not None for m in %r}))"
    found = subprocess.run([str(serve_venv / "python"), "-c", probe % (PIPELINE_ONLY,)], capture_output=True,
                           text=True, check=True)
    assert json.loads(found.stdout) == {module: False for module in PIPELINE_ONLY}


def test_the_lookup_service_and_recs_answer_from_the_serve_install(serve_venv, redis_url):
    publish_sample(redis_url)
    env = {**os.environ, "NIGHTREC_HOME": str(REPO), "NIGHTREC_REDIS__URL": redis_url, "NIGHTREC_REDIS__PREFIX": "test"}
    port = free_port()
    service = subprocess.Popen([str(serve_venv / "nightrec"), "serve", "--port", str(port), "--workers", "1"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        answer = None
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/users/2/recommendations?k=3") as response:
                    answer = json.loads(response.read())
                break
            except OSError:
                assert service.poll() is None, service.stderr.read()
                time.sleep(0.1)
        assert answer is not None, "the service never answered"
        assert answer["source"] == "personalized" and [i["item_id"] for i in answer["items"]] == [2, 3, 4]
    finally:
        service.terminate()
        service.wait(10)
    recs = subprocess.run([str(serve_venv / "nightrec"), "recs", "2", "--k", "3", "--exclude", "3"], env=env,
                          capture_output=True, text=True, check=True)
    rows = [line.split("│")[1:3] for line in recs.stdout.splitlines() if line.count("│") > 3]
    assert [(rank.strip(), item.strip()) for rank, item in rows] == [("1", "2"), ("2", "4"), ("3", "6")]
