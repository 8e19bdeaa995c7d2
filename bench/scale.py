"""What a night costs at size: the whole nightly DAG through Airflow (`nightrec run`, as a user runs
it) on `nightrec synth` data at four sizes, one table.

    .venv/bin/python bench/scale.py --sizes S M L   # XL (a million items) runs alone: --sizes XL
    .venv/bin/python bench/scale.py --sizes S M     # fewer
    .venv/bin/python bench/scale.py --sizes S --stores local s3 --repeat 3   # disk and S3, side by side
    .venv/bin/python bench/scale.py --sizes S --against ../release --repeat 3  # against earlier checkouts

For each size, in its own folder under var/bench/scale/ with its own lake, MLflow store and
redis-server: the initial load (an empty lake, all 30 days ingested at once), then a steady-state
night (the last day arriving again with a lookback of one day: ingest and validate that day, train
on the whole window, gate against the champion the initial night left, score, publish). Per
night: every stage's seconds and the peak memory of the Spark driver (the JVM, which in local mode
runs the executors too) and of its Python workers; Redis memory per user; the holdout NDCG@10 of
tonight's model and of the champion it is judged against; and the growth exponent of each stage's
time against events between consecutive sizes (time ~ events^exponent).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import re
import shlex
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import redis

from nightrec.constants import STAGES

HOME = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LAST_DAY = "2024-06-30"
DAYS = 30


@dataclass(frozen=True)
class Size:
    users: int
    items: int
    events: int
    driver_memory: str


SIZES = {
    "S": Size(100_000, 10_000, 2_000_000, "4g"),
    "M": Size(300_000, 30_000, 10_000_000, "8g"),
    "L": Size(1_000_000, 100_000, 50_000_000, "12g"),
    "XL": Size(1_000_000, 1_000_000, 50_000_000, "16g"),  # L's users and events, a catalog ten times larger
}


@dataclass
class Night:
    name: str
    seconds: dict[str, float] = field(default_factory=dict)
    driver_peak: dict[str, int] = field(default_factory=dict)    # stage -> bytes (JVM)
    workers_peak: dict[str, int] = field(default_factory=dict)   # stage -> bytes (Python: task + Spark workers)
    summaries: dict[str, dict] = field(default_factory=dict)
    redis_bytes_per_user: float | None = None
    total: float = 0.0                    # `nightrec run`, wall clock (Airflow's start and stop included)
    airflow_seconds: float | None = None  # the run as Airflow recorded it


class MemoryWatch:
    """Samples the process tree under `root` every 0.5 s: the JVM's RSS and the Python processes'
    summed RSS, attributed to whichever stage is running."""

    def __init__(self, root: psutil.Process):
        self.root, self.stage = root, None
        self.driver: dict[str, int] = {}
        self.workers: dict[str, int] = {}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.done.wait(0.5):
            if self.stage is None:
                continue
            jvm = python = 0
            try:
                for proc in self.root.children(recursive=True):
                    try:
                        rss = proc.memory_info().rss
                        if proc.name() == "java":
                            jvm += rss
                        elif "python" in proc.name() or "airflow" in proc.name():
                            python += rss
                    except psutil.Error:
                        continue
            except psutil.Error:
                continue
            self.driver[self.stage] = max(self.driver.get(self.stage, 0), jvm)
            self.workers[self.stage] = max(self.workers.get(self.stage, 0), python)

    def stop(self) -> None:
        self.done.set()
        self.thread.join()


def synth(size: Size, landing: Path, seed: int) -> None:
    marker = landing / "synth.json"
    wanted = {"users": size.users, "items": size.items, "events": size.events, "days": DAYS, "seed": seed}
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        return
    subprocess.run([str(BIN / "nightrec"), "synth", "--users", str(size.users), "--items", str(size.items),
                    "--events", str(size.events), "--days", str(DAYS), "--seed", str(seed), "--end", LAST_DAY,
                    str(landing)], check=True)
    marker.write_text(json.dumps(wanted))


def run_night(name: str, env: dict, lookback: int, log: Path) -> Night:
    night = Night(name)
    runs = Path(env["NIGHTREC_PATHS__AIRFLOW_HOME"]) / "logs" / "nightrec-runs"
    before = set(runs.glob("run-*.log")) if runs.is_dir() else set()
    command = [str(BIN / "nightrec"), "run", "--ds", LAST_DAY, "--lookback-days", str(lookback)]
    started = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        watch = MemoryWatch(psutil.Process(proc.pid))
        run_log = None
        while proc.poll() is None:
            time.sleep(0.5)
            new = set(runs.glob("run-*.log")) - before if runs.is_dir() else set()
            if new:
                run_log = max(new, key=lambda p: p.stat().st_mtime)
                watch.stage = running_task(run_log.read_text(errors="replace"))
        watch.stop()
    night.total = time.monotonic() - started
    if proc.returncode != 0 or run_log is None:
        raise RuntimeError(f"{name}: nightrec run failed ({proc.returncode}); see {log} and {run_log}")
    text = run_log.read_text(errors="replace")
    record = run_log.with_suffix(".json")  # Airflow's own record of the run
    if record.exists():
        tasks = json.loads(record.read_text())["tasks"]
        night.seconds = {t: ti["duration"] for t, ti in tasks.items() if ti["duration"] is not None}
        night.airflow_seconds = json.loads(record.read_text())["duration"]
    else:  # an earlier release ran nights with `airflow dags test`
        night.seconds = {t: (end - begin) for t, (begin, end) in dags_test_times(text).items() if end is not None}
    night.driver_peak, night.workers_peak = watch.driver, watch.workers
    night.summaries = stage_summaries(text)
    return night


def running_task(text: str) -> str | None:
    """The task a run's log (as `nightrec run` writes it) says is running now."""
    states = dict(re.findall(r"^\[(\w+)\] task (\w+)$", text, re.M))
    running = [task for task, state in states.items() if state == "running"]
    if running:
        return running[-1]
    earlier = [t for t, (_, end) in dags_test_times(text).items() if end is None]
    return earlier[-1] if earlier else None


