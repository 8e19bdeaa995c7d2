"""The landing format (docs/landing-format.md): what users drop in, read into Spark as raw text."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from nightrec.errors import PermanentError

INTERACTION_COLUMNS = ("user_id", "item_id", "event_type", "value", "ts")
REQUIRED_COLUMNS = ("user_id", "item_id", "event_type", "ts")
FORMATS = {".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


class LandingError(PermanentError):
    pass


def day_folder(landing: str, day: dt.date) -> Path:
    return Path(landing) / "interactions" / f"dt={day.isoformat()}"


def landing_files(landing: str, day: dt.date) -> dict[str, list[str]]:
    """Files of one landing day grouped by reader format; unknown extensions are an error."""
    folder = day_folder(landing, day)
    by_format: dict[str, list[str]] = {}
    if not folder.is_dir():
        return by_format
    for path in sorted(folder.iterdir()):
        if path.name.startswith((".", "_")) or not path.is_file():
            continue
        fmt = FORMATS.get(path.suffix.lower())
        if fmt is None:
            raise LandingError(f"{path}: unsupported file type {path.suffix!r}; use one of {sorted(FORMATS)}")
        by_format.setdefault(fmt, []).append(str(path))
    return by_format


def read_interactions(spark: SparkSession, landing: str, days: list[dt.date]) -> tuple[DataFrame | None, list[dt.date]]:
    """Landing days as raw text columns plus source_file and dt (from the folder name).

    Returns (frame, days that had files); frame is None when no day had any.
    """
    by_format: dict[str, list[str]] = {}
    present = []
    for day in days:
        files = landing_files(landing, day)
        if files:
            present.append(day)
        for fmt, paths in files.items():
            by_format.setdefault(fmt, []).extend(paths)
    frames = []
    for fmt, paths in by_format.items():
        if fmt == "csv":
            frame = (spark.read.option("header", True).option("inferSchema", False)
                     .option("enforceSchema", False).csv(paths))  # each file's header is checked
        elif fmt == "json":
            frame = spark.read.option("primitivesAsString", True).json(paths)
        else:
            frame = spark.read.option("mergeSchema", True).parquet(*paths)
        missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
        if missing:
            raise LandingError(f"{fmt} interaction files under {landing}/interactions lack column(s) {missing}; "
                               f"they need {list(INTERACTION_COLUMNS)} (value optional)")
        frames.append(frame.select(*[_as_text(frame, c) for c in INTERACTION_COLUMNS],
                                   F.input_file_name().alias("source_file")))
    if not frames:
        return None, present
    combined = frames[0]
    for frame in frames[1:]:
        combined = combined.unionByName(frame)
    day = F.regexp_extract(F.col("source_file"), r"/dt=(\d{4}-\d{2}-\d{2})/", 1)
    return combined.withColumn("dt", F.to_date(day)), present


def _as_text(frame: DataFrame, column: str) -> Column:
    if column not in frame.columns:  # `value` is optional
        return F.lit(None).cast("string").alias(column)
    field = frame.schema[column].dataType.typeName()
    if field in ("timestamp", "timestamp_ntz"):
        return F.date_format(F.col(column), "yyyy-MM-dd'T'HH:mm:ss.SSSSSSXXX").alias(column)
    return F.col(column).cast("string").alias(column)


def read_attributes(spark: SparkSession, landing: str, name: str) -> DataFrame | None:
    """Optional items.* / users.* attribute file of the landing zone."""
    for suffix, fmt in FORMATS.items():
        path = Path(landing) / f"{name}{suffix}"
        if path.is_file():
            if fmt == "csv":
                return spark.read.option("header", True).csv(str(path))  # all text: "007" stays "007"
            if fmt == "json":
                return spark.read.option("primitivesAsString", True).json(str(path))
            return spark.read.parquet(str(path))
    return None
