"""Item co-occurrence at catalog scale: for every item, its k best neighbours by shrunk cosine over
the users who took both, computed in Spark without a catalog x catalog matrix and without
broadcasting the interactions.

sim(a, b) = users(a and b) / (sqrt(users(a) * users(b)) + shrink)

1. Each user's `max_user_items` most recent items (what a user took long ago says less about
   what goes together now, and it bounds the work: the pairs of a user grow with the square of
   their items).
2. Users are partitioned; each task multiplies its users' item matrix by itself (scipy) and cuts
   the partial counts into blocks of item rows.
3. Blocks are shuffled by block id; each task adds up the partial counts of its blocks, scores
   them and keeps each item's k best neighbours.
Memory per task is bounded by PARTIAL_NONZEROS (map side, users sliced to fit) and about one
block's counts (reduce side); only item-sized arrays (ids and user counts) are broadcast.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import scipy.sparse as sp
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

SHRINK = 10.0
MAX_USER_ITEMS = 100
PARTIAL_NONZEROS = 20_000_000   # a map task flushes its partial counts beyond this (about 240 MB)
BLOCK_NONZEROS = 30_000_000     # items per block chosen so a block's counts stay about this size
OUTPUT_SCHEMA = "item_id int, item_ids array<int>, scores array<float>"


def recent_histories(feedback: DataFrame, max_user_items: int | None) -> DataFrame:
    """(user_id, items): each user's max_user_items most recently taken items (None: all of them)."""
    if max_user_items is None:
        return feedback.groupBy("user_id").agg(F.collect_list("item_id").alias("items"))
    latest_first = F.sort_array(F.collect_list(F.struct("last_ts", "item_id")), asc=False)
    return (feedback.groupBy("user_id").agg(F.slice(latest_first, 1, max_user_items).alias("h"))
            .select("user_id", F.col("h.item_id").alias("items")))


