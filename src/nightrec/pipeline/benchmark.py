"""Benchmark mode: the published MovieLens protocol (per-user stratified 75/25 random split, items
seen in training removed, k=10), run through the same selection and fitting as the nightly job.

Hyperparameters and blend weights are chosen on inner 75/25 splits of the training part only
(NDCG averaged over `folds` of them: one split of 943 users is too noisy to tell close settings apart);
the test part is touched once, to score the result. The champion is the candidate with the best
inner-validation NDCG, exactly as the nightly job would pick it.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession

from nightrec.data import lake, movielens
from nightrec.data.feedback import stratified_split
from nightrec.modeling import dataset, search, training
from nightrec.pipeline import ingest, validate
from nightrec.settings import Settings

TRAIN_SHARE = 0.75
MOVIELENS_LAST_DAY = dt.date(1998, 4, 22)
MOVIELENS_DAYS = 215  # back from its last day, these cover all of MovieLens-100K


def movielens_lake(spark: SparkSession, settings: Settings, cache_dir: Path) -> None:
    """MovieLens-100K in the settings' lake, through the product's own ingest and validation; the
    landing files are written from the downloaded wheel first. Nothing is done when silver exists."""
    if lake.table_exists(settings.table("silver/interactions")):
        return
    landing = Path(settings.path("landing"))
    if not (landing / "interactions").is_dir():
        movielens.convert(movielens.fetch_wheel(cache_dir), landing)
    ingest.run(spark, settings, MOVIELENS_LAST_DAY, lookback_days=MOVIELENS_DAYS)
    validate.run(spark, settings, MOVIELENS_LAST_DAY, lookback_days=MOVIELENS_DAYS)


@dataclass
class BenchmarkResult:
    seed: int
    champion: str
    selection: search.Selection
    metrics: dict[str, dict[str, float]]      # candidate -> metrics on the test split
    fit_seconds: dict[str, float]             # candidate -> fit time on the full training split
    select_seconds: float


def run(feedback: DataFrame, items: DataFrame | None, space: dict, opts: dataset.ModelSettingsView,
        seed: int, cold_max_items: int, ks: tuple[int, ...] = (10, 100), folds: int = 2, log=print) -> BenchmarkResult:
    """feedback: (user_id, item_id, strength, last_ts) of the whole data set."""
    as_of = feedback.agg({"last_ts": "max"}).first()[0] or dt.datetime.now(dt.timezone.utc)
    train, test = stratified_split(feedback, TRAIN_SHARE, seed)
    train, test = train.cache(), test.cache()
    started = time.monotonic()
    inner_folds = []
    for fold in range(folds):
        inner_train, inner_truth = stratified_split(train, TRAIN_SHARE, seed + 1000 * (fold + 1))
        inner_folds.append((dataset.training_set(inner_train.cache(), items, as_of, opts), inner_truth.cache()))
    selection = search.select(inner_folds, space, opts, log=log)
    select_seconds = time.monotonic() - started
    champion = max(selection.validation_ndcg, key=selection.validation_ndcg.get)
    data = dataset.training_set(train, items, as_of, opts)
    bundles, fit_seconds = search.fit_bundles(data, selection, opts)
    metrics = {}
    for name, bundle in bundles.items():
        evaluation = training.evaluate(bundle, data, test, ks, cold_max_items)
        metrics[name] = evaluation.metrics
        evaluation.lists.unpersist()
        log(f"  test {name}: NDCG@10 {metrics[name]['ndcg_at_10']:.4f}")
    return BenchmarkResult(seed, champion, selection, metrics, fit_seconds, select_seconds)
