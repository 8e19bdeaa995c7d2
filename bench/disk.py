"""Disk use of a nightrec deployment after N nights, from what its first nights wrote.

    .venv/bin/python bench/disk.py var/bench/scale/S            # after bench/scale.py --sizes S
    .venv/bin/python bench/disk.py var/bench/scale/S --nights 30 365

HOME is a folder as bench/scale.py leaves it (lake/, mlflow/, airflow/, docs/, landing/). The
sizes are measured there, per area; the projection applies the retention settings of
the local settings to them, night after night:
- event tables keep every day (the history): the initial night's days plus one day per night;
- snapshot tables (gold outputs, item/user attributes) keep `lake.snapshot_nights` nights, and a
  dropped night's files stay `lake.retention_days` more until a vacuum deletes them;
- MLflow keeps `mlflow.keep_versions` unaliased model versions plus champion, challenger and the
  rollback target, each with its files; every night's run (metrics, reports) stays;
- Airflow task logs and Data Docs grow by a night's worth each night: nightrec does not prune them.
Measured nights run minutes apart, so the vacuum's clock-based retention never deletes anything in
them: the projection, not a 30-night run, is what shows the steady state.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
from deltalake import DeltaTable

from nightrec.data.lake import find_tables
from nightrec.pipeline.housekeeping import is_snapshot
from nightrec.settings import load_settings

MB = 1 << 20
ALIASED_VERSIONS = 3  # champion, challenger, rollback target


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def per_partition_bytes(root: Path) -> dict[str, int]:
    """Bytes of the current version's data files per `dt` value."""
    actions = pa.table(DeltaTable(str(root)).get_add_actions(flatten=True)).to_pydict()
    sizes: dict[str, int] = defaultdict(int)
    for day, size in zip(actions["partition.dt"], actions["size_bytes"]):
        sizes[str(day)] += size
    return dict(sizes)


def measure(home: Path) -> dict:
    lake = home / "lake"
    events_per_day, snapshots_per_night, lake_total = 0.0, 0.0, 0
    tables = {}
    for name in find_tables(str(lake)):
        parts = per_partition_bytes(lake / name)
        on_disk = folder_bytes(lake / name)
        lake_total += on_disk
        mean = sum(parts.values()) / max(len(parts), 1)
        tables[name] = (len(parts), mean, on_disk)
        if is_snapshot(name):
            snapshots_per_night += mean
        else:
            events_per_day += mean
    artifacts = home / "mlflow" / "artifacts"
    models = [m for m in artifacts.glob("*/models/m-*") if m.is_dir()]
    model_bytes = sum(folder_bytes(m) for m in models)
    runs_bytes = folder_bytes(home / "mlflow") - model_bytes
    nights = len(list((home / "airflow" / "logs" / "nightrec-runs").glob("run-*.log"))) or 1
    return {
        "tables": tables, "lake": lake_total, "events_per_day": events_per_day,
        "snapshots_per_night": snapshots_per_night, "models": len(models),
        "model_bytes": model_bytes / max(len(models), 1), "mlflow_runs_per_night": runs_bytes / nights,
        "airflow_per_night": folder_bytes(home / "airflow" / "logs") / nights,
        "docs_per_night": folder_bytes(home / "docs") / nights, "landing": folder_bytes(home / "landing"),
        "nights": nights, "mlflow": folder_bytes(home / "mlflow"),
    }


def projected(m: dict, nights: int, first_window_days: int, settings) -> dict[str, float]:
    snapshot_nights = min(nights, settings.lake.snapshot_nights + settings.lake.retention_days)
    return {
        "event tables": m["events_per_day"] * (first_window_days + nights - 1),
        "snapshot tables": m["snapshots_per_night"] * snapshot_nights,
        "MLflow model versions": m["model_bytes"] * min(nights, settings.mlflow.keep_versions + ALIASED_VERSIONS),
        "MLflow runs": m["mlflow_runs_per_night"] * nights,
        "Airflow logs + Data Docs": (m["airflow_per_night"] + m["docs_per_night"]) * nights,
    }


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("home", type=Path)
    parser.add_argument("--nights", type=int, nargs="+", default=[30, 365])
    parser.add_argument("--window-days", type=int, default=30, help="days the first night ingested")
    args = parser.parse_args(argv)
    settings = load_settings("local")
    m = measure(args.home)
    print(f"\n$ python bench/disk.py {' '.join(argv)}")
    print(f"measured after {m['nights']} night(s) in {args.home}: lake {m['lake'] / MB:.0f} MB, "
          f"MLflow {m['mlflow'] / MB:.0f} MB ({m['models']} logged models), landing {m['landing'] / MB:.0f} MB\n")
    print("| table | dt partitions | MB per partition (current) | MB on disk |")
    print("|---|---|---|---|")
    for name, (parts, mean, on_disk) in m["tables"].items():
        print(f"| {name} | {parts} | {mean / MB:.1f} | {on_disk / MB:.0f} |")
    print(f"\nProjected with lake.snapshot_nights={settings.lake.snapshot_nights}, "
          f"lake.retention_days={settings.lake.retention_days}, mlflow.keep_versions={settings.mlflow.keep_versions} "
          f"(first night: {args.window_days} days):\n")
    print("| area | per night | " + " | ".join(f"after {n} nights" for n in args.nights) + " |")
    print("|---|---|" + "---|" * len(args.nights))
    rows = {n: projected(m, n, args.window_days, settings) for n in args.nights}
    per_night = {"event tables": m["events_per_day"], "snapshot tables": m["snapshots_per_night"],
                 "MLflow model versions": m["model_bytes"], "MLflow runs": m["mlflow_runs_per_night"],
                 "Airflow logs + Data Docs": m["airflow_per_night"] + m["docs_per_night"]}
    for area in per_night:
        print(f"| {area} | {per_night[area] / MB:.1f} MB | "
              + " | ".join(f"{rows[n][area] / MB / 1024:.2f} GB" for n in args.nights) + " |")
    print("| **total** | | "
          + " | ".join(f"**{sum(rows[n].values()) / MB / 1024:.2f} GB**" for n in args.nights) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