def dags_test_times(text: str) -> dict[str, tuple[float, float | None]]:
    """task -> (start, end) in epoch seconds, from the log of an earlier release's `airflow dags test`."""
    times: dict[str, tuple[float, float | None]] = {}
    for stamp, event, task in re.findall(r"^(\S+Z) .*\[DAG TEST\] (starting task_id|end task task_id)=(\w+)",
                                         text, re.M):
        moment = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
        if event.startswith("starting"):
            times[task] = (moment, None)
        elif task in times:
            times[task] = (times[task][0], moment)
    return times


def stage_summaries(text: str) -> dict[str, dict]:
    """The JSON summary line each stage printed into the run's log."""
    found = {}
    for line in text.splitlines():
        start = line.find('{"stage": ')
        if start >= 0:
            try:
                summary = json.loads(line[start:])
            except json.JSONDecodeError:
                continue
            found[summary["stage"]] = summary
    return found


def redis_bytes_per_user(url: str, baseline: int, users: int) -> float:
    return (int(redis.Redis.from_url(url).info("memory")["used_memory"]) - baseline) / max(users, 1)


def stores_environ(home: Path, s3_endpoint: str | None) -> dict[str, str]:
    """Landing zone, lake, Data Docs and MLflow artifacts: under home, or in a new bucket of the S3 server."""
    if s3_endpoint is None:
        return {"NIGHTREC_PATHS__LANDING": str(home / "landing"), "NIGHTREC_PATHS__LAKE": str(home / "lake"),
                "NIGHTREC_PATHS__DATA_DOCS": str(home / "docs"),
                "NIGHTREC_MLFLOW__ARTIFACT_ROOT": str(home / "mlflow" / "artifacts")}
    import boto3

    bucket = f"bench-{int(time.time() * 1000)}"
    credentials = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1"}
    boto3.client("s3", endpoint_url=s3_endpoint, aws_access_key_id=credentials["AWS_ACCESS_KEY_ID"],
                 aws_secret_access_key=credentials["AWS_SECRET_ACCESS_KEY"],
                 region_name=credentials["AWS_REGION"]).create_bucket(Bucket=bucket)
    return {**credentials,
            "NIGHTREC_PATHS__LANDING": f"s3://{bucket}/landing", "NIGHTREC_PATHS__LAKE": f"s3://{bucket}/lake",
            "NIGHTREC_PATHS__DATA_DOCS": f"s3://{bucket}/docs", "NIGHTREC_MLFLOW__ARTIFACT_ROOT": f"s3://{bucket}/mlflow",
            "NIGHTREC_STORAGE__S3_ENDPOINT": s3_endpoint, "NIGHTREC_STORAGE__S3_PATH_STYLE": "true"}


