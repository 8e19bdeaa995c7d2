"""Small synthetic landing data: users in taste groups, so a model has something real to learn."""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import os
import random
import subprocess
import sys
import time
from pathlib import Path

HEADER = ("user_id", "item_id", "event_type", "value", "ts")


def synthetic_rows(day: dt.date, users: int = 60, items: int = 40, per_user: int = 3, seed: int = 0) -> list[tuple]:
    """Each user likes the items of their group (user % 4 == item % 4) and clicks a few of them a day."""
    rng = random.Random(f"{seed}-{day}")
    rows = []
    for user in range(1, users + 1):
        liked = [i for i in range(1, items + 1) if i % 4 == user % 4]
        for item in rng.sample(liked, per_user):
            ts = dt.datetime.combine(day, dt.time(rng.randrange(24), rng.randrange(60), rng.randrange(60)))
            rows.append((user, item, rng.choice(["view", "click", "purchase"]), 1, ts.strftime("%Y-%m-%dT%H:%M:%SZ")))
    return rows


def write_csv(path: Path, rows, header=HEADER, delivered: dt.datetime | None = None) -> Path:
    """A CSV landing file; `delivered`: when it reached the landing zone (its modification time)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    if delivered is not None:
        os.utime(path, (delivered.timestamp(), delivered.timestamp()))
    return path


def write_landing(landing: Path, days: list[dt.date], new_users: int = 0, **kwargs) -> int:
    """One CSV per day plus items.csv and users.csv; returns the number of interaction rows."""
    total = 0
    for day in days:
        rows = synthetic_rows(day, **kwargs)
        write_csv(landing / "interactions" / f"dt={day}" / "events.csv", rows)
        total += len(rows)
    items = kwargs.get("items", 40)
    write_csv(landing / "items.csv", [(i, f"Item {i}", f"group{i % 4}", 2000 + i % 20) for i in range(1, items + 1)],
              header=("item_id", "title", "genres", "year"))
    users = kwargs.get("users", 60) + new_users  # new users: in the user file, no interactions yet
    write_csv(landing / "users.csv", [(u, 20 + u % 50, "FM"[u % 2]) for u in range(1, users + 1)],
              header=("user_id", "age", "gender"))
    return total


def days_ending(last: dt.date, n: int) -> list[dt.date]:
    return [last - dt.timedelta(days=k) for k in range(n - 1, -1, -1)]


class Rows:
    """In-memory (id, value) rows as the loader's ValueSource: what a Spark DataFrame is to the
    publish stage, without Spark (the lookup's tests need only Redis)."""

    def __init__(self, rows: list[tuple[int, bytes]]):
        self.rows = rows

    def count(self) -> int:
        return len(self.rows)

    def write(self, write_batches) -> int:
        import pyarrow as pa

        ids, values = zip(*self.rows) if self.rows else ((), ())
        batch = pa.RecordBatch.from_pydict({"id": pa.array(ids, pa.int32()), "value": pa.array(values, pa.binary())})
        return sum(write_batches(iter([batch])))

    def sample(self, n: int) -> list[tuple[int, bytes]]:
        return self.rows[:n]


def publish_sample(redis_url: str, prefix: str = "test", cluster: bool = False, ds: dt.date = dt.date(2024, 1, 1)):
    """A small version through the real loader: users 1-3 personal (items u..u+99), user 4 on segment
    gender=F, item 10's neighbours, categories comedy (even items) and drama, item 5 unavailable."""
    from nightrec.serving import loader
    from nightrec.serving.layout import encode, encode_segment_ref

    rows = [(u, encode(range(u, u + 100), [1.0 - i / 100 for i in range(100)])) for u in (1, 2, 3)]
    rows.append((4, encode_segment_ref("gender=F")))
    similar = [(10, encode([11, 12, 13, 14], [0.9, 0.8, 0.7, 0.6]))]
    extras = loader.Extras({"global": ([50, 40, 30], [0.9, 0.5, 0.1]), "gender=F": ([60, 61, 62], [3.0, 2.0, 1.0])},
                           {"comedy": list(range(2, 201, 2)), "drama": [3, 7, 11]}, [5])
    return loader.publish(Rows(rows), extras, url=redis_url, prefix=prefix, ds=ds,
                          model_version="nightrec/7", similar=Rows(similar), cluster=cluster)


def tiny_bundle(items: int, value: float = 1.0):
    """A fitted model of `items` items (popularity alone): what registry tests log and load."""
    import numpy as np

    from nightrec.modeling.candidates.popularity import PopularityComponent
    from nightrec.modeling.scoring import Bundle

    return Bundle(np.arange(1, items + 1), {"popularity": PopularityComponent(np.full(items, value, np.float32))},
                  {"popularity": 1.0}, params={"candidate": "popularity"})


PACKAGE = Path(__file__).parents[1] / "src" / "nightrec"


def imports(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside functions (absolute names)."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def package_modules() -> dict[str, Path]:
    """nightrec's modules by dotted name."""
    def name(path: Path) -> str:
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    return {name(p): p for p in PACKAGE.rglob("*.py")}


def reached_from(starts: list[str]) -> set[str]:
    """The nightrec modules that importing `starts` can load, following every import."""
    modules = package_modules()
    todo, reached = list(starts), set()
    while todo:
        module = todo.pop()
        if module not in reached:
            reached.add(module)
            todo.extend(m for m in imports(modules[module]) if m in modules)
    return reached


def ddl_tables() -> dict[str, str]:
    """sql/tables.sql: table name (e.g. silver_interactions) -> its column list."""
    import re

    ddl = (Path(__file__).parents[1] / "sql" / "tables.sql").read_text()
    return dict(re.findall(r"CREATE TABLE IF NOT EXISTS nightrec\.(\w+) \((.*?)\) USING DELTA", ddl, re.S))


def assert_table_matches_ddl(spark, settings, name: str) -> None:
    """The table as written has exactly the columns, in order and type, that sql/tables.sql declares."""
    from pyspark.sql.types import StructType

    from nightrec.data import lake

    declared = StructType.fromDDL(" ".join(ddl_tables()[name].split()))
    actual = lake.read_table(spark, settings.table(name.replace("_", "/", 1))).schema
    assert [(f.name, f.dataType.simpleString()) for f in actual] == \
           [(f.name, f.dataType.simpleString()) for f in declared], name


@contextlib.contextmanager
def lookup_service(env: dict[str, str], workers: int, seconds: float = 30, log: Path | None = None):
    """`nightrec serve` on a free port with `workers` processes; yields its base URL once /healthz answers.
    log: a file that takes what the service writes (else it goes to the test's output)."""
    import httpx

    from nightrec.serving.redis_server import free_port

    port = free_port()
    nightrec = str(Path(sys.executable).with_name("nightrec"))
    output = open(log, "wb") if log else None  # the service writes to it until it stops
    service = subprocess.Popen([nightrec, "serve", "--port", str(port), "--workers", str(workers),
                                "--log-level", "warning"], env=env, stdout=output, stderr=output)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + seconds
        while True:
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and service.poll() is None, "the service did not come up"
            time.sleep(0.1)
        yield base
    finally:
        service.terminate()
        service.wait(30)
        if output:
            output.close()


def send_raw(base: str, data: bytes, hang_up: bool = False, seconds: float = 10) -> tuple[int, dict, bytes]:
    """These bytes, as they are, to the service at `base` (http://host:port), and its answer: (status,
    headers, body). The bytes go from a thread of their own, as a server may answer and close before
    it has read them all. hang_up: close the connection once they are sent, reading nothing: (0, {}, b"")."""
    import socket
    import threading
    from urllib.parse import urlsplit

    url = urlsplit(base)
    with socket.create_connection((url.hostname, url.port), timeout=seconds) as sock:
        if hang_up:
            sock.sendall(data)
            return 0, {}, b""

        def write():
            with contextlib.suppress(OSError):  # the server answered and closed first
                sock.sendall(data)

        def more() -> bytes:
            chunk = sock.recv(65536)
            assert chunk, "the connection closed before a whole answer came"
            return chunk

        threading.Thread(target=write, daemon=True).start()
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += more()
        head, _, body = answer.partition(b"\r\n\r\n")
        status, *lines = head.decode("latin-1").split("\r\n")
        headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
        while len(body) < int(headers["content-length"]):  # every answer of the service has one
            body += more()
    return int(status.split()[1]), headers, body


def counter(base: str, name: str, **labels: str) -> float:
    """A counter's total in the service's /metrics over the samples with these labels (0 before any)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    return sum(sample.value for family in text_string_to_metric_families(httpx.get(f"{base}/metrics").text)
               for sample in family.samples
               if sample.name == f"{name}_total" and labels.items() <= sample.labels.items())


class Receivers:
    """Local receivers for alerts: an HTTP server taking webhook POSTs (any path) and an SMTP server."""

    def __init__(self):
        self.posts: list[tuple[str, dict]] = []   # (path, JSON body)
        self.mails: list = []                      # email.message.EmailMessage
        self.http_port = self.smtp_port = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http_port}{path}"

    def settings(self) -> dict[str, str]:
        """Settings overrides (make_settings(**...)) sending every channel here."""
        return {"alerts__slack_webhook_url": self.url("/slack"), "alerts__webhook_url": self.url("/hook"),
                "alerts__smtp_host": "127.0.0.1", "alerts__smtp_port": str(self.smtp_port),
                "alerts__email_to": '["oncall@example.com"]'}

    def environ(self) -> dict[str, str]:
        """The same as environment variables, for processes the test starts."""
        return {f"NIGHTREC_{key.upper()}": value for key, value in self.settings().items()}

    def wait(self, posts: int, mails: int, seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while (len(self.posts) < posts or len(self.mails) < mails) and time.monotonic() < deadline:
            time.sleep(0.1)


@contextlib.contextmanager
def alert_receivers():
    import email
    import email.policy
    import http.server
    import json
    import threading

    from aiosmtpd.controller import Controller

    from nightrec.serving.redis_server import free_port

    received = Receivers()

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.posts.append((self.path, json.loads(body)))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    class Mailbox:
        async def handle_DATA(self, server, session, envelope):
            received.mails.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
            return "250 OK"

    http_server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=http_server.serve_forever, daemon=True).start()
    received.http_port, received.smtp_port = http_server.server_address[1], free_port()
    smtp = Controller(Mailbox(), hostname="127.0.0.1", port=received.smtp_port)
    smtp.start()
    try:
        yield received
    finally:
        smtp.stop()
        http_server.shutdown()


def open_in_chromium(url: str, expression: str, screenshot: Path, width: int = 1100) -> object:
    """Open url in headless Chromium, evaluate a JavaScript expression in the loaded page (its value,
    as JSON), and save a screenshot of the whole page. Driven over the DevTools protocol."""
    import asyncio
    import base64
    import json
    import shutil
    import tempfile

    import httpx
    import websockets

    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    assert binary, "Chromium is installed by `make` (scripts/ensure-system.sh)"
    profile = tempfile.mkdtemp(prefix="nightrec-chromium-")
    browser = subprocess.Popen([binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                "--remote-debugging-port=0", f"--user-data-dir={profile}",
                                f"--window-size={width},900", "about:blank"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async def drive(socket_url: str):
        async with websockets.connect(socket_url, max_size=2**28) as socket:
            counter = iter(range(1, 10**6))

            async def call(method: str, **params):
                number = next(counter)
                await socket.send(json.dumps({"id": number, "method": method, "params": params}))
                while True:
                    message = json.loads(await socket.recv())
                    if message.get("id") == number:
                        assert "error" not in message, message
                        return message["result"]

            await call("Page.navigate", url=url)
            for _ in range(200):
                state = await call("Runtime.evaluate", expression="document.readyState", returnByValue=True)
                if state["result"]["value"] == "complete":
                    break
                await asyncio.sleep(0.05)
            value = await call("Runtime.evaluate", expression=expression, returnByValue=True)
            assert "exceptionDetails" not in value, value
            shot = await call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
            screenshot.write_bytes(base64.b64decode(shot["data"]))
            return value["result"]["value"]

    try:
        port_file = Path(profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text().strip():
            assert time.monotonic() < deadline and browser.poll() is None, "Chromium did not start"
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        pages = [t for t in httpx.get(f"http://127.0.0.1:{port}/json/list").json() if t["type"] == "page"]
        return asyncio.run(drive(pages[0]["webSocketDebuggerUrl"]))
    finally:
        browser.terminate()
        browser.wait(10)
        shutil.rmtree(profile, ignore_errors=True)
