"""Score users against a model bundle in Spark: component scores block by block, blended, business
rules applied, exact top-k. No user x item table is ever materialised.

A bundle is what every candidate (ALS, item-item, content, popularity, hybrid) becomes once fit:
the item catalog, one or more scoring components with blend weights, and the rules. Users come in
as rows of their history (items, strengths, recency-weighted strengths); each Spark task turns a
block of them into sparse matrices and asks every component for a dense block of scores.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

import numpy as np
import pyarrow as pa
import scipy.sparse as sp
from pyspark import TaskContext
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from threadpoolctl import threadpool_limits

from nightrec.modeling.topk import SCORES_PER_BLOCK, best_k
from nightrec.serving.layout import encode_many

OUTPUT_SCHEMA = "user_id int, item_ids array<int>, scores array<float>"
CANDIDATES_PER_SLOT = 4  # with a category cap, look this many times k deep for capped replacements


@dataclass
class UserBlock:
    """A block of users: histories as CSR over the catalog's positions."""

    user_ids: np.ndarray
    history: sp.csr_matrix   # strength per (user, item)
    recency: sp.csr_matrix   # strength x recency decay, same pattern


class Component(Protocol):
    """A fitted candidate (nightrec.modeling.candidates): scores users, and describes itself for the
    model artifact (nightrec.modeling.artifact) as JSON parameters and named arrays."""

    kind: ClassVar[str]

    def score(self, block: UserBlock) -> np.ndarray:
        """(users, catalog items) float32 scores; higher is better."""

    def describe(self) -> dict:
        """JSON-able parameters: what restore needs besides the arrays, and what a reader wants to know."""

    def arrays(self) -> dict[str, np.ndarray]:
        """The fitted state, by name."""

    @classmethod
    def restore(cls, description: dict, arrays: dict[str, np.ndarray]) -> Component:
        """The component again, from describe() and arrays()."""


def sparse_arrays(name: str, matrix: sp.csr_matrix) -> dict[str, np.ndarray]:
    """A CSR matrix as plain arrays (name.data, name.indices, name.indptr, name.shape)."""
    matrix = matrix.tocsr()
    return {f"{name}.data": matrix.data, f"{name}.indices": matrix.indices, f"{name}.indptr": matrix.indptr,
            f"{name}.shape": np.asarray(matrix.shape, dtype=np.int64)}


def restore_sparse(name: str, arrays: dict[str, np.ndarray]) -> sp.csr_matrix:
    return sp.csr_matrix((arrays[f"{name}.data"], arrays[f"{name}.indices"], arrays[f"{name}.indptr"]),
                         shape=tuple(int(n) for n in arrays[f"{name}.shape"]))


@dataclass
class Rules:
    """Business rules over the catalog: consumed items are always dropped (from the history)."""

    unavailable: np.ndarray | None = None   # bool per catalog item
    categories: np.ndarray | None = None    # int code per catalog item, -1 when it has none
    max_per_category: int | None = None     # at most this many items of one category per list


@dataclass
class Bundle:
    item_ids: np.ndarray                     # the catalog, sorted ascending
    components: dict[str, Component]
    weights: dict[str, float]
    rules: Rules = field(default_factory=Rules)
    params: dict = field(default_factory=dict)

    def scores(self, block: UserBlock) -> np.ndarray:
        """Blended scores: each component standardised per user (scales differ), then weighted."""
        used = [(name, w) for name, w in self.weights.items() if w > 0]
        if len(used) == 1:
            return self.components[used[0][0]].score(block).astype(np.float32, copy=False)
        total = None
        for name, weight in used:
            part = standardize(self.components[name].score(block), np.float32(weight))
            total = part if total is None else np.add(total, part, out=total)
        return total

    def ranked(self, block: UserBlock, k: int) -> pa.RecordBatch:
        """Top-k per user after the rules: unseen, available, category cap."""
        scores = self.scores(block)
        scores[block.history.nonzero()] = -np.inf
        if self.rules.unavailable is not None:
            scores[:, self.rules.unavailable] = -np.inf
        if self.rules.categories is not None and self.rules.max_per_category:
            cap_categories(scores, self.rules.categories, self.rules.max_per_category, k)
        return best_k(block.user_ids, scores, self.item_ids, min(k, len(self.item_ids)))

    def with_rules(self, rules: Rules) -> Bundle:
        return dataclasses.replace(self, rules=rules)


def standardize(scores: np.ndarray, weight: float = 1.0) -> np.ndarray:
    """Per-row z-score times weight, in place on a float32 array (a component's fresh scores: at a
    100k catalog the temporaries of the textbook formula cost as much as the ALS matmul); a
    constant row becomes zeros."""
    scores = scores.astype(np.float32, copy=False)
    scores -= scores.mean(axis=1, keepdims=True)
    # after centring, the variance is the mean square (einsum: no squared temporary)
    std = np.sqrt(np.einsum("ij,ij->i", scores, scores) / np.float32(scores.shape[1]))[:, None]
    scores *= np.float32(weight) / np.where(std > 0, std, np.float32(1.0))
    return scores


