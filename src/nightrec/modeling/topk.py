"""Exact top-k unseen items per user, scored block by block with BLAS inside Spark tasks.

Item factors are broadcast once; user factors stay partitioned. Each task multiplies a block of
users by all items (numpy matmul), masks the items each user has seen, and keeps the k best with a
compiled single-row selection, so no user x item table is ever materialised. Ties in score go to
the smaller item id.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
from numba import njit
from pyspark import TaskContext
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from threadpoolctl import threadpool_limits

OUTPUT_SCHEMA = "user_id int, item_ids array<int>, scores array<float>"
# float32 scores per block of users (32 MB, ~80 users at 100k items): OpenBLAS packs the whole item
# matrix on every matmul, so 80-user blocks cost ALS 1.5 ns per pair against 2.2 for 20-user ones
# (one core, 100k items, rank 32; at size L the score stage's ALS line fell from 2.70 to 1.62)
SCORES_PER_BLOCK = 1 << 23
GROUPS_PER_SLOT = 4  # best_k cuts a row into 4k groups; see _select
CAP_DEPTH = 4  # with a category cap, the best 4k are walked for items of other categories
LOWEST = np.float32(np.finfo(np.float32).min)


def matmul_rate(rank: int = 64, threads: int | None = None) -> float:
    """Best float32 FLOP/s of numpy matmul here at this rank (big output blocks, best of 3), on
    `threads` BLAS threads (None: all): the arithmetic no exact scoring can beat."""
    rng = np.random.default_rng(0)
    best = 0.0
    with threadpool_limits(threads):
        for rows, cols in [(1024, 4096), (2048, 8192)]:
            a = rng.normal(size=(rows, rank)).astype(np.float32)
            b = rng.normal(size=(rank, cols)).astype(np.float32)
            out = np.empty((rows, cols), dtype=np.float32)
            for _ in range(3):
                started = time.perf_counter()
                np.matmul(a, b, out=out)
                best = max(best, 2 * rows * rank * cols / (time.perf_counter() - started))
    return best


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
    item_ids, item_matrix = factor_matrix(items.column("id").combine_chunks(),
                                          items.column("features").combine_chunks())
    shared = spark.sparkContext.broadcast((item_ids, item_matrix))
    seen_lists = seen.groupBy("user_id").agg(F.collect_list("item_id").alias("seen"))
    users = user_factors.select(F.col("id").alias("user_id"), "features").join(seen_lists, "user_id", "left")

    def score(batches):
        ids, matrix = shared.value
        # Spark already runs one task per core: more BLAS threads per task would only oversubscribe.
        with threadpool_limits(TaskContext.get().cpus()):
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
    buffer = np.empty((min(block, len(users)), n_items), dtype=np.float32)  # reused: no page faults per block
    for start in range(0, len(users), block):
        stop = min(start + block, len(users))
        scores = np.matmul(features[start:stop], item_matrix.T, out=buffer[:stop - start])
        _mask_seen(scores, seen.slice(start, stop - start), item_ids)
        yield best_k(users[start:stop], scores, item_ids, min(k, n_items))


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


def best_k(users: np.ndarray, scores: np.ndarray, item_ids: np.ndarray, k: int, *,
           categories: np.ndarray | None = None, cap: int | None = None,
           shift: np.ndarray | None = None) -> pa.RecordBatch:
    """Each row's k best (score desc, then item id) finite scores, as Arrow list columns.

    With `categories` (an int code per item, -1 for none) and `cap`: walking the CAP_DEPTH x k best
    in order, an item whose category already has `cap` items above it is passed over (item_ids must
    be ascending, as a catalog is). `shift`: a constant per row added to the scores kept (a blend's
    per-user centring, which does not change the order)."""
    scores = np.ascontiguousarray(scores, dtype=np.float32)
    item_ids = np.asarray(item_ids, dtype=np.int32)
    if categories is None or not cap or k <= 0:
        return _lists(users, *_selected(scores, item_ids, k), shift)
    # positions first (the same order as ascending ids), categories looked up by position
    positions = np.arange(len(item_ids), dtype=np.int32)
    found, bits, counts = _cap(*_selected(scores, positions, CAP_DEPTH * k), np.asarray(categories, dtype=np.int32),
                               cap, k)
    return _lists(users, item_ids[found], bits, counts, shift)


def best_k_at(users: np.ndarray, scores: np.ndarray, positions: np.ndarray, item_ids: np.ndarray, k: int, *,
              categories: np.ndarray | None = None, cap: int | None = None,
              shift: np.ndarray | None = None) -> pa.RecordBatch:
    """best_k of scores at per-row catalog positions ((users, width), -1 for padding, whose score
    must be -inf): a shortlist's (nightrec.modeling.retrieval). The same order, cap and shift."""
    scores = np.ascontiguousarray(scores, dtype=np.float32)
    positions = np.ascontiguousarray(positions, dtype=np.int32)
    if categories is None or not cap or k <= 0:
        found, bits, counts = _selected(scores, positions, k, _select_at)
    else:
        found, bits, counts = _cap(*_selected(scores, positions, CAP_DEPTH * k, _select_at),
                                   np.asarray(categories, dtype=np.int32), cap, k)
    return _lists(users, np.asarray(item_ids, dtype=np.int32)[found], bits, counts, shift)


def _selected(scores: np.ndarray, ids: np.ndarray, depth: int, kernel=None):
    """(ids, float32 bits, counts) of each row's `depth` best, in new arrays: by _select (ids per
    column), or by _select_at (ids per row and column)."""
    depth = min(depth, scores.shape[1])
    found = np.zeros((len(scores), depth), dtype=np.int32)
    bits = np.empty((len(scores), depth), dtype=np.int32)
    counts = np.zeros(len(scores), dtype=np.int64)
    if depth > 0 and len(scores):
        (kernel or _select)(scores, ids, depth, found, bits, counts)
    return found, bits, counts


