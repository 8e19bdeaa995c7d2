"""Lookup service latency at a fixed request rate, and its throughput vs raw Redis GET, same box.

    .venv/bin/python bench/lookup.py --users 100000 --workers 2
    .venv/bin/python bench/lookup.py --users 100000 --workers 2 --impressions-off-and-on --rounds 3
    .venv/bin/python bench/lookup.py --users 100000 --workers 2 --auth-off-and-on --rounds 3

Starts its own redis-server and publishes a version of `--users` random top-100 lists into it,
then starts `nightrec serve --workers N` on it. With --impressions-off-and-on the service runs with
impression recording off (service.impression_sample_rate = 0) and on (1.0); with --auth-off-and-on
without and with API keys (every request sends a read key, rate-limited at AUTH_RATE/s); alternating,
--rounds times each, and the table gives the median and the range of each figure.

Latency: an open-loop load generator in a separate process sends `--rate` requests/s over 32
keep-alive connections for `--seconds` and times each from its scheduled send (so a stall counts
against every request it delays). Throughput: `wrk` with 64 connections on random users, against
`redis-benchmark -t get -c 64` on the same value size.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import redis

from nightrec.serving import auth, impressions
from nightrec.serving import loader as publisher
from nightrec.serving.layout import Keys, encode, encode_id_set
from nightrec.serving.redis_server import free_port, private_redis

PREFIX = "bench"
CONNECTIONS = 64
AUTH_RATE = 50_000  # the bench key's limit (requests/s): above what this box serves, so nothing is refused


def wait_until(check, what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not come up")


def publish_random(client: redis.Redis, users: int) -> str:
    """A complete version written straight with the layout module (the loader has its own bench)."""
    keys = Keys(PREFIX)
    version = "19980422.1"
    rng = np.random.default_rng(0)
    for start in range(1, users + 1, 10_000):
        ids = list(range(start, min(start + 10_000, users + 1)))
        client.mset(dict(zip(keys.users(version, ids), (encode(rng.choice(50_000, 100, replace=False) + 1,
                                                               np.sort(rng.random(100))[::-1]) for _ in ids))))
    client.set(keys.fallback(version), encode(range(1, 101), np.linspace(1, 0, 100)))
    client.set(keys.unavailable(version), encode_id_set([]))
    client.hset(keys.meta(version), mapping={"ds": "1998-04-22", "model_version": "bench/1", "users": users,
                                              "segments": '["global"]', "categories": "[]"})
    publisher.flip(client, keys, version)
    return version


async def open_loop(port: int, users: int, rate: int, seconds: float, token: str = "") -> list[float]:
    """Latencies (s) of rate*seconds GETs sent on schedule over 32 keep-alive connections."""
    rng = np.random.default_rng(1)
    total = int(rate * seconds)
    queue: asyncio.Queue = asyncio.Queue()
    latencies: list[float] = []
    header = f"Authorization: Bearer {token}\r\n" if token else ""

    async def connection():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while True:
            scheduled, user = await queue.get()
            if user is None:
                writer.close()
                return
            writer.write(f"GET /v1/users/{user}/recommendations?k=10 HTTP/1.1\r\nHost: bench\r\n{header}\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(head[:100])
            length = int(re.search(rb"content-length: (\d+)", head, re.I)[1])
            if b'"source":"personalized"' not in await reader.readexactly(length):
                raise RuntimeError(f"user {user} got no personal list: the bench data is wrong")
            latencies.append(time.perf_counter() - scheduled)

    workers = [asyncio.create_task(connection()) for _ in range(32)]
    start = time.perf_counter() + 0.2
    for n, user in enumerate(rng.integers(1, users + 1, total)):
        scheduled = start + n / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait((scheduled, int(user)))
    for _ in workers:
        queue.put_nowait((0, None))
    await asyncio.gather(*workers)
    return latencies


def wrk_rate(port: int, users: int, seconds: int, token: str = "") -> float:
    script = Path(tempfile.mkdtemp()) / "users.lua"
    headers = f'wrk.headers["Authorization"] = "Bearer {token}"\n' if token else ""
    script.write_text(f'{headers}request = function() return wrk.format("GET", '
                      f'"/v1/users/" .. math.random(1, {users}) .. "/recommendations?k=10") end\n')
    out = subprocess.run(["wrk", "-t", "1", "-c", str(CONNECTIONS), "-d", f"{seconds}s", "-s", str(script),
                          f"http://127.0.0.1:{port}"], capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"service answered errors under load:\n{out}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])


def redis_get_rate(port: int, requests: int, value_bytes: int) -> float:
    out = subprocess.run(["redis-benchmark", "-p", str(port), "-t", "set,get", "-d", str(value_bytes),
                          "-n", str(requests), "-r", "100000", "-c", str(CONNECTIONS), "-q"],
                         capture_output=True, text=True, check=True).stdout
    return float(re.findall(r"GET: ([\d.]+) requests per second", out.replace("\r", "\n"))[-1])


def start_service(redis_port: int, http_port: int, workers: int, settings: dict[str, str]) -> subprocess.Popen:
    import httpx

    env = {**os.environ, "NIGHTREC_REDIS__URL": f"redis://127.0.0.1:{redis_port}/0", "NIGHTREC_REDIS__PREFIX": PREFIX,
           **settings}
    nightrec = str(Path(sys.executable).with_name("nightrec"))
    service = subprocess.Popen([nightrec, "serve", "--port", str(http_port), "--workers", str(workers),
                                "--log-level", "warning"], env=env)
    wait_until(lambda: httpx.get(f"http://127.0.0.1:{http_port}/healthz").status_code == 200, "service")
    return service


def measure(redis_port: int, args, settings: dict[str, str], token: str = "") -> dict:
    """p50/p99 at --rate (open loop) and wrk throughput of one service start; impressions written."""
    http_port = free_port()
    service = start_service(redis_port, http_port, args.workers, settings)
    try:
        wrk_rate(http_port, args.users, 2, token)  # warm-up: every worker connected
        client, key = redis.Redis(port=redis_port), Keys(PREFIX).impressions
        time.sleep(0.5)  # the warm-up's last impressions leave the buffer
        client.delete(key)
        latencies = np.array(asyncio.run(open_loop(http_port, args.users, args.rate, args.seconds, token))) * 1000
        time.sleep(0.5)
        recorded = sum(len(impressions.rows(fields)) for _, fields in client.xrange(key))
        client.delete(key)  # the stream would grow by every wrk request
        rate = wrk_rate(http_port, args.users, 10, token)
    finally:
        service.terminate()
        service.wait(30)
    p50, p99 = np.percentile(latencies, [50, 99])
    return {"p50": p50, "p99": p99, "rate": rate, "recorded": recorded / len(latencies)}


def compare(args, what: str) -> None:
    """The service without and with impressions (or API keys), alternating, --rounds times each."""
    sample_rate = "NIGHTREC_SERVICE__IMPRESSION_SAMPLE_RATE"
    runs: dict[str, list[dict]] = {"off": [], "on": []}
    with private_redis() as redis_port:
        client = redis.Redis(port=redis_port)
        publish_random(client, args.users)
        token = ""
        if what == "auth":
            token = auth.create_key(client, Keys(PREFIX), "bench", "read", "bench")[0]
            limits = {scope: {"per_second": AUTH_RATE, "burst": AUTH_RATE // 10} for scope in auth.SCOPES}
            on = {"NIGHTREC_AUTH__ENABLED": "true", "NIGHTREC_AUTH__RATE_LIMITS": json.dumps(limits),
                  sample_rate: "0"}
            configs = {"off": ({sample_rate: "0"}, ""), "on": (on, token)}
        else:
            configs = {"off": ({sample_rate: "0"}, ""), "on": ({sample_rate: "1"}, "")}
        for _ in range(args.rounds):
            for label, (settings, key) in configs.items():
                runs[label].append(measure(redis_port, args, settings, key))

    def cell(label: str, figure: str, fmt: str) -> str:
        values = sorted(run[figure] for run in runs[label])
        return f"{np.median(values):{fmt}} ({values[0]:{fmt}}-{values[-1]:{fmt}})"

    print(f"\n$ .venv/bin/python bench/lookup.py --users {args.users} --workers {args.workers} --rate {args.rate} "
          f"--seconds {args.seconds} --{what}-off-and-on --rounds {args.rounds}")
    print(f"{args.users} users, `nightrec serve --workers {args.workers}`, off and on alternating, median (range) of "
          f"{args.rounds} runs each, {os.cpu_count()} cores shared by service, Redis and load"
          + (f"; auth on: a read key limited to {AUTH_RATE}/s" if what == "auth" else "") + "\n")
    print(f"| {what} | p50 ms at {args.rate}/s | p99 ms at {args.rate}/s | requests/s (wrk) | impressions "
          f"per request |")
    print("|---|---:|---:|---:|---:|")
    for label in ("off", "on"):
        print(f"| {label} | {cell(label, 'p50', '.2f')} | {cell(label, 'p99', '.2f')} | {cell(label, 'rate', '.0f')} | "
              f"{cell(label, 'recorded', '.2f')} |")
    ratio = np.median([r["rate"] for r in runs["on"]]) / np.median([r["rate"] for r in runs["off"]])
    print(f"\nthroughput with {what} on: {ratio:.0%} of off (medians)")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--impressions-off-and-on", action="store_true",
                        help="compare the service with impression recording off and on")
    parser.add_argument("--auth-off-and-on", action="store_true",
                        help="compare the service without and with API keys (and their rate limit)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")
    if args.impressions_off_and_on or args.auth_off_and_on:
        return compare(args, "impressions" if args.impressions_off_and_on else "auth")

    with private_redis() as redis_port:
        http_port, service = free_port(), None
        try:
            client = redis.Redis(port=redis_port)
            publish_random(client, args.users)
            env = {**os.environ, "NIGHTREC_REDIS__URL": f"redis://127.0.0.1:{redis_port}/0",
                   "NIGHTREC_REDIS__PREFIX": PREFIX}
            nightrec = str(Path(sys.executable).with_name("nightrec"))
            service = subprocess.Popen([nightrec, "serve", "--port", str(http_port), "--workers", str(args.workers),
                                        "--log-level", "warning"], env=env)
            import httpx

            wait_until(lambda: httpx.get(f"http://127.0.0.1:{http_port}/healthz").status_code == 200, "service")
            wrk_rate(http_port, args.users, 2)  # warm-up: every worker connected
            latencies = np.array(asyncio.run(open_loop(http_port, args.users, args.rate, args.seconds))) * 1000
            service_rates, redis_rates = [], []
            for _ in range(2):  # alternating, best of two each: the machine is shared
                service_rates.append(wrk_rate(http_port, args.users, 10))
                redis_rates.append(redis_get_rate(redis_port, 500_000, 603))
        finally:
            if service is not None:
                service.terminate()
                service.wait(30)

    service_rate, redis_rate = max(service_rates), max(redis_rates)
    p50, p99, p999 = np.percentile(latencies, [50, 99, 99.9])
    print(f"\n$ .venv/bin/python bench/lookup.py --users {args.users} --workers {args.workers} "
          f"--rate {args.rate} --seconds {args.seconds}")
    print(f"{args.users} users in Redis, `nightrec serve --workers {args.workers}`, load from separate processes, "
          f"{os.cpu_count()} cores shared by all\n")
    print(f"| latency at {args.rate} requests/s ({len(latencies)} requests, open loop) | ms |")
    print("|---|---:|")
    print(f"| p50 | {p50:.2f} |\n| p99 | {p99:.2f} |\n| p99.9 | {p999:.2f} |\n| max | {latencies.max():.2f} |")
    print(f"\n| throughput ({CONNECTIONS} connections) | requests/s | vs raw Redis GET |")
    print("|---|---:|---:|")
    print(f"| redis-benchmark -t get -c {CONNECTIONS} -d 603 | {redis_rate:.0f} | 100% |")
    print(f"| GET /v1/users/{{id}}/recommendations?k=10 (wrk) | {service_rate:.0f} | "
          f"{100 * service_rate / redis_rate:.0f}% |")


if __name__ == "__main__":
    main(sys.argv[1:])
