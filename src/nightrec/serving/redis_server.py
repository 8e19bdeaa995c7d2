"""Private Redis servers that tests and benchmarks start for themselves: a redis-server, or a Redis
Cluster, on free ports in a temp dir, never a shared instance."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


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


def start_redis_server(folder: Path | str, port: int, *options: str) -> subprocess.Popen:
    """A redis-server on 127.0.0.1:port keeping nothing on disk, answering (see wait_for_redis)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed: apt-get install redis-server (or `make test`)")
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(folder), *options], stdout=subprocess.DEVNULL)
    try:
        wait_for_redis(proc, f"redis://127.0.0.1:{port}/0")
    except BaseException:
        stop_redis_servers([proc])
        raise
    return proc


def wait_for_redis(proc: subprocess.Popen, url: str, seconds: float = 10) -> None:
    """Until the server answers at `url`; fails at once if it died (its port taken meanwhile, say)."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    client = redis.Redis.from_url(url, retry=Retry(NoBackoff(), 0))  # fails fast: this loop polls
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {proc.returncode}: {' '.join(proc.args)}")
        try:
            client.ping()
            return
        except redis.ConnectionError:
            time.sleep(0.05)
    raise RuntimeError(f"redis-server did not answer within {seconds:.0f} s: {' '.join(proc.args)}")


def stop_redis_servers(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.wait(10)


@contextmanager
def private_redis() -> Iterator[int]:
    """A redis-server of our own (nothing else in it, nothing kept); yields its port."""
    with tempfile.TemporaryDirectory() as folder:
        port = free_port()
        proc = start_redis_server(folder, port)
        try:
            yield port
        finally:
            stop_redis_servers([proc])


@contextmanager
def private_redis_cluster(nodes: int = 3) -> Iterator[str]:
    """A Redis Cluster of our own: `nodes` primaries, no replicas, slots split evenly; yields one
    node's URL (a cluster client finds the others)."""
    import redis

    # The cluster bus port defaults to port + 10000, which may be taken or past 65535: choose it too.
    free = free_ports(2 * nodes)
    ports, bus_ports = free[:nodes], free[nodes:]
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory() as folder:
        try:
            for port, bus_port in zip(ports, bus_ports):
                node = Path(folder) / str(port)
                node.mkdir()
                procs.append(start_redis_server(node, port, "--cluster-enabled", "yes", "--cluster-port",
                                                str(bus_port), "--cluster-config-file", str(node / "nodes.conf")))
            subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports],
                            "--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True, timeout=60)
            deadline = time.monotonic() + 10
            while not all(redis.Redis(port=p).cluster("info")["cluster_state"] == "ok" for p in ports):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the cluster on ports {ports} did not reach cluster_state:ok within 10 s")
                time.sleep(0.05)
            yield f"redis://127.0.0.1:{ports[0]}/0"
        finally:
            stop_redis_servers(procs)
