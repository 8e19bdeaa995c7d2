"""Item-item neighbours for "more like this": shrunk cosine over the users who took both items.

sim(a, b) = users(a and b) / (sqrt(users(a) * users(b)) + SHRINK): the shrink term keeps pairs
that share one or two users from topping the list. The item x user incidence matrix is broadcast
once (about 12 bytes per interaction); Spark tasks take blocks of items, multiply them by it with
scipy and keep each item's k best neighbours (nightrec.topk.best_k), so the item x item matrix is
never materialised.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp
from pyspark.sql import DataFrame

from nightrec.scoring import with_serving_value
from nightrec.topk import SCORES_PER_BLOCK, best_k

SHRINK = 10.0
OUTPUT_SCHEMA = "item_id int, item_ids array<int>, scores array<float>, value binary"


def incidence(pairs: pa.Table) -> tuple[np.ndarray, sp.csr_matrix]:
    """(user_id, item_id) pairs -> item ids sorted ascending and the binary item x user matrix."""
    items, item_index = np.unique(pairs.column("item_id").to_numpy(), return_inverse=True)
    _, user_index = np.unique(pairs.column("user_id").to_numpy(), return_inverse=True)
    matrix = sp.csr_matrix((np.ones(len(item_index), dtype=np.float32), (item_index, user_index)),
                           shape=(len(items), user_index.max() + 1 if len(user_index) else 0))
    matrix.data[:] = 1.0  # repeated pairs count once
    return items.astype(np.int32), matrix


def neighbours(block: sp.csr_matrix, matrix: sp.csr_matrix, norms: np.ndarray, first: int) -> np.ndarray:
    """Dense shrunk-cosine scores of the block's items (rows first..) against every item."""
    together = (block @ matrix.T).toarray()
    scores = together / (np.sqrt(norms[first:first + block.shape[0], None] * norms[None, :]) + SHRINK)
    scores[together == 0] = -np.inf  # never co-occurred: not a neighbour
    scores[np.arange(block.shape[0]), np.arange(first, first + block.shape[0])] = -np.inf  # itself
    return scores.astype(np.float32)


def similar_items(feedback: DataFrame, k: int, unavailable: set[int] = frozenset()) -> DataFrame:
    """feedback: (user_id, item_id, ...). Returns (item_id, item_ids, scores, value), best first,
    value packed for Redis; items without any co-occurring neighbour get no row; unavailable items
    are never neighbours."""
    spark = feedback.sparkSession
    item_ids, matrix = incidence(feedback.select("user_id", "item_id").toArrow())
    norms = np.asarray(matrix.sum(axis=1)).ravel().astype(np.float32)
    blocked = np.isin(item_ids, list(unavailable)) if unavailable else np.zeros(len(item_ids), dtype=bool)
    shared = spark.sparkContext.broadcast((item_ids, matrix, norms, blocked))
    rows = max(1, SCORES_PER_BLOCK // max(len(item_ids), 1))
    starts = spark.createDataFrame([(s,) for s in range(0, len(item_ids), rows)], "start int")

    def score(batches):
        ids, m, n, banned = shared.value
        for batch in batches:
            for start in batch.column("start").to_pylist():
                stop = min(start + rows, len(ids))
                scores = neighbours(m[start:stop], m, n, start)
                scores[:, banned] = -np.inf
                ranked = best_k(ids[start:stop], scores, ids, min(k, len(ids)))
                keep = pc.greater(pc.list_value_length(ranked.column(1)), 0)
                yield with_serving_value(ranked.filter(keep).rename_columns(["item_id", "item_ids", "scores"]))

    return starts.repartition(spark.sparkContext.defaultParallelism).mapInArrow(score, OUTPUT_SCHEMA)
