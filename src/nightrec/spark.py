"""The one SparkSession a stage uses, configured from settings (local mode or a cluster master)."""

from __future__ import annotations

import os
import sys
import tempfile

from pyspark.sql import SparkSession

from nightrec.settings import Settings

# Settings that make Spark write plain parquet files that delta-rs can commit (see docs/lake.md).
LAKE_FRIENDLY_CONF = {
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    "spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs": "false",
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.sources.partitionColumnTypeInference.enabled": "false",
}


def get_spark(settings: Settings, app_name: str = "nightrec") -> SparkSession:
    if settings.spark.master.startswith("local"):
        # Without this Spark binds the host's external address, which sandboxes and laptops may lack.
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    # Python workers must run the interpreter that has nightrec installed, not whatever is on PATH.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name)
    if "PYSPARK_GATEWAY_PORT" not in os.environ:
        # Not under spark-submit: this process starts the driver, so master and memory come from settings
        # (spark-submit's own --master/--driver-memory win when it launched us).
        builder = builder.master(settings.spark.master).config("spark.driver.memory", settings.spark.driver_memory)
    builder = (
        builder.config("spark.sql.shuffle.partitions", str(settings.spark.shuffle_partitions))
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
    )
    for key, value in {**LAKE_FRIENDLY_CONF, **settings.spark.conf}.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    if not spark.sparkContext.getCheckpointDir():
        # ALS truncates its lineage here every 10 iterations; without it long fits overflow the stack.
        spark.sparkContext.setCheckpointDir(settings.spark.checkpoint_dir or tempfile.mkdtemp(prefix="nightrec-checkpoints-"))
    return spark
