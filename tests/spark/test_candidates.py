"""Candidates and splits on small Spark data: what each model must do, checked against plain numpy."""

import datetime as dt
import math
import random

import numpy as np
import pytest
import scipy.sparse as sp
from pyspark.sql import functions as F

from nightrec.constants import GLOBAL_SEGMENT as GLOBAL
from nightrec.data.feedback import latest_split, stratified_split
from nightrec.modeling import dataset, recipe, search, training
from nightrec.modeling.ann import ItemIndex
from nightrec.modeling.candidates import itemknn
from nightrec.modeling.candidates.popularity import ranked_lists, segment_lists
from nightrec.modeling.fallbacks import new_user_recs
from nightrec.modeling.retrieval import Retrieval
from nightrec.modeling.scoring import Spent, SpentSum, recommend, user_block

AS_OF = dt.datetime(2024, 6, 1, tzinfo=dt.timezone.utc)
FEEDBACK_SCHEMA = "user_id int, item_id int, strength float, last_ts timestamp"


def feedback_frame(spark, pairs, days_ago=None):
    rows = [(u, i, 1.0 + (u * i) % 3, AS_OF - dt.timedelta(days=(days_ago or {}).get((u, i), (u + i) % 30)))
            for u, i in pairs]
    return spark.createDataFrame(rows, FEEDBACK_SCHEMA)


def grouped_pairs(users=40, items=48, per_user=10, seed=0):
    """Users like the items of their group (user % 4 == item % 4)."""
    rng = random.Random(seed)
    return sorted({(u, i) for u in range(1, users + 1)
                   for i in rng.sample([i for i in range(1, items + 1) if i % 4 == u % 4], per_user)})


def items_frame(spark, rows):
    """rows: (item_id, {attributes})"""
    return spark.createDataFrame(rows, "item_id int, attributes map<string,string>")


def test_stratified_split_is_per_user_disjoint_and_repeatable(spark):
    rng = random.Random(1)
    pairs = sorted({(u, rng.randrange(1, 200)) for u in range(1, 30) for _ in range(rng.randrange(4, 40))})
    fb = feedback_frame(spark, pairs)
    train, truth = stratified_split(fb, 0.75, seed=7)
    train_pairs = {(r.user_id, r.item_id) for r in train.collect()}
    truth_pairs = {(r.user_id, r.item_id) for r in truth.collect()}
    assert not train_pairs & truth_pairs and train_pairs | truth_pairs == set(pairs)
    for user in range(1, 30):
        n = sum(1 for u, _ in pairs if u == user)
        assert sum(1 for u, _ in train_pairs if u == user) == math.floor(n * 0.75 + 0.5)  # half up
    again, _ = stratified_split(fb.repartition(3), 0.75, seed=7)
    assert {(r.user_id, r.item_id) for r in again.collect()} == train_pairs
    other, _ = stratified_split(fb, 0.75, seed=8)
    assert {(r.user_id, r.item_id) for r in other.collect()} != train_pairs


def test_latest_split_holds_out_each_users_newest_items_with_all_their_events(spark):
    rng = random.Random(2)
    events = []  # (user, item, ts); some items taken twice, the second time much later
    for user in range(1, 25):
        for item in rng.sample(range(1, 100), rng.randrange(1, 30)):
            first = dt.datetime(2024, 6, 1) - dt.timedelta(hours=rng.randrange(1, 5000))  # naive: as collected
            events.append((user, item, first))
            if rng.random() < 0.2:
                events.append((user, item, first + dt.timedelta(hours=rng.randrange(1, 5000))))
    frame = spark.createDataFrame(events, "user_id int, item_id int, ts timestamp")
    train, truth = latest_split(frame, 0.2)
    train_events = {(r.user_id, r.item_id, r.ts) for r in train.collect()}
    truth_pairs = {(r.user_id, r.item_id) for r in truth.collect()}
    for user in range(1, 25):
        firsts = {}
        for u, i, ts in events:
            if u == user:
                firsts[i] = min(ts, firsts.get(i, ts))
        newest_first = sorted(firsts, key=lambda i: (firsts[i], i), reverse=True)
        held = newest_first[:math.floor(len(firsts) * 0.2 + 0.5)]
        assert {i for u, i in truth_pairs if u == user} == set(held)
    # every event of a held-out pair leaves training (a re-take after the cut included); the rest stay
    assert train_events == {(u, i, ts) for u, i, ts in events if (u, i) not in truth_pairs}
    with pytest.raises(ValueError, match="share"):
        latest_split(frame, 0.6)


