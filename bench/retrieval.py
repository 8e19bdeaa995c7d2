"""Retrieved against exact scoring on one lake, as a night fits and judges a model: the holdout's
NDCG@10 both ways, recall@100 of the retrieved lists against the exact ones, and the seconds each
takes, side by side.

    .venv/bin/python bench/retrieval.py --home var/bench/scale/L --ds 2024-06-30

--home: a size's folder of bench/scale.py after its nights (its lake, and its MLflow for the
recipe). The night's split: each user's latest items held out, the recipe fit on the rest; the
same --users holdout users are scored exactly and at shortlists (model.retrieval_depth, or
--depth), --repeat times in turn (the median and spread of the seconds are printed). Prints a
table and this command.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
from pathlib import Path

from pyspark.sql import functions as F
from scale import settings_of
from topk import timed

from nightrec.data.feedback import implicit_feedback, latest_split, sample_users
from nightrec.data.spark import get_spark
from nightrec.data.tables import attributes, start_of, training_events
from nightrec.modeling import ann, dataset, registry, tracking, training
from nightrec.modeling.scoring import recommend


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--ds", type=dt.date.fromisoformat, required=True)
    parser.add_argument("--users", type=int, default=50_000, help="holdout users scored both ways")
    parser.add_argument("--depth", type=int, help="candidates per source (default: model.retrieval_depth)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    overrides = {"spark__driver_memory": "12g"} | ({"model__retrieval_depth": str(args.depth)} if args.depth else {})
    settings = settings_of(args.home.resolve(), **overrides)
    m = settings.model
    spark = get_spark(settings, "nightrec-bench-retrieval")
    tracking.configure(settings)
    recipe, source = registry.nightly_recipe(settings)
    opts = dataset.ModelSettingsView.of(m, spark.sparkContext.defaultParallelism)
    as_of = start_of(args.ds + dt.timedelta(days=1))
    items = attributes(spark, settings, "items", args.ds)
    fit_events, truth = latest_split(training_events(spark, settings, args.ds).cache(), m.holdout_share)
    sampled = sample_users(truth, args.users, m.seed).cache()
    data = dataset.training_set(implicit_feedback(fit_events, settings.events.weights).cache(), items, as_of, opts)
    fit_seconds, (bundle, _) = timed(lambda: training.fit_recipe(data, recipe, opts, log=lambda *a, **k: None))
    bundle = bundle.with_rules(dataset.ItemFacts.read(items).rules_for(bundle.item_ids, m.max_per_category))
    forced = m.model_copy(update={"retrieval": "retrieved"})
    build_seconds, retrieval = timed(lambda: ann.retrieval_for(bundle, data.feedback, forced, as_of))
    modes = {"exact": bundle, "retrieved": bundle.with_retrieval(retrieval)}
    users = data.user_rows().join(sampled.select("user_id").distinct(), "user_id").cache()
    n_users = users.count()

    seconds = {mode: [] for mode in modes}
    for _ in range(args.repeat):  # in turn: the machine's noise falls on both
        for mode, scored in modes.items():
            job = recommend(scored, users, m.top_k).write.format("noop").mode("overwrite")
            seconds[mode].append(timed(job.save)[0])
    metrics, lists = {}, {}
    for mode, scored in modes.items():
        evaluation = training.evaluate(scored, data, sampled, (m.eval_k, m.top_k), m.cold_user_max_items)
        metrics[mode], lists[mode] = evaluation.metrics, evaluation.lists
    both = (lists["exact"].select("user_id", F.col("item_ids").alias("exact"))
            .join(lists["retrieved"].select("user_id", F.col("item_ids").alias("retrieved")), "user_id"))
    recall = both.select(F.avg(F.size(F.array_intersect("exact", "retrieved")) / F.size("exact"))).first()[0]

    print(f"\n$ python bench/retrieval.py {' '.join(argv)}")
    print(f"recipe {recipe.to_json()} ({source}), fit in {fit_seconds:.0f} s on the fit part; catalog "
          f"{len(bundle.item_ids):,} items; {n_users:,} holdout users scored, top-{m.top_k}, "
          f"{args.repeat} runs each in turn; {ann.describe(retrieval)}; index and trending built in "
          f"{build_seconds:.1f} s\n")
    print(f"| scoring | runs (s) | median s | spread s | vs exact | holdout NDCG@{m.eval_k} | "
          f"recall@{m.eval_k} | recall@{m.top_k} vs exact |")
    print("|---|---|---|---|---|---|---|---|")
    base = statistics.median(seconds["exact"])
    for mode in modes:
        runs = seconds[mode]
        print(f"| {mode} | {', '.join(f'{s:.1f}' for s in runs)} | {statistics.median(runs):.1f} | "
              f"{max(runs) - min(runs):.1f} | {statistics.median(runs) / base:.2f} | "
              f"{metrics[mode][f'ndcg_at_{m.eval_k}']:.4f} | {metrics[mode][f'recall_at_{m.eval_k}']:.4f} | "
              f"{1.0 if mode == 'exact' else recall:.4f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
