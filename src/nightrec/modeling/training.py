"""Fitting a recipe into a scoring Bundle (every night), each family through its candidate module,
and evaluating a bundle on a holdout."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from nightrec.modeling.candidates import FAMILIES
from nightrec.modeling.dataset import ModelSettingsView, TrainingSet
from nightrec.modeling.recipe import Recipe
from nightrec.modeling.scoring import Bundle


def fit_family(family: str, data: TrainingSet, params: dict, opts: ModelSettingsView, share: bool = False):
    """The family's fitted component, or None when this data cannot fit it. With share, what the fit
    derived from the data alone (data.memo: EASE's Gram matrix, max_items² floats) stays for the next
    fit of the same family on the same data, as a search's grid does; the caller then clears it."""
    if family not in FAMILIES:
        raise ValueError(f"unknown candidate family {family!r}; known: {sorted(FAMILIES)}")
    component = FAMILIES[family].fit(data, params, opts)
    if not share:
        data.memo.clear()
    return component


def fit_recipe(data: TrainingSet, recipe: Recipe, opts: ModelSettingsView,
               log=print) -> tuple[Bundle, dict[str, float]]:
    """The recipe's families fit on data, blended with its weights; returns the bundle and each
    family's fit seconds. Raises ValueError when a family cannot be fit on this data."""
    components, seconds = {}, {}
    families = recipe.families()
    for n, family in enumerate(families, 1):
        started = time.monotonic()
        log(f"fit {family} ({n} of {len(families)}) {recipe.params[family]}")
        component = fit_family(family, data, recipe.params[family], opts)
        if component is None:
            raise ValueError(f"recipe {recipe.candidate} needs {family}, which this data cannot fit "
                             f"(content needs an item file)")
        components[family], seconds[family] = component, time.monotonic() - started
        log(f"fit {family} done in {seconds[family]:.1f} s")
    return bundle_of(recipe, components, data), seconds


def bundle_of(recipe: Recipe, components: dict, data: TrainingSet) -> Bundle:
    """The recipe's fitted families, blended with its weights, over the data's catalog and rules."""
    families = recipe.families()
    return Bundle(data.catalog, {f: components[f] for f in families}, {f: recipe.weights[f] for f in families},
                  data.rules, json.loads(recipe.to_json()))


@dataclass
class Evaluation:
    metrics: dict[str, float]
    lists: DataFrame          # (user_id, item_ids, scores) of the truth users, cached


def evaluate(bundle: Bundle, data: TrainingSet, truth: DataFrame, ks: tuple[int, ...],
             cold_max_items: int) -> Evaluation:
    """Score the truth users with the bundle (rules included) and compute every metric in Spark;
    cold users have at most cold_max_items training items, the others are warm."""
    from nightrec.modeling.evaluation import catalog_metrics, ranking_metrics
    from nightrec.modeling.scoring import ranked_rows, recommend

    users = data.user_rows().join(truth.select("user_id").distinct(), "user_id")
    lists = recommend(bundle, users, max(ks)).cache()
    rows = ranked_rows(lists)
    counts = data.feedback.groupBy("user_id").agg(F.count("*").alias("n"))
    segments = counts.select("user_id", F.when(F.col("n") <= cold_max_items, "cold").otherwise("warm").alias("segment"))
    item_users = data.feedback.groupBy("item_id").agg(F.countDistinct("user_id").alias("users"))
    metrics = ranking_metrics(rows, truth, ks, segments)
    metrics |= catalog_metrics(rows, item_users, counts.count(), len(data.catalog), ks)
    return Evaluation(metrics, lists)
