"""What `make demo`'s night costs: `nightrec run --ds 1998-04-22 --lookback-days 215` on MovieLens-100K
(a new lake, MLflow store, Airflow home and redis-server each time), by this checkout and, side by
side, by an earlier one.

    .venv/bin/python bench/demo.py --against ../release --repeat 3

Wall-clock seconds of the command, run by run, taken in turn; the median, the spread, and each
checkout's median against this one's.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

HOME = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DEMO = ["run", "--ds", "1998-04-22", "--lookback-days", "215"]  # as the Makefile's demo target


def night(code: Path, home: Path, landing: Path) -> float:
    """Seconds of one demo night by the checkout at `code`, in a new home."""
    from nightrec.serving.redis_server import private_redis

    subprocess.run(["rm", "-rf", str(home)], check=True)
    home.mkdir(parents=True)
    with private_redis() as port:
        env = {**os.environ, "NIGHTREC_HOME": str(code), "PYTHONPATH": str(code / "src"),
               "NIGHTREC_PATHS__LANDING": str(landing), "NIGHTREC_PATHS__LAKE": str(home / "lake"),
               "NIGHTREC_PATHS__DATA_DOCS": str(home / "docs"), "NIGHTREC_PATHS__AIRFLOW_HOME": str(home / "airflow"),
               "AIRFLOW_HOME": str(home / "airflow"), "NIGHTREC_MLFLOW__TRACKING_URI": f"sqlite:///{home}/mlflow.db",
               "NIGHTREC_MLFLOW__ARTIFACT_ROOT": str(home / "artifacts"),
               "NIGHTREC_REDIS__URL": f"redis://127.0.0.1:{port}/0"}
        started = time.monotonic()
        with open(home / "run.log", "w") as log:
            done = subprocess.run([str(BIN / "nightrec"), *DEMO], env=env, stdout=log, stderr=subprocess.STDOUT)
        seconds = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"the demo night of {code} failed; see {home / 'run.log'}")
    return seconds


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--against", type=Path, help="a checkout of an earlier release, run side by side")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--work", type=Path, default=HOME / "var" / "bench" / "demo")
    args = parser.parse_args(argv)
    work = args.work.resolve()
    landing = work / "landing"
    subprocess.run([str(BIN / "nightrec"), "demo-data", "--landing", str(landing)], check=True,
                   env={**os.environ, "NIGHTREC_HOME": str(HOME)})
    checkouts = {"this checkout": HOME} | ({args.against.name: args.against.resolve()} if args.against else {})
    seconds: dict[str, list[float]] = {name: [] for name in checkouts}
    for _ in range(args.repeat):
        for name, code in checkouts.items():
            seconds[name].append(night(code, work / name.replace(" ", "-"), landing))
            print(f"{name}: {seconds[name][-1]:.0f} s", flush=True)
    first = statistics.median(seconds["this checkout"])
    print(f"\n$ python bench/demo.py {shlex.join(argv)}")
    print("`nightrec run --ds 1998-04-22 --lookback-days 215` (the demo's night), wall-clock seconds\n")
    print("| checkout | runs (s) | median s | spread s | median vs this checkout |")
    print("|---|---|---|---|---|")
    for name, runs in seconds.items():
        print(f"| {name} | {', '.join(f'{s:.0f}' for s in runs)} | {statistics.median(runs):.0f} | "
              f"{max(runs) - min(runs):.0f} | {statistics.median(runs) / first:.2f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
