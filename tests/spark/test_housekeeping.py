"""The housekeeping stage on a real lake (Spark-written Delta tables) and a real MLflow store."""

import datetime as dt
import json
import os
import shutil
import time
from pathlib import Path

import mlflow
from pyspark.sql import functions as F

from conftest import settings_environ
from helpers import tiny_bundle
from nightrec.data import lake
from nightrec.modeling import registry, tracking
from nightrec.pipeline import housekeeping
from nightrec.settings import load_settings

DAY = dt.date(2024, 6, 30)


def test_housekeeping_vacuums_every_table_and_prunes_model_versions(spark, tmp_path, monkeypatch, capsys):
    # tables made just now would wait lake.maintenance_days for their first maintenance: 0, every night
    environ = settings_environ(tmp_path, MLFLOW__KEEP_VERSIONS="1", LAKE__SNAPSHOT_NIGHTS="2",
                               LAKE__MAINTENANCE_DAYS="0")
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    settings = load_settings("local", environ)
    nights = [DAY - dt.timedelta(days=n) for n in (3, 2, 1, 0)]
    for night in nights:
        rows = spark.range(0, 4, numPartitions=2).select(F.col("id").alias("user_id"), F.lit(night).alias("dt"))
        for name in ("bronze/interactions", "bronze/items", "gold/recommendations"):
            lake.replace_partitions(rows, settings.table(name), [night])
    # A write that died before its commit, a month ago: its file is in no version.
    table = Path(settings.table("bronze/interactions"))
    committed = next(table.glob(f"dt={DAY}/*.parquet"))
    leftover = Path(shutil.copy(committed, committed.with_name("part-00007-failed.snappy.parquet")))
    month_ago = time.time() - 30 * 86400
    os.utime(leftover, (month_ago, month_ago))
    leftover_bytes = leftover.stat().st_size

    experiment = tracking.configure(settings)
    name = settings.mlflow.registered_model
    for night in range(3):
        with mlflow.start_run(experiment_id=experiment):
            registry.log_candidate_model(tiny_bundle(1000, night), name, {registry.RECIPE_TAG: '{"candidate": "als"}'})
    registry.set_aliases(name, "3", None)

    backfill = nights[0]  # a backfill night: its own gold partition stays, besides the newest two
    summary = housekeeping.main(["--ds", backfill.isoformat()])

    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == json.loads(json.dumps(summary))
    assert summary["stage"] == "housekeeping" and summary["retention_days"] == 7
    assert set(summary["tables"]) == {"bronze/interactions", "bronze/items", "gold/recommendations"}
    bronze = summary["tables"]["bronze/interactions"]
    assert (bronze["files_deleted"], bronze["bytes_freed"], bronze["partitions"]) == (1, leftover_bytes, [str(DAY)])
    gold = summary["tables"]["gold/recommendations"]
    # snapshot tables drop old nights; an event table keeps every day
    assert gold["partitions_dropped"] == summary["tables"]["bronze/items"]["partitions_dropped"] == [str(nights[1])]
    assert bronze["partitions_dropped"] == []
    assert bronze["files_compacted"] == 2 * len(nights)  # each night wrote two files a day: now one
    assert gold["files_deleted"] == 0  # the dropped night's files stay for time travel until the retention
    kept = {r["dt"]
            for r in lake.read_table(spark, settings.table("gold/recommendations")).select("dt").distinct().collect()}
    assert kept == {nights[0], nights[2], nights[3]}
    assert not leftover.exists() and committed.exists()
    assert summary["model_versions_deleted"] == ["1"] and summary["model_versions_kept"] == ["2", "3"]
    assert summary["bytes_freed"] == leftover_bytes + summary["model_bytes_freed"] > leftover_bytes
    assert lake.read_table(spark, str(table)).count() == 4 * len(nights)
    assert all(t["maintained"] for t in summary["tables"].values())

    # Once a week: the next night, the tables were vacuumed less than 7 days ago, and only snapshots go.
    monkeypatch.setenv("NIGHTREC_LAKE__MAINTENANCE_DAYS", "7")
    lake.replace_partitions(rows, settings.table("bronze/interactions"), [DAY])  # replaces two files
    next_night = housekeeping.main(["--ds", DAY.isoformat()])["tables"]
    assert not any(t["maintained"] for t in next_night.values())
    assert next_night["gold/recommendations"]["partitions_dropped"] == [str(nights[0])]
    assert "files_compacted" not in next_night["bronze/interactions"]
    monkeypatch.setenv("NIGHTREC_LAKE__MAINTENANCE_DAYS", "0")  # every night
    every_night = housekeeping.main(["--ds", DAY.isoformat()])["tables"]
    assert all(t["maintained"] for t in every_night.values())
    assert every_night["bronze/interactions"]["files_compacted"] == 2
