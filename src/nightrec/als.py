"""Implicit-feedback ALS: weighting events, the temporal split, fitting and unseen top-k."""

from __future__ import annotations

import datetime as dt

from pyspark.ml.recommendation import ALS, ALSModel
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from nightrec.settings import ModelSettings


def implicit_feedback(events: DataFrame, weights: dict[str, float]) -> DataFrame:
    """(user_id, item_id, strength): sum of event weight x value over a user's events on an item."""
    weight = F.create_map(*[x for name, w in weights.items() for x in (F.lit(name), F.lit(float(w)))])
    return (events.withColumn("w", weight[F.col("event_type")] * F.col("value"))
            .groupBy("user_id", "item_id").agg(F.sum("w").alias("strength"))
            .where(F.col("strength") > 0))


def temporal_split(events: DataFrame, holdout_start: dt.date) -> tuple[DataFrame, DataFrame]:
    """Events before holdout_start train; later (user, item) pairs new to a known user are the truth."""
    train = events.where(F.col("dt") < F.lit(holdout_start))
    later = events.where(F.col("dt") >= F.lit(holdout_start)).select("user_id", "item_id").distinct()
    seen = train.select("user_id", "item_id").distinct()
    known_users = train.select("user_id").distinct()
    truth = later.join(seen, ["user_id", "item_id"], "left_anti").join(known_users, "user_id")
    return train, truth


def fit(feedback: DataFrame, params: ModelSettings, blocks: int) -> ALSModel:
    als = ALS(userCol="user_id", itemCol="item_id", ratingCol="strength", implicitPrefs=True,
              rank=params.rank, regParam=params.reg_param, alpha=params.alpha, maxIter=params.max_iter,
              seed=params.seed, coldStartStrategy="drop", nonnegative=False,
              # Spark's default of 10 blocks is ~4x slower on a 2-core box; one block per core instead.
              numUserBlocks=blocks, numItemBlocks=blocks)
    return als.fit(feedback)


def top_k_unseen(model: ALSModel, users: DataFrame, seen: DataFrame, k: int) -> DataFrame:
    """(user_id, item_id, rank, score): each user's k best items they have not interacted with."""
    most_seen = seen.groupBy("user_id").count().agg(F.max("count")).first()[0] or 0
    candidates = model.recommendForUserSubset(users.select("user_id").distinct(), k + most_seen)
    exploded = candidates.select("user_id", F.explode("recommendations").alias("r")).select(
        "user_id", F.col("r.item_id").alias("item_id"), F.col("r.rating").alias("score"))
    unseen = exploded.join(seen.select("user_id", "item_id"), ["user_id", "item_id"], "left_anti")
    order = Window.partitionBy("user_id").orderBy(F.col("score").desc(), F.col("item_id"))
    return unseen.withColumn("rank", F.row_number().over(order)).where(F.col("rank") <= k)


def as_lists(ranked: DataFrame) -> DataFrame:
    """(user_id, rank, item_id, score) rows -> one row per user with item_ids/scores in rank order."""
    ordered = F.array_sort(F.collect_list(F.struct("rank", "item_id", "score")))
    return ranked.groupBy("user_id").agg(ordered.alias("recs")).select(
        "user_id", F.col("recs.item_id").alias("item_ids"), F.col("recs.score").cast("array<float>").alias("scores"))
