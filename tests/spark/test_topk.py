import numpy as np
import pytest

from nightrec.modeling import topk


def full_sort(scores, item_ids, k):
    """Per row: every finite score sorted by (score desc, item id asc), first k -> (ids, scores)."""
    result = []
    for row in scores:
        finite = np.isfinite(row)
        ids, values = item_ids[finite], row[finite]
        order = np.lexsort((ids, -values))[:k]
        result.append(([int(i) for i in ids[order]], [float(v) for v in values[order]]))
    return result


def exact_factors(rng, rows, rank, scale):
    """Multiples of 1/8: every dot product is exact in float32, so any summation order gives the
    same scores and ties (small scale: many ties) are real ties."""
    return (rng.integers(-scale, scale + 1, size=(rows, rank)) / 8).astype(np.float32)


@pytest.mark.parametrize("n_items, k, scale, scores_per_block", [
    (80, 10, 40, topk.SCORES_PER_BLOCK),
    (80, 25, 4, 80 * 3),                    # many ties; 3 users per matmul block
    (1000, 30, 400, topk.SCORES_PER_BLOCK),  # 120 groups of 8 with a 40-item tail
])
def test_top_k_equals_brute_force(spark, n_items, k, scale, scores_per_block):
    rng = np.random.default_rng(n_items + k)
    n_users, rank = 150, 6
    item_ids = rng.choice(np.arange(1, 100_000), size=n_items, replace=False)  # unsorted
    user_matrix = exact_factors(rng, n_users, rank, scale)
    item_matrix = exact_factors(rng, n_items, rank, scale)
    seen = {(u, int(i)) for u in range(6, n_users + 1) for i in rng.choice(item_ids, size=rng.integers(1, 30))}
    seen |= {(1, int(i)) for i in item_ids[: n_items - 3]}  # 3 unseen items left
    seen |= {(2, int(i)) for i in item_ids}                 # has seen everything: an empty list
    seen |= {(5, 999_999_999)}                               # an item the model never saw
    # users 3 and 4 have no seen rows at all: a null seen list after the join
    users = spark.createDataFrame([(u, user_matrix[u - 1].tolist()) for u in range(1, n_users + 1)],
                                  "id int, features array<float>").repartition(3)
    items = spark.createDataFrame([(int(i), item_matrix[n].tolist()) for n, i in enumerate(item_ids)],
                                  "id int, features array<float>")
    seen_df = spark.createDataFrame(sorted(seen), "user_id int, item_id int")
    got = {r.user_id: (r.item_ids, r.scores)
           for r in topk.top_k_unseen(users, items, seen_df, k, scores_per_block=scores_per_block).collect()}

    scores = user_matrix @ item_matrix.T
    for u, i in seen:
        scores[u - 1, item_ids == i] = -np.inf
    want = dict(zip(range(1, n_users + 1), full_sort(scores, item_ids, k)))
    assert got == want
    assert len(want[1][0]) == 3 and want[2] == ([], []) and len(want[3][0]) == len(want[5][0]) == k
    # the cases this test is for do occur: seen items in ordinary users' top k, ties cut at the k-th place
    unmasked = full_sort(user_matrix @ item_matrix.T, item_ids, k)
    assert any(want[u] != unmasked[u - 1] for u in range(6, n_users + 1))
    if scale <= 8:
        assert any((scores[u - 1] >= w[1][-1]).sum() > k for u, w in want.items() if len(w[1]) == k)


def test_best_k_equals_full_sort_on_awkward_scores():
    """best_k is shared with scoring and similar: NaN, +-inf, -0.0, ties, unsorted and negative ids."""
    rng = np.random.default_rng(7)
    for trial in range(60):
        n_rows, n_items, k = int(rng.integers(0, 12)), int(rng.integers(1, 2500)), int(rng.integers(1, 130))
        item_ids = rng.choice(np.arange(-5_000, 100_000), size=n_items, replace=False).astype(np.int32)
        scores = rng.normal(size=(n_rows, n_items)).astype(np.float32)
        if trial % 2:
            scores = np.round(scores * 2)  # ties, zeros and -0.0
        for special in (np.nan, np.inf, -np.inf, -0.0):
            scores[rng.random(scores.shape) < rng.choice([0.0, 0.01, 0.3, 0.97])] = special
        batch = topk.best_k(np.arange(n_rows) + 10, scores, item_ids, k)
        assert batch.schema.names == ["user_id", "item_ids", "scores"]
        assert batch.column(0).to_pylist() == list(range(10, 10 + n_rows))
        got = list(zip(batch.column(1).to_pylist(), batch.column(2).to_pylist()))
        assert got == full_sort(scores, item_ids, k), trial
