"""Train: every candidate searched, evaluated on a holdout of each user's latest items, logged and
registered in MLflow; the promotion gate decides whether the best one becomes `champion`.

Each user's items in the trailing window, in the order the user took them:
  inner train | inner validation (holdout_share) | holdout (holdout_share)
Hyperparameters and blend weights are chosen on the inner split (and on a second fold: a random
share of each user's items before the holdout); the candidates (and the current champion's
recipe) are then refit on everything but the holdout and compared on it; what is registered is
finally refit on the whole window.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from nightrec import lake, modeling, registry, reports, tracking
from nightrec.errors import PermanentError
from nightrec.feedback import implicit_feedback, latest_split, stratified_split
from nightrec.settings import Settings, resolve
from nightrec.stages import stage_main, window

CURVE_KS = (1, 5, 10, 20, 50, 100)
SAMPLE_USERS = 5


@dataclass
class TrainResult:
    run_id: str
    model_name: str
    champion_version: str
    promoted: bool
    reason: str
    best_candidate: str
    candidates: dict[str, dict]      # name -> {version, holdout ndcg, validation ndcg, fit seconds}
    champion_holdout_ndcg: float | None
    holdout_users: int
    seconds: dict[str, float]


def training_events(spark: SparkSession, settings: Settings, ds: dt.date) -> DataFrame:
    return lake.read_table(spark, settings.table("silver/interactions"), window(ds, settings.model.train_window_days))


def attributes(spark: SparkSession, settings: Settings, name: str, ds: dt.date) -> DataFrame | None:
    """(id, attributes map) of the item/user file snapshot of ds, ids as int; None without a file."""
    root, key = settings.table(f"bronze/{name}"), f"{name[:-1]}_id"
    if not lake.table_exists(root):
        return None
    frame = lake.read_table(spark, root, [ds])
    frame = frame.select(F.expr(f"try_cast({key} AS INT)").alias(key), "attributes").where(F.col(key).isNotNull())
    return frame if frame.limit(1).count() else None


def model_options(settings: Settings, spark: SparkSession) -> modeling.ModelSettingsView:
    m = settings.model
    return modeling.ModelSettingsView(
        seed=m.seed, eval_k=m.eval_k, blocks=spark.sparkContext.defaultParallelism,
        item_knn_max_items=m.item_knn_max_items, validation_users=m.validation_users,
        recency_half_life_days=m.recency_half_life_days, max_per_category=m.max_per_category)


def start_of(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), tzinfo=dt.timezone.utc)


def run(spark: SparkSession, settings: Settings, ds: dt.date) -> TrainResult:
    import mlflow

    m, weights = settings.model, settings.events.weights
    experiment_id = tracking.configure(settings)  # before any registry call: the champion lives there
    opts = model_options(settings, spark)
    space = modeling.load_search_space(resolve(settings.home, m.search_space))
    ks = tuple(sorted(set(CURVE_KS) | {m.eval_k, m.top_k}))
    metric = f"ndcg_at_{m.eval_k}"
    seconds: dict[str, float] = {}
    events = training_events(spark, settings, ds).cache()
    items = attributes(spark, settings, "items", ds)
    as_of = start_of(ds + dt.timedelta(days=1))
    fit_events, truth = latest_split(events, m.holdout_share)
    fit_events = fit_events.cache()
    inner_events, inner_truth = latest_split(fit_events, m.holdout_share)
    truth, inner_truth = truth.cache(), inner_truth.cache()
    holdout_users = truth.select("user_id").distinct().count()
    for name, frame in (("holdout", truth), ("inner validation", inner_truth)):
        if frame.limit(1).count() == 0:
            raise PermanentError(f"no {name}: no user has enough items for a share of {m.holdout_share} "
                                 f"(model.holdout_share); load more days or raise the share")

    started = time.monotonic()
    fit_feedback = implicit_feedback(fit_events, weights).cache()
    folds = [(modeling.training_set(implicit_feedback(inner_events, weights).cache(), items, as_of, opts), inner_truth)]
    if m.random_validation_share > 0:
        # A second fold, a random share of each user's items: choices that only suit the order in
        # which users took their items would not survive it.
        rest, held = stratified_split(fit_feedback, 1 - m.random_validation_share, m.seed)
        folds.append((modeling.training_set(rest.cache(), items, as_of, opts), held.cache()))
    selection = modeling.select(folds, space, opts)
    for fold_data, fold_truth in folds:
        fold_data.feedback.unpersist()
        fold_truth.unpersist()
    seconds["search"] = time.monotonic() - started

    started = time.monotonic()
    fit_data = modeling.training_set(fit_feedback, items, as_of, opts)
    bundles, _ = modeling.fit_bundles(fit_data, selection, opts)
    evaluations = {name: modeling.evaluate(bundle, fit_data, truth, ks, m.cold_user_max_items)
                   for name, bundle in bundles.items()}
    champion = registry.current_champion(settings.mlflow.registered_model)
    champion_ndcg = None
    if champion is not None:
        champion_ndcg = _refit_champion_ndcg(champion, bundles, evaluations, fit_data, truth, ks, metric, opts, m)
    # Tonight's best is chosen on validation, where the search happened; the holdout, untouched by
    # any choice, then judges it against the champion. Choosing on the holdout as well would reward
    # its noise (on MovieLens-100K the top three candidates differ there by about 0.002 NDCG).
    ranking = sorted(evaluations, key=lambda n: -selection.validation_ndcg.get(n, -1.0))
    best = ranking[0]
    decision = registry.gate(best, evaluations[best].metrics[metric], champion_ndcg, m.promotion_tolerance, metric)
    seconds["holdout"] = time.monotonic() - started

    started = time.monotonic()
    full_data = modeling.training_set(implicit_feedback(events, weights).cache(), items, as_of, opts)
    finals, fit_seconds = modeling.fit_bundles(full_data, selection, opts)
    seconds["final_fit"] = time.monotonic() - started

    started = time.monotonic()
    decision_tags = {"promotion_decision": "promoted" if decision.promote else "kept",
                     "promotion_reason": decision.reason, "best_candidate": best}
    versions, summary = {}, {}
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"nightly-{ds.isoformat()}") as parent:
        mlflow.set_tags({"ds": ds.isoformat(), "protocol": "latest_items_holdout", **decision_tags})
        mlflow.log_params({"train_window_days": m.train_window_days, "holdout_share": m.holdout_share,
                           "random_validation_share": m.random_validation_share, "event_weights": json.dumps(weights),
                           "promotion_tolerance": m.promotion_tolerance})
        mlflow.log_metrics({"holdout_users": holdout_users, "champion_holdout_" + metric: champion_ndcg or 0.0}
                           if champion_ndcg is not None else {"holdout_users": holdout_users})
        mlflow.log_dict({"trials": selection.trials, "chosen": selection.params, "weights": selection.weights},
                        "search.json")
        for name in ranking:
            if name not in finals:
                continue
            recipe = _recipe(name, selection)
            with mlflow.start_run(experiment_id=experiment_id, run_name=f"{name}-{ds.isoformat()}", nested=True):
                mlflow.set_tags({"ds": ds.isoformat(), "candidate": name, "protocol": "latest_items_holdout",
                                 "role": "best" if name == best else "candidate", **decision_tags})
                mlflow.log_params(_flat_params(recipe))
                mlflow.log_metrics({f"holdout_{k}": v for k, v in evaluations[name].metrics.items()}
                                   | {f"validation_{metric}": selection.validation_ndcg.get(name, 0.0),
                                      "fit_seconds": fit_seconds.get(name, 0.0)})
                _log_reports(name, evaluations[name], fit_data, items, ks)
                versions[name] = registry.log_candidate_model(finals[name], settings.mlflow.registered_model, {
                    "ds": ds.isoformat(), "candidate": name, "holdout_" + metric: f"{evaluations[name].metrics[metric]:.5f}",
                    registry.RECIPE_TAG: json.dumps(recipe), "promotion_decision": decision_tags["promotion_decision"]
                    if name == best else "not best"})
            summary[name] = {"version": versions[name], "holdout_" + metric: evaluations[name].metrics[metric],
                             "validation_" + metric: selection.validation_ndcg.get(name),
                             "fit_seconds": round(fit_seconds.get(name, 0.0), 1)}
        runner_up = next((n for n in ranking if n != best), None) if decision.promote else best
        registry.set_aliases(settings.mlflow.registered_model, versions[best] if decision.promote else None,
                             versions.get(runner_up) if runner_up else None)
        run_id = parent.info.run_id
    seconds["mlflow"] = time.monotonic() - started
    for evaluation in evaluations.values():
        evaluation.lists.unpersist()
    for frame in (events, fit_events, truth, fit_data.feedback, full_data.feedback):
        frame.unpersist()
    current = registry.current_champion(settings.mlflow.registered_model)
    return TrainResult(run_id, settings.mlflow.registered_model, current.version if current else "",
                       decision.promote, decision.reason, best, summary, champion_ndcg, holdout_users,
                       {k: round(v, 1) for k, v in seconds.items()})


def _recipe(name: str, selection: modeling.Selection) -> dict:
    if name == modeling.HYBRID:
        used = {n: w for n, w in selection.weights.items() if w > 0}
        return {"candidate": name, "params": {n: selection.params[n] for n in used}, "weights": used}
    return {"candidate": name, "params": {name: selection.params[name]}, "weights": {name: 1.0}}


def _flat_params(recipe: dict) -> dict:
    flat = {"candidate": recipe["candidate"]}
    for family, params in recipe["params"].items():
        flat |= {f"{family}.{k}": v for k, v in params.items()}
    if recipe["candidate"] == modeling.HYBRID:
        flat |= {f"weight.{n}": w for n, w in recipe["weights"].items()}
    return flat


def _refit_champion_ndcg(champion: registry.Champion, bundles, evaluations, fit_data, truth, ks, metric, opts, m):
    """The champion's recipe refit on tonight's pre-holdout data, scored on tonight's holdout."""
    recipe = champion.recipe
    for name in bundles:
        if bundles[name].params == _bundle_params(recipe):
            return evaluations[name].metrics[metric]
    selection = modeling.Selection(recipe["params"], recipe["weights"], {})
    refit, _ = modeling.fit_bundles(fit_data, selection, opts)
    bundle = refit.get(recipe["candidate"])
    missing = sorted(set(recipe["weights"]) - set(bundle.weights if bundle else ()))
    if missing:
        # Judging a champion without some of its parts would make it look worse than it is.
        raise PermanentError(f"champion version {champion.version} ({recipe['candidate']}) needs {missing}, which "
                             f"tonight's data cannot fit (content needs an item file): restore the item file "
                             f"or roll the champion back")
    evaluation = modeling.evaluate(bundle, fit_data, truth, ks, m.cold_user_max_items)
    evaluation.lists.unpersist()
    return evaluation.metrics[metric]


