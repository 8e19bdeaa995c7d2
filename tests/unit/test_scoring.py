"""The scoring core on the driver: blending, business rules and the category cap."""

import numpy as np
import pyarrow as pa
import pytest
import scipy.sparse as sp

from nightrec.modeling.candidates.popularity import PopularityComponent
from nightrec.modeling.scoring import Bundle, Rules, UserBlock, cap_categories, standardize, user_block


class Fixed:
    """A component returning given scores (a stand-in for a fitted model's output)."""

    def __init__(self, scores):
        self.scores = np.asarray(scores, dtype=np.float32)

    def score(self, block):
        return self.scores[: len(block.user_ids)].copy()


def block_of(histories, n_items):
    rows = [r for r, items in enumerate(histories) for _ in items]
    cols = [i for items in histories for i in items]
    history = sp.csr_matrix((np.ones(len(cols), np.float32), (rows, cols)), shape=(len(histories), n_items))
    return UserBlock(np.arange(1, len(histories) + 1, dtype=np.int32), history, history.copy())


def lists(batch):
    return batch.column("item_ids").to_pylist()


def test_consumed_and_unavailable_items_are_never_recommended():
    catalog = np.arange(10, 16)
    scores = [[6, 5, 4, 3, 2, 1]]
    rules = Rules(unavailable=np.array([False, True, False, False, False, False]))
    bundle = Bundle(catalog, {"m": Fixed(scores)}, {"m": 1.0}, rules)
    got = lists(bundle.ranked(block_of([[0, 3]], 6), k=10))
    assert got == [[12, 14, 15]]   # 10 and 13 consumed, 11 unavailable


def test_category_cap_keeps_at_most_n_per_category_in_score_order():
    scores = np.array([[9, 8, 7, 6, 5, 4, 3, 2]], dtype=np.float32)
    categories = np.array([0, 0, 0, 1, 1, 0, -1, 1])
    cap_categories(scores, categories, cap=2, k=8)
    kept = np.flatnonzero(np.isfinite(scores[0])).tolist()
    assert kept == [0, 1, 3, 4, 6]  # third item of category 0 dropped, as is the third of category 1; -1 uncapped


def test_category_cap_through_the_bundle_fills_the_list_with_other_categories():
    rng = np.random.default_rng(0)
    n_items = 60
    scores = rng.random((3, n_items))
    categories = rng.integers(0, 4, n_items).astype(np.int32)
    bundle = Bundle(np.arange(n_items), {"m": Fixed(scores)}, {"m": 1.0},
                    Rules(categories=categories, max_per_category=3))
    for row, items in enumerate(lists(bundle.ranked(block_of([[], [], []], n_items), k=10))):
        assert len(items) == 10
        assert max(np.bincount(categories[items])) <= 3
        # the kept items are the best ones that respect the cap, in score order
        expected, counts = [], {}
        for i in np.argsort(-scores[row], kind="stable"):
            if counts.get(categories[i], 0) < 3:
                expected.append(int(i))
                counts[categories[i]] = counts.get(categories[i], 0) + 1
        assert items == expected[:10]


def test_blend_standardises_components_so_scale_does_not_decide():
    big = Fixed([[1000.0, 0.0, 500.0]])      # prefers item 0
    small = Fixed([[0.0, 0.001, 0.002]])     # prefers item 2, dislikes item 0
    even = Bundle(np.arange(3), {"a": big, "b": small}, {"a": 0.5, "b": 0.5})
    blended = even.scores(block_of([[]], 3))
    np.testing.assert_allclose(blended, 0.5 * standardize(big.scores) + 0.5 * standardize(small.scores), rtol=1e-6)
    assert blended[0].argmax() == 2  # raw sums would follow the bigger scale and pick item 0


def test_popularity_scores_every_user_alike():
    component = PopularityComponent(np.array([1.0, 3.0, 2.0], dtype=np.float32))
    got = component.score(block_of([[0], [1]], 3))
    assert got.shape == (2, 3) and (got == [1.0, 3.0, 2.0]).all()


