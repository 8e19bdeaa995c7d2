"""The nightly pipeline itself on the published MovieLens protocol: for each seed, the training 75%
(per-user stratified) becomes a landing zone, the real stages run on it (ingest, validate, train
with its latest-items holdout gate, score), and the recommendations that would be published are
scored on the held-back 25% (seen items removed, k=10). Tuning runs first (as the weekly DAG
would), so the recipe the night fits is the pipeline's own choice on this seed's training part.

    .venv/bin/python bench/published_recs.py --seeds 1 2 3 4 5

Needs the MovieLens lake of bench/movielens.py (it builds it when missing). Each seed works in
var/bench/pipeline-<seed>/ with its own lake and MLflow store.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

HOME = Path(__file__).resolve().parents[1]
BENCH = HOME / "var" / "bench"


def seed_settings(seed: int):
    from nightrec.settings import load_settings

    home = BENCH / f"pipeline-{seed}"
    return home, load_settings("local", {**os.environ,
        "NIGHTREC_PATHS__LANDING": str(home / "landing"), "NIGHTREC_PATHS__LAKE": str(home / "lake"),
        "NIGHTREC_PATHS__DATA_DOCS": str(home / "data_docs"),
        "NIGHTREC_MLFLOW__TRACKING_URI": f"sqlite:///{home}/mlflow.db",
        "NIGHTREC_MLFLOW__ARTIFACT_ROOT": str(home / "artifacts"), "NIGHTREC_MODEL__RECIPE": "tuned"})


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    args = parser.parse_args(argv)
    os.environ.update({"NIGHTREC_PATHS__LANDING": str(BENCH / "landing"), "NIGHTREC_PATHS__LAKE": str(BENCH / "lake"),
                       "NIGHTREC_PATHS__DATA_DOCS": str(BENCH / "data_docs")})
    from pyspark.sql import functions as F

    from nightrec.data import lake
    from nightrec.data.feedback import implicit_feedback, stratified_split
    from nightrec.data.spark import get_spark
    from nightrec.data.tables import training_events
    from nightrec.modeling.evaluation import ranking_metrics
    from nightrec.modeling.scoring import ranked_rows
    from nightrec.pipeline import benchmark, ingest, score, train, tune, validate
    from nightrec.settings import load_settings

    base = load_settings()
    spark = get_spark(base, "nightrec-bench-published")
    benchmark.movielens_lake(spark, base, HOME / "var" / "cache")
    day, lookback = benchmark.MOVIELENS_LAST_DAY, benchmark.MOVIELENS_DAYS
    events = training_events(spark, base, day).cache()
    feedback = implicit_feedback(events, base.events.weights)

    rows = []
    for seed in args.seeds:
        home, settings = seed_settings(seed)
        shutil.rmtree(home, ignore_errors=True)
        train_pairs, test = stratified_split(feedback, 0.75, seed)
        kept = events.join(train_pairs.select("user_id", "item_id"), ["user_id", "item_id"])
        (kept.select("user_id", "item_id", "event_type", "value",
                     F.date_format("ts", "yyyy-MM-dd'T'HH:mm:ss'Z'").alias("ts"),
                     F.col("dt").cast("string").alias("dt"))
         .write.partitionBy("dt").option("header", True).csv(str(home / "landing" / "interactions")))
        for name in ("items.csv", "users.csv"):
            shutil.copy(BENCH / "landing" / name, home / "landing" / name)
        started = time.monotonic()
        ingest.run(spark, settings, day, lookback_days=lookback)
        validate.run(spark, settings, day, lookback_days=lookback)
        prepared = time.monotonic()
        tuned = tune.run(spark, settings, day)
        trained = train.run(spark, settings, day)
        trained_at = time.monotonic()
        score.run(spark, settings, day)
        gold = lake.read_table(spark, settings.table("gold/recommendations"), [day])
        metrics = ranking_metrics(ranked_rows(gold), test, [10])
        rows.append((seed, trained.candidate, metrics, trained_at - prepared, time.monotonic() - started))
        print(f"seed {seed}: published {trained.candidate} {tuned.recipe} NDCG@10 {metrics['ndcg_at_10']:.4f} "
              f"(tune + train {trained_at - prepared:.0f} s) tune {tuned.seconds} train {trained.seconds}", flush=True)

    print(f"\n$ .venv/bin/python bench/published_recs.py --seeds {' '.join(map(str, args.seeds))}")
    print("Nightly stages on the training 75% of each seed; what score writes for publishing, scored on the 25%\n")
    print("| seed | published candidate | MAP@10 | nDCG@10 | P@10 | R@10 | tune + train s |")
    print("|---|---|---|---|---|---|---|")
    for seed, best, m, train_seconds, _ in rows:
        print(f"| {seed} | {best} | {m['map_at_10']:.4f} | {m['ndcg_at_10']:.4f} | {m['precision_at_10']:.4f} | "
              f"{m['recall_at_10']:.4f} | {train_seconds:.0f} |")
    if len(rows) > 1:
        mean = {k: statistics.mean(r[2][k] for r in rows)
                for k in ("map_at_10", "ndcg_at_10", "precision_at_10", "recall_at_10")}
        print(f"| mean | | {mean['map_at_10']:.4f} | {mean['ndcg_at_10']:.4f} | {mean['precision_at_10']:.4f} | "
              f"{mean['recall_at_10']:.4f} | {statistics.mean(r[3] for r in rows):.0f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
