import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
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


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """n distinct free ports: the sockets stay open until all are chosen, so none comes twice."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A real redis-server of our own on a free port (never the machine's shared 6379)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed: run `make test` (it installs it) or apt-get install redis-server")
    folder = tmp_path_factory.mktemp("redis")
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(folder)], stdout=subprocess.DEVNULL)
    _wait_for(_client(port), proc)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory):
    """A real 3-node Redis Cluster (3 primaries, no replicas) on free ports; yields one node's URL."""
    import redis

    folder = tmp_path_factory.mktemp("redis-cluster")
    # The cluster bus port defaults to port + 10000, which may be taken or past 65535: choose it too.
    free = free_ports(6)
    ports, bus_ports = free[:3], free[3:]
    procs = []
    for port, bus_port in zip(ports, bus_ports):
        node = folder / str(port)
        node.mkdir()
        procs.append(subprocess.Popen(
            [shutil.which("redis-server"), "--port", str(port), "--cluster-port", str(bus_port), "--bind", "127.0.0.1",
             "--cluster-enabled", "yes", "--cluster-config-file", str(node / "nodes.conf"), "--save", "",
             "--appendonly", "no", "--dir", str(node)], stdout=subprocess.DEVNULL))
    for port, proc in zip(ports, procs):
        _wait_for(_client(port), proc)
    subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports], "--cluster-replicas", "0",
                    "--cluster-yes"], check=True, capture_output=True, timeout=60)
    for _ in range(200):
        if all(b"cluster_state:ok" in redis.Redis(port=p).execute_command("CLUSTER INFO") for p in ports):
            break
        time.sleep(0.05)
    yield f"redis://127.0.0.1:{ports[0]}/0"
    for proc in procs:
        proc.terminate()
        proc.wait(10)


def _wait_for(client, proc: subprocess.Popen) -> None:
    """Until the server answers; fails at once if it died (a port taken meanwhile, say)."""
    import redis

    for _ in range(200):
        if proc.poll() is not None:
            pytest.fail(f"redis-server exited with {proc.returncode}: {proc.args}")
        try:
            client.ping()
            return
        except redis.ConnectionError:
            time.sleep(0.05)
    pytest.fail(f"redis-server did not answer within 10 s: {proc.args}")


def _client(port: int = 0, url: str | None = None):
    """A client that fails fast (no retries): _wait_for does the polling."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    if url is not None:
        return redis.Redis.from_url(url, retry=Retry(NoBackoff(), 0))
    return redis.Redis(port=port, retry=Retry(NoBackoff(), 0))


@pytest.fixture
def redis_url(redis_server):
    import redis

    redis.Redis.from_url(redis_server).flushall()
    return redis_server


def settings_environ(home: Path, redis_url: str = "redis://127.0.0.1:1/0", **overrides) -> dict[str, str]:
    environ = {
        "NIGHTREC_PATHS__LANDING": str(home / "landing"),
        "NIGHTREC_PATHS__LAKE": str(home / "lake"),
        "NIGHTREC_PATHS__DATA_DOCS": str(home / "docs"),
        "NIGHTREC_PATHS__AIRFLOW_HOME": str(home / "airflow"),
        "NIGHTREC_MLFLOW__TRACKING_URI": f"sqlite:///{home}/mlflow.db",
        "NIGHTREC_MLFLOW__ARTIFACT_ROOT": str(home / "artifacts"),
        "NIGHTREC_REDIS__URL": redis_url,
        "NIGHTREC_REDIS__PREFIX": "test",
        "NIGHTREC_MODEL__SEARCH_SPACE": str(Path(__file__).parent / "data" / "search_space_small.toml"),
        "NIGHTREC_MODEL__TOP_K": "20",
    }
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
    from nightrec.settings import load_settings
    from nightrec.spark import get_spark

    session = get_spark(load_settings("local", {}), "nightrec-tests")
    yield session
    session.stop()