def settings_of(home: Path, **overrides: str):
    """The settings a size's nights ran with (its folder under --work, stores on local disk)."""
    from nightrec.settings import load_settings

    environ = {**stores_environ(home, None), "NIGHTREC_MLFLOW__TRACKING_URI": f"sqlite:///{home}/mlflow/mlflow.db"}
    return load_settings("local", {**environ, **{f"NIGHTREC_{k.upper()}": v for k, v in overrides.items()}})


def measure(label: str, size: Size, seed: int, work: Path, s3_endpoint: str | None = None,
            code: Path | None = None, production: bool = False, erase: bool = False) -> list[Night]:
    """The initial and the steady night of one size, with the stores on local disk or S3 (s3_endpoint),
    run by this checkout's code or another's (`code`: a checkout of an earlier release); `production`:
    on the production profile's services (PostgreSQL-backed Airflow scheduler and MLflow server,
    nightrec.pipeline.local_stack), the stores on S3; `erase`: then a night erasing one user."""
    from nightrec.serving.redis_server import private_redis

    home = work / label
    landing = home / "landing"
    started = time.monotonic()
    synth(size, landing, seed)
    print(f"{label}: data ready in {time.monotonic() - started:.0f} s ({landing})", flush=True)
    for folder in ("lake", "mlflow", "airflow", "docs"):
        subprocess.run(["rm", "-rf", str(home / folder)], check=True)
    stores = stores_environ(home, s3_endpoint)
    if s3_endpoint:  # delivered to the bucket the way a producer would: one PUT per file
        from nightrec.data import storage
        from nightrec.settings import load_settings

        os.environ.update({k: v for k, v in stores.items() if k.startswith("AWS_")})
        uploaded = load_settings("local", {**os.environ, **stores}).path("landing")
        storage.upload_folder(landing, uploaded)
    nights = []
    with private_redis() as port, contextlib.ExitStack() as services:
        url = f"redis://127.0.0.1:{port}/0"
        env = {**os.environ, **stores, "NIGHTREC_PATHS__AIRFLOW_HOME": str(home / "airflow"),
               "AIRFLOW_HOME": str(home / "airflow"),
               "NIGHTREC_MLFLOW__TRACKING_URI": f"sqlite:///{home}/mlflow/mlflow.db",
               "NIGHTREC_REDIS__URL": url, "NIGHTREC_SPARK__DRIVER_MEMORY": size.driver_memory}
        if code is not None:  # an earlier release's package and DAGs, this checkout's data and benchmark
            env.update({"PYTHONPATH": str(code / "src"), "NIGHTREC_HOME": str(code)})
        if production:  # the services start before the nights (an operator's are always up): not timed
            from nightrec.pipeline.local_stack import production_stack

            bucket = stores["NIGHTREC_PATHS__LAKE"].removeprefix("s3://").split("/")[0]
            stack = services.enter_context(production_stack(home / "stack", bucket, s3_endpoint, env))
            # Spark stays local[2]: a standalone cluster here would run on the same two cores; what is
            # measured is the services around it.
            env = {**stack.environ, "NIGHTREC_SPARK__MASTER": "local[2]"}
        baseline = int(redis.Redis.from_url(url).info("memory")["used_memory"])
        for name, lookback in (("initial", DAYS), ("steady", 1)):
            night = run_night(name, env, lookback, home / f"{name}.log")
            users = night.summaries.get("publish", {}).get("users", 0)
            if name == "initial":  # one version in Redis: all of its memory is this version's
                night.redis_bytes_per_user = redis_bytes_per_user(url, baseline, users)
            nights.append(night)
            print(f"{label} {name}: {night.total:.0f} s {night.seconds}", flush=True)
        if erase:  # one user asks to be forgotten; the next night carries it out
            heaviest = heaviest_user(home / "landing")
            subprocess.run([str(BIN / "nightrec"), "forget", str(heaviest)], env=env, check=True, capture_output=True)
            night = run_night("erasure", env, 1, home / "erasure.log")
            nights.append(night)
            print(f"{label} erasure of user {heaviest}: {night.total:.0f} s {night.seconds} "
                  f"{night.summaries.get('privacy')}", flush=True)
    return nights


