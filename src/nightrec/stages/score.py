"""Score: the champion's top-k unseen items per user -> gold/recommendations; popular -> gold/fallbacks."""

from __future__ import annotations

import datetime as dt
import sys
from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from nightrec import als, lake, tracking
from nightrec.errors import PermanentError
from nightrec.settings import Settings
from nightrec.stages import stage_main
from nightrec.stages.train import training_events


@dataclass
class ScoreResult:
    model_version: str
    users: int
    min_items_per_user: int
    fallback_items: int


def load_champion(settings: Settings):
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    tracking.configure(settings)
    name = settings.mlflow.registered_model
    try:
        version = MlflowClient().get_model_version_by_alias(name, tracking.CHAMPION).version
    except MlflowException as error:
        raise PermanentError(f"no {name}@{tracking.CHAMPION} in MLflow ({error.message}): run train first") from error
    pipeline = mlflow.spark.load_model(f"models:/{name}/{version}")
    return pipeline.stages[-1], f"{name}/{version}"


def popular_items(events: DataFrame, k: int) -> DataFrame:
    """Global fallback: items ranked by distinct users over the window, score = share of users."""
    users = events.select("user_id").distinct().count()
    ranked = (events.groupBy("item_id").agg(F.countDistinct("user_id").alias("n"))
              .orderBy(F.col("n").desc(), F.col("item_id")).limit(k)
              .withColumn("score", F.col("n") / F.lit(max(users, 1))))
    return ranked.agg(F.array_sort(F.collect_list(F.struct((-F.col("n")).alias("o"), "item_id", "score")))
                      .alias("recs")).select(
        F.lit("global").alias("segment"), F.col("recs.item_id").alias("item_ids"),
        F.col("recs.score").cast("array<float>").alias("scores"))


def run(spark: SparkSession, settings: Settings, ds: dt.date) -> ScoreResult:
    model, model_version = load_champion(settings)
    k = settings.model.top_k
    events = training_events(spark, settings, ds)
    seen = events.select("user_id", "item_id").distinct().cache()
    recs = (als.recommend(model, seen, seen, k)
            .withColumn("model_version", F.lit(model_version)).withColumn("dt", F.lit(ds)))
    lake.replace_partitions(recs, settings.table("gold/recommendations"), [ds])
    fallback = popular_items(events, k).withColumn("dt", F.lit(ds))
    lake.replace_partitions(fallback, settings.table("gold/fallbacks"), [ds])
    stored = lake.read_table(spark, settings.table("gold/recommendations"), [ds]).agg(
        F.count("*").alias("users"), F.min(F.size("item_ids")).alias("min_items")).first()
    seen.unpersist()
    fallback_items = lake.read_table(spark, settings.table("gold/fallbacks"), [ds]).select(
        F.size("item_ids")).first()[0]
    return ScoreResult(model_version, int(stored["users"]), int(stored["min_items"] or 0), int(fallback_items))


def main(argv=None) -> dict:
    return stage_main("score", run, argv)


if __name__ == "__main__":
    main(sys.argv[1:])
