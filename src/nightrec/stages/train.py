"""Train: ALS on the trailing window of silver, evaluated on a temporal holdout, logged to MLflow."""

from __future__ import annotations

import datetime as dt
import sys
import time
from dataclasses import dataclass

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from nightrec import als, lake, tracking
from nightrec.errors import PermanentError
from nightrec.evaluation import ranking_metrics
from nightrec.settings import Settings
from nightrec.stages import stage_main, window


@dataclass
class TrainResult:
    run_id: str
    model_name: str
    model_version: str
    metrics: dict[str, float]
    feedback_pairs: int
    holdout_users: int
    users: int
    items: int


def training_events(spark: SparkSession, settings: Settings, ds: dt.date):
    return lake.read_table(spark, settings.table("silver/interactions"), window(ds, settings.model.train_window_days))


def run(spark: SparkSession, settings: Settings, ds: dt.date) -> TrainResult:
    import mlflow
    from mlflow import MlflowClient

    params, k = settings.model, settings.model.eval_k
    blocks = spark.sparkContext.defaultParallelism
    events = training_events(spark, settings, ds).cache()
    holdout_start = ds - dt.timedelta(days=params.holdout_days - 1)
    train_events, truth = als.temporal_split(events, holdout_start)
    train_feedback = als.implicit_feedback(train_events, settings.events.weights).cache()
    truth = truth.cache()
    holdout_users = truth.select("user_id").distinct().count()
    if holdout_users == 0:
        raise PermanentError(f"no holdout: no known user has new items on {holdout_start}..{ds}; "
                         f"widen model.holdout_days or load more days")
    started = time.monotonic()
    candidate = als.fit(train_feedback, params, blocks)
    fit_seconds = time.monotonic() - started
    recs = als.ranked_rows(als.recommend(candidate, truth, train_feedback, k))
    metrics = {f"{name}_at_{k}": value for name, value in ranking_metrics(recs, truth, k).items()}

    # The published model learns from the whole window, holdout included.
    feedback = als.implicit_feedback(events, settings.events.weights).cache()
    final = als.fit(feedback, params, blocks)
    sizes = feedback.agg(F.count("*"), F.countDistinct("user_id"), F.countDistinct("item_id")).first()

    experiment_id = tracking.configure(settings)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"als-{ds.isoformat()}") as active:
        mlflow.set_tags({"ds": ds.isoformat(), "model_family": "als", "protocol": "temporal_holdout"})
        mlflow.log_params({"rank": params.rank, "reg_param": params.reg_param, "alpha": params.alpha,
                           "max_iter": params.max_iter, "seed": params.seed, "blocks": blocks,
                           "train_window_days": params.train_window_days, "holdout_days": params.holdout_days,
                           "event_weights": settings.events.weights})
        mlflow.log_metrics({**metrics, "holdout_users": holdout_users, "feedback_pairs": int(sizes[0]),
                            "users": int(sizes[1]), "items": int(sizes[2]), "fit_seconds": fit_seconds})
        info = mlflow.spark.log_model(final, artifact_path="model", registered_model_name=settings.mlflow.registered_model,
                                      pip_requirements=[f"pyspark=={spark.version}"])
        version = str(info.registered_model_version)
        MlflowClient().set_registered_model_alias(settings.mlflow.registered_model, tracking.CHAMPION, version)
        run_id = active.info.run_id
    for cached in (events, train_feedback, truth, feedback):
        cached.unpersist()
    return TrainResult(run_id, settings.mlflow.registered_model, version, metrics, int(sizes[0]),
                       holdout_users, int(sizes[1]), int(sizes[2]))


def main(argv=None) -> dict:
    return stage_main("train", run, argv)


if __name__ == "__main__":
    main(sys.argv[1:])
