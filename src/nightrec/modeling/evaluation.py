"""Top-k metrics in Spark, and a pure-Python reference that the tests hold them to.

Accuracy (per user, averaged): precision, recall, NDCG and MAP at each k; a truth user without
recommendations scores 0; MAP@k divides by min(k, relevant items). Beyond accuracy (over all
lists): catalog coverage (share of the catalog recommended to anyone) and novelty (mean
-log2 share of training users who took a recommended item: higher means less popular picks).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

METRICS = ("precision", "recall", "ndcg", "map")


def _ideal_dcg(n_relevant: Column, k: int) -> Column:
    return F.aggregate(F.sequence(F.lit(1), F.least(n_relevant, F.lit(k))), F.lit(0.0),
                       lambda acc, i: acc + 1.0 / F.log2(i + 1.0))


def per_user_metrics(recs: DataFrame, truth: DataFrame, ks: Sequence[int]) -> DataFrame:
    """(user_id, precision_at_k, recall_at_k, ndcg_at_k, map_at_k for each k) for every truth user.

    recs: (user_id, item_id, rank starting at 1); truth: (user_id, item_id) relevant pairs.
    """
    top = recs.where(F.col("rank") <= max(ks)).select("user_id", "item_id", "rank")
    relevant = truth.select("user_id", "item_id").distinct()
    n_relevant = relevant.groupBy("user_id").agg(F.count("*").alias("n_rel"))
    hits = top.join(relevant, ["user_id", "item_id"]).withColumn(
        "hit_no", F.row_number().over(Window.partitionBy("user_id").orderBy("rank")))
    sums = []
    for k in ks:
        within = F.col("rank") <= k
        sums += [F.sum(F.when(within, 1).otherwise(0)).alias(f"hits_{k}"),
                 F.sum(F.when(within, 1.0 / F.log2(F.col("rank") + 1.0)).otherwise(0.0)).alias(f"dcg_{k}"),
                 F.sum(F.when(within, F.col("hit_no") / F.col("rank")).otherwise(0.0)).alias(f"ap_{k}")]
    per_user = n_relevant.join(hits.groupBy("user_id").agg(*sums), "user_id", "left").na.fill(0)
    columns = ["user_id"]
    for k in ks:
        columns += [(F.col(f"hits_{k}") / k).alias(f"precision_at_{k}"),
                    (F.col(f"hits_{k}") / F.col("n_rel")).alias(f"recall_at_{k}"),
                    (F.col(f"dcg_{k}") / _ideal_dcg(F.col("n_rel"), k)).alias(f"ndcg_at_{k}"),
                    (F.col(f"ap_{k}") / F.least(F.col("n_rel"), F.lit(k))).alias(f"map_at_{k}")]
    return per_user.select(*columns)


def ranking_metrics(recs: DataFrame, truth: DataFrame, ks: Sequence[int],
                    segments: DataFrame | None = None) -> dict[str, float]:
    """Mean metrics over the truth users: {"ndcg_at_10": ..., "users": n}; with segments
    (user_id, segment), also per segment: {"ndcg_at_10_cold": ..., "users_cold": n}."""
    per_user = per_user_metrics(recs, truth, ks)
    names = [c for c in per_user.columns if c != "user_id"]
    overall = per_user.agg(*[F.avg(c).alias(c) for c in names], F.count("*").alias("users")).first()
    if overall["users"] == 0:
        raise ValueError("cannot evaluate: the truth set has no users")
    result = {c: float(overall[c]) for c in names} | {"users": int(overall["users"])}
    if segments is not None:
        by_segment = per_user.join(segments, "user_id").groupBy("segment").agg(
            *[F.avg(c).alias(c) for c in names], F.count("*").alias("users"))
        for row in by_segment.collect():
            result |= {f"{c}_{row['segment']}": float(row[c]) for c in names}
            result[f"users_{row['segment']}"] = int(row["users"])
    return result


def catalog_metrics(recs: DataFrame, item_users: DataFrame, n_users: int, catalog_size: int,
                    ks: Sequence[int]) -> dict[str, float]:
    """coverage_at_k and novelty_at_k of the lists; item_users: (item_id, users who took it in training)."""
    top = recs.where(F.col("rank") <= max(ks)).join(item_users, "item_id", "left").na.fill(0, ["users"])
    surprise = -F.log2((F.col("users") + 1.0) / (n_users + 1.0))
    aggs = []
    for k in ks:
        within = F.col("rank") <= k
        aggs += [F.countDistinct(F.when(within, F.col("item_id"))).alias(f"coverage_at_{k}"),
                 F.avg(F.when(within, surprise)).alias(f"novelty_at_{k}")]
    row = top.agg(*aggs).first()
    return {f"coverage_at_{k}": row[f"coverage_at_{k}"] / catalog_size for k in ks} | {
        f"novelty_at_{k}": float(row[f"novelty_at_{k}"] or 0.0) for k in ks}


def reference_metrics(recs: dict[int, list[int]], truth: dict[int, set[int]], k: int) -> dict[str, float]:
    """Plain-Python definition of the accuracy metrics (recs: user -> ranked items)."""
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


def reference_catalog_metrics(recs: dict[int, list[int]], item_users: dict[int, int], n_users: int,
                              catalog_size: int, k: int) -> dict[str, float]:
    """Plain-Python coverage and novelty at k."""
    shown = [item for ranked in recs.values() for item in ranked[:k]]
    surprise = [-math.log2((item_users.get(item, 0) + 1) / (n_users + 1)) for item in shown]
    return {"coverage": len(set(shown)) / catalog_size, "novelty": sum(surprise) / len(surprise) if shown else 0.0}
