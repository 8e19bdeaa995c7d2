"""The promises every candidate keeps, checked on one tiny data set whose right answers are obvious:
two taste groups, each user having taken half of their group's items (the other half is what a
personal model must recommend)."""

import datetime as dt
import random

import numpy as np
import pyarrow as pa
import pytest

from nightrec.modeling.candidates import FAMILIES
from nightrec.modeling.dataset import ModelSettingsView, training_set
from nightrec.modeling.scoring import Bundle, user_block
from nightrec.modeling.training import fit_family

AS_OF = dt.datetime(2024, 6, 1, tzinfo=dt.timezone.utc)
GROUPS = {"drama": range(1, 7), "comedy": range(7, 13)}  # items 1-6, items 7-12
UNAVAILABLE = 3
USERS = range(1, 81)  # odd users like drama, even users comedy
PARAMS = {"als": {"rank": 2, "reg_param": 0.1, "alpha": 5.0, "max_iter": 15},  # two tastes: rank 2
          "itemknn": {"l2": 10.0}, "neighbours": {"k": 10, "shrink": 0.0},
          "content": {"min_items_per_term": 1}, "popularity": {"half_life_days": 0.0}}
PERSONAL = ("als", "itemknn", "neighbours", "content")  # popularity ranks everyone alike, by design
OPTS = ModelSettingsView(seed=7, blocks=2, item_knn_max_items=100)


def group_of(user: int) -> str:
    return "drama" if user % 2 else "comedy"


def taken(user: int) -> list[int]:
    """Three of the six items of the user's group, drawn for each user: with forty users a group,
    every pair of a group's items is taken together by several users, and no pair across groups."""
    return sorted(random.Random(user).sample(list(GROUPS[group_of(user)]), 3))


@pytest.fixture(scope="module")
def data(spark):
    rows = [(u, i, 1.0, AS_OF - dt.timedelta(days=u % 5)) for u in USERS for i in taken(u)]
    feedback = spark.createDataFrame(rows, "user_id int, item_id int, strength float, last_ts timestamp").cache()
    items = spark.createDataFrame(
        [(i, {"title": f"film{i}", "genres": genre, "available": "no" if i == UNAVAILABLE else "yes"})
         for genre, ids in GROUPS.items() for i in ids], "item_id int, attributes map<string,string>")
    return training_set(feedback, items, AS_OF, OPTS)


def histories(data) -> pa.RecordBatch:
    users = list(USERS)
    return pa.RecordBatch.from_pydict({
        "user_id": pa.array(users, pa.int32()),
        "items": pa.array([taken(u) for u in users], pa.list_(pa.int32())),
        "strengths": pa.array([[1.0] * 3 for _ in users], pa.list_(pa.float32())),
        "recency": pa.array([[1.0] * 3 for _ in users], pa.list_(pa.float32()))})


def test_the_contract_covers_every_candidate():
    assert set(PARAMS) == set(FAMILIES)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_candidate_keeps_the_shared_promises(data, family):
    component = fit_family(family, data, PARAMS[family], OPTS)
    block = user_block(histories(data), data.catalog)
    scores = component.score(block)
    assert scores.shape == (len(USERS), len(data.catalog))
    assert np.isfinite(scores).all()

    bundle = Bundle(data.catalog, {family: component}, {family: 1.0}, data.rules)
    lists = bundle.ranked(block, 2).to_pydict()
    for user, items in zip(lists["user_id"], lists["item_ids"]):
        assert not set(items) & set(taken(user)), f"{family}: user {user} was recommended what they took"
        assert UNAVAILABLE not in items, f"{family}: user {user} was recommended an unavailable item"
        if family in PERSONAL:  # the two best are the untaken, available items of the user's own group
            assert set(items) <= set(GROUPS[group_of(user)]), f"{family}: user {user} got {items}"

    data.memo.clear()  # refit from the data alone, not from what the first fit kept
    again = fit_family(family, data, PARAMS[family], OPTS).score(block)
    np.testing.assert_allclose(again, scores, rtol=1e-5, atol=1e-6, err_msg=f"{family}: not deterministic for a seed")

    restored = type(component).restore(component.describe(), component.arrays())
    np.testing.assert_array_equal(restored.score(block), scores)
