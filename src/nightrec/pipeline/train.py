"""Train: tonight's model from the tuned recipe, judged against the champion on a holdout of each
user's latest items, logged and registered in MLflow; the gate decides whether it becomes `champion`.

The recipe (candidate, hyperparameters, blend weights) comes from the latest `nightrec tune` run,
or from `model.recipe` when it names a file; tuning runs on its own schedule, not every night.
Each user's items in the trailing window, in the order the user took them:
  fit part | holdout (model.holdout_share)
The recipe is fit on the fit part and scored on the holdout; the champion's own holdout-free fit
(kept with every version) is scored on the same holdout with the same user histories, so the
comparison needs no refit of the champion and neither model has seen the items held out. What is
served is the recipe refit on the whole window. Users are folded in at scoring time, so no model
stores per-user state.
"""

from __future__ import annotations

import datetime as dt
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from nightrec.data.feedback import implicit_feedback, latest_split, sample_users
from nightrec.data.tables import SILVER, attributes, start_of, training_events, training_input
from nightrec.errors import PermanentError
from nightrec.modeling import ann, dataset, registry, reports, tracking, training
from nightrec.modeling.recipe import Recipe
from nightrec.modeling.scoring import Bundle
from nightrec.pipeline.progress import Progress
from nightrec.pipeline.runtime import stage_main
from nightrec.settings import Settings

SAMPLE_USERS = 5
UNREADABLE = "the champion's model cannot be loaded by this nightrec"


@dataclass
class TrainResult:
    run_id: str
    model_name: str
    champion_version: str            # after tonight's decision
    version: str                     # tonight's registered version
    promoted: bool
    reason: str
    candidate: str
    recipe_source: str
    holdout: dict[str, float]        # tonight's model on the holdout (ndcg, recall, precision, map at eval_k)
    champion_holdout_ndcg: float | None
    champion_holdout_coverage: float | None  # of the champion before tonight's decision, at eval_k
    holdout_users: int               # users with held-out items
    evaluated_users: int             # of them, the sample scored
    seconds: dict[str, float]


def run(spark: SparkSession, settings: Settings, ds: dt.date) -> TrainResult:
    import mlflow

    experiment_id = tracking.configure(settings)  # before any registry call: the champion lives there
    # The run spans the work (it ends FAILED if the stage fails), and names the exact data it reads.
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"nightly-{ds.isoformat()}") as active:
        mlflow.set_tags({"ds": ds.isoformat(), "protocol": "latest_items_holdout"})
        silver, silver_version, dates = training_input(settings, ds)
        tracking.log_delta_input(SILVER, silver, silver_version, "training", {"window": dates})
        return _train(spark, settings, ds, active.info.run_id, silver_version)


