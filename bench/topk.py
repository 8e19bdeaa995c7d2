"""Top-100 generation: nightrec.modeling.topk vs Spark's ALSModel.recommendForAllUsers(100), same factors.

    .venv/bin/python bench/topk.py --users 100000 --items 20000 --rank 64

Prints a table (and this command). Both sides run in the same Spark session, one after the other,
after an exactness check on 200 users that warms both up. Ours also excludes each user's seen
items (the interactions the factors come from), which recommendForAllUsers does not. The FLOP bound is
2*users*items*rank divided by
this machine's best float32 matmul rate (big blocks, all cores): no exact method can beat it.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from pyspark.ml.recommendation import ALS
from pyspark.sql import functions as F

from nightrec.data.spark import get_spark
from nightrec.modeling.topk import factor_matrix, top_k_unseen
from nightrec.settings import load_settings


def timed(action) -> tuple[float, object]:
    started = time.perf_counter()
    result = action()
    return time.perf_counter() - started, result


def matmul_rate(rank: int) -> float:
    """Best float32 FLOP/s of numpy matmul here: big output blocks, all cores, best of 5 runs."""
    rng = np.random.default_rng(0)
    best = 0.0
    for rows, cols in [(1024, 4096), (2048, 8192), (4096, 4096)]:
        a, b = rng.normal(size=(rows, rank)).astype(np.float32), rng.normal(size=(rank, cols)).astype(np.float32)
        out = np.empty((rows, cols), dtype=np.float32)
        for _ in range(5):
            seconds, _ = timed(lambda: np.matmul(a, b, out=out))  # noqa: B023 (timed calls it within this iteration)
            best = max(best, 2 * rows * rank * cols / seconds)
    return best


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--k", type=int, default=100)
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
          f"--k {args.k}")
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
