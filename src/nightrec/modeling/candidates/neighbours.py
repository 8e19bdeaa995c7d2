"""Item neighbourhood model over the whole catalog: each item keeps its `k` nearest neighbours by
shrunk cosine over the users who took both (nightrec.modeling.cooccurrence, computed in Spark); a user's
score for an item is the summed similarity to the items they took.

Unlike the item-item model (EASE, a dense inverse over the most popular items), it covers every
item of a 100k+ catalog: what it keeps grows with catalog x k, never catalog x catalog.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import scipy.sparse as sp
from pyspark.sql import DataFrame

from nightrec.modeling import cooccurrence
from nightrec.modeling.dataset import ModelSettingsView, TrainingSet
from nightrec.modeling.retrieval import SparseView
from nightrec.modeling.scoring import UserBlock, restore_sparse, sparse_arrays

NAME = "neighbours"
REQUIRED_PARAMS = ("k", "shrink")


@dataclass
class NeighboursComponent:
    kind: ClassVar[str] = "neighbours"
    similarity: sp.csr_matrix   # (catalog, catalog), at most k entries per row

    def score(self, block: UserBlock) -> np.ndarray:
        return self.sparse_scores(block).toarray().astype(np.float32, copy=False)

    def sparse_scores(self, block: UserBlock) -> sp.csr_matrix:
        taken = block.history.copy()
        taken.data[:] = 1.0
        return (taken @ self.similarity).tocsr()

    def view(self, block: UserBlock) -> SparseView:
        """For scoring at a shortlist (nightrec.modeling.retrieval): the co-occurring items only."""
        return SparseView(self.sparse_scores(block))

    def describe(self) -> dict:
        return {"neighbours": int(self.similarity.nnz)}

    def arrays(self) -> dict[str, np.ndarray]:
        return sparse_arrays("similarity", self.similarity)

    @classmethod
    def restore(cls, description: dict, arrays: dict[str, np.ndarray]) -> NeighboursComponent:
        return cls(restore_sparse("similarity", arrays))


def fit(data: TrainingSet, params: dict, opts: ModelSettingsView) -> NeighboursComponent:
    return fit_similarity(data.feedback, data.catalog, k=int(params["k"]), shrink=float(params["shrink"]))


def fit_similarity(feedback: DataFrame, catalog: np.ndarray, *, k: int, shrink: float,
                   max_user_items: int = cooccurrence.MAX_USER_ITEMS) -> NeighboursComponent:
    """feedback: (user_id, item_id, last_ts, ...)."""
    found = cooccurrence.neighbours(feedback, k, shrink=shrink, max_user_items=max_user_items).toArrow()
    items = found.column("item_id").to_numpy()
    neighbour_ids = found.column("item_ids").combine_chunks()
    lengths = neighbour_ids.value_lengths().to_numpy()
    rows = np.repeat(np.searchsorted(catalog, items), lengths)
    cols = np.searchsorted(catalog, neighbour_ids.flatten().to_numpy())
    values = found.column("scores").combine_chunks().flatten().to_numpy()
    matrix = sp.csr_matrix((values.astype(np.float32), (rows, cols)), shape=(len(catalog), len(catalog)))
    return NeighboursComponent(matrix)
