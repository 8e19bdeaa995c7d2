"""Lists for users a model cannot personalise: the global trending list, one per user segment, and
which of them each user of the user file without interactions gets."""

from __future__ import annotations

import datetime as dt

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from nightrec.constants import GLOBAL_SEGMENT, GLOBAL_SOURCE, SEGMENT_PREFIX
from nightrec.modeling.candidates import popularity
from nightrec.serving.layout import encode_segment_ref


def fallback_lists(feedback: DataFrame, users: DataFrame | None, as_of: dt.datetime, half_life_days: float, k: int,
                   segment_min_users: int) -> DataFrame:
    """(segment, item_ids, scores): the global trending list plus one per user segment."""
    scored = popularity.item_scores(feedback, as_of, half_life_days).withColumn("segment", F.lit(GLOBAL_SEGMENT))
    lists = popularity.ranked_lists(scored, "segment", k)
    if users is not None:
        lists = lists.unionByName(popularity.segment_lists(feedback, users, as_of, half_life_days, k,
                                                           segment_min_users))
    return lists


def new_user_recs(users: DataFrame, feedback: DataFrame, fallbacks: DataFrame) -> DataFrame:
    """Users of the user file without interactions: their segment's list, else the global one.
    `value` is what Redis keeps for them: a reference to that list, not a copy."""
    new = users.select("user_id").join(feedback.select("user_id").distinct(), "user_id", "left_anti")
    segments = popularity.user_segments(users)
    chosen = (new.join(segments, "user_id", "left")
              .join(fallbacks.select("segment", "item_ids", "scores"), "segment", "left"))
    global_list = fallbacks.where(F.col("segment") == GLOBAL_SEGMENT).select(
        F.col("item_ids").alias("g_items"), F.col("scores").alias("g_scores"))
    # one reference value per list, encoded by the layout's own codec (there are few lists)
    names = [row.segment for row in fallbacks.select("segment").distinct().collect()]
    references = users.sparkSession.createDataFrame([(name, encode_segment_ref(name)) for name in names],
                                                    "list string, value binary")
    personal_list = F.col("item_ids").isNotNull()
    return (chosen.crossJoin(global_list)
            .withColumn("list", F.when(personal_list, F.col("segment")).otherwise(F.lit(GLOBAL_SEGMENT)))
            .join(F.broadcast(references), "list")
            .select("user_id",
                    F.coalesce("item_ids", "g_items").alias("item_ids"),
                    F.coalesce("scores", "g_scores").alias("scores"),
                    F.when(personal_list, F.concat(F.lit(SEGMENT_PREFIX), "segment"))
                    .otherwise(F.lit(GLOBAL_SOURCE)).alias("model_version"),
                    "value"))


def is_personal(model_version: Column) -> Column:
    """True for a model's own list, false for a copied segment / trending list."""
    return ~(model_version.startswith(SEGMENT_PREFIX) | (model_version == GLOBAL_SOURCE))