def heaviest_user(landing: Path) -> int:
    """The user with the most events on the last day (their rows are in every table): erasing them
    touches the most files."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    day = pq.read_table(landing / "interactions" / f"dt={LAST_DAY}", columns=["user_id"])
    counts = pc.value_counts(day["user_id"])
    return int(counts[pc.index(counts.field("counts"), pc.max(counts.field("counts"))).as_py()]["values"].as_py())


def growth(times: dict[str, float], a: str, b: str) -> float | None:
    """The exponent x of time ~ size^x between sizes a and b, size being the events, or the catalog
    when the events are the same (L to XL)."""
    if a not in times or b not in times or times[a] <= 0 or times[b] <= 0:
        return None
    size = {label: (SIZES[label].events if SIZES[a].events != SIZES[b].events else SIZES[label].items)
            for label in (a, b)}
    return math.log(times[b] / times[a]) / math.log(size[b] / size[a])


def print_table(results: dict[str, list[Night]], command: str) -> None:
    gib = 1 << 30
    print(f"\n$ {command}")
    print(f"nightrec_nightly through Airflow (`nightrec run`), Spark local[2], {DAYS} days of `nightrec synth` data\n")
    print("| size | night | " + " | ".join(STAGES) + " | whole night s | peak driver GB | peak Python GB "
          "| Redis B/user | holdout NDCG@10 (champion) |")
    print("|---|---|" + "---|" * len(STAGES) + "---|---|---|---|---|")
    for label, nights in results.items():
        for night in nights:
            train = night.summaries.get("train", {})
            ndcg = train.get("holdout", {}).get("ndcg_at_10")
            champion = train.get("champion_holdout_ndcg")
            quality = (f"{ndcg:.4f}" if ndcg is not None else "–") + (f" ({champion:.4f})" if champion else "")
            cells = [f"{night.seconds.get(s, 0):.0f}" for s in STAGES]
            redis_cell = f"{night.redis_bytes_per_user:.0f}" if night.redis_bytes_per_user else "–"
            print(f"| {label} | {night.name} | " + " | ".join(cells) + f" | {sum(night.seconds.values()):.0f} | "
                  f"{max(night.driver_peak.values(), default=0) / gib:.1f} | "
                  f"{max(night.workers_peak.values(), default=0) / gib:.1f} | {redis_cell} | {quality} |")
    labels = list(results)
    if len(labels) > 1:
        print("\nGrowth exponent of each stage's time against events (time ~ events^x), or against catalog items "
              "between sizes of the same events (L→XL):\n")
        pairs = list(zip(labels, labels[1:])) + ([(labels[0], labels[-1])] if len(labels) > 2 else [])
        print("| night | sizes | " + " | ".join(STAGES) + " | whole night |")
        print("|---|---|" + "---|" * len(STAGES) + "---|")
        for night_index, name in enumerate(("initial", "steady")):
            for a, b in pairs:
                times = {label: results[label][night_index].seconds for label in (a, b)}
                cells = []
                for stage in (*STAGES, None):
                    per = {lbl: (sum(t.values()) if stage is None else t.get(stage, 0)) for lbl, t in times.items()}
                    x = growth(per, a, b)
                    cells.append(f"{x:.2f}" if x is not None else "–")
                print(f"| {name} | {a}→{b} | " + " | ".join(cells) + " |")


def print_comparison(runs: dict[str, list[list[Night]]], command: str) -> None:
    """Whole-night seconds of each variant, run by run (side by side), median and spread, and each
    variant's median against the first's."""
    print(f"\n$ {command}")
    print("Variants run in turn, run by run; whole night = the sum of its tasks; Airflow s = the run's "
          "duration as Airflow recorded it (median)\n")
    print("| variant | night | runs (s) | median s | spread s | median vs first | Airflow s | "
          + " | ".join(STAGES) + " |")
    print("|---|---|---|---|---|---|---|" + "---|" * len(STAGES))
    first = next(iter(runs))
    for variant, repeats in runs.items():
        for index, night in enumerate(repeats[0]):
            totals = [sum(r[index].seconds.values()) for r in repeats]
            base = statistics.median(sum(r[index].seconds.values()) for r in runs[first])
            stages = [statistics.median(r[index].seconds.get(stage, 0) for r in repeats) for stage in STAGES]
            recorded = [r[index].airflow_seconds for r in repeats if r[index].airflow_seconds is not None]
            print(f"| {variant} | {night.name} | {', '.join(f'{t:.0f}' for t in totals)} | "
                  f"{statistics.median(totals):.0f} | {max(totals) - min(totals):.0f} | "
                  f"{statistics.median(totals) / base:.2f} | "
                  f"{f'{statistics.median(recorded):.0f}' if recorded else '–'} | "
                  + " | ".join(f"{t:.0f}" for t in stages) + " |")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=["S", "M", "L"])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--work", type=Path, default=HOME / "var" / "bench" / "scale")
    parser.add_argument("--stores", nargs="+", choices=["local", "s3", "production"], default=["local"],
                        help="where landing, lake, docs and artifacts live (production: on S3, with the "
                             "production profile's Airflow and MLflow on PostgreSQL); several: side by side")
    parser.add_argument("--against", type=Path, nargs="+", default=[],
                        help="also run checkouts of earlier releases, side by side")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each variant, taken in turn")
    parser.add_argument("--erase-one", action="store_true", help="after the steady night, a night erasing one user")
    args = parser.parse_args(argv)
    args.work = args.work.resolve()  # the settings' paths (Airflow's SQLite among them) must be absolute
    command = "python bench/scale.py " + shlex.join(argv)
    with contextlib.ExitStack() as stack:
        endpoint = None
        if {"s3", "production"} & set(args.stores):  # a private S3 server for this benchmark
            from nightrec.data.s3_server import private_s3

            endpoint = stack.enter_context(private_s3())
        variants = [(store, None) for store in args.stores] + [("local", code) for code in args.against]
        if len(variants) == 1 and args.repeat == 1:
            results = {label: measure(label, SIZES[label], args.seed, args.work, endpoint, erase=args.erase_one)
                       for label in args.sizes}
            print_table(results, command)
            return
        for label in args.sizes:
            runs: dict[str, list[list[Night]]] = {}
            for _ in range(args.repeat):
                for store, code in variants:
                    name = f"{label} {store}" + (f" ({code.name})" if code else "")
                    runs.setdefault(name, []).append(measure(label, SIZES[label], args.seed, args.work,
                                                             endpoint if store != "local" else None, code,
                                                             production=store == "production", erase=args.erase_one))
            print_comparison(runs, command)


if __name__ == "__main__":
    main(sys.argv[1:])
