import math

import pytest

from nightrec.modeling.evaluation import reference_metrics


def test_hand_computed_example():
    recs = {1: [10, 11, 12], 2: [20, 21, 22]}
    truth = {1: {11, 13}, 2: {99}, 3: {5}}   # user 3 got no recommendations: scores 0
    got = reference_metrics(recs, truth, k=3)
    assert got["precision"] == pytest.approx((1 / 3) / 3)
    assert got["recall"] == pytest.approx((1 / 2) / 3)
    ndcg_user1 = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert got["ndcg"] == pytest.approx(ndcg_user1 / 3)
    assert got["map"] == pytest.approx(((1 / 2) / 2) / 3)


def test_perfect_ranking_scores_one():
    got = reference_metrics({1: [1, 2], 2: [3]}, {1: {1, 2}, 2: {3}}, k=2)
    assert got["ndcg"] == pytest.approx(1.0)
    assert got["map"] == pytest.approx(1.0)
    assert got["recall"] == pytest.approx(1.0)