def test_als_folds_users_in_exactly_as_spark_fits_them(spark):
    """The user factors Spark computes are what fold_in solves from the same histories: scoring can
    fold users in from their latest history and no artifact needs to keep user factors."""
    from pyspark.ml.recommendation import ALS

    from nightrec.modeling.candidates import als
    from nightrec.modeling.topk import factor_matrix

    pairs = grouped_pairs(users=60, items=48, per_user=8, seed=3)
    feedback = feedback_frame(spark, pairs)
    catalog = np.arange(1, 49)
    params = dict(rank=6, regParam=0.1, alpha=2.0, maxIter=6, seed=5, numUserBlocks=2, numItemBlocks=2)
    component = als.fit_factors(feedback, catalog, rank=6, reg_param=0.1, alpha=2.0, max_iter=6, seed=5, blocks=2)
    model = ALS(userCol="user_id", itemCol="item_id", ratingCol="strength", implicitPrefs=True, **params).fit(feedback)
    users = model.userFactors.toArrow()
    user_ids, expected = factor_matrix(users.column("id").combine_chunks(), users.column("features").combine_chunks())
    batch = dataset.training_set(feedback, None, AS_OF, dataset.ModelSettingsView()).user_rows() \
        .orderBy("user_id").toArrow().combine_chunks().to_batches()[0]
    block = user_block(batch, catalog)
    assert block.user_ids.tolist() == user_ids.tolist()
    np.testing.assert_allclose(component.fold_in(block.history), expected, rtol=1e-4, atol=1e-5)
    # a user with no history gets zeros, not a failure
    assert not component.fold_in(sp.csr_matrix((1, 48), dtype=np.float32)).any()


def test_item_gram_equals_numpy_and_covers_the_most_popular_items(spark):
    pairs = grouped_pairs()
    catalog = np.arange(1, 49)
    x = np.zeros((41, 48))
    for u, i in pairs:
        x[u, i - 1] = 1
    gram = itemknn.gram(feedback_frame(spark, pairs).repartition(3), catalog, max_items=1000)
    np.testing.assert_array_equal(gram.matrix, x.T @ x)
    popular = itemknn.gram(feedback_frame(spark, pairs), catalog, max_items=5)
    counts = x.sum(axis=0)
    assert sorted(catalog[popular.positions]) == sorted(np.argsort(-counts, kind="stable")[:5] + 1)


def test_spark_scoring_equals_the_driver_for_a_blend(spark):
    pairs = grouped_pairs(per_user=6)  # 6 of the 12 items of their group left to find
    opts = dataset.ModelSettingsView(blocks=2)
    data = dataset.training_set(feedback_frame(spark, pairs), None, AS_OF, opts)
    selection = search.Selection(
        {"als": {"rank": 4, "reg_param": 0.1, "alpha": 2.0, "max_iter": 4}, "itemknn": {"l2": 5.0},
         "popularity": {"half_life_days": 7.0}}, {"als": 0.5, "itemknn": 0.3, "popularity": 0.2}, {})
    bundles, _ = search.fit_bundles(data, selection, opts)
    hybrid = bundles[recipe.HYBRID]
    rows = data.user_rows()
    spent = spark.sparkContext.accumulator(Spent(), SpentSum())
    in_spark = {r.user_id: (r.item_ids, r.scores)
                for r in recommend(hybrid, rows, 5, scores_per_block=48 * 5, spent=spent).collect()}
    # every task's time came back: each of the 40 users against the 48 items, part by part
    assert spent.value.pairs == 40 * 48
    assert {"score als", "score itemknn", "score popularity", "selection"} <= set(spent.value.seconds)
    batch = rows.orderBy("user_id").toArrow().combine_chunks().to_batches()[0]
    on_driver = hybrid.ranked(user_block(batch, data.catalog), 5).to_pylist()
    assert len(in_spark) == 40
    for row in on_driver:
        ids, scores = in_spark[row["user_id"]]
        assert ids == row["item_ids"]
        assert scores == pytest.approx(row["scores"], rel=1e-4, abs=1e-5)
    # the blend learned the taste groups: most recommendations stay inside the user's group
    own = sum(1 for u, (ids, _) in in_spark.items() for i in ids if i % 4 == u % 4)
    assert own / (5 * 40) > 0.8  # chance: 0.25


def test_spark_scoring_at_shortlists_holding_every_item_gives_the_exact_lists(spark):
    """The index over the ALS factors travels to the executors inside the bundle; shortlists as deep
    as the catalog give exactly what exact scoring gives."""
    pairs = grouped_pairs(per_user=6)
    opts = dataset.ModelSettingsView(blocks=2)
    data = dataset.training_set(feedback_frame(spark, pairs), None, AS_OF, opts)
    selection = search.Selection({"als": {"rank": 4, "reg_param": 0.1, "alpha": 2.0, "max_iter": 4},
                                  "itemknn": {"l2": 5.0}}, {"als": 0.6, "itemknn": 0.4}, {})
    hybrid = search.fit_bundles(data, selection, opts)[0][recipe.HYBRID]
    als = hybrid.components["als"]
    shortlists = Retrieval(ItemIndex(als.item_factors[als.known_items()], als.known_items()),
                           np.empty(0, dtype=np.int32), len(data.catalog))
    exact, retrieved = ({r.user_id: (r.item_ids, r.scores) for r in recommend(bundle, data.user_rows(), 5).collect()}
                        for bundle in (hybrid, hybrid.with_retrieval(shortlists)))
    assert len(retrieved) == 40 and retrieved.keys() == exact.keys()
    for user, (ids, scores) in exact.items():
        assert retrieved[user][0] == ids
        assert retrieved[user][1] == pytest.approx(scores, rel=1e-4, abs=1e-5)


