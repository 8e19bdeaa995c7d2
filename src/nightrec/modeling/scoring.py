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
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

import numpy as np
import pyarrow as pa
import scipy.sparse as sp
from numba import njit
from pyspark import AccumulatorParam, TaskContext
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from threadpoolctl import threadpool_limits

from nightrec.modeling.moments import row_moments, standardize
from nightrec.modeling.retrieval import ColumnsView, Retrieval, View, mask_at
from nightrec.modeling.topk import SCORES_PER_BLOCK, best_k, best_k_at
from nightrec.serving.layout import encode_many

OUTPUT_SCHEMA = "user_id int, item_ids array<int>, scores array<float>"


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
class Spent:
    """Where scoring's time goes: core-seconds and floating-point operations by part, summed over
    blocks (and over Spark tasks: SpentSum). A part's FLOP bound is its operations at the best
    matmul rate of one core; arithmetic parts are judged against it, the rest by ns per pair."""

    seconds: dict[str, float] = field(default_factory=dict)
    flop: dict[str, float] = field(default_factory=dict)
    pairs: int = 0  # (user, catalog item) pairs scored

    @contextmanager
    def part(self, name: str, flop: float = 0.0):
        started = time.perf_counter()
        yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started
        self.flop[name] = self.flop.get(name, 0.0) + flop

    def merge(self, other: Spent) -> Spent:
        for name, seconds in other.seconds.items():
            self.seconds[name] = self.seconds.get(name, 0.0) + seconds
            self.flop[name] = self.flop.get(name, 0.0) + other.flop.get(name, 0.0)
        self.pairs += other.pairs
        return self

    def lines(self, flop_rate: float) -> list[str]:
        """A line per part, largest first: core-seconds, ns per pair, share of its FLOP bound."""
        pairs, total = max(self.pairs, 1), sum(self.seconds.values())
        lines = [f"{total:.1f} core-s over {self.pairs:,} (user, item) pairs: {total / pairs * 1e9:.2f} ns per pair"]
        for name, seconds in sorted(self.seconds.items(), key=lambda kv: -kv[1]):
            bound = self.flop.get(name, 0.0) / flop_rate
            share = f", {bound / seconds:.0%} of its FLOP bound" if bound > 0 and seconds > 0 else ""
            lines.append(f"  {name}: {seconds:.1f} core-s, {seconds / pairs * 1e9:.2f} ns per pair{share}")
        return lines


class SpentSum(AccumulatorParam):
    """Spent, summed over Spark tasks."""

    def zero(self, value: Spent) -> Spent:
        return Spent()

    def addInPlace(self, a: Spent, b: Spent) -> Spent:
        return a.merge(b)


