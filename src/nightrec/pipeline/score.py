"""Score: the champion's top-k per user -> gold/recommendations; trending lists (global and per
segment) -> gold/fallbacks; each item's nearest neighbours -> gold/similar_items. Users known only
from the user file (no interactions yet) get their segment's list, or the global one."""

from __future__ import annotations

import datetime as dt
import sys
from dataclasses import dataclass

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from nightrec.data import lake
from nightrec.data.feedback import implicit_feedback
from nightrec.data.tables import attributes, start_of, training_events
from nightrec.modeling import registry, tracking
from nightrec.modeling.dataset import ItemFacts
from nightrec.modeling.fallbacks import fallback_lists, new_user_recs
from nightrec.modeling.scoring import recommend, user_rows
from nightrec.modeling.similar import similar_items
from nightrec.pipeline.progress import Progress
from nightrec.pipeline.runtime import stage_main
from nightrec.settings import Settings


@dataclass
class ScoreResult:
    model_version: str
    users: int
    new_users: int
    min_items_per_user: int
    fallback_lists: int
    similar_items: int


def run(spark: SparkSession, settings: Settings, ds: dt.date) -> ScoreResult:
    m = settings.model
    progress = Progress("score", spark)
    tracking.configure(settings)
    bundle, model_version = registry.load_champion(settings.mlflow.registered_model)
    as_of = start_of(ds + dt.timedelta(days=1))
    feedback = implicit_feedback(training_events(spark, settings, ds), settings.events.weights).cache()
    users = attributes(spark, settings, "users", ds)
    items = attributes(spark, settings, "items", ds)
    facts = ItemFacts.read(items)
    # tonight's availability and categories, whichever night the champion was fit on
    bundle = bundle.with_rules(facts.rules_for(bundle.item_ids, m.max_per_category))
    personal = (recommend(bundle, user_rows(feedback, as_of, m.recency_half_life_days), m.top_k,
                          serving_values=True)
                .withColumn("model_version", F.lit(model_version)))
    fallbacks = fallback_lists(feedback, users, as_of, m.trending_half_life_days, m.top_k,
                               m.segment_min_users).cache()
    with progress.step("trending lists"):
        lake.replace_partitions(fallbacks.withColumn("dt", F.lit(ds)), settings.table("gold/fallbacks"), [ds])
    recs = personal
    if users is not None:
        recs = personal.unionByName(new_user_recs(users, feedback, fallbacks))
    with progress.step("top-k per user", model=model_version, catalog=len(bundle.item_ids)):
        lake.replace_partitions(recs.withColumn("dt", F.lit(ds)), settings.table("gold/recommendations"), [ds])
    similar = similar_items(feedback, m.similar_k, facts.unavailable_ids())
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
