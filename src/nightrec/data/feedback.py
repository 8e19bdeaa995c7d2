"""Events -> per-(user, item) feedback, and the splits that evaluation and model selection use."""

from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F


def implicit_feedback(events: DataFrame, weights: dict[str, float]) -> DataFrame:
    """(user_id, item_id, strength, last_ts): strength sums event weight x value over a user's events
    on an item (a view counts less than a purchase; a rating by its stars); last_ts is the latest event."""
    weight = F.create_map(*[x for name, w in weights.items() for x in (F.lit(name), F.lit(float(w)))])
    return (events.withColumn("w", weight[F.col("event_type")] * F.col("value"))
            .groupBy("user_id", "item_id").agg(F.sum("w").cast("float").alias("strength"),
                                                F.max("ts").alias("last_ts"))
            .where(F.col("strength") > 0))


def latest_split(events: DataFrame, share: float) -> tuple[DataFrame, DataFrame]:
    """Each user's latest items are the truth: round(share x n) of the n items a user took, by when
    they first took them (ties: larger item id first). The events of every other (user, item) train.

    Every user with enough items is evaluated, not only those active in the last days; with
    share < 0.5 a user keeps more training items than truth items (round() goes half up).
    """
    if not 0.0 < share < 0.5:
        raise ValueError(f"share must be in (0, 0.5), got {share}")
    first = events.groupBy("user_id", "item_id").agg(F.min("ts").alias("first_ts"))
    latest_first = Window.partitionBy("user_id").orderBy(F.col("first_ts").desc(), F.col("item_id").desc())
    ranked = (first.withColumn("pos", F.row_number().over(latest_first))
              .withColumn("n", F.count("*").over(Window.partitionBy("user_id"))))
    truth = ranked.where(F.col("pos") <= F.round(F.col("n") * share)).select("user_id", "item_id")
    train = events.join(truth, ["user_id", "item_id"], "left_anti")
    return train, truth


def stratified_split(feedback: DataFrame, train_share: float, seed: int) -> tuple[DataFrame, DataFrame]:
    """Per-user random split: round(train_share x n) of each user's items train, the rest are truth.

    The protocol of the published MovieLens tables (75/25, items seen in train removed at scoring).
    """
    if not 0.0 < train_share < 1.0:
        raise ValueError(f"train_share must be between 0 and 1, got {train_share}")
    # A hash, not rand(): the order must be the same every time Spark recomputes the split, or train
    # and truth (computed in separate jobs) would overlap.
    ordered = Window.partitionBy("user_id").orderBy(F.xxhash64(F.lit(seed), "user_id", "item_id"), "item_id")
    ranked = (feedback.withColumn("pos", F.row_number().over(ordered) - 1)
              .withColumn("n", F.count("*").over(Window.partitionBy("user_id"))))
    cut = F.round(F.col("n") * train_share)
    train = ranked.where(F.col("pos") < cut).drop("pos", "n")
    truth = ranked.where(F.col("pos") >= cut).select("user_id", "item_id")
    return train, truth


def sample_users(truth: DataFrame, max_users: int, seed: int) -> DataFrame:
    """truth restricted to at most max_users of its users, chosen by a hash (the same users on
    every recomputation)."""
    users = truth.select("user_id").distinct()
    chosen = users.orderBy(F.xxhash64(F.lit(seed), "user_id"), "user_id").limit(max_users)
    return truth.join(F.broadcast(chosen), "user_id")
