import itertools
import os
import re
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
# Airflow reads its home at import: point it at a throwaway folder before any test imports it.
os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="nightrec-airflow-")
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(Path(__file__).parents[1] / "dags")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
# The S3 the tests use is a private local server: its credentials, for every process and JVM started
# from here (Spark's s3a reads them from its environment); never a real AWS account.
os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"})
for _name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
    os.environ.pop(_name, None)


@pytest.fixture(scope="session", autouse=True)
def no_files_left_in_the_checkout():
    """MLflow's default experiment keeps artifacts in ./mlruns: a test that logs there writes into the checkout."""
    stray = Path(__file__).parents[1] / "mlruns"
    existed = stray.exists()
    yield
    assert existed or not stray.exists(), f"a test logged MLflow artifacts into {stray}: give it an experiment_id"


@pytest.fixture(scope="session")
def redis_server():
    """A real redis-server of our own on a free port (never the machine's shared 6379)."""
    from nightrec.serving.redis_server import private_redis

    with private_redis() as port:
        yield f"redis://127.0.0.1:{port}/0"


@pytest.fixture(scope="session")
def redis_cluster():
    """A real 3-node Redis Cluster (3 primaries, no replicas) on free ports; yields one node's URL."""
    from nightrec.serving.redis_server import private_redis_cluster

    with private_redis_cluster(nodes=3) as url:
        yield url


@pytest.fixture
def redis_url(redis_server):
    import redis

    redis.Redis.from_url(redis_server).flushall()
    return redis_server


@pytest.fixture(scope="session")
def s3_endpoint():
    """A private S3-compatible server (moto) on a free port, for the whole session."""
    from nightrec.data.s3_server import private_s3

    with private_s3() as endpoint:
        yield endpoint


@pytest.fixture
def s3_store(s3_endpoint, request):
    """A new, empty bucket of that server: the root URI of a test's stores (s3://<bucket>)."""
    import boto3

    bucket = "t-" + re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-") + f"-{next(_buckets)}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    return f"s3://{bucket}"


_buckets = itertools.count()


def settings_environ(home: Path, redis_url: str = "redis://127.0.0.1:1/0", stores: str | None = None,
                     s3_endpoint: str = "", **overrides) -> dict[str, str]:
    """Settings of a test: its files under home, or its stores (landing, lake, docs, MLflow artifacts)
    under `stores` (s3://bucket on the private S3 server at s3_endpoint)."""
    root = stores.rstrip("/") if stores else str(home)
    environ = {
        "NIGHTREC_PATHS__LANDING": f"{root}/landing",
        "NIGHTREC_PATHS__LAKE": f"{root}/lake",
        "NIGHTREC_PATHS__DATA_DOCS": f"{root}/docs",
        "NIGHTREC_PATHS__AIRFLOW_HOME": str(home / "airflow"),
        "NIGHTREC_MLFLOW__TRACKING_URI": f"sqlite:///{home}/mlflow.db",
        "NIGHTREC_MLFLOW__ARTIFACT_ROOT": f"{root}/artifacts",
        "NIGHTREC_REDIS__URL": redis_url,
        "NIGHTREC_REDIS__PREFIX": "test",
        "NIGHTREC_MODEL__SEARCH_SPACE": str(Path(__file__).parent / "data" / "search_space_small.toml"),
        "NIGHTREC_MODEL__RECIPE": str(Path(__file__).parent / "data" / "recipe_small.toml"),
        "NIGHTREC_MODEL__TOP_K": "20",
        # The suites' few made-up days are no traffic history: the volume checks are tried where they are
        # the subject (tests/spark/test_volume_checks.py, tests/dags/test_dag_run.py turn them on).
        "NIGHTREC_VOLUME__ENABLED": "false",
    }
    if s3_endpoint:
        environ.update({"NIGHTREC_STORAGE__S3_ENDPOINT": s3_endpoint, "NIGHTREC_STORAGE__S3_PATH_STYLE": "true"})
    environ.update({f"NIGHTREC_{k.upper()}": str(v) for k, v in overrides.items()})
    return environ


@pytest.fixture
def make_settings(tmp_path):
    from nightrec.settings import load_settings

    def build(redis_url: str = "redis://127.0.0.1:1/0", **overrides):
        return load_settings("local", settings_environ(tmp_path, redis_url, **overrides))

    return build


@pytest.fixture(scope="session")
def spark():
    from nightrec.data.spark import get_spark
    from nightrec.settings import load_settings

    session = get_spark(load_settings("local", {}), "nightrec-tests")
    yield session
    session.stop()


FAST_FOLDERS = ("unit", "serving")  # `make test-fast`: no Spark, no Airflow


def pytest_collection_modifyitems(items):
    for item in items:
        if item.path.parent.name in FAST_FOLDERS and "spark" not in item.fixturenames:
            item.add_marker(pytest.mark.fast)