def test_content_model_recommends_an_item_nobody_has_touched(spark):
    pairs = grouped_pairs(items=48)
    genres = ["Comedy", "Drama", "Horror", "Western"]
    items = [(i, {"title": f"Film {i}", "genres": genres[i % 4], "year": str(1990 + i % 3)}) for i in range(1, 49)]
    items.append((500, {"title": "Brand new", "genres": "Horror", "year": "2024"}))  # in the file, no interactions
    opts = dataset.ModelSettingsView(blocks=2)
    data = dataset.training_set(feedback_frame(spark, pairs), items_frame(spark, items), AS_OF, opts)
    assert 500 in data.catalog
    bundles, _ = search.fit_bundles(data, search.Selection({"content": {"min_items_per_term": 1}},
                                                           {"content": 1.0}, {}), opts)
    lists = {r.user_id: r.item_ids for r in recommend(bundles["content"], data.user_rows(), 15).collect()}
    horror_fans = [u for u in lists if u % 4 == 2]   # items with i % 4 == 2 are the horror films
    others = [u for u in lists if u % 4 != 2]
    assert all(500 in lists[u] for u in horror_fans)
    assert not any(500 in lists[u] for u in others)


def test_new_users_get_their_segment_list_or_else_the_global_one(spark):
    # users 1-10: women 25-34 who like item 5; users 11-20: men 35-44 who like item 2 (as do users 1-3);
    # everyone took item 3. Globally: 3 (20 users), 2 (13), 5 (10). Ties go to the smaller item id.
    pairs = [(u, 5) for u in range(1, 11)] + [(u, 2) for u in range(11, 21)] + [(u, 2) for u in range(1, 4)] + \
            [(u, 3) for u in range(1, 21)]
    fb = feedback_frame(spark, pairs, days_ago={p: 1 for p in pairs})
    people = [(u, {"age": "30", "gender": "F"}) for u in range(1, 11)] + \
             [(u, {"age": "40", "gender": "m"}) for u in range(11, 21)] + \
             [(101, {"age": "27", "gender": "F"}), (102, {"age": " 41 ", "gender": "M"}),
              (103, {"age": "70", "gender": "F"}), (104, {})]
    users = spark.createDataFrame(people, "user_id int, attributes map<string,string>")
    segments = segment_lists(fb, users, AS_OF, 7.0, k=2, min_users=5)
    global_list = fb.groupBy("item_id").agg(F.count("*").alias("score")).withColumn("segment", F.lit(GLOBAL))
    fallbacks = ranked_lists(global_list, "segment", 2).unionByName(segments)
    recs = new_user_recs(users, fb, fallbacks).collect()
    got = {r.user_id: (r.item_ids, r.model_version) for r in recs}
    # what Redis gets: a reference to the segment's list, not a copy
    assert {r.user_id: bytes(r.value) for r in recs} == {
        101: b"\x02age=25-34|gender=F", 102: b"\x02age=35-44|gender=M", 103: b"\x02global", 104: b"\x02global"}
    assert set(got) == {101, 102, 103, 104}  # only users without interactions
    assert got[101] == ([3, 5], "segment:age=25-34|gender=F")
    assert got[102] == ([2, 3], "segment:age=35-44|gender=M")
    assert got[103] == ([3, 2], f"popular:{GLOBAL}")   # age=56+|gender=F has no members: global list
    assert got[104] == ([3, 2], f"popular:{GLOBAL}")


def test_neighbours_model_covers_the_catalog_and_finds_the_taste_groups(spark):
    pairs = grouped_pairs(per_user=6)
    opts = dataset.ModelSettingsView(blocks=2)
    data = dataset.training_set(feedback_frame(spark, pairs), None, AS_OF, opts)
    bundle, _ = training.fit_recipe(data, recipe.Recipe("neighbours", {"neighbours": {"k": 10, "shrink": 1.0}},
                                                          {"neighbours": 1.0}), opts, log=lambda _: None)
    assert bundle.components["neighbours"].similarity.getnnz(axis=1).max() <= 10
    lists = {r.user_id: r.item_ids for r in recommend(bundle, data.user_rows(), 5).collect()}
    own = sum(1 for u, ids in lists.items() for i in ids if i % 4 == u % 4)
    assert own / sum(len(ids) for ids in lists.values()) > 0.9
    seen = set(pairs)
    assert not [(u, i) for u, ids in lists.items() for i in ids if (u, i) in seen]
