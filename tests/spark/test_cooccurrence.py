"""Co-occurrence neighbours in Spark against a dense numpy reference on small data."""

import datetime as dt
import random

import numpy as np
import pytest

from nightrec.modeling import cooccurrence

AS_OF = dt.datetime(2024, 6, 1, tzinfo=dt.timezone.utc)


def reference(pairs, k, shrink, cap, blocked=()):
    """Dense numpy: each user's `cap` most recent items, then shrunk cosine and the k best."""
    latest = {}
    for u, i, days in pairs:
        latest.setdefault(u, []).append((days, i))
    items = sorted({i for _, i, _ in pairs})
    col = {i: c for c, i in enumerate(items)}
    x = np.zeros((max(latest) + 1, len(items)))
    for u, taken in latest.items():
        for _, i in sorted(taken)[:cap]:     # fewest days ago first: the most recent
            x[u, col[i]] = 1
    together = x.T @ x
    n = np.diag(together).copy()
    scores = together / (np.sqrt(np.outer(n, n)) + shrink)
    result = {}
    for a, item in enumerate(items):
        candidates = [(-scores[a, b], items[b]) for b in range(len(items))
                      if b != a and together[a, b] > 0 and items[b] not in blocked]
        if candidates:
            best = sorted(candidates)[:k]
            result[item] = ([i for _, i in best], [-s for s, _ in best])
    return result


@pytest.mark.parametrize("partial_nonzeros, block_nonzeros", [(10**9, 10**9), (50, 200)])
def test_neighbours_equal_a_dense_reference_however_the_work_is_cut(spark, partial_nonzeros, block_nonzeros):
    rng = random.Random(4)
    pairs = sorted({(u, rng.choice(range(u % 5, 60, 5)) if rng.random() < 0.8 else rng.randrange(1, 60),
                     rng.randrange(0, 90))
                    for u in range(1, 120) for _ in range(rng.randrange(1, 25))})
    pairs = list({(u, i): (u, i, d) for u, i, d in pairs}.values())  # one row per (user, item)
    feedback = spark.createDataFrame(
        [(u, i, 1.0, AS_OF - dt.timedelta(days=d, seconds=i)) for u, i, d in pairs],
        "user_id int, item_id int, strength float, last_ts timestamp").repartition(3)
    blocked = np.array([7, 12])
    got = {r.item_id: (r.item_ids, r.scores) for r in cooccurrence.neighbours(
        feedback, 6, max_user_items=15, shrink=2.0, blocked=blocked,
        partial_nonzeros=partial_nonzeros, block_nonzeros=block_nonzeros).collect()}
    # the reference takes recency from (days, seconds=item): the same order as last_ts above
    expected = reference([(u, i, (d, i)) for u, i, d in pairs], 6, 2.0, 15, blocked=set(blocked.tolist()))
    assert set(got) == set(expected)
    for item, (ids, scores) in expected.items():
        assert got[item][0] == ids, item
        assert got[item][1] == pytest.approx(scores, rel=1e-5)
