"""A real Spark standalone cluster on this machine: a master and two workers from the installed pyspark."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

WORKERS = 2
STARTUP_SECONDS = 120  # JVM starts on a busy 2-core machine


@dataclass
class StandaloneCluster:
    url: str                                              # spark://127.0.0.1:<port>, the master for drivers
    master_web: str                                       # the master's web UI (and its /json)
    worker_webs: list[str] = field(default_factory=list)  # each worker's web UI (and its /json)
    folder: Path | None = None                            # logs and work dirs

    def master_state(self) -> dict:
        return _json(f"{self.master_web}/json/")

    def worker_state(self, index: int) -> dict:
        return _json(f"{self.worker_webs[index]}/json/")

    def logs(self) -> str:
        return "\n".join(f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-30:])
                         for log in sorted(self.folder.glob("*.log")))


def _json(url: str) -> dict:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy
    with opener.open(url, timeout=5) as response:
        return json.load(response)


def spark_class() -> str:
    import pyspark

    return str(Path(pyspark.__file__).parent / "bin" / "spark-class")


@pytest.fixture(scope="session")
def spark_cluster(tmp_path_factory):
    """Master and two workers (1 core, 1g each) on free loopback ports, running the venv's Python on
    their executors; yields once both workers are registered, stopped at the end of the session."""
    from nightrec.serving.redis_server import free_ports

    folder = tmp_path_factory.mktemp("spark-cluster")
    master_port, master_web, *worker_webs = free_ports(2 + WORKERS)
    cluster = StandaloneCluster(f"spark://127.0.0.1:{master_port}", f"http://127.0.0.1:{master_web}",
                                [f"http://127.0.0.1:{port}" for port in worker_webs], folder)
    (folder / "conf").mkdir()
    env = {
        **os.environ,
        "SPARK_LOCAL_IP": "127.0.0.1",
        "PYSPARK_PYTHON": sys.executable,        # executors' Python: the venv with nightrec installed
        "SPARK_CONF_DIR": str(folder / "conf"),  # no spark-defaults from elsewhere
        "SPARK_LOCAL_DIRS": str(folder / "scratch"),
        "SPARK_DAEMON_MEMORY": "512m",           # the master and worker JVMs themselves
        # A port taken meanwhile fails the start rather than moving silently; no REST server on the fixed 6066.
        "SPARK_DAEMON_JAVA_OPTS": "-Dspark.port.maxRetries=0 -Dspark.master.rest.enabled=false",
    }
    procs: list[subprocess.Popen] = []

    def start(name: str, *args: str) -> None:
        with open(folder / f"{name}.log", "w") as log:
            procs.append(subprocess.Popen([spark_class(), *args], env=env, stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, cwd=folder))

    try:
        start("master", "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(master_port),
              "--webui-port", str(master_web))
        _wait(cluster, procs, lambda state: state.get("status") == "ALIVE", "the master to come up")
        for index, port in enumerate(worker_webs):
            work_dir = folder / f"worker{index}"
            work_dir.mkdir()
            start(f"worker{index}", "org.apache.spark.deploy.worker.Worker", cluster.url, "--host", "127.0.0.1",
                  "--cores", "1", "--memory", "1g", "--webui-port", str(port), "--work-dir", str(work_dir))
        _wait(cluster, procs, lambda state: sum(w["state"] == "ALIVE" for w in state.get("workers", [])) == WORKERS,
              f"{WORKERS} workers to register")
        yield cluster
    finally:
        for proc in reversed(procs):  # workers first: each ends its executors
            proc.terminate()
        for proc in reversed(procs):
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def _wait(cluster: StandaloneCluster, procs: list[subprocess.Popen], ready, what: str) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        dead = [proc for proc in procs if proc.poll() is not None]
        if dead:
            pytest.fail(f"a Spark daemon exited with {dead[0].returncode} while waiting for {what}:\n{cluster.logs()}")
        try:
            if ready(cluster.master_state()):
                return
        except (OSError, ValueError):  # the master's web UI is not up yet, or still serves its HTML only
            pass
        time.sleep(0.5)
    pytest.fail(f"waited {STARTUP_SECONDS} s for {what}:\n{cluster.logs()}")