def _train(spark: SparkSession, settings: Settings, ds: dt.date, run_id: str, silver_version: int) -> TrainResult:
    m, weights = settings.model, settings.events.weights
    progress = Progress("train", spark)
    opts = dataset.ModelSettingsView.of(settings.model, spark.sparkContext.defaultParallelism)
    recipe, recipe_source = registry.nightly_recipe(settings)
    progress(f"recipe {recipe.to_json()} from {recipe_source}")
    ks = tuple(sorted(set(reports.CURVE_KS) | {m.eval_k, m.top_k}))
    metric = f"ndcg_at_{m.eval_k}"
    seconds: dict[str, float] = {}
    as_of = start_of(ds + dt.timedelta(days=1))
    items = attributes(spark, settings, "items", ds)

    started = time.monotonic()
    with progress.step("split", window_days=m.train_window_days, holdout_share=m.holdout_share):
        events = training_events(spark, settings, ds, as_of=silver_version).cache()
        fit_events, truth = latest_split(events, m.holdout_share)
        truth = truth.cache()
        holdout_users = truth.select("user_id").distinct().count()
        if holdout_users == 0:
            raise PermanentError(f"no holdout: no user has enough items for a share of {m.holdout_share} "
                                 f"(model.holdout_share); load more days or raise the share")
        sampled = sample_users(truth, m.evaluation_users, m.seed).cache()
        evaluated_users = min(holdout_users, m.evaluation_users)
        fit_data = dataset.training_set(implicit_feedback(fit_events, weights).cache(), items, as_of, opts)
        progress(f"{holdout_users:,} users with held-out items, {evaluated_users:,} of them evaluated; "
                 f"catalog {len(fit_data.catalog):,} items")
    seconds["split"] = time.monotonic() - started

    started = time.monotonic()
    with progress.step("fit on the fit part", 1, 2):
        try:
            candidate, _ = training.fit_recipe(fit_data, recipe, opts, log=progress)
        except ValueError as error:
            raise PermanentError(f"{recipe_source}: {error}") from None
    with progress.step("evaluate on the holdout", users=evaluated_users):
        # scored as the night will score it: exact, or at shortlists (model.retrieval)
        served = candidate.with_retrieval(ann.retrieval_for(candidate, fit_data.feedback, m, fit_data.as_of))
        evaluation = training.evaluate(served, fit_data, sampled, ks, m.cold_user_max_items)
    champion, champion_note = _champion(settings, fit_data, items, ds, opts, progress)
    champion_ndcg = champion_coverage = None
    if champion is not None:
        with progress.step(f"evaluate champion version {champion_note}", users=evaluated_users):
            champion = champion.with_retrieval(ann.retrieval_for(champion, fit_data.feedback, m, fit_data.as_of))
            champion_evaluation = training.evaluate(champion, fit_data, sampled, ks, m.cold_user_max_items)
            champion_evaluation.lists.unpersist()
            champion_ndcg = champion_evaluation.metrics[metric]
            champion_coverage = champion_evaluation.metrics.get(f"coverage_at_{m.eval_k}")
        decision = registry.gate(recipe.candidate, evaluation.metrics[metric], champion_ndcg,
                                 m.promotion_tolerance, metric)
    elif champion_note.startswith(UNREADABLE):  # written by an older nightrec: tonight's model replaces it
        decision = registry.Decision(True, f"{recipe.candidate}: {champion_note}: promoted")
    elif champion_note:  # a backfill: a newer champion stays, whatever tonight's model scores
        decision = registry.Decision(False, f"{recipe.candidate}: {champion_note}, which a backfill does not "
                                            f"replace: champion kept")
    else:
        decision = registry.gate(recipe.candidate, evaluation.metrics[metric], None, m.promotion_tolerance, metric)
    progress(decision.reason)
    seconds["fit_and_gate"] = time.monotonic() - started

    started = time.monotonic()
    with progress.step("fit on the whole window", 2, 2):
        full_data = dataset.training_set(implicit_feedback(events, weights).cache(), items, as_of, opts)
        final, fit_seconds = training.fit_recipe(full_data, recipe, opts, log=progress)
    seconds["final_fit"] = time.monotonic() - started

    started = time.monotonic()
    with progress.step("log and register in MLflow"):
        version = _record(settings, silver_version, ds, recipe, recipe_source, decision, evaluation, final,
                                  candidate, fit_seconds, fit_data, items, ks, metric, champion_ndcg,
                                  holdout_users, evaluated_users)
        registry.set_aliases(settings.mlflow.registered_model, version if decision.promote else None,
                             None if decision.promote else version)
    seconds["mlflow"] = time.monotonic() - started
    evaluation.lists.unpersist()
    for frame in (events, truth, sampled, fit_data.feedback, full_data.feedback):
        frame.unpersist()
    current = registry.current_champion(settings.mlflow.registered_model)
    holdout = {k: round(v, 5) for k, v in evaluation.metrics.items()
               if k in {f"{name}_at_{m.eval_k}" for name in ("ndcg", "recall", "precision", "map", "coverage")}}
    return TrainResult(run_id, settings.mlflow.registered_model, current.version if current else "", version,
                       decision.promote, decision.reason, recipe.candidate, recipe_source, holdout, champion_ndcg,
                       champion_coverage, holdout_users, evaluated_users, {k: round(v, 1) for k, v in seconds.items()})