def test_user_block_maps_item_ids_onto_catalog_positions_and_ignores_unknown_ones():
    batch = pa.RecordBatch.from_pydict({
        "user_id": pa.array([7, 8], pa.int32()),
        "items": pa.array([[20, 99], [10]], pa.list_(pa.int32())),
        "strengths": pa.array([[2.0, 1.0], [5.0]], pa.list_(pa.float32())),
        "recency": pa.array([[1.0, 0.5], [2.5]], pa.list_(pa.float32())),
    })
    block = user_block(batch, np.array([10, 20, 30]))
    assert block.history.toarray().tolist() == [[0, 2, 0], [5, 0, 0]]
    assert block.recency.toarray().tolist() == [[0, 1, 0], [2.5, 0, 0]]


@pytest.mark.parametrize("k", [1, 3])
def test_ties_go_to_the_smaller_item_id(k):
    bundle = Bundle(np.array([5, 6, 7]), {"m": Fixed([[1.0, 1.0, 1.0]])}, {"m": 1.0})
    assert lists(bundle.ranked(block_of([[]], 3), k)) == [[5, 6, 7][:k]]


def test_blend_weights_take_a_real_gain_and_leave_out_a_negligible_one():
    from nightrec.modeling.search import Shortlist, learn_weights

    rng = np.random.default_rng(0)
    n_users, n_items = 300, 40
    relevant = rng.integers(0, n_items, n_users)
    boost = np.zeros((n_users, n_items), dtype=np.float32)
    boost[np.arange(n_users), relevant] = 5.0
    noise = rng.normal(size=(n_users, n_items)).astype(np.float32)
    covers = lambda users: np.where(np.isin(np.arange(n_users), users)[:, None], boost, 0.0)  # noqa: E731
    scores = {"good": noise + covers(range(0, 200)),      # finds two users in three
              "helper": noise + covers(range(200, 290)),  # finds most of the others
              "weak": covers([290])}                      # finds one more user: a 0.3% gain
    truth = np.zeros((n_users, n_items), dtype=bool)
    truth[np.arange(n_users), relevant] = True
    shortlist = Shortlist({name: standardize(s) for name, s in scores.items()}, truth, truth.sum(axis=1), 10)
    weights, value = learn_weights([shortlist])
    assert weights["good"] > 0 and weights["helper"] > 0 and weights["weak"] == 0
    assert value > shortlist.ndcg(shortlist.z["good"]) + 0.03



class ByUser:
    """A component whose scores depend on the users asked for (blocks must line up)."""

    def __init__(self, scores):
        self.scores = np.asarray(scores, dtype=np.float32)

    def score(self, block):
        return self.scores[block.user_ids - 1].copy()


def test_validation_sample_scores_in_user_blocks_exactly_as_in_one_piece():
    from nightrec.modeling.search import Shortlist, ValidationSample

    rng = np.random.default_rng(3)
    n_users, n_items = 50, 30
    histories = [list(rng.choice(n_items, 4, replace=False)) for _ in range(n_users)]
    truth = sp.csr_matrix((rng.random((n_users, n_items)) < 0.1).astype(np.float32))
    a, b = ByUser(rng.normal(size=(n_users, n_items))), ByUser(rng.normal(size=(n_users, n_items)))

    def sample(rows_per_block, unavailable):
        s = ValidationSample.__new__(ValidationSample)
        s.block, s.truth, s.k, s.unavailable, s.rows_per_block = (block_of(histories, n_items), truth, 5, unavailable,
                                                                  rows_per_block)
        return s

    def dense_ndcg(scores, unavailable):
        masked = scores.copy()
        for user, items in enumerate(histories):
            masked[user, items] = -np.inf
        masked[:, unavailable] = -np.inf
        return Shortlist({}, truth.toarray() > 0, truth.getnnz(axis=1), 5).ndcg(masked)

    unavailable = np.zeros(n_items, dtype=bool)
    unavailable[[2, 9]] = True
    for rows in (7, 50):
        s = sample(rows, unavailable)
        assert s.ndcg(a) == pytest.approx(dense_ndcg(a.scores, unavailable))
        # the shortlist reaches the whole catalog here (30 items < its depth): blends are exact
        shortlist = s.shortlist({"a": a, "b": b})
        blend = 0.3 * standardize(a.scores) + 0.7 * standardize(b.scores)
        assert (shortlist.ndcg(0.3 * shortlist.z["a"] + 0.7 * shortlist.z["b"])
                == pytest.approx(dense_ndcg(blend, unavailable)))