@dataclass
class Bundle:
    item_ids: np.ndarray                     # the catalog, sorted ascending
    components: dict[str, Component]
    weights: dict[str, float]
    rules: Rules = field(default_factory=Rules)
    params: dict = field(default_factory=dict)
    retrieval: Retrieval | None = None      # None: every user scored against the whole catalog

    def scores(self, block: UserBlock) -> np.ndarray:
        """Blended scores: each component standardised per user (scales differ), then weighted."""
        total, shift = self.blend(block, Spent())
        return total if shift is None else total + shift[:, None].astype(np.float32)

    def blend(self, block: UserBlock, spent: Spent) -> tuple[np.ndarray, np.ndarray | None]:
        """The blend up to a constant per user, and that constant (None for a single component).

        Σ w·(s − μ)/σ = Σ (w/σ)·s − Σ w·μ/σ: the order needs only the first sum, and a component can
        give it without a pass of its own: ALS scales its user factors before the matmul (μ and σ
        from its item factors), the item-item model adds its covered columns only. The second sum
        is added to the k scores kept."""
        used = [(name, w) for name, w in self.weights.items() if w > 0]
        if len(used) == 1:
            component = self.components[used[0][0]]
            with spent.part(f"score {used[0][0]}", _flop(component, block)):
                return component.score(block).astype(np.float32, copy=False), None
        n_users, n_items = len(block.user_ids), len(self.item_ids)
        total, shift = None, np.zeros(n_users)
        sparse = [(name, w) for name, w in used if hasattr(self.components[name], "covered_scores")]
        for name, weight in [u for u in used if u not in sparse] + sparse:
            component = self.components[name]
            if hasattr(component, "covered_scores"):  # zero outside a few columns
                with spent.part(f"score {name}", _flop(component, block)):
                    columns, part = component.covered_scores(block)
                with spent.part("blend"):
                    mean, std = row_moments(part, n_items)
                    total = np.zeros((n_users, n_items), dtype=np.float32) if total is None else total
                    _add_at_columns(total, columns, part, (weight / std).astype(np.float32))
                    shift -= weight * mean / std
                continue
            scaled = hasattr(component, "scaled_scores")  # (w/σ)·s straight from its arithmetic
            with spent.part(f"score {name}", _flop(component, block)):
                if scaled:
                    part, mean, std = component.scaled_scores(block, weight)
                else:
                    part = component.score(block)
            with spent.part("blend"):
                if scaled:
                    shift -= weight * mean / std
                else:
                    part = standardize(part, np.float32(weight))
                total = part if total is None else np.add(total, part, out=total)
        return total, shift

    def ranked(self, block: UserBlock, k: int, spent: Spent | None = None) -> pa.RecordBatch:
        """Top-k per user after the rules: unseen, available, category cap."""
        spent = spent if spent is not None else Spent()
        if self.retrieval is not None:
            return self.ranked_at_shortlist(block, k, spent)
        scores, shift = self.blend(block, spent)
        with spent.part("rules (seen, unavailable)"):
            scores[block.history.nonzero()] = -np.inf
            if self.rules.unavailable is not None:
                scores[:, self.rules.unavailable] = -np.inf
        capped = self.rules.categories is not None and self.rules.max_per_category
        with spent.part("selection (category cap included)" if capped else "selection"):
            ranked = best_k(block.user_ids, scores, self.item_ids, min(k, len(self.item_ids)), shift=shift,
                            categories=self.rules.categories if capped else None, cap=self.rules.max_per_category)
        spent.pairs += scores.size
        return ranked

    def ranked_at_shortlist(self, block: UserBlock, k: int, spent: Spent) -> pa.RecordBatch:
        """ranked() with every user's blend computed exactly at their shortlist only
        (nightrec.modeling.retrieval): the same standardisation, rules and selection."""
        used = [(name, w) for name, w in self.weights.items() if w > 0]
        views = {}
        for name, _ in used:
            with spent.part(f"score {name}"):
                views[name] = view_of(self.components[name], block)
        with spent.part("shortlist"):
            history = block.history.tocsr()
            history.sort_indices()
            positions = self.retrieval.shortlist(views, history)
        total, shift = np.zeros(positions.shape, dtype=np.float32), None
        for name, weight in used:
            with spent.part(f"score {name}"):
                part = views[name].at(positions)
            with spent.part("blend"):
                if len(used) == 1:
                    total = part
                    continue
                scale = weight / views[name].std
                total += part * scale.astype(np.float32)[:, None]
                shift = (0.0 if shift is None else shift) - views[name].mean * scale
        with spent.part("rules (seen, unavailable)"):
            unavailable = self.rules.unavailable if self.rules.unavailable is not None else np.empty(0, dtype=bool)
            mask_at(total, positions, history.indptr, history.indices, unavailable)
        capped = self.rules.categories is not None and self.rules.max_per_category
        with spent.part("selection (category cap included)" if capped else "selection"):
            ranked = best_k_at(block.user_ids, total, positions, self.item_ids, min(k, len(self.item_ids)),
                               shift=shift, categories=self.rules.categories if capped else None,
                               cap=self.rules.max_per_category)
        spent.pairs += positions.size
        return ranked

    def columns_per_user(self) -> int:
        """The widest score row a block holds per user (what sizes the blocks): the catalog, or at
        shortlists the widest of the shortlist and each component's dense part."""
        if self.retrieval is None:
            return len(self.item_ids)
        widths = [self.retrieval.width(sum(w > 0 for w in self.weights.values()))]
        for name, weight in self.weights.items():
            component = self.components[name]
            if weight > 0 and not hasattr(component, "view"):
                widths.append(len(self.item_ids))
            elif weight > 0 and hasattr(component, "covered_scores"):
                widths.append(len(component.positions))
        return max(widths)

    def with_rules(self, rules: Rules) -> Bundle:
        return dataclasses.replace(self, rules=rules)

    def with_retrieval(self, retrieval: Retrieval | None) -> Bundle:
        return dataclasses.replace(self, retrieval=retrieval)


