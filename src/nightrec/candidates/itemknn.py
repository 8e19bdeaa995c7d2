"""Item-item model with closed-form weights (EASE, Steck 2019): B = I - P / diag(P), P = (XᵀX + λI)⁻¹.

Spark computes the item co-occurrence (Gram) matrix XᵀX from each user's items; the driver inverts
it. That bounds the model to the `max_items` most popular items (a dense m x m inverse: 10k items
take ~1 GB and tens of seconds); the other items get no score from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import reduce

import numpy as np
import scipy.sparse as sp
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from nightrec.scoring import UserBlock


@dataclass
class ItemKnnComponent:
    positions: np.ndarray   # catalog positions of the items the model covers
    weights: np.ndarray     # (covered, covered) float32, zero diagonal

    def score(self, block: UserBlock) -> np.ndarray:
        scores = np.zeros(block.history.shape, dtype=np.float32)
        consumed = block.history[:, self.positions]
        consumed.data[:] = 1.0
        scores[:, self.positions] = consumed @ self.weights
        return scores


@dataclass
class Gram:
    positions: np.ndarray   # catalog positions, most popular first
    matrix: np.ndarray      # float64 co-occurrence counts between those items


def gram(feedback: DataFrame, catalog: np.ndarray, max_items: int) -> Gram:
    """Co-occurrence counts of the max_items most popular items, summed over Spark partitions."""
    counts = (feedback.groupBy("item_id").agg(F.count("*").alias("n"))
              .orderBy(F.col("n").desc(), "item_id").limit(max_items).toPandas())
    covered = np.sort(counts["item_id"].to_numpy(dtype=np.int64))
    m = len(covered)
    shared = feedback.sparkSession.sparkContext.broadcast(covered)

    def partial(rows):
        ids = shared.value
        users, items = [], []
        for row in rows:
            users.append(row.user_id)
            items.append(row.item_id)
        if not users:
            return
        users, items = np.asarray(users), np.asarray(items)
        pos = np.searchsorted(ids, items)
        keep = (pos < len(ids)) & (ids[np.minimum(pos, len(ids) - 1)] == items)
        _, user_index = np.unique(users[keep], return_inverse=True)
        x = sp.csr_matrix((np.ones(keep.sum(), dtype=np.float64), (user_index, pos[keep])),
                          shape=(user_index.max() + 1 if len(user_index) else 0, len(ids)))
        yield (x.T @ x).tocsr()

    # A user's items must meet in one partition for their co-occurrences to count.
    by_user = feedback.select("user_id", "item_id").repartition("user_id")
    parts = by_user.rdd.mapPartitions(partial).collect()
    total = reduce(lambda a, b: a + b, parts, sp.csr_matrix((m, m)))
    return Gram(np.searchsorted(catalog, covered), total.toarray())


def fit(g: Gram, l2: float) -> ItemKnnComponent:
    p = g.matrix.copy()
    p[np.diag_indices_from(p)] += l2
    p = np.linalg.inv(p)
    weights = p / -np.diag(p)
    np.fill_diagonal(weights, 0.0)
    return ItemKnnComponent(g.positions, weights.astype(np.float32))