def neighbours(feedback: DataFrame, k: int, *, max_user_items: int = MAX_USER_ITEMS, shrink: float = SHRINK,
               blocked: np.ndarray | None = None, partial_nonzeros: int = PARTIAL_NONZEROS,
               block_nonzeros: int = BLOCK_NONZEROS) -> DataFrame:
    """feedback: (user_id, item_id, last_ts). Returns (item_id, item_ids, scores), best first; items
    that co-occur with nothing get no row; `blocked` item ids are never anyone's neighbour."""
    spark = feedback.sparkSession
    histories = recent_histories(feedback, max_user_items)
    counts = (histories.select(F.explode("items").alias("item_id")).groupBy("item_id").count()
              .orderBy("item_id").toArrow())
    item_ids = counts.column("item_id").to_numpy().astype(np.int32)
    users_per_item = counts.column("count").to_numpy().astype(np.float32)
    banned = np.isin(item_ids, blocked) if blocked is not None and len(blocked) else np.zeros(len(item_ids), bool)
    # rows per block: about BLOCK_NONZEROS counts, judged by the densest possible row (all items)
    rows_per_block = int(max(1, min(len(item_ids), block_nonzeros // max(len(item_ids), 1))))
    shared = spark.sparkContext.broadcast((item_ids, users_per_item, banned, rows_per_block))

    def partial_counts(batches):
        ids, _, _, block_rows = shared.value
        pending, size = None, 0
        for batch in batches:
            for users in _slices_by_pairs(batch, partial_nonzeros):
                x = user_item_matrix(users, ids)
                together = (x.T @ x).tocsr()
                pending = together if pending is None else pending + together
                size += together.nnz
                if size >= partial_nonzeros:
                    yield from _blocks(pending, block_rows)
                    pending, size = None, 0
        if pending is not None:
            yield from _blocks(pending, block_rows)

    def best(batches):
        ids, n, ban, block_rows = shared.value
        current, parts = None, []
        for batch in batches:
            for row in range(batch.num_rows):
                block = batch.column(0)[row].as_py()
                if current is not None and block != current:
                    yield _best_of_block(current, parts, ids, n, ban, block_rows, k, shrink)
                    parts = []
                current = block
                parts.append(batch.slice(row, 1))
        if current is not None:
            yield _best_of_block(current, parts, ids, n, ban, block_rows, k, shrink)

    partials = histories.mapInArrow(partial_counts, "block int, rows array<int>, cols array<int>, counts array<float>")
    n_blocks = -(-len(item_ids) // rows_per_block)
    tasks = max(1, min(n_blocks, spark.sparkContext.defaultParallelism * 2))
    result = (partials.repartition(tasks, "block").sortWithinPartitions("block")
              .mapInArrow(best, OUTPUT_SCHEMA))
    return result


def user_item_matrix(batch: pa.RecordBatch, item_ids: np.ndarray) -> sp.csr_matrix:
    """Arrow (user_id, items) rows -> binary users x item_ids matrix; items not in item_ids are left out."""
    items = batch.column("items")
    lengths = items.value_lengths().fill_null(0).to_numpy(zero_copy_only=False)
    values = items.flatten().to_numpy(zero_copy_only=False)
    columns = np.searchsorted(item_ids, values)
    known = (columns < len(item_ids)) & (item_ids[np.minimum(columns, len(item_ids) - 1)] == values)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    x = sp.csr_matrix((np.ones(known.sum(), np.float32), (rows[known], columns[known])),
                      shape=(len(lengths), len(item_ids)))
    x.data[:] = 1.0  # an item listed twice counts once
    return x


def _slices_by_pairs(batch: pa.RecordBatch, budget: int):
    """The batch in slices of whole users whose item pairs (n² per user) stay within budget."""
    lengths = batch.column("items").value_lengths().fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    cumulative = np.cumsum(lengths * lengths)
    start = 0
    while start < batch.num_rows:
        done = cumulative[start - 1] if start else 0
        stop = max(start + 1, int(np.searchsorted(cumulative, done + budget, side="right")))
        yield batch.slice(start, stop - start)
        start = stop


def _blocks(counts: sp.csr_matrix, rows_per_block: int):
    """The partial counts as COO batches, one per block of item rows that has any."""
    for start in range(0, counts.shape[0], rows_per_block):
        part = counts[start:start + rows_per_block].tocoo()
        if part.nnz:
            yield pa.RecordBatch.from_pydict({
                "block": pa.array([start // rows_per_block], pa.int32()),
                "rows": pa.array([part.row.astype(np.int32)], pa.list_(pa.int32())),
                "cols": pa.array([part.col.astype(np.int32)], pa.list_(pa.int32())),
                "counts": pa.array([part.data.astype(np.float32)], pa.list_(pa.float32()))})


def _best_of_block(block: int, parts: list[pa.RecordBatch], item_ids: np.ndarray, users: np.ndarray,
                   banned: np.ndarray, rows_per_block: int, k: int, shrink: float) -> pa.RecordBatch:
    first = block * rows_per_block
    n_rows = min(rows_per_block, len(item_ids) - first)
    together = sp.csr_matrix((n_rows, len(item_ids)), dtype=np.float32)
    for part in parts:  # summed one partial at a time: memory stays about one block's counts
        together = together + sp.csr_matrix(
            (part.column("counts").flatten().to_numpy(),
             (part.column("rows").flatten().to_numpy(), part.column("cols").flatten().to_numpy())),
            shape=(n_rows, len(item_ids)))
    together.sum_duplicates()
    row_of = np.repeat(np.arange(n_rows), np.diff(together.indptr))
    cols, counts = together.indices, together.data
    scores = counts / (np.sqrt(users[first + row_of] * users[cols]) + shrink)
    keep = (cols != first + row_of) & ~banned[cols]
    row_of, cols, scores = row_of[keep], cols[keep], scores[keep].astype(np.float32)
    # best first within each row; ties go to the smaller item id
    order = np.lexsort((cols, -scores, row_of))
    row_of, cols, scores = row_of[order], cols[order], scores[order]
    starts = np.searchsorted(row_of, np.arange(n_rows))
    rank = np.arange(len(row_of)) - starts[row_of]
    top = rank < k
    row_of, cols, scores = row_of[top], cols[top], scores[top]
    lengths = np.bincount(row_of, minlength=n_rows)
    present = lengths > 0
    offsets = np.concatenate([[0], np.cumsum(lengths[present])]).astype(np.int32)
    return pa.RecordBatch.from_arrays([
        pa.array(item_ids[first:first + n_rows][present], pa.int32()),
        pa.ListArray.from_arrays(pa.array(offsets), pa.array(item_ids[cols], pa.int32())),
        pa.ListArray.from_arrays(pa.array(offsets), pa.array(scores, pa.float32()))],
        names=["item_id", "item_ids", "scores"])
