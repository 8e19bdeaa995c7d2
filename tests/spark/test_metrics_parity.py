import random

import pytest

from nightrec.modeling.evaluation import (
    METRICS,
    catalog_metrics,
    ranking_metrics,
    reference_catalog_metrics,
    reference_metrics,
)


def random_case(seed):
    rng = random.Random(seed)
    recs, truth = {}, {}
    for user in range(1, 80):
        if rng.random() < 0.9:
            recs[user] = rng.sample(range(1, 60), rng.randint(1, 25))
        if rng.random() < 0.8:
            truth[user] = set(rng.sample(range(1, 60), rng.randint(1, 12)))
    return rng, recs, truth


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_spark_metrics_equal_the_reference_on_random_data(spark, seed):
    rng, recs, truth = random_case(seed)
    ks = sorted({rng.choice([1, 3, 5]), rng.choice([10, 20])})
    segment_of = {user: rng.choice(["cold", "warm"]) for user in range(1, 80)}
    rec_rows = [(u, item, rank) for u, items in recs.items() for rank, item in enumerate(items, start=1)]
    truth_rows = [(u, item) for u, items in truth.items() for item in items]
    got = ranking_metrics(spark.createDataFrame(rec_rows, "user_id int, item_id int, rank int"),
                          spark.createDataFrame(truth_rows, "user_id int, item_id int"), ks,
                          spark.createDataFrame(list(segment_of.items()), "user_id int, segment string"))
    assert got["users"] == len(truth)
    for k in ks:
        want = reference_metrics(recs, truth, k)
        for segment in ("cold", "warm"):
            subset = {u: items for u, items in truth.items() if segment_of[u] == segment}
            want |= {f"{m}_{segment}": v for m, v in reference_metrics(recs, subset, k).items()}
        for metric in METRICS:
            assert got[f"{metric}_at_{k}"] == pytest.approx(want[metric], abs=1e-12), (metric, k)
            for segment in ("cold", "warm"):
                assert got[f"{metric}_at_{k}_{segment}"] == pytest.approx(want[f"{metric}_{segment}"], abs=1e-12)


@pytest.mark.parametrize("seed", [4, 5])
def test_spark_coverage_and_novelty_equal_the_reference(spark, seed):
    rng, recs, _ = random_case(seed)
    item_users = {item: rng.randint(1, 50) for item in range(1, 60) if rng.random() < 0.9}  # some never taken
    rec_rows = [(u, item, rank) for u, items in recs.items() for rank, item in enumerate(items, start=1)]
    got = catalog_metrics(spark.createDataFrame(rec_rows, "user_id int, item_id int, rank int"),
                          spark.createDataFrame(list(item_users.items()), "item_id int, users long"),
                          n_users=60, catalog_size=70, ks=(5, 10))
    for k in (5, 10):
        want = reference_catalog_metrics(recs, item_users, 60, 70, k)
        assert got[f"coverage_at_{k}"] == pytest.approx(want["coverage"], abs=1e-12)
        assert got[f"novelty_at_{k}"] == pytest.approx(want["novelty"], abs=1e-12)


def test_empty_truth_is_an_error(spark):
    empty = spark.createDataFrame([], "user_id int, item_id int")
    with pytest.raises(ValueError, match="no users"):
        ranking_metrics(spark.createDataFrame([(1, 1, 1)], "user_id int, item_id int, rank int"), empty, [10])
