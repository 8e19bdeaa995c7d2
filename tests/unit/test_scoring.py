"""The scoring core on the driver: blending, business rules and the category cap."""

import numpy as np
import pyarrow as pa
import pytest
import scipy.sparse as sp

from nightrec.modeling.candidates.als import AlsComponent
from nightrec.modeling.candidates.itemknn import ItemKnnComponent
from nightrec.modeling.candidates.popularity import PopularityComponent
from nightrec.modeling.moments import standardize
from nightrec.modeling.scoring import Bundle, Rules, Spent, UserBlock, user_block
from nightrec.modeling.topk import best_k


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
    got = best_k(np.array([1]), scores, np.arange(10, 18), 8, categories=categories, cap=2)
    # third item of category 0 passed over, as is the third of category 1; -1 uncapped
    assert got.column("item_ids").to_pylist() == [[10, 11, 13, 14, 16]]
    assert got.column("scores").to_pylist() == [[9, 8, 6, 5, 3]]


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


def random_hybrid(rng, n_users=40, n_items=300, covered=60, rules=None):
    """ALS, item-item over the head and a plain dense component, blended; random histories."""
    als = AlsComponent(rng.normal(size=(n_items, 8)).astype(np.float32), alpha=0.3, reg_param=0.1)
    als.item_factors[rng.random(n_items) < 0.1] = 0  # items the fit never saw
    knn = ItemKnnComponent(np.sort(rng.choice(n_items, covered, replace=False)),
                           rng.normal(size=(covered, covered)).astype(np.float32))
    dense = Fixed(rng.normal(loc=50, size=(n_users, n_items)))  # far from zero: its centring matters
    bundle = Bundle(np.arange(1000, 1000 + n_items), {"als": als, "itemknn": knn, "dense": dense},
                    {"itemknn": 0.3, "als": 0.5, "dense": 0.2}, rules or Rules())
    block = block_of([list(rng.choice(n_items, rng.integers(0, 30), replace=False)) for _ in range(n_users)], n_items)
    return bundle, block


def test_the_blend_is_each_component_standardised_and_weighted_however_it_is_computed():
    bundle, block = random_hybrid(np.random.default_rng(5))
    textbook = sum(w * standardize(bundle.components[name].score(block)) for name, w in bundle.weights.items())
    np.testing.assert_allclose(bundle.scores(block), textbook, rtol=1e-4, atol=1e-4)


def test_ranked_lists_are_the_textbook_blend_after_the_rules():
    rng = np.random.default_rng(9)
    n_items, cap, k = 300, 3, 20
    categories = rng.integers(-1, 6, n_items).astype(np.int32)
    unavailable = rng.random(n_items) < 0.05
    bundle, block = random_hybrid(rng, n_items=n_items,
                                  rules=Rules(unavailable=unavailable, categories=categories, max_per_category=cap))
    textbook = sum(w * standardize(bundle.components[name].score(block)) for name, w in bundle.weights.items())
    got = bundle.ranked(block, k)
    for row, (items, scores) in enumerate(zip(lists(got), got.column("scores").to_pylist())):
        seen = set(block.history[row].indices)
        expected, taken = [], {}
        for i in np.argsort(-textbook[row], kind="stable")[:4 * k]:
            if i in seen or unavailable[i] or (categories[i] >= 0 and taken.get(categories[i], 0) >= cap):
                continue
            taken[categories[i]] = taken.get(categories[i], 0) + 1
            expected.append(i)
        assert items == [int(bundle.item_ids[i]) for i in expected[:k]], row
        np.testing.assert_allclose(scores, textbook[row][expected[:k]], rtol=1e-4, atol=1e-4)


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


def test_spent_says_where_scoring_time_goes_and_how_close_to_the_flop_bound():
    bundle, block = random_hybrid(np.random.default_rng(2), n_users=30, n_items=2000)
    spent = Spent()
    bundle.ranked(block, 10, spent)
    assert spent.pairs == 30 * 2000
    assert set(spent.seconds) == {"score als", "score itemknn", "score dense", "blend", "rules (seen, unavailable)",
                                  "selection"}
    assert spent.flop["score als"] >= 2 * 30 * 2000 * 8  # the matmul alone
    assert spent.flop["selection"] == 0
    both = Spent().merge(spent).merge(spent)
    assert both.pairs == 2 * spent.pairs and both.seconds["blend"] == 2 * spent.seconds["blend"]
    lines = spent.lines(flop_rate=1e9)
    assert lines[0].startswith(f"{sum(spent.seconds.values()):.1f} core-s over 60,000 (user, item) pairs")
    als = next(line for line in lines if "score als" in line)
    share = spent.flop["score als"] / 1e9 / spent.seconds["score als"]
    assert als.endswith(f", {share:.0%} of its FLOP bound")
    assert "FLOP bound" not in next(line for line in lines if "selection" in line)