def _bundle_params(recipe: dict) -> dict:
    if recipe["candidate"] == modeling.HYBRID:
        return {"family": modeling.HYBRID, "weights": recipe["weights"], "parts": recipe["params"]}
    return {"family": recipe["candidate"], **recipe["params"][recipe["candidate"]]}


def _log_reports(name: str, evaluation: modeling.Evaluation, data: modeling.TrainingSet, items, ks) -> None:
    import mlflow

    lists = evaluation.lists
    top = lists.select("user_id", F.slice("item_ids", 1, 10).alias("item_ids"),
                       F.slice("scores", 1, 10).alias("scores")).toPandas()
    item_users = data.feedback.groupBy("item_id").agg(F.countDistinct("user_id").alias("n")).toPandas()
    users_of = dict(zip(item_users["item_id"], item_users["n"]))
    recommended = np.array([users_of.get(i, 0) for ids in top["item_ids"] for i in ids], dtype=float)
    catalog = np.array([users_of.get(i, 0) for i in data.catalog], dtype=float)
    sample = top.head(SAMPLE_USERS)
    titles = {}
    if items is not None:
        wanted = sorted({int(i) for ids in sample["item_ids"] for i in ids})
        titles = {r.item_id: r.title for r in items.where(F.col("item_id").isin(wanted))
                  .select("item_id", F.col("attributes")["title"].alias("title")).collect()}
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        reports.metric_vs_k(evaluation.metrics, CURVE_KS, f"{name}: holdout metrics vs k", out / "metrics_vs_k.png")
        reports.score_distribution(np.concatenate([np.asarray(s, dtype=float) for s in top["scores"]] or [np.zeros(0)]),
                                   f"{name}: scores of top-10 items", out / "score_distribution.png")
        reports.popularity_vs_catalog(recommended, catalog, f"{name}: popularity of top-10 items vs catalog",
                                      out / "popularity_vs_catalog.png")
        reports.sample_json([{"user_id": int(row.user_id), "items": [
            {"item_id": int(i), "title": titles.get(int(i)), "score": round(float(s), 4)}
            for i, s in zip(row.item_ids, row.scores)]} for row in sample.itertuples()], out / "sample_recommendations.json")
        mlflow.log_artifacts(folder, "reports")


def main(argv=None) -> dict:
    return stage_main("train", run, argv)


if __name__ == "__main__":
    main(sys.argv[1:])
