"""A private S3-compatible server that tests and benchmarks start for themselves (moto's server
mode, installed with the `dev` extra) on a free loopback port, keeping everything in memory."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

STARTUP_SECONDS = 60


@contextmanager
def private_s3() -> Iterator[str]:
    """Start a server; yields its endpoint (http://127.0.0.1:<port>); stopped on exit."""
    binary = Path(sys.executable).with_name("moto_server")
    if not binary.exists():
        binary = Path(shutil.which("moto_server") or binary)
    if not binary.exists():
        raise RuntimeError("moto_server is not installed: pip install 'moto[server]' (the dev extra; `make test`)")
    with socket.socket() as probe:  # a free port (the serving wing has its own helper; wings stay apart)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([str(binary), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            try:
                opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy
                opener.open(f"{endpoint}/moto-api/", timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start on port {port}") from None
                time.sleep(0.2)
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
