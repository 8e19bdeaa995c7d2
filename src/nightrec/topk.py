"""Exact top-k unseen items per user, scored block by block with BLAS inside Spark tasks.

Item factors are broadcast once; user factors stay partitioned. Each task multiplies a block of
users by all items (numpy matmul), masks the items each user has seen, and keeps the k best with a
partial sort, so no user x item table is ever materialised. Ties in score go to the smaller item id.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

OUTPUT_SCHEMA = "user_id int, item_ids array<int>, scores array<float>"
SCORES_PER_BLOCK = 1 << 25  # float32 scores held at once per task (128 MB): users per matmul block


def factor_matrix(ids: pa.Array, features: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Arrow (id, array<float>) columns -> ids sorted ascending and the matching float32 matrix."""
    ids = ids.to_numpy(zero_copy_only=False).astype(np.int32)
    rank = len(features[0]) if len(features) else 0
    matrix = features.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(ids), rank)
    order = np.argsort(ids, kind="stable")
    return ids[order], np.ascontiguousarray(matrix[order])


def top_k_unseen(user_factors: DataFrame, item_factors: DataFrame, seen: DataFrame, k: int,
                 scores_per_block: int = SCORES_PER_BLOCK) -> DataFrame:
    """user_factors/item_factors: (id, features) as in ALSModel; seen: (user_id, item_id) pairs.

    Returns (user_id, item_ids, scores), best first; shorter than k only when a user has seen
    nearly every item.
    """
    spark = user_factors.sparkSession
    items = item_factors.select("id", "features").toArrow()
    item_ids, item_matrix = factor_matrix(items.column("id").combine_chunks(), items.column("features").combine_chunks())
    shared = spark.sparkContext.broadcast((item_ids, item_matrix))
    seen_lists = seen.groupBy("user_id").agg(F.collect_list("item_id").alias("seen"))
    users = user_factors.select(F.col("id").alias("user_id"), "features").join(seen_lists, "user_id", "left")

    def score(batches):
        ids, matrix = shared.value
        for batch in batches:
            yield from _score_batch(batch, ids, matrix, k, scores_per_block)

    return users.mapInArrow(score, OUTPUT_SCHEMA)


def _score_batch(batch: pa.RecordBatch, item_ids: np.ndarray, item_matrix: np.ndarray, k: int,
                 scores_per_block: int):
    n_items = len(item_ids)
    block = max(1, scores_per_block // max(n_items, 1))
    users = batch.column("user_id").to_numpy(zero_copy_only=False)
    rank = item_matrix.shape[1]
    features = batch.column("features").flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    features = features.reshape(len(users), rank)
    seen = batch.column("seen")
    for start in range(0, len(users), block):
        stop = min(start + block, len(users))
        scores = features[start:stop] @ item_matrix.T
        _mask_seen(scores, seen.slice(start, stop - start), item_ids)
        yield _best(users[start:stop], scores, item_ids, min(k, n_items))


def _mask_seen(scores: np.ndarray, seen: pa.ListArray, item_ids: np.ndarray) -> None:
    """Set the score of every (user, seen item) to -inf, in place; unknown item ids are ignored."""
    lengths = seen.value_lengths().fill_null(0).to_numpy(zero_copy_only=False)
    values = seen.flatten().to_numpy(zero_copy_only=False)  # flatten skips null lists
    if len(values) == 0:
        return
    rows = np.repeat(np.arange(len(lengths)), lengths)
    positions = np.searchsorted(item_ids, values)
    known = (positions < len(item_ids)) & (item_ids[np.minimum(positions, len(item_ids) - 1)] == values)
    scores[rows[known], positions[known]] = -np.inf


def _best(users: np.ndarray, scores: np.ndarray, item_ids: np.ndarray, k: int) -> pa.RecordBatch:
    if k < scores.shape[1]:
        candidates = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        candidates = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    top_scores = np.take_along_axis(scores, candidates, axis=1)
    top_ids = item_ids[candidates]
    order = np.lexsort((top_ids, -top_scores), axis=1)  # score descending, then item id
    top_scores = np.take_along_axis(top_scores, order, axis=1)
    top_ids = np.take_along_axis(top_ids, order, axis=1)
    keep = np.isfinite(top_scores)
    offsets = np.concatenate([[0], np.cumsum(keep.sum(axis=1))]).astype(np.int32)
    return pa.RecordBatch.from_arrays([
        pa.array(users.astype(np.int32)),
        pa.ListArray.from_arrays(pa.array(offsets), pa.array(top_ids[keep].astype(np.int32))),
        pa.ListArray.from_arrays(pa.array(offsets), pa.array(top_scores[keep].astype(np.float32))),
    ], names=["user_id", "item_ids", "scores"])
