"""What candidates are fit on: a training set (feedback, the catalog, the rules from the item file)
and the few model settings fitting needs."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from nightrec.modeling.scoring import Rules, user_rows

UNAVAILABLE = ("0", "false", "no", "n", "unavailable")


@dataclass
class TrainingSet:
    """What candidates are fit on: feedback (user_id, item_id, strength, last_ts), the catalog, rules."""

    feedback: DataFrame
    as_of: dt.datetime
    catalog: np.ndarray
    rules: Rules
    items: DataFrame | None          # (item_id, attributes map) or None
    recency_half_life_days: float
    memo: dict = field(default_factory=dict, repr=False)  # what candidates derive from the data alone, once

    def user_rows(self) -> DataFrame:
        return user_rows(self.feedback, self.as_of, self.recency_half_life_days)


@dataclass
class ModelSettingsView:
    """The few settings the modeling code needs (keeps it independent of the settings file)."""

    seed: int = 42
    eval_k: int = 10
    blocks: int = 2
    item_knn_max_items: int = 5_000
    validation_users: int = 5_000
    recency_half_life_days: float = 90.0
    max_per_category: int | None = None

    @classmethod
    def of(cls, model, blocks: int) -> ModelSettingsView:
        """From the `[model]` settings; blocks: ALS blocks, one per core of the Spark application."""
        return cls(seed=model.seed, eval_k=model.eval_k, blocks=blocks, item_knn_max_items=model.item_knn_max_items,
                   validation_users=model.validation_users, recency_half_life_days=model.recency_half_life_days,
                   max_per_category=model.max_per_category)


def is_unavailable():
    """Column over an item file snapshot: true when its `available` attribute says no."""
    return F.lower(F.trim(F.col("attributes")["available"])).isin(list(UNAVAILABLE))


@dataclass
class ItemFacts:
    """What the item file says about items: the ids it lists, which are unavailable, their category."""

    ids: np.ndarray
    unavailable: np.ndarray      # bool per id
    categories: np.ndarray       # object (str or None) per id

    @classmethod
    def read(cls, items: DataFrame | None) -> ItemFacts:
        if items is None:
            return cls(np.zeros(0, np.int64), np.zeros(0, bool), np.zeros(0, object))
        table = items.select("item_id", is_unavailable().alias("unavailable"), F.lower(F.trim(F.coalesce(
            F.col("attributes")["category"], F.split(F.col("attributes")["genres"], r"\|")[0]))).alias("category")
        ).toArrow()
        return cls(table.column("item_id").to_numpy().astype(np.int64),
                   table.column("unavailable").to_numpy(zero_copy_only=False).astype(bool),
                   np.asarray(table.column("category").to_pylist(), dtype=object))

    def unavailable_ids(self) -> set[int]:
        return set(self.ids[self.unavailable].tolist())

    def rules_for(self, catalog: np.ndarray, max_per_category: int | None) -> Rules:
        """The rules over a catalog (any catalog: a champion's from another night too)."""
        unavailable = np.isin(catalog, self.ids[self.unavailable])
        named = np.array([c is not None and c != "" for c in self.categories], dtype=bool)
        codes = {name: code for code, name in enumerate(sorted(set(self.categories[named])))}
        categories = None
        if codes:
            categories = np.full(len(catalog), -1, dtype=np.int32)
            positions = np.searchsorted(catalog, self.ids[named])
            found = (positions < len(catalog)) & (catalog[np.minimum(positions, len(catalog) - 1)] == self.ids[named])
            categories[positions[found]] = [codes[c] for c in self.categories[named][found]]
        return Rules(unavailable=unavailable if unavailable.any() else None, categories=categories,
                     max_per_category=max_per_category)


def training_set(feedback: DataFrame, items: DataFrame | None, as_of: dt.datetime,
                 opts: ModelSettingsView) -> TrainingSet:
    """The catalog is every item with feedback or a row in the item file; rules come from the file."""
    facts = ItemFacts.read(items)
    seen = feedback.select("item_id").distinct().toArrow().column("item_id").to_numpy()
    catalog = np.union1d(seen.astype(np.int64), facts.ids)
    return TrainingSet(feedback, as_of, catalog, facts.rules_for(catalog, opts.max_per_category), items,
                       opts.recency_half_life_days)
