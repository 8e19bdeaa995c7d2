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


SILVER = "silver/interactions"


def training_input(settings: Settings, ds: dt.date) -> tuple[str, int, str]:
    """What a training reads tonight: silver's root, its current version (to pin the reads to) and
    the window of dates."""
    dates = window(ds, settings.model.train_window_days)
    return settings.table(SILVER), lake.version(settings.table(SILVER)), f"{dates[0]}..{dates[-1]}"


def training_events(spark: SparkSession, settings: Settings, ds: dt.date, as_of: int | None = None) -> DataFrame:
    """silver/interactions of the model's trailing window ending ds (at Delta version as_of, if given)."""
    return lake.read_table(spark, settings.table(SILVER), window(ds, settings.model.train_window_days), as_of)


def attributes(spark: SparkSession, settings: Settings, name: str, ds: dt.date) -> DataFrame | None:
    """(id, attributes map) of the item/user file snapshot of ds, ids as int; None without a file."""
    root, key = settings.table(f"bronze/{name}"), f"{name[:-1]}_id"
    if not lake.holds(root, ds):
        return None
    frame = lake.read_table(spark, root, [ds])
    return frame.select(F.expr(f"try_cast({key} AS INT)").alias(key), "attributes").where(F.col(key).isNotNull())


def privacy_requests(spark: SparkSession, settings: Settings, kinds: tuple[str, ...]) -> DataFrame | None:
    """Users with a request of these kinds (privacy/requests): user_id and when they last asked."""
    root = settings.table("privacy/requests")
    if not lake.table_exists(root):
        return None
    return (lake.read_table(spark, root).where(F.col("kind").isin(*kinds))
            .groupBy(F.col("user_id").cast("int").alias("user_id")).agg(F.max("at").alias("requested_at")))


def without_erased(spark: SparkSession, settings: Settings, rows: DataFrame) -> DataFrame:
    """Rows (user_id as it arrived, `delivered_at`: when their file reached us) minus those of users
    with an erasure request that reached us before it was carried out. Only a file delivered after
    the erasure was done is a new start: an event's own time is the client's claim, and a file
    delivered before the erasure may hold events dated after it."""
    erased = privacy_requests(spark, settings, ("erasure",))
    if erased is None:
        return rows
    reports = settings.table("privacy/reports")
    if lake.table_exists(reports):  # done: the new start is when it was done; pending: everything goes
        done = lake.read_table(spark, reports).groupBy(F.col("user_id").cast("int").alias("user_id")).agg(
            F.max("done_at").alias("done_at"))
        erased = erased.join(done, "user_id", "left")
    else:
        erased = erased.withColumn("done_at", F.lit(None).cast("timestamp"))
    # Their latest request done: rows delivered before it was done go. Still pending: all of theirs go.
    until = F.when(F.col("done_at") >= F.col("requested_at"), F.col("done_at")).otherwise(
        F.lit("9999-12-31").cast("timestamp"))
    erased = erased.select(F.col("user_id").alias("erased_user"), until.alias("until"))
    user = F.expr("try_cast(trim(user_id) AS BIGINT)")
    before = F.col("delivered_at").isNull() | (F.col("delivered_at") < F.col("until"))
    return rows.join(F.broadcast(erased), (user == F.col("erased_user")) & before, "left_anti")
