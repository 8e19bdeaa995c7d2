"""Item-item model with closed-form weights (EASE, Steck 2019): B = I - P / diag(P), P = (XᵀX + λI)⁻¹.

Spark computes the co-occurrence (Gram) matrix XᵀX of the `max_items` most popular items over all
of each user's items; the driver inverts it (Cholesky, float32). The inverse is dense, so the
model covers the head of the catalog only: `model.item_knn_max_items` bounds its memory
(max_items² floats) and time (max_items³). Other items get no score from it; the neighbours model
(nightrec.modeling.candidates.neighbours) covers a whole 100k+ catalog.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pyarrow as pa
import scipy.sparse as sp
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from scipy.linalg import lapack

from nightrec.modeling.cooccurrence import recent_histories, user_item_matrix
from nightrec.modeling.dataset import ModelSettingsView, TrainingSet
from nightrec.modeling.retrieval import ColumnsView
from nightrec.modeling.scoring import UserBlock

NAME = "itemknn"
REQUIRED_PARAMS = ("l2",)


@dataclass
class ItemKnnComponent:
    kind: ClassVar[str] = "itemknn"
    positions: np.ndarray   # catalog positions of the items the model covers
    weights: np.ndarray     # (covered, covered) float32, zero diagonal
    _slots: np.ndarray | None = field(default=None, repr=False, compare=False)  # see slots()

    def score(self, block: UserBlock) -> np.ndarray:
        scores = np.zeros(block.history.shape, dtype=np.float32)
        columns, covered = self.covered_scores(block)
        scores[:, columns] = covered
        return scores

    def flop(self, block: UserBlock) -> float:
        """Each consumed covered item adds its row of weights to the user's covered scores."""
        consumed = np.count_nonzero(self.slots(block.history.shape[1])[block.history.indices] >= 0)
        return 2.0 * consumed * len(self.positions)

    def view(self, block: UserBlock) -> ColumnsView:
        """For scoring at a shortlist (nightrec.modeling.retrieval)."""
        columns, covered = self.covered_scores(block)
        return ColumnsView(covered, columns, self.slots(block.history.shape[1]), block.history.shape[1])

    def slots(self, n_items: int) -> np.ndarray:
        """Catalog position -> its column among the covered items, -1 when not covered; once per catalog."""
        if self._slots is None or len(self._slots) != n_items:
            self._slots = np.full(n_items, -1, dtype=np.int32)
            self._slots[self.positions] = np.arange(len(self.positions), dtype=np.int32)
        return self._slots

    def covered_scores(self, block: UserBlock) -> tuple[np.ndarray, np.ndarray]:
        """The catalog positions the model covers and the users' scores there (zero elsewhere)."""
        consumed = block.history[:, self.positions]
        consumed.data[:] = 1.0
        return self.positions, np.asarray(consumed @ self.weights, dtype=np.float32)

    def describe(self) -> dict:
        return {"covered_items": int(len(self.positions))}

    def arrays(self) -> dict[str, np.ndarray]:
        return {"positions": self.positions, "weights": self.weights}

    @classmethod
    def restore(cls, description: dict, arrays: dict[str, np.ndarray]) -> ItemKnnComponent:
        return cls(arrays["positions"], arrays["weights"])


@dataclass
class Gram:
    positions: np.ndarray   # catalog positions of the covered items
    matrix: np.ndarray      # float32 co-occurrence counts between those items


def gram(feedback: DataFrame, catalog: np.ndarray, max_items: int) -> Gram:
    """Co-occurrence counts of the max_items most popular items over all of each user's items (EASE
    learns from every pair; the cost is bounded by the covered items); each Spark task sends one
    sparse partial sum (at most max_items² entries)."""
    counts = (feedback.groupBy("item_id").agg(F.count("*").alias("n"))
              .orderBy(F.col("n").desc(), "item_id").limit(max_items).toArrow())
    covered = np.sort(counts.column("item_id").to_numpy().astype(np.int64))
    shared = feedback.sparkSession.sparkContext.broadcast(covered)

    def partial(batches):
        ids, total = shared.value, None
        for batch in batches:
            x = user_item_matrix(batch, ids)
            together = (x.T @ x).tocsr()
            total = together if total is None else total + together
        if total is not None and total.nnz:
            part = total.tocoo()
            yield pa.RecordBatch.from_pydict({"rows": pa.array([part.row.astype(np.int32)]),
                                              "cols": pa.array([part.col.astype(np.int32)]),
                                              "counts": pa.array([part.data.astype(np.float32)])})

    schema = "rows array<int>, cols array<int>, counts array<float>"
    # one partial per core, not per shuffle partition: each can hold max_items² counts
    histories = recent_histories(feedback, None).coalesce(feedback.sparkSession.sparkContext.defaultParallelism)
    parts = histories.mapInArrow(partial, schema).toArrow()
    rows, cols, values = (parts.column(c).combine_chunks().flatten().to_numpy() for c in ("rows", "cols", "counts"))
    matrix = sp.coo_matrix((values, (rows, cols)), shape=(len(covered), len(covered))).toarray()  # partials summed
    return Gram(np.searchsorted(catalog, covered), matrix)


def fit(data: TrainingSet, params: dict, opts: ModelSettingsView) -> ItemKnnComponent:
    """The Gram matrix depends on the data alone: computed once per training set, however many l2
    values a search tries on it."""
    key = (NAME, "gram", opts.item_knn_max_items)
    if key not in data.memo:
        data.memo[key] = gram(data.feedback, data.catalog, opts.item_knn_max_items)
    return solve(data.memo[key], float(params["l2"]))


def solve(g: Gram, l2: float) -> ItemKnnComponent:
    p = g.matrix.copy()
    p[np.diag_indices_from(p)] += l2
    # Cholesky inverse (the matrix is symmetric positive definite): about 3x faster than LU in float64
    factor, info = lapack.spotrf(p, lower=0, clean=0, overwrite_a=1)
    if info == 0:
        p, info = lapack.spotri(factor, lower=0, overwrite_c=1)
    if info != 0:
        raise ValueError(f"item-item Gram matrix + {l2}·I is not positive definite (LAPACK info {info})")
    p = np.triu(p) + np.triu(p, 1).T
    weights = p / -np.diag(p)
    np.fill_diagonal(weights, 0.0)
    return ItemKnnComponent(g.positions, weights.astype(np.float32))