def cap_categories(scores: np.ndarray, categories: np.ndarray, cap: int, k: int) -> None:
    """In place: walking each row best first, an item whose category already has `cap` items above
    it is dropped (-inf). Only the CANDIDATES_PER_SLOT x k best are walked; the rest are dropped."""
    n_rows, n_items = scores.shape
    depth = min(n_items, CANDIDATES_PER_SLOT * k)
    top = np.argpartition(-scores, depth - 1, axis=1)[:, :depth]
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
    top = np.take_along_axis(top, order, axis=1)
    cats = categories[top]
    # Occurrence number of each candidate within its category, in score order.
    by_cat = np.argsort(cats, axis=1, kind="stable")
    sorted_cats = np.take_along_axis(cats, by_cat, axis=1)
    positions = np.broadcast_to(np.arange(depth), (n_rows, depth))
    new_run = np.ones_like(sorted_cats, dtype=bool)
    new_run[:, 1:] = sorted_cats[:, 1:] != sorted_cats[:, :-1]
    run_start = np.maximum.accumulate(np.where(new_run, positions, 0), axis=1)
    occurrence = np.empty_like(by_cat)
    np.put_along_axis(occurrence, by_cat, positions - run_start, axis=1)
    allowed = np.zeros(scores.shape, dtype=bool)
    keep = (occurrence < cap) | (cats < 0)
    rows = np.broadcast_to(np.arange(n_rows)[:, None], top.shape)
    allowed[rows[keep], top[keep]] = True
    scores[~allowed] = -np.inf


def user_rows(feedback: DataFrame, as_of: dt.datetime, half_life_days: float) -> DataFrame:
    """(user_id, items, strengths, recency) per user; recency = strength x 2^(-age / half-life)."""
    age_days = (F.lit(as_of).cast("double") - F.col("last_ts").cast("double")) / 86400.0
    decayed = F.col("strength") * F.pow(F.lit(2.0), -F.greatest(age_days, F.lit(0.0)) / F.lit(half_life_days))
    return (feedback.withColumn("recency", decayed.cast("float"))
            .groupBy("user_id").agg(F.sort_array(F.collect_list(F.struct("item_id", "strength", "recency"))).alias("h"))
            .select("user_id", F.col("h.item_id").alias("items"), F.col("h.strength").alias("strengths"),
                    F.col("h.recency").alias("recency")))


def recommend(bundle: Bundle, users: DataFrame, k: int, scores_per_block: int = SCORES_PER_BLOCK,
              serving_values: bool = False) -> DataFrame:
    """users: user_rows(...) of the users to score. Returns (user_id, item_ids, scores), best first;
    with serving_values also `value`, each list packed as Redis stores it (done here, where the lists
    are numpy arrays already, so the loader only moves bytes)."""
    spark = users.sparkSession
    shared = spark.sparkContext.broadcast(bundle)

    def score(batches):
        model = shared.value
        # Spark already runs one task per core: more BLAS threads per task would only oversubscribe.
        with threadpool_limits(TaskContext.get().cpus()):
            for batch in batches:
                for ranked in _score_batch(model, batch, k, scores_per_block):
                    yield with_serving_value(ranked) if serving_values else ranked

    return users.mapInArrow(score, OUTPUT_SCHEMA + (", value binary" if serving_values else ""))


def with_serving_value(lists: pa.RecordBatch) -> pa.RecordBatch:
    """(id, item_ids, scores) + value: the lists in the Redis codec (nightrec.serving.layout.encode)."""
    ids, scores = lists.column(1), lists.column(2)
    offsets = ids.offsets.to_numpy()
    values = encode_many(offsets - offsets[0], ids.flatten().to_numpy(zero_copy_only=False),
                         scores.flatten().to_numpy(zero_copy_only=False))
    return pa.RecordBatch.from_arrays([*lists.columns, pa.array(values, pa.binary())],
                                      names=[*lists.schema.names, "value"])


def _score_batch(bundle: Bundle, batch: pa.RecordBatch, k: int, scores_per_block: int):
    n_items = len(bundle.item_ids)
    block_rows = max(1, scores_per_block // max(n_items, 1))
    for start in range(0, batch.num_rows, block_rows):
        yield bundle.ranked(user_block(batch.slice(start, block_rows), bundle.item_ids), k)


def user_block(batch: pa.RecordBatch, item_ids: np.ndarray) -> UserBlock:
    """Arrow user rows -> UserBlock; items outside the catalog are ignored."""
    users = batch.column("user_id").to_numpy(zero_copy_only=False).astype(np.int32)
    items = batch.column("items")
    lengths = items.value_lengths().fill_null(0).to_numpy(zero_copy_only=False)
    rows = np.repeat(np.arange(len(users)), lengths)
    values = items.flatten().to_numpy(zero_copy_only=False)
    positions = np.searchsorted(item_ids, values)
    known = (positions < len(item_ids)) & (item_ids[np.minimum(positions, len(item_ids) - 1)] == values)
    shape = (len(users), len(item_ids))

    def matrix(column: str) -> sp.csr_matrix:
        data = batch.column(column).flatten().to_numpy(zero_copy_only=False).astype(np.float32)
        return sp.csr_matrix((data[known], (rows[known], positions[known])), shape=shape)
    return UserBlock(users, matrix("strengths"), matrix("recency"))


def ranked_rows(lists: DataFrame) -> DataFrame:
    """(user_id, item_ids, ...) -> (user_id, item_id, rank) rows, rank starting at 1."""
    return lists.select("user_id", F.posexplode("item_ids").alias("pos", "item_id")).select(
        "user_id", "item_id", (F.col("pos") + 1).alias("rank"))
