"""A private PostgreSQL server that tests and benchmarks start for themselves (initdb in a temp folder,
a free loopback port), for Airflow's and MLflow's metadata: the production profile's database
without assuming one runs. The binaries come from the Debian package (`make` installs it)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nightrec.serving.redis_server import free_port

STARTUP_SECONDS = 60
SUPERUSER = "postgres"


def binary(name: str) -> str:
    """initdb, pg_ctl, postgres: on PATH, else Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if found is None:
        raise RuntimeError(f"PostgreSQL's {name} is not installed: apt-get install postgresql (or `make`)")
    return found


def _as_owner(folder: Path) -> dict:
    """PostgreSQL refuses to run as root: under root, run as the `postgres` user the package made."""
    if os.geteuid() != 0:
        return {}
    user = pwd.getpwnam(SUPERUSER)
    shutil.chown(folder, user.pw_uid, user.pw_gid)
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


@contextmanager
def private_postgres(databases: tuple[str, ...] = ()) -> Iterator[str]:
    """Start a server with these databases; yields its base URL postgresql://postgres@127.0.0.1:<port>
    (append /<database>); stopped and deleted on exit."""
    with tempfile.TemporaryDirectory(prefix="nightrec-postgres-") as folder:
        root = Path(folder)
        os.chmod(root, 0o755)
        data = root / "data"
        data.mkdir()
        owner = _as_owner(data)
        subprocess.run([binary("initdb"), "-D", str(data), "-U", SUPERUSER, "--auth=trust", "--encoding=UTF8",
                        "--no-sync"], check=True, capture_output=True, cwd=folder, **owner)
        port = free_port()
        log = root / "postgres.log"
        log.touch()
        if owner:
            shutil.chown(log, owner["user"], owner["group"])
        proc = subprocess.Popen([binary("postgres"), "-D", str(data), "-p", str(port), "-h", "127.0.0.1",
                                 "-k", str(data), "-c", "fsync=off", "-c", "max_connections=200"],
                                stdout=subprocess.DEVNULL, stderr=open(log, "w"), cwd=folder, **owner)
        url = f"postgresql://{SUPERUSER}@127.0.0.1:{port}"
        try:
            _wait(proc, url, log)
            for name in databases:
                _execute(url, f'CREATE DATABASE "{name}"')
            yield url
        finally:
            proc.send_signal(signal.SIGINT)  # fast shutdown: clients still connected are cut off
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _execute(url: str, statement: str) -> None:
    import psycopg2

    connection = psycopg2.connect(f"{url}/postgres")
    connection.autocommit = True  # CREATE DATABASE cannot run in a transaction
    try:
        connection.cursor().execute(statement)
    finally:
        connection.close()


def _wait(proc: subprocess.Popen, url: str, log: Path) -> None:
    import psycopg2

    deadline = time.monotonic() + STARTUP_SECONDS
    while True:
        try:
            psycopg2.connect(f"{url}/postgres", connect_timeout=2).close()
            return
        except psycopg2.OperationalError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"postgres did not start: {log.read_text()[-2000:]}") from None
            time.sleep(0.2)
