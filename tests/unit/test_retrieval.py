"""Scoring at shortlists: the exact blend at the positions the sources name, the same rules."""

import pickle

import numpy as np
import pytest
import scipy.sparse as sp

from nightrec.modeling.ann import ItemIndex
from nightrec.modeling.candidates.als import AlsComponent
from nightrec.modeling.candidates.itemknn import ItemKnnComponent
from nightrec.modeling.candidates.neighbours import NeighboursComponent
from nightrec.modeling.candidates.popularity import PopularityComponent
from nightrec.modeling.moments import standardize
from nightrec.modeling.retrieval import Retrieval, union_rows, use_retrieval
from nightrec.modeling.scoring import Bundle, Rules, UserBlock

pytestmark = pytest.mark.fast


class Dense:
    """A component with no view of its own (as the content model): read from its full scores."""

    def __init__(self, scores):
        self.scores = np.asarray(scores, dtype=np.float32)

    def score(self, block):
        return self.scores[: len(block.user_ids)].copy()


def hybrid(rng, n_users, n_items, dense=True, rules=None):
    """Every kind of component, blended: ALS (some items unseen by the fit), item-item over a head,
    neighbours, popularity, and (dense) one read from full scores; random histories."""
    tastes = rng.normal(size=(12, 16))
    als = AlsComponent((tastes[rng.integers(12, size=n_items)] + 0.5 * rng.normal(size=(n_items, 16)))
                       .astype(np.float32), alpha=0.3, reg_param=0.1)
    als.item_factors[rng.random(n_items) < 0.05] = 0
    head = np.sort(rng.choice(n_items, min(80, n_items), replace=False))
    knn = ItemKnnComponent(head, rng.normal(size=(len(head), len(head))).astype(np.float32))
    similarity = sp.random(n_items, n_items, density=5 / n_items, random_state=1, format="csr", dtype=np.float32)
    popularity = PopularityComponent(rng.pareto(1.5, n_items).astype(np.float32))
    components = {"als": als, "itemknn": knn, "neighbours": NeighboursComponent(similarity),
                  "popularity": popularity}
    weights = {"als": 0.5, "itemknn": 0.2, "neighbours": 0.15, "popularity": 0.15}
    if dense:
        components["dense"] = Dense(rng.normal(loc=50, size=(n_users, n_items)))
        weights["dense"] = 0.1
    bundle = Bundle(np.arange(1000, 1000 + n_items), components, weights, rules or Rules())
    histories = [rng.choice(n_items, rng.integers(1, 40), replace=False) for _ in range(n_users)]
    rows = np.repeat(np.arange(n_users), [len(h) for h in histories])
    history = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, np.concatenate(histories))),
                            shape=(n_users, n_items))
    return bundle, UserBlock(np.arange(1, n_users + 1, dtype=np.int32), history, history.copy())


def retrieval_of(bundle, depth):
    als = bundle.components["als"]
    trending = np.argsort(-bundle.components["popularity"].item_scores)[:depth].astype(np.int32)
    return Retrieval(ItemIndex(als.item_factors[als.known_items()], als.known_items()), trending, depth)


def as_lists(batch):
    return batch.column("item_ids").to_pylist(), batch.column("scores").to_pylist()


def test_a_shortlist_of_the_whole_catalog_gives_the_exact_lists_rules_and_cap_included():
    rng = np.random.default_rng(3)
    n_items = 300
    rules = Rules(unavailable=rng.random(n_items) < 0.05, categories=rng.integers(-1, 5, n_items).astype(np.int32),
                  max_per_category=4)
    bundle, block = hybrid(rng, 30, n_items, rules=rules)
    exact_items, exact_scores = as_lists(bundle.ranked(block, 20))
    got_items, got_scores = as_lists(bundle.with_retrieval(retrieval_of(bundle, n_items)).ranked(block, 20))
    assert got_items == exact_items
    np.testing.assert_allclose(np.concatenate(got_scores), np.concatenate(exact_scores), rtol=1e-4, atol=1e-4)


