"""Score: the champion's top-k per user -> gold/recommendations; trending lists (global and per
segment) -> gold/fallbacks; each item's nearest neighbours -> gold/similar_items. Users known only
from the user file (no interactions yet) get their segment's list, or the global one."""

from __future__ import annotations

import datetime as dt
import sys
from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from nightrec import lake, registry, tracking
from nightrec.candidates import popularity
from nightrec.feedback import implicit_feedback
from nightrec.modeling import ItemFacts
from nightrec.progress import Progress
from nightrec.redis_layout import SEGMENT_REF
from nightrec.scoring import recommend, user_rows
from nightrec.similar import similar_items
from nightrec.settings import Settings
from nightrec.stages import stage_main
from nightrec.stages.train import attributes, start_of, training_events

GLOBAL = "global"
SEGMENT_PREFIX, GLOBAL_SOURCE = "segment:", f"popular:{GLOBAL}"  # model_version of lists that are fallbacks


@dataclass
class ScoreResult:
    model_version: str
    users: int
    new_users: int
    min_items_per_user: int
    fallback_lists: int
    similar_items: int


def fallback_lists(feedback: DataFrame, users: DataFrame | None, settings: Settings, as_of: dt.datetime) -> DataFrame:
    """(segment, item_ids, scores): 'global' trending list plus one per user segment."""
    m = settings.model
    scored = popularity.item_scores(feedback, as_of, m.trending_half_life_days).withColumn("segment", F.lit(GLOBAL))
    lists = popularity.ranked_lists(scored, "segment", m.top_k)
    if users is not None:
        lists = lists.unionByName(popularity.segment_lists(feedback, users, as_of, m.trending_half_life_days,
                                                           m.top_k, m.segment_min_users))
    return lists


def new_user_recs(users: DataFrame, feedback: DataFrame, fallbacks: DataFrame) -> DataFrame:
    """Users of the user file without interactions: their segment's list, else the global one."""
    new = users.select("user_id").join(feedback.select("user_id").distinct(), "user_id", "left_anti")
    segments = popularity.user_segments(users)
    chosen = (new.join(segments, "user_id", "left")
              .join(fallbacks.select("segment", "item_ids", "scores"), "segment", "left"))
    global_list = fallbacks.where(F.col("segment") == GLOBAL).select(
        F.col("item_ids").alias("g_items"), F.col("scores").alias("g_scores"))
    segment = F.when(F.col("item_ids").isNotNull(), F.col("segment")).otherwise(F.lit(GLOBAL))
    return chosen.crossJoin(global_list).select(
        "user_id",
        F.coalesce("item_ids", "g_items").alias("item_ids"),
        F.coalesce("scores", "g_scores").alias("scores"),
        F.when(F.col("item_ids").isNotNull(), F.concat(F.lit(SEGMENT_PREFIX), "segment"))
        .otherwise(F.lit(GLOBAL_SOURCE)).alias("model_version"),
        # Redis keeps a reference to the segment's list, not a copy (codec 2 of the layout)
        F.concat(F.lit(bytes([SEGMENT_REF])), F.encode(segment, "UTF-8")).alias("value"))


def is_personal(model_version):
    """Column: true for a model's own list, false for a copied segment / trending list."""
    return ~(model_version.startswith(SEGMENT_PREFIX) | (model_version == GLOBAL_SOURCE))


def unavailable_items(items: DataFrame | None) -> set[int]:
    return ItemFacts.read(items).unavailable_ids()


def run(spark: SparkSession, settings: Settings, ds: dt.date) -> ScoreResult:
    progress = Progress("score", spark)
    tracking.configure(settings)
    bundle, model_version = registry.load_champion(settings.mlflow.registered_model)
    as_of = start_of(ds + dt.timedelta(days=1))
    feedback = implicit_feedback(training_events(spark, settings, ds), settings.events.weights).cache()
    users = attributes(spark, settings, "users", ds)
    items = attributes(spark, settings, "items", ds)
    facts = ItemFacts.read(items)
    # tonight's availability and categories, whichever night the champion was fit on
    bundle = bundle.with_rules(facts.rules_for(bundle.item_ids, settings.model.max_per_category))
    personal = (recommend(bundle, user_rows(feedback, as_of, settings.model.recency_half_life_days), settings.model.top_k,
                          serving_values=True)
                .withColumn("model_version", F.lit(model_version)))
    fallbacks = fallback_lists(feedback, users, settings, as_of).cache()
    with progress.step("trending lists"):
        lake.replace_partitions(fallbacks.withColumn("dt", F.lit(ds)), settings.table("gold/fallbacks"), [ds])
    recs = personal
    if users is not None:
        recs = personal.unionByName(new_user_recs(users, feedback, fallbacks))
    with progress.step("top-k per user", model=model_version, catalog=len(bundle.item_ids)):
        lake.replace_partitions(recs.withColumn("dt", F.lit(ds)), settings.table("gold/recommendations"), [ds])
    similar = similar_items(feedback, settings.model.similar_k, facts.unavailable_ids())
    with progress.step("similar items"):
        n_similar = lake.replace_partitions(similar.withColumn("dt", F.lit(ds)), settings.table("gold/similar_items"),
                                            [ds])
    stored = lake.read_table(spark, settings.table("gold/recommendations"), [ds]).agg(
        F.count("*").alias("users"), F.min(F.size("item_ids")).alias("min_items"),
        F.sum(F.when(F.col("model_version") != model_version, 1).otherwise(0)).alias("new_users")).first()
    n_lists = lake.read_table(spark, settings.table("gold/fallbacks"), [ds]).count()
    feedback.unpersist()
    fallbacks.unpersist()
    return ScoreResult(model_version, int(stored["users"]), int(stored["new_users"] or 0),
                       int(stored["min_items"] or 0), n_lists, n_similar)


def main(argv=None) -> dict:
    return stage_main("score", run, argv)


if __name__ == "__main__":
    main(sys.argv[1:])