def _lists(users: np.ndarray, ids: np.ndarray, bits: np.ndarray, counts: np.ndarray,
           shift: np.ndarray | None) -> pa.RecordBatch:
    """Selected (ids, float32 bits) per row, the first counts[r] of row r, as Arrow list columns."""
    kept = np.arange(ids.shape[1]) < counts[:, None]
    values = bits.view(np.float32)[kept]
    if shift is not None:
        values = values + np.repeat(np.asarray(shift, dtype=np.float32), counts)
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
    return pa.RecordBatch.from_arrays([
        pa.array(np.asarray(users).astype(np.int32)),
        pa.ListArray.from_arrays(offsets, pa.array(ids[kept])),
        pa.ListArray.from_arrays(offsets, pa.array(values)),
    ], names=["user_id", "item_ids", "scores"])


@njit(nogil=True, cache=True)
def _cap(positions, bits, counts, categories, cap, k):
    """Per row, walking the selected positions best first: the first k whose category has fewer
    than `cap` items before them (category -1: no cap)."""
    n_rows = positions.shape[0]
    out_positions = np.zeros((n_rows, k), dtype=np.int32)
    out_bits = np.empty((n_rows, k), dtype=np.int32)
    out_counts = np.zeros(n_rows, dtype=np.int64)
    taken = np.zeros(categories.max() + 2 if len(categories) else 1, dtype=np.int64)
    for r in range(n_rows):
        taken[:] = 0
        n = 0
        for i in range(counts[r]):
            category = categories[positions[r, i]]
            if category >= 0:
                if taken[category] >= cap:
                    continue
                taken[category] += 1
            out_positions[r, n] = positions[r, i]
            out_bits[r, n] = bits[r, i]
            n += 1
            if n == k:
                break
        out_counts[r] = n
    return out_positions, out_bits, out_counts


@njit(nogil=True, cache=True)
def _select(scores, item_ids, k, out_ids, out_bits, counts):
    """Per row, the k best finite scores into out_ids/out_bits (float32 bits), best first.

    Selection, not the matmul, was the cost: np.partition + compare over whole rows took ~10 ns per
    score, this takes ~1 (the matmul ~1.7). A row is cut into 4k groups (columns g, g + groups, ...).
    Each group's max is a distinct item, so the k-th largest group max is a floor under the k-th best
    score: only the ~k groups whose max reaches it are scanned, leaving little more than k
    candidates (all of them on ties) to sort.
    """
    n_rows, n_items = scores.shape
    n_groups = min(GROUPS_PER_SLOT * k, n_items)
    full = n_items // n_groups * n_groups
    maxima = np.empty(n_groups, dtype=np.float32)
    keys = np.empty(n_items, dtype=np.int64)
    for r in range(n_rows):
        row = scores[r]
        bits = row.view(np.int32)
        maxima[:] = -np.inf
        for start in range(0, full, n_groups):
            np.fmax(maxima, row[start:start + n_groups], maxima)  # elementwise: vectorises; skips NaN
        for j in range(full, n_items):  # the tail joins the first groups
            maxima[j - full] = np.fmax(maxima[j - full], row[j])
        floor = np.partition(maxima, n_groups - k)[n_groups - k] if n_groups >= k else LOWEST
        if not LOWEST <= floor < np.inf or maxima.max() == np.inf:
            floor = LOWEST  # -inf/NaN never count; a +inf max would vouch for a score that is dropped
        n = 0
        for g in range(n_groups):
            if maxima[g] >= floor:
                for j in range(g, n_items, n_groups):
                    if floor <= row[j] < np.inf:
                        keys[n] = _sort_key(bits[j], item_ids[j])
                        n += 1
        _keep_best(keys[:n], k, r, out_ids, out_bits, counts)


@njit(nogil=True, cache=True)
def _select_at(scores, positions, k, out_positions, out_bits, counts):
    """_select for rows of a few hundred scores at their own positions: every finite one is a key."""
    n_rows, width = scores.shape
    keys = np.empty(width, dtype=np.int64)
    for r in range(n_rows):
        bits = scores[r].view(np.int32)
        n = 0
        for w in range(width):
            if -np.inf < scores[r, w] < np.inf:
                keys[n] = _sort_key(bits[w], positions[r, w])
                n += 1
        _keep_best(keys[:n], k, r, out_positions, out_bits, counts)


@njit(nogil=True, cache=True, inline="always")
def _keep_best(keys, k, r, out_ids, out_bits, counts):
    """The k largest sort keys into row r, best first (undoing _sort_key)."""
    n = len(keys)
    best = keys if n <= k else np.partition(keys, n - k)[n - k:]
    best = np.sort(best)[::-1]
    counts[r] = len(best)
    for i in range(len(best)):
        high = np.int32(best[i] >> 32)
        out_bits[r, i] = high ^ ((high >> 31) & 0x7FFFFFFF)
        out_ids[r, i] = np.int32(0xFFFFFFFF - (best[i] & 0xFFFFFFFF) - 2**31)


@njit(nogil=True, cache=True, inline="always")
def _sort_key(float_bits, item_id):
    """One int64 that sorts like (score, -item id): the float32's bits made order-preserving in the
    high half (negative floats flipped), the id reversed in the low half."""
    bits = np.int64(float_bits) if float_bits != -(2**31) else np.int64(0)  # -0.0 ties with 0.0
    return ((bits ^ ((bits >> 31) & 0x7FFFFFFF)) << 32) | (0xFFFFFFFF - (np.int64(item_id) + 2**31))
