"""Score: the champion's top-k per user -> gold/recommendations; trending lists (global and per
segment) -> gold/fallbacks; each item's nearest neighbours -> gold/similar_items. Users known only
from the user file (no interactions yet) get their segment's list, or the global one.

While an experiment runs, each variant that serves something other than the champion scores its
own users (and only them) with its model and rules -> gold/variant_recommendations."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, Observation, SparkSession
from pyspark.sql import functions as F

from nightrec.data import lake
from nightrec.data.feedback import implicit_feedback
from nightrec.data.tables import attributes, privacy_requests, start_of, training_events
from nightrec.modeling import ann, experiment_store, registry, tracking
from nightrec.modeling.dataset import ItemFacts
from nightrec.modeling.fallbacks import fallback_lists, new_user_recs
from nightrec.modeling.scoring import Spent, SpentSum, recommend, user_rows
from nightrec.modeling.similar import similar_items
from nightrec.modeling.topk import matmul_rate
from nightrec.pipeline.progress import Progress
from nightrec.pipeline.runtime import stage_main
from nightrec.serving.experiments import Experiment
from nightrec.settings import Settings


@dataclass
class ScoreResult:
    model_version: str
    scoring: str          # exact, or retrieved and how (nightrec.modeling.ann.describe)
    users: int
    new_users: int
    min_items_per_user: int
    fallback_lists: int
    similar_items: int
    experiment: str | None = None
    variant_users: dict[str, int] = field(default_factory=dict)  # users given a variant's own list


def run(spark: SparkSession, settings: Settings, ds: dt.date) -> ScoreResult:
    m = settings.model
    progress = Progress("score", spark)
    tracking.configure(settings)
    bundle, model_version = registry.load_champion(settings.mlflow.registered_model)
    as_of = start_of(ds + dt.timedelta(days=1))
    feedback = implicit_feedback(training_events(spark, settings, ds), settings.events.weights)
    opted_out = privacy_requests(spark, settings, ("opt_out",))  # erased users' rows are gone already
    if opted_out is not None:  # no list from their history, for them or anyone (docs/privacy.md)
        feedback = feedback.join(F.broadcast(opted_out.select("user_id")), "user_id", "left_anti")
    feedback = feedback.cache()
    users = attributes(spark, settings, "users", ds)
    items = attributes(spark, settings, "items", ds)
    facts = ItemFacts.read(items)
    # tonight's availability and categories, whichever night the champion was fit on
    bundle = bundle.with_rules(facts.rules_for(bundle.item_ids, m.max_per_category))
    with progress.step("scoring mode", catalog=len(bundle.item_ids), retrieval=m.retrieval):
        bundle = bundle.with_retrieval(ann.retrieval_for(bundle, feedback, m, as_of))
        scoring = ann.describe(bundle.retrieval)
        progress(scoring)
    spent = spark.sparkContext.accumulator(Spent(), SpentSum())
    personal = (recommend(bundle, user_rows(feedback, as_of, m.recency_half_life_days), m.top_k,
                          serving_values=True, spent=spent)
                .withColumn("model_version", F.lit(model_version)))
    fallbacks = fallback_lists(feedback, users, as_of, m.trending_half_life_days, m.top_k,
                               m.segment_min_users).cache()
    with progress.step("trending lists"):
        n_lists = lake.replace_partitions(fallbacks.withColumn("dt", F.lit(ds)), settings.table("gold/fallbacks"), [ds])
    recs = personal
    if users is not None:
        recs = personal.unionByName(new_user_recs(users, feedback, fallbacks))
    # counted as the lists are written (no second pass over the table)
    stored = Observation("recommendations")
    recs = recs.observe(stored, F.count("*").alias("users"), F.min(F.size("item_ids")).alias("min_items"),
                        F.sum((F.col("model_version") != model_version).cast("int")).alias("new_users"))
    with progress.step("top-k per user", model=model_version, catalog=len(bundle.item_ids)):
        lake.replace_partitions(recs.withColumn("dt", F.lit(ds)), settings.table("gold/recommendations"), [ds])
    registry.record_scoring(model_version, scoring, ds)
    for line in spent.value.lines(matmul_rate(threads=1)):  # where top-k's time went, per core
        progress(f"top-k {line.strip()}" if line.startswith("  ") else f"top-k: {line}")
    similar = similar_items(feedback, m.similar_k, facts.unavailable_ids())
    with progress.step("similar items"):
        n_similar = lake.replace_partitions(similar.withColumn("dt", F.lit(ds)), settings.table("gold/similar_items"),
                                            [ds])
    stored = stored.get
    running = experiment_store.running(settings)
    experiment = running.experiment if running is not None and running.experiment.keyed else None
    with progress.step("experiment variants", experiment=experiment.name if experiment else "none"):
        variant_users = score_variants(spark, settings, ds, experiment, feedback, facts, as_of)
    feedback.unpersist()
    fallbacks.unpersist()
    return ScoreResult(model_version, scoring, int(stored["users"]), int(stored["new_users"] or 0),
                       int(stored["min_items"] or 0), n_lists, n_similar, experiment and experiment.name,
                       variant_users)


def score_variants(spark: SparkSession, settings: Settings, ds: dt.date, experiment: Experiment | None,
                   feedback: DataFrame, facts: ItemFacts, as_of: dt.datetime) -> dict[str, int]:
    """gold/variant_recommendations of ds: the lists of the experiment's users in variants with their
    own model or rules (nothing when no experiment runs, so a rerun after a stop publishes none)."""
    m, table = settings.model, settings.table("gold/variant_recommendations")
    if experiment is None:
        lake.clear_partitions(spark, table, [ds])
        return {}
    rows = user_rows(feedback, as_of, m.recency_half_life_days).withColumn("variant", variant_of(experiment)("user_id"))
    frames, scorings = [], {}
    for variant in experiment.keyed:
        version = experiment_store.model_version(settings, variant)
        name = settings.mlflow.registered_model
        bundle = registry.load_version(name, version)
        bundle = bundle.with_rules(facts.rules_for(bundle.item_ids,
                                                   variant.rules.get("max_per_category", m.max_per_category)))
        bundle = bundle.with_retrieval(ann.retrieval_for(bundle, feedback, m, as_of))
        scorings[f"{name}/{version}"] = ann.describe(bundle.retrieval)
        users = rows.where(F.col("variant") == variant.name).drop("variant")
        frames.append(recommend(bundle, users, m.top_k, serving_values=True)
                      .withColumns({"variant": F.lit(variant.name), "model_version": F.lit(f"{name}/{version}")}))
    lists = frames[0]
    for frame in frames[1:]:
        lists = lists.unionByName(frame)
    lists = lists.withColumns({"experiment": F.lit(experiment.to_json()), "dt": F.lit(ds)})
    lake.replace_partitions(lists, table, [ds])
    for model_version, scoring in scorings.items():
        registry.record_scoring(model_version, scoring, ds)
    counts = lake.read_table(spark, table, [ds]).groupBy("variant").count().collect()
    return {row["variant"]: int(row["count"]) for row in counts}


def variant_of(experiment: Experiment):
    """A Spark column function: user_id -> the variant's name, exactly as the lookup assigns it."""
    names = np.array([v.name for v in experiment.variants], dtype=object)

    @F.pandas_udf("string")
    def assign(user_ids: pd.Series) -> pd.Series:
        return pd.Series(names[experiment.assign_many(user_ids.to_numpy())], index=user_ids.index)

    return assign


def main(argv=None) -> dict:
    return stage_main("score", run, argv)
