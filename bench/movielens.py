"""Benchmark mode on MovieLens-100K: the published protocol (per-user stratified 75/25 random split,
seen items removed, k=10) over several seeds, every candidate next to the published rows.

    .venv/bin/python bench/movielens.py --seeds 1 2 3 4 5

Data goes through the product's own ingest and validation into a lake under var/bench/; each seed
then runs the nightly job's selection (hyperparameter search and blend weights on an inner split of
the training part only) and scores the test part once. "champion" is the candidate the pipeline
itself picks by inner-validation NDCG, i.e. what it would publish.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

HOME = Path(__file__).resolve().parents[1]
BENCH = HOME / "var" / "bench"
PUBLISHED_NDCG = {  # Microsoft Recommenders' MovieLens-100K table: stratified 75/25, k=10
    "BiVAE (published)": 0.475, "BPR (published)": 0.442, "SAR (published)": 0.382, "Spark ALS (published)": 0.044}
COLUMNS = ("map_at_10", "ndcg_at_10", "precision_at_10", "recall_at_10", "coverage_at_10")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    args = parser.parse_args(argv)
    os.environ.update({"NIGHTREC_PATHS__LANDING": str(BENCH / "landing"), "NIGHTREC_PATHS__LAKE": str(BENCH / "lake"),
                       "NIGHTREC_PATHS__DATA_DOCS": str(BENCH / "data_docs")})

    from nightrec.data.feedback import implicit_feedback
    from nightrec.data.spark import get_spark
    from nightrec.data.tables import attributes, training_events
    from nightrec.modeling import dataset
    from nightrec.modeling.recipe import load_search_space
    from nightrec.pipeline import benchmark
    from nightrec.settings import load_settings, resolve

    settings = load_settings()
    spark = get_spark(settings, "nightrec-bench-movielens")
    day = benchmark.MOVIELENS_LAST_DAY
    benchmark.movielens_lake(spark, settings, HOME / "var" / "cache")
    feedback = implicit_feedback(training_events(spark, settings, day), settings.events.weights).cache()
    items = attributes(spark, settings, "items", day)
    space = load_search_space(resolve(settings.home, settings.model.search_space))
    opts = dataset.ModelSettingsView.of(settings.model, spark.sparkContext.defaultParallelism)
    print(f"{feedback.count()} (user, item) pairs, {feedback.select('user_id').distinct().count()} users", flush=True)

    results = []
    for seed in args.seeds:
        started = time.monotonic()
        result = benchmark.run(feedback, items, space, opts, seed, settings.model.cold_user_max_items,
                               log=lambda _: None)
        results.append(result)
        print(f"seed {seed}: champion {result.champion} weights {result.selection.weights} "
              f"NDCG@10 {result.metrics[result.champion]['ndcg_at_10']:.4f} ({time.monotonic() - started:.0f} s)",
              flush=True)
    print_table(results, args.seeds)


def mean_std(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def print_table(results, seeds) -> None:
    print(f"\n$ .venv/bin/python bench/movielens.py --seeds {' '.join(map(str, seeds))}")
    print(f"MovieLens-100K, stratified 75/25 per user, k=10, mean ± std over {len(seeds)} seeds\n")
    print("| model | MAP@10 | nDCG@10 | P@10 | R@10 | coverage@10 | train s |")
    print("|---|---|---|---|---|---|---|")
    rows = {"champion (pipeline's pick)": [(r.metrics[r.champion], r.fit_seconds[r.champion] + r.select_seconds)
                                           for r in results]}
    for name in results[0].metrics:
        rows[name] = [(r.metrics[name], r.fit_seconds.get(name, 0.0)) for r in results if name in r.metrics]
    for name, runs in rows.items():
        cells = [mean_std([m[c] for m, _ in runs]) for c in COLUMNS]
        seconds = statistics.mean(s for _, s in runs)
        print(f"| {name} | " + " | ".join(cells) + f" | {seconds:.0f} |")
    for name, ndcg in PUBLISHED_NDCG.items():
        print(f"| {name} | – | {ndcg:.3f} | – | – | – | – |")
    print("\ntrain s: fit on the full training part; the champion's includes the search and blend learning.")
    picks = ", ".join(f"seed {r.seed}: {r.champion}" for r in results)
    print(f"champion picks: {picks}")


if __name__ == "__main__":
    main(sys.argv[1:])
