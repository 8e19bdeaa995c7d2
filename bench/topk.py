"""Top-100 generation: nightrec.modeling.topk vs Spark's ALSModel.recommendForAllUsers(100), same factors;
then the nightly path (a blend, its rules, lists packed for Redis) part by part against the FLOP bound.

    .venv/bin/python bench/topk.py --users 100000 --items 20000 --rank 64

Prints a table (and this command). Both sides run in the same Spark session, one after the other,
after an exactness check on 200 users that warms both up. Ours also excludes each user's seen
items (the interactions the factors come from), which recommendForAllUsers does not. The FLOP bound is
2*users*items*rank divided by
this machine's best float32 matmul rate (big blocks, all cores): no exact method can beat it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time

import numpy as np
from pyspark.ml.recommendation import ALS
from pyspark.sql import functions as F

from nightrec.data.spark import get_spark
from nightrec.modeling.candidates.als import AlsComponent
from nightrec.modeling.candidates.itemknn import ItemKnnComponent
from nightrec.modeling.scoring import Bundle, Rules, Spent, SpentSum, recommend, user_rows
from nightrec.modeling.topk import factor_matrix, matmul_rate, top_k_unseen
from nightrec.settings import load_settings


def timed(action) -> tuple[float, object]:
    started = time.perf_counter()
    result = action()
    return time.perf_counter() - started, result


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--head", type=int, default=5000, help="items the item-item model covers (the nightly path)")
    args = parser.parse_args(argv)
    spark = get_spark(load_settings(), "nightrec-bench-topk")
    cores = spark.sparkContext.defaultParallelism

    # Factors from a one-iteration ALS fit on random interactions: a real ALSModel of the wanted size.
    interactions = spark.range(args.users * 5).selectExpr(
        f"cast(id % {args.users} as int) as user_id",
        f"cast(pmod(hash(id), {args.items}) as int) as item_id", "1.0 as strength")
    interactions = interactions.unionByName(spark.range(args.items).selectExpr(
        "0 as user_id", "cast(id as int) as item_id", "1.0 as strength"))
    model = ALS(userCol="user_id", itemCol="item_id", ratingCol="strength", implicitPrefs=True, rank=args.rank,
                maxIter=1, numUserBlocks=cores, numItemBlocks=cores, seed=1).fit(interactions)
    users, items = model.userFactors.cache(), model.itemFactors.cache()
    n_users, n_items = users.count(), items.count()
    no_seen = spark.createDataFrame([], "user_id int, item_id int")
    seen = interactions.select("user_id", "item_id")

    # Exactness first: it also warms both sides up (JVM code paths, Python workers, numba cache).
    sample = users.orderBy("id").limit(200)
    theirs = {r.user_id: [x.item_id for x in r.recommendations]
              for r in model.recommendForUserSubset(sample.withColumnRenamed("id", "user_id"), args.k).collect()}
    mine = {r.user_id: list(r.item_ids) for r in top_k_unseen(sample, items, no_seen, args.k).collect()}
    same = sum(theirs[u] == mine[u] for u in mine)
    same_sets = sum(set(theirs[u]) == set(mine[u]) for u in mine)
    # With seen items excluded: against a numpy full sort of every score of the same 200 users.
    unseen = {r.user_id: list(r.item_ids) for r in top_k_unseen(sample, items, seen, args.k).collect()}
    brute = brute_force_unseen(sample.toArrow(), items.toArrow(), seen.join(sample.select(
        F.col("id").alias("user_id")), "user_id").toArrow(), args.k)
    same_unseen = sum(brute[u] == unseen[u] for u in unseen)

    spark_seconds, _ = timed(lambda: model.recommendForAllUsers(args.k).write.format("noop").mode("overwrite").save())
    ours_seconds, _ = timed(lambda: top_k_unseen(users, items, seen, args.k)
                            .write.format("noop").mode("overwrite").save())

    flop_bound = 2 * n_users * n_items * args.rank / matmul_rate(args.rank)
    print(f"\n$ .venv/bin/python bench/topk.py --users {args.users} --items {args.items} --rank {args.rank} "
          f"--k {args.k} --head {args.head}")
    print(f"{n_users} users x {n_items} items, rank {args.rank}, top {args.k}, {cores} cores\n")
    print("| method                                    | seconds | vs recommendForAllUsers |")
    print("|-------------------------------------------|--------:|------------------------:|")
    print(f"| ALSModel.recommendForAllUsers             | {spark_seconds:7.2f} | 1.0x |")
    print(f"| nightrec.modeling.topk.top_k_unseen (seen dropped) | {ours_seconds:7.2f} | "
          f"{spark_seconds / ours_seconds:.1f}x |")
    print(f"| FLOP bound (best matmul rate)             | {flop_bound:7.2f} | {spark_seconds / flop_bound:.1f}x |")
    print(f"\nexactness on {len(mine)} users, nothing excluded, vs recommendForAllUsers: identical lists {same}, "
          f"identical sets {same_sets} (order differs only on float ties)")
    print(f"exactness on {len(unseen)} users, seen items excluded, vs numpy full sort: identical lists {same_unseen}")

    blend_seconds, spent = nightly_blend(items, interactions, args.k, args.head)
    rate = matmul_rate(args.rank, threads=1)
    print(f"\nThe nightly path (nightrec.modeling.scoring.recommend) on the same factors: ALS folded in from each "
          f"user's history, blended with an item-item model over the {min(args.head, n_items):,} most popular "
          f"items, at most 40 items of one of 20 categories per list, lists packed for Redis: "
          f"{blend_seconds:.2f} s, {blend_seconds / flop_bound:.1f}x the ALS matmul's FLOP bound\n")
    print("| part | core-s | ns per (user, item) pair | share of its FLOP bound (one core) |")
    print("|---|--:|--:|--:|")
    pairs = max(spent.pairs, 1)
    for part, seconds in sorted(spent.seconds.items(), key=lambda kv: -kv[1]):
        bound = spent.flop.get(part, 0.0) / rate
        print(f"| {part} | {seconds:.2f} | {seconds / pairs * 1e9:.2f} | "
              f"{f'{bound / seconds:.0%}' if bound > 0 else '–'} |")
    total = sum(spent.seconds.values())
    print(f"| all | {total:.2f} | {total / pairs * 1e9:.2f} | {sum(spent.flop.values()) / rate / total:.0%} |")


def nightly_blend(items, interactions, k: int, head: int):
    """Seconds of recommend() over every user, and where the time went (Spent)."""
    spark = items.sparkSession
    arrow = items.toArrow()
    item_ids, matrix = factor_matrix(arrow.column("id").combine_chunks(), arrow.column("features").combine_chunks())
    head = min(head, len(item_ids))
    rng = np.random.default_rng(0)  # the weights' values do not change the cost
    knn = ItemKnnComponent(np.arange(head), (rng.normal(size=(head, head)) * 0.01).astype(np.float32))
    rules = Rules(categories=(item_ids % 20).astype(np.int32), max_per_category=40)
    bundle = Bundle(item_ids, {"als": AlsComponent(matrix, alpha=0.3, reg_param=0.15), "itemknn": knn},
                    {"als": 0.5, "itemknn": 0.5}, rules)
    as_of = dt.datetime(2024, 1, 1)
    feedback = interactions.groupBy("user_id", "item_id").agg(F.sum("strength").cast("float").alias("strength"))
    rows = user_rows(feedback.withColumn("last_ts", F.lit(as_of)), as_of, 90.0).cache()
    rows.count()
    spent = spark.sparkContext.accumulator(Spent(), SpentSum())
    seconds, _ = timed(lambda: recommend(bundle, rows, k, serving_values=True, spent=spent)
                       .write.format("noop").mode("overwrite").save())
    rows.unpersist()
    return seconds, spent.value


def brute_force_unseen(users, items, seen, k: int) -> dict[int, list[int]]:
    """Every score of these users, seen items set to -inf, full sort by (score desc, item id)."""
    user_ids, user_matrix = factor_matrix(users.column("id").combine_chunks(),
                                          users.column("features").combine_chunks())
    item_ids, item_matrix = factor_matrix(items.column("id").combine_chunks(),
                                          items.column("features").combine_chunks())
    scores = user_matrix @ item_matrix.T
    rows = np.searchsorted(user_ids, seen.column("user_id").to_numpy())
    scores[rows, np.searchsorted(item_ids, seen.column("item_id").to_numpy())] = -np.inf
    best = {}
    for user, row in zip(user_ids, scores):
        order = np.lexsort((item_ids, -row))
        best[int(user)] = [int(i) for i in item_ids[order[np.isfinite(row[order])][:k]]]
    return best


if __name__ == "__main__":
    main(sys.argv[1:])