def _champion(settings: Settings, data: dataset.TrainingSet, items, ds: dt.date,
              opts: dataset.ModelSettingsView, log) -> tuple[Bundle | None, str]:
    """What tonight's model is judged against: the champion's holdout-free fit from its night, with
    tonight's rules; or None and why there is nothing to judge against.

    Not the served artifact: that one was refit on its whole window, whose latest items are most of
    tonight's holdout. The holdout-free fit never saw them: a user's latest items tonight were held
    out on the champion's night too, or arrived since. A champion registered without one (by an
    earlier nightrec) has its recipe refit on tonight's fit part instead."""
    name = settings.mlflow.registered_model
    current = registry.current_champion(name)
    if current is None:
        return None, ""
    if current.ds is not None and current.ds > ds.isoformat():
        return None, f"champion version {current.version} is from the later night {current.ds}"
    if registry.is_pickled(name, current.version):
        return None, f"{UNREADABLE} ({registry.pickled_message(name, current.version)})"
    bundle = registry.load_holdout_free(name, current.version)
    if bundle is None:
        try:
            champion_recipe = Recipe.from_dict(current.recipe)
            log(f"champion version {current.version} has no holdout-free fit: refitting its recipe tonight")
            bundle, _ = training.fit_recipe(data, champion_recipe, opts, log=log)
        except ValueError as error:
            raise PermanentError(f"champion version {current.version} cannot be judged: {error}; "
                                 f"roll it back or pin model.recipe") from None
        return bundle, current.version
    rules = dataset.ItemFacts.read(items).rules_for(bundle.item_ids, settings.model.max_per_category)
    return bundle.with_rules(rules), current.version


def _record(settings, silver_version, ds, recipe, recipe_source, decision, evaluation, final, holdout_free,
            fit_seconds, fit_data, items, ks, metric, champion_ndcg, holdout_users, evaluated_users) -> str:
    """The night's params, holdout metrics and reports into the active MLflow run, and tonight's model
    version (tagged with the silver version it was trained on)."""
    import mlflow

    m = settings.model
    decision_tags = {"promotion_decision": "promoted" if decision.promote else "kept",
                     "promotion_reason": decision.reason, "candidate": recipe.candidate,
                     "recipe_source": recipe_source}
    mlflow.set_tags(decision_tags)
    mlflow.log_params({"train_window_days": m.train_window_days, "holdout_share": m.holdout_share,
                       "evaluation_users": m.evaluation_users, "event_weights": json.dumps(settings.events.weights),
                       "promotion_tolerance": m.promotion_tolerance, **recipe.flat_params()})
    mlflow.log_metrics({f"holdout_{k}": v for k, v in evaluation.metrics.items()}
                       | {"holdout_users": holdout_users, "evaluated_users": evaluated_users}
                       | {f"fit_seconds_{family}": s for family, s in fit_seconds.items()}
                       | ({f"champion_holdout_{metric}": champion_ndcg} if champion_ndcg is not None else {}))
    mlflow.log_dict(json.loads(recipe.to_json()), "recipe.json")
    _log_reports(recipe.candidate, evaluation, fit_data, items, ks)
    version = registry.log_candidate_model(final, settings.mlflow.registered_model, {
        "ds": ds.isoformat(), "candidate": recipe.candidate,
        f"holdout_{metric}": f"{evaluation.metrics[metric]:.5f}", registry.RECIPE_TAG: recipe.to_json(),
        "promotion_decision": decision_tags["promotion_decision"],
        "silver_path": settings.table(SILVER), "silver_version": str(silver_version)}, holdout_free=holdout_free)
    return version


def _log_reports(name: str, evaluation: training.Evaluation, data: dataset.TrainingSet, items, ks) -> None:
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
        reports.metric_vs_k(evaluation.metrics, reports.CURVE_KS, f"{name}: holdout metrics vs k",
                            out / "metrics_vs_k.png")
        reports.score_distribution(np.concatenate([np.asarray(s, dtype=float) for s in top["scores"]] or [np.zeros(0)]),
                                   f"{name}: scores of top-10 items", out / "score_distribution.png")
        reports.popularity_vs_catalog(recommended, catalog, f"{name}: popularity of top-10 items vs catalog",
                                      out / "popularity_vs_catalog.png")
        # Examples, not users: artifacts are kept for months and must not name anyone (docs/privacy.md).
        reports.sample_json([{"example": n, "items": [
            {"item_id": int(i), "title": titles.get(int(i)), "score": round(float(s), 4)}
            for i, s in zip(row.item_ids, row.scores)]} for n, row in enumerate(sample.itertuples(), 1)],
                            out / "sample_recommendations.json")
        mlflow.log_artifacts(folder, "reports")


def main(argv=None) -> dict:
    return stage_main("train", run, argv)