def view_of(component: Component, block: UserBlock) -> View:
    """A component's view for scoring at a shortlist: its own when it has one (sub-linear in the
    catalog), else its full scores (the content model's sparse text products)."""
    if hasattr(component, "view"):
        return component.view(block)
    return ColumnsView(component.score(block).astype(np.float32, copy=False), None, None, block.history.shape[1])


def _flop(component: Component, block: UserBlock) -> float:
    """A component's floating-point operations for a block (0 when it does not say)."""
    return float(component.flop(block)) if hasattr(component, "flop") else 0.0


@njit(nogil=True, cache=True)
def _add_at_columns(total, columns, part, scale):
    """total[:, columns] += part * scale[:, None], in place: numpy's fancy index would gather and
    scatter a copy of every covered column."""
    for r in range(part.shape[0]):
        for j in range(part.shape[1]):
            total[r, columns[j]] += part[r, j] * scale[r]


def user_rows(feedback: DataFrame, as_of: dt.datetime, half_life_days: float) -> DataFrame:
    """(user_id, items, strengths, recency) per user; recency = strength x 2^(-age / half-life)."""
    age_days = (F.lit(as_of).cast("double") - F.col("last_ts").cast("double")) / 86400.0
    decayed = F.col("strength") * F.pow(F.lit(2.0), -F.greatest(age_days, F.lit(0.0)) / F.lit(half_life_days))
    return (feedback.withColumn("recency", decayed.cast("float"))
            .groupBy("user_id").agg(F.sort_array(F.collect_list(F.struct("item_id", "strength", "recency"))).alias("h"))
            .select("user_id", F.col("h.item_id").alias("items"), F.col("h.strength").alias("strengths"),
                    F.col("h.recency").alias("recency")))


def recommend(bundle: Bundle, users: DataFrame, k: int, scores_per_block: int = SCORES_PER_BLOCK,
              serving_values: bool = False, spent=None) -> DataFrame:
    """users: user_rows(...) of the users to score. Returns (user_id, item_ids, scores), best first;
    with serving_values also `value`, each list packed as Redis stores it (done here, where the lists
    are numpy arrays already, so the loader only moves bytes). spent: an accumulator of Spent
    (SpentSum) that each task adds its time to."""
    spark = users.sparkSession
    shared = spark.sparkContext.broadcast(bundle)

    def score(batches):
        model, mine = shared.value, Spent()
        # Spark already runs one task per core: more BLAS threads per task would only oversubscribe.
        with threadpool_limits(TaskContext.get().cpus()):
            for batch in batches:
                for ranked in _score_batch(model, batch, k, scores_per_block, mine):
                    if serving_values:
                        with mine.part("serving values"):
                            ranked = with_serving_value(ranked)
                    yield ranked
        if spent is not None:
            spent.add(mine)

    return users.mapInArrow(score, OUTPUT_SCHEMA + (", value binary" if serving_values else ""))


def with_serving_value(lists: pa.RecordBatch) -> pa.RecordBatch:
    """(id, item_ids, scores) + value: the lists in the Redis codec (nightrec.serving.layout.encode)."""
    ids, scores = lists.column(1), lists.column(2)
    offsets = ids.offsets.to_numpy()
    values = encode_many(offsets - offsets[0], ids.flatten().to_numpy(zero_copy_only=False),
                         scores.flatten().to_numpy(zero_copy_only=False))
    return pa.RecordBatch.from_arrays([*lists.columns, pa.array(values, pa.binary())],
                                      names=[*lists.schema.names, "value"])


def _score_batch(bundle: Bundle, batch: pa.RecordBatch, k: int, scores_per_block: int, spent: Spent):
    block_rows = max(1, scores_per_block // max(bundle.columns_per_user(), 1))
    for start in range(0, batch.num_rows, block_rows):
        with spent.part("user rows to matrices"):
            block = user_block(batch.slice(start, block_rows), bundle.item_ids)
        yield bundle.ranked(block, k, spent)


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