def test_the_index_alone_names_every_item_als_scores_for_blocks_of_any_size():
    rng = np.random.default_rng(6)
    bundle, block = hybrid(rng, 7, 300)
    als = Bundle(bundle.item_ids, {"als": bundle.components["als"]}, {"als": 1.0})
    factors = als.components["als"]
    index = ItemIndex(factors.item_factors[factors.known_items()], factors.known_items())
    everything = Retrieval(index, np.empty(0, dtype=np.int32), 300)  # the index's answers only
    for users in (slice(0, 1), slice(1, 7)):  # one user: the index answers a single query differently
        part = UserBlock(block.user_ids[users], block.history[users], block.recency[users])
        exact_items, exact_scores = as_lists(als.ranked(part, 20))
        got_items, got_scores = as_lists(als.with_retrieval(everything).ranked(part, 20))
        assert got_items == exact_items
        np.testing.assert_allclose(np.concatenate(got_scores), np.concatenate(exact_scores), rtol=1e-4, atol=1e-4)


def test_a_narrow_shortlist_scores_each_item_it_keeps_exactly_and_finds_most_of_the_exact_lists():
    rng = np.random.default_rng(4)
    n_items, k, cap = 4000, 20, 6
    rules = Rules(unavailable=rng.random(n_items) < 0.05, categories=rng.integers(-1, 8, n_items).astype(np.int32),
                  max_per_category=cap)
    bundle, block = hybrid(rng, 60, n_items, dense=False, rules=rules)
    textbook = sum(w * standardize(bundle.components[name].score(block)) for name, w in bundle.weights.items())
    exact_items, _ = as_lists(bundle.ranked(block, k))
    got_items, got_scores = as_lists(bundle.with_retrieval(retrieval_of(bundle, 100)).ranked(block, k))
    for row, (items, scores) in enumerate(zip(got_items, got_scores)):
        positions = np.asarray(items) - 1000
        assert len(items) == k and not set(positions) & set(block.history[row].indices)
        assert not rules.unavailable[positions].any()
        assert max(np.bincount(rules.categories[positions][rules.categories[positions] >= 0])) <= cap
        np.testing.assert_allclose(scores, textbook[row, positions], rtol=1e-4, atol=1e-4)
        assert scores == sorted(scores, reverse=True)
    recall = np.mean([len(set(g) & set(e)) / k for g, e in zip(got_items, exact_items)])
    assert recall >= 0.95, recall


def test_the_index_finds_the_top_inner_products_and_travels_pickled():
    rng = np.random.default_rng(5)
    factors = rng.normal(size=(2000, 16)).astype(np.float32)
    positions = np.arange(0, 4000, 2)  # catalog positions of the items with factors
    index = pickle.loads(pickle.dumps(ItemIndex(factors, positions)))
    users = rng.normal(size=(50, 16)).astype(np.float32)
    found = index.search(users, 50)
    exact = positions[np.argsort(-(users @ factors.T), axis=1)[:, :50]]
    assert np.mean([len(set(f) & set(e)) / 50 for f, e in zip(found, exact)]) >= 0.95
    assert (index.search(users[:2], 2500)[:, 2000:] == -1).all()  # fewer items than asked: padded


def test_union_rows_keeps_each_rows_distinct_positions_ascending():
    got = union_rows(np.array([[5, 3, -1, 5], [2, 2, 2, 2], [-1, -1, -1, -1]], dtype=np.int32))
    assert got.tolist() == [[3, 5], [2, -1], [-1, -1]]


def test_the_mode_is_exact_below_the_catalog_size_and_retrieved_from_it():
    assert not use_retrieval("auto", 99_999, 100_000) and use_retrieval("auto", 100_000, 100_000)
    assert use_retrieval("retrieved", 10, 100_000) and not use_retrieval("exact", 10**7, 100_000)
    with pytest.raises(ValueError, match="model.retrieval"):
        use_retrieval("approximate", 10, 100_000)
