import random

import pytest

from nightrec.evaluation import METRICS, ranking_metrics, reference_metrics


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_spark_metrics_equal_the_reference_on_random_data(spark, seed):
    rng = random.Random(seed)
    k = rng.choice([3, 5, 10])
    recs, truth = {}, {}
    for user in range(1, 80):
        if rng.random() < 0.9:
            recs[user] = rng.sample(range(1, 60), rng.randint(1, 15))
        if rng.random() < 0.8:
            truth[user] = set(rng.sample(range(1, 60), rng.randint(1, 12)))
    rec_rows = [(u, item, rank) for u, items in recs.items() for rank, item in enumerate(items, start=1)]
    truth_rows = [(u, item) for u, items in truth.items() for item in items]
    got = ranking_metrics(spark.createDataFrame(rec_rows, "user_id int, item_id int, rank int"),
                          spark.createDataFrame(truth_rows, "user_id int, item_id int"), k)
    want = reference_metrics(recs, truth, k)
    for metric in METRICS:
        assert got[metric] == pytest.approx(want[metric], abs=1e-12), metric


def test_empty_truth_is_an_error(spark):
    empty = spark.createDataFrame([], "user_id int, item_id int")
    with pytest.raises(ValueError, match="no users"):
        ranking_metrics(spark.createDataFrame([(1, 1, 1)], "user_id int, item_id int, rank int"), empty, 10)
