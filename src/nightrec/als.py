"""Implicit-feedback ALS: weighting events, the temporal split, fitting and unseen top-k."""

from __future__ import annotations

import datetime as dt

from pyspark.ml.recommendation import ALS, ALSModel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from nightrec.settings import ModelSettings
from nightrec.topk import top_k_unseen


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


def recommend(model: ALSModel, users: DataFrame, seen: DataFrame, k: int) -> DataFrame:
    """(user_id, item_ids, scores): the k best unseen items of each of `users` known to the model."""
    wanted = model.userFactors.join(users.select(F.col("user_id").alias("id")).distinct(), "id")
    return top_k_unseen(wanted, model.itemFactors, seen, k)


def ranked_rows(lists: DataFrame) -> DataFrame:
    """(user_id, item_ids, ...) -> (user_id, item_id, rank) rows, rank starting at 1."""
    return lists.select("user_id", F.posexplode("item_ids").alias("pos", "item_id")).select(
        "user_id", "item_id", (F.col("pos") + 1).alias("rank"))
