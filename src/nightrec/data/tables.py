"""What stages read from the lake: the days of a window, the validated events a model learns from,
and a night's snapshot of the item or user file."""

from __future__ import annotations

import datetime as dt

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from nightrec.data import lake
from nightrec.settings import Settings


def window(ds: dt.date, days: int) -> list[dt.date]:
    """The `days` dates ending with ds, oldest first."""
    if days < 1:
        raise ValueError(f"a window needs at least one day, got {days}")
    return [ds - dt.timedelta(days=n) for n in range(days - 1, -1, -1)]


def start_of(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), tzinfo=dt.timezone.utc)


def training_events(spark: SparkSession, settings: Settings, ds: dt.date) -> DataFrame:
    """silver/interactions of the model's trailing window ending ds."""
    return lake.read_table(spark, settings.table("silver/interactions"), window(ds, settings.model.train_window_days))


def attributes(spark: SparkSession, settings: Settings, name: str, ds: dt.date) -> DataFrame | None:
    """(id, attributes map) of the item/user file snapshot of ds, ids as int; None without a file."""
    root, key = settings.table(f"bronze/{name}"), f"{name[:-1]}_id"
    if not lake.table_exists(root):
        return None
    frame = lake.read_table(spark, root, [ds])
    frame = frame.select(F.expr(f"try_cast({key} AS INT)").alias(key), "attributes").where(F.col(key).isNotNull())
    return frame if frame.limit(1).count() else None
