"""Tune: search every candidate's hyperparameters and the hybrid's blend weights, choose the best
on validation, compare the candidates on the holdout, and make the best the recipe nights fit.

Runs on its own schedule (the weekly DAG `nightrec_tune`) or on demand (`nightrec tune`), not
every night: a search fits each family many times, and its cost grows with data x grid size.
It works on a sample of users (`tuning.sample_users`, all their events) and stops starting new
trials once `tuning.budget_minutes` is spent. Settings that count co-occurrences (EASE's l2, the
neighbours' shrink) are scaled from the sample to all users before the recipe is stored.

Each sampled user's items in the trailing window, in the order the user took them:
  inner train | inner validation (holdout_share) | holdout (holdout_share)
Hyperparameters and blend weights are chosen on the inner split (and on a second fold: a random
share of each user's items before the holdout); each candidate is then refit on everything but
the holdout and scored on it, for the analysts' side-by-side comparison in MLflow. The recipe is
the candidate with the best validation NDCG: the holdout, untouched by any choice, only reports.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from dataclasses import dataclass

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from nightrec.data.feedback import implicit_feedback, latest_split, sample_users, stratified_split
from nightrec.data.tables import SILVER, attributes, start_of, training_events, training_input
from nightrec.errors import PermanentError
from nightrec.modeling import dataset, registry, reports, search, tracking, training
from nightrec.modeling.recipe import load_search_space
from nightrec.pipeline.progress import Progress
from nightrec.pipeline.runtime import stage_main
from nightrec.settings import Settings, resolve


@dataclass
class TuneResult:
    run_id: str
    recipe: dict
    sampled_users: int
    trials: int
    skipped_trials: int
    validation_ndcg: dict[str, float]
    holdout_ndcg: dict[str, float]
    seconds: dict[str, float]


def run(spark: SparkSession, settings: Settings, ds: dt.date) -> TuneResult:
    import mlflow

    experiment_id = tracking.configure(settings)
    # The run spans the search (it ends FAILED if the search fails), and names the exact data it reads.
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"tune-{ds.isoformat()}") as parent:
        mlflow.set_tags({"ds": ds.isoformat(), "kind": "tuning"})
        silver, silver_version, dates = training_input(settings, ds)
        tracking.log_delta_input(SILVER, silver, silver_version, "tuning", {"window": dates})
        return _tune(spark, settings, ds, experiment_id, parent.info.run_id, silver_version)


def _tune(spark: SparkSession, settings: Settings, ds: dt.date, experiment_id: str, run_id: str,
          silver_version: int) -> TuneResult:
    import mlflow

    m, t, weights = settings.model, settings.tuning, settings.events.weights
    progress = Progress("tune", spark)
    opts = dataset.ModelSettingsView.of(settings.model, spark.sparkContext.defaultParallelism)
    space = load_search_space(resolve(settings.home, m.search_space))
    ks = tuple(sorted(set(reports.CURVE_KS) | {m.eval_k, m.top_k}))
    metric = f"ndcg_at_{m.eval_k}"
    items = attributes(spark, settings, "items", ds)
    as_of = start_of(ds + dt.timedelta(days=1))
    deadline = time.monotonic() + t.budget_minutes * 60
    seconds: dict[str, float] = {}

    started = time.monotonic()
    with progress.step("sample and split", sample_users=t.sample_users):
        all_events = training_events(spark, settings, ds, as_of=silver_version)
        users = all_events.select("user_id").distinct()
        chosen = users.orderBy(F.xxhash64(F.lit(m.seed + 1), "user_id"), "user_id").limit(t.sample_users)
        events = all_events.join(F.broadcast(chosen), "user_id").cache()
        sampled, total_users = chosen.count(), users.count()
        fit_events, truth = latest_split(events, m.holdout_share)
        fit_events = fit_events.cache()
        inner_events, inner_truth = latest_split(fit_events, m.holdout_share)
        truth, inner_truth = sample_users(truth, m.evaluation_users, m.seed).cache(), inner_truth.cache()
        for name, frame in (("holdout", truth), ("inner validation", inner_truth)):
            if frame.limit(1).count() == 0:
                raise PermanentError(f"no {name}: no user has enough items for a share of {m.holdout_share} "
                                     f"(model.holdout_share); load more days or raise the share")
        fit_feedback = implicit_feedback(fit_events, weights).cache()
        folds = [(dataset.training_set(implicit_feedback(inner_events, weights).cache(), items, as_of, opts),
                  inner_truth)]
        if m.random_validation_share > 0:
            # A second fold, a random share of each user's items: choices that only suit the order in
            # which users took their items would not survive it.
            rest, held = stratified_split(fit_feedback, 1 - m.random_validation_share, m.seed)
            folds.append((dataset.training_set(rest.cache(), items, as_of, opts), held.cache()))
        progress(f"{sampled:,} users sampled, {len(folds)} folds")
    seconds["split"] = time.monotonic() - started

    started = time.monotonic()
    with progress.step("search"):
        selection = search.select(folds, space, opts, log=progress, deadline=deadline)
    for fold_data, fold_truth in folds:
        fold_data.feedback.unpersist()
        fold_truth.unpersist()
    seconds["search"] = time.monotonic() - started

    started = time.monotonic()
    with progress.step("fit every candidate on the fit part"):
        fit_data = dataset.training_set(fit_feedback, items, as_of, opts)
        bundles, fit_seconds = search.fit_bundles(fit_data, selection, opts)
    evaluations = {}
    for n, (name, bundle) in enumerate(bundles.items(), 1):
        with progress.step(f"evaluate {name} on the holdout", n, len(bundles)):
            evaluations[name] = training.evaluate(bundle, fit_data, truth, ks, m.cold_user_max_items)
            evaluations[name].lists.unpersist()
    seconds["holdout"] = time.monotonic() - started

    ranking = sorted(evaluations, key=lambda n: -selection.validation_ndcg.get(n, -1.0))
    # what nights fit: tuned on the sample, scaled to every user of the window
    best = search.recipe_of(ranking[0], selection).scaled_to_users(total_users / max(sampled, 1))
    skipped = sum(1 for trial in selection.trials if trial.get("skipped"))
    mlflow.set_tag("best_candidate", best.candidate)
    mlflow.log_params({"sample_users": t.sample_users, "budget_minutes": t.budget_minutes,
                       "holdout_share": m.holdout_share, "random_validation_share": m.random_validation_share,
                       "event_weights": json.dumps(weights)})
    mlflow.log_metrics({"sampled_users": sampled, "window_users": total_users,
                        "trials": len(selection.trials) - skipped,
                        "skipped_trials": skipped})
    mlflow.log_dict({"trials": selection.trials, "chosen": selection.params, "weights": selection.weights},
                    "search.json")
    mlflow.log_dict(json.loads(best.to_json()), "recipe.json")
    for name in ranking:
        recipe = search.recipe_of(name, selection)
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"tune-{name}-{ds.isoformat()}", nested=True):
            mlflow.set_tags({"ds": ds.isoformat(), "kind": "tuning", "candidate": name,
                             "role": "chosen" if name == best.candidate else "candidate"})
            mlflow.log_params(recipe.flat_params())
            mlflow.log_metrics({f"holdout_{k}": v for k, v in evaluations[name].metrics.items()}
                               | {f"validation_{metric}": selection.validation_ndcg.get(name, 0.0),
                                  "fit_seconds": fit_seconds.get(name, 0.0)})
    registry.set_tuned_recipe(settings.mlflow.registered_model, best, run_id)
    progress(f"recipe for the following nights: {best.to_json()}")
    for frame in (events, fit_events, truth, fit_feedback):
        frame.unpersist()
    return TuneResult(run_id, json.loads(best.to_json()), sampled, len(selection.trials) - skipped,
                      skipped, {k: round(v, 5) for k, v in selection.validation_ndcg.items()},
                      {k: round(e.metrics[metric], 5) for k, e in evaluations.items()},
                      {k: round(v, 1) for k, v in seconds.items()})


def main(argv=None) -> dict:
    return stage_main("tune", run, argv)


if __name__ == "__main__":
    main(sys.argv[1:])
