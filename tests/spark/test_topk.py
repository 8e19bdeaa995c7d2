import numpy as np
import pytest

from nightrec import topk


def brute_force(user_matrix, item_ids, item_matrix, seen, k):
    """Every score computed, seen items dropped, best k by (score desc, item id asc)."""
    result = {}
    for row, user in enumerate(range(1, len(user_matrix) + 1)):
        scores = item_matrix @ user_matrix[row]
        ranked = sorted((-s, i) for s, i in zip(scores, item_ids) if (user, i) not in seen)
        result[user] = [i for _, i in ranked[:k]]
    return result


@pytest.mark.parametrize("seed, k", [(0, 10), (1, 25)])
def test_top_k_equals_brute_force(spark, seed, k):
    rng = np.random.default_rng(seed)
    n_users, rank = 120, 6
    item_ids = rng.choice(np.arange(1, 10_000), size=80, replace=False)
    user_matrix = rng.normal(size=(n_users, rank)).astype(np.float32)
    item_matrix = rng.normal(size=(len(item_ids), rank)).astype(np.float32)
    seen = {(u, int(i)) for u in range(1, n_users + 1) for i in rng.choice(item_ids, size=rng.integers(0, 30))}
    seen |= {(1, int(i)) for i in item_ids[: len(item_ids) - 3]}      # user 1 has 3 unseen items left
    seen |= {(2, 999_999)}                                              # an item the model never saw
    users = spark.createDataFrame([(u, user_matrix[u - 1].tolist()) for u in range(1, n_users + 1)],
                                  "id int, features array<float>").repartition(3)
    items = spark.createDataFrame([(int(i), item_matrix[n].tolist()) for n, i in enumerate(item_ids)],
                                  "id int, features array<float>")
    seen_df = spark.createDataFrame(sorted(seen), "user_id int, item_id int")
    got = {r.user_id: (r.item_ids, r.scores) for r in topk.top_k_unseen(users, items, seen_df, k).collect()}
    want = brute_force(user_matrix, [int(i) for i in item_ids], item_matrix, seen, k)
    assert set(got) == set(want)
    for user, items_wanted in want.items():
        assert got[user][0] == items_wanted, user
        expected_scores = [float(item_matrix[list(item_ids).index(i)] @ user_matrix[user - 1]) for i in items_wanted]
        assert got[user][1] == pytest.approx(expected_scores, rel=1e-5, abs=1e-5)
    assert 0 < len(want[1]) <= 3  # the short-list case is exercised


def test_small_blocks_give_the_same_answer(spark):
    rng = np.random.default_rng(5)
    users = spark.createDataFrame([(u, rng.normal(size=4).tolist()) for u in range(1, 40)], "id int, features array<float>")
    items = spark.createDataFrame([(i, rng.normal(size=4).tolist()) for i in range(1, 30)], "id int, features array<float>")
    seen = spark.createDataFrame([(u, (u * 7) % 29 + 1) for u in range(1, 40)], "user_id int, item_id int")
    whole = {r.user_id: r.item_ids for r in topk.top_k_unseen(users, items, seen, 5).collect()}
    blocked = {r.user_id: r.item_ids for r in  # 3 users per matmul block
               topk.top_k_unseen(users, items, seen, 5, scores_per_block=29 * 3).collect()}
    assert blocked == whole and len(whole) == 39
