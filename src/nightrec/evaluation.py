"""Top-k ranking metrics in Spark, and a pure-Python reference that the tests hold them to."""

from __future__ import annotations

import math

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

METRICS = ("precision", "recall", "ndcg", "map")


def ranking_metrics(recs: DataFrame, truth: DataFrame, k: int, *, user_col: str = "user_id",
                    item_col: str = "item_id", rank_col: str = "rank") -> dict[str, float]:
    """Mean precision/recall/NDCG/MAP@k over the users of `truth`.

    recs: (user, item, rank starting at 1); truth: (user, item) relevant pairs. A truth user
    without recommendations scores 0. MAP@k divides by min(k, relevant items).
    """
    top = recs.where(F.col(rank_col) <= k).select(user_col, item_col, rank_col)
    relevant = truth.select(user_col, item_col).distinct()
    n_relevant = relevant.groupBy(user_col).agg(F.count("*").alias("n_rel"))
    hits = top.join(relevant, [user_col, item_col]).withColumn(
        "hit_no", F.row_number().over(_by_rank(user_col, rank_col)))
    per_user_hits = hits.groupBy(user_col).agg(
        F.count("*").alias("hits"),
        F.sum(1.0 / F.log2(F.col(rank_col) + 1.0)).alias("dcg"),
        F.sum(F.col("hit_no") / F.col(rank_col)).alias("ap_sum"),
    )
    idcg = F.aggregate(F.sequence(F.lit(1), F.least(F.col("n_rel"), F.lit(k))), F.lit(0.0),
                       lambda acc, i: acc + 1.0 / F.log2(i + 1.0))
    per_user = n_relevant.join(per_user_hits, user_col, "left").na.fill(0, ["hits", "dcg", "ap_sum"]).select(
        (F.col("hits") / k).alias("precision"),
        (F.col("hits") / F.col("n_rel")).alias("recall"),
        (F.col("dcg") / idcg).alias("ndcg"),
        (F.col("ap_sum") / F.least(F.col("n_rel"), F.lit(k))).alias("map"),
    )
    row = per_user.agg(*[F.avg(m).alias(m) for m in METRICS], F.count("*").alias("users")).first()
    if row["users"] == 0:
        raise ValueError("cannot evaluate: the truth set has no users")
    return {m: float(row[m]) for m in METRICS}


def _by_rank(user_col: str, rank_col: str):
    from pyspark.sql import Window

    return Window.partitionBy(user_col).orderBy(rank_col)


def reference_metrics(recs: dict[int, list[int]], truth: dict[int, set[int]], k: int) -> dict[str, float]:
    """Plain-Python definition of the same metrics (recs: user -> ranked items)."""
    totals = dict.fromkeys(METRICS, 0.0)
    for user, relevant in truth.items():
        ranked = recs.get(user, [])[:k]
        hit_ranks = [rank for rank, item in enumerate(ranked, start=1) if item in relevant]
        ideal = sum(1.0 / math.log2(i + 1) for i in range(1, min(len(relevant), k) + 1))
        totals["precision"] += len(hit_ranks) / k
        totals["recall"] += len(hit_ranks) / len(relevant)
        totals["ndcg"] += sum(1.0 / math.log2(r + 1) for r in hit_ranks) / ideal
        totals["map"] += sum(n / r for n, r in enumerate(hit_ranks, start=1)) / min(len(relevant), k)
    return {m: totals[m] / len(truth) for m in METRICS}
