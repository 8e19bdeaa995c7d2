"""Top-100 generation: nightrec.topk vs Spark's ALSModel.recommendForAllUsers(100), same factors.

    .venv/bin/python bench/topk.py --users 100000 --items 20000 --rank 64

Prints a table (and this command). Both sides run in the same Spark session, one after the other;
the FLOP bound is 2*users*items*rank divided by this machine's measured float32 matmul rate.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from pyspark.ml.recommendation import ALS

from nightrec.settings import load_settings
from nightrec.spark import get_spark
from nightrec.topk import top_k_unseen


def timed(action) -> tuple[float, object]:
    started = time.perf_counter()
    result = action()
    return time.perf_counter() - started, result


def matmul_rate(rank: int, items: int) -> float:
    """float32 FLOP/s of numpy matmuls shaped like top-k's blocks (cache-sized), all cores."""
    rows = max(1, (1 << 21) // items)
    a = np.random.default_rng(0).normal(size=(rows, rank)).astype(np.float32)
    b = np.random.default_rng(1).normal(size=(rank, items)).astype(np.float32)
    a @ b
    repeats = 200
    seconds, _ = timed(lambda: [a @ b for _ in range(repeats)])
    return repeats * 2 * rows * rank * items / seconds


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

    spark_seconds, _ = timed(lambda: model.recommendForAllUsers(args.k).write.format("noop").mode("overwrite").save())
    ours_seconds, _ = timed(lambda: top_k_unseen(users, items, no_seen, args.k).write.format("noop").mode("overwrite").save())

    sample = users.orderBy("id").limit(200)
    theirs = {r.user_id: [x.item_id for x in r.recommendations]
              for r in model.recommendForUserSubset(sample.withColumnRenamed("id", "user_id"), args.k).collect()}
    mine = {r.user_id: list(r.item_ids) for r in top_k_unseen(sample, items, no_seen, args.k).collect()}
    same = sum(theirs[u] == mine[u] for u in mine)
    same_sets = sum(set(theirs[u]) == set(mine[u]) for u in mine)

    flop_bound = 2 * n_users * n_items * args.rank / matmul_rate(args.rank, n_items)
    print(f"\n$ .venv/bin/python bench/topk.py --users {args.users} --items {args.items} --rank {args.rank} --k {args.k}")
    print(f"{n_users} users x {n_items} items, rank {args.rank}, top {args.k}, {cores} cores\n")
    print(f"| method                          | seconds | vs recommendForAllUsers |")
    print(f"|---------------------------------|--------:|------------------------:|")
    print(f"| ALSModel.recommendForAllUsers   | {spark_seconds:7.2f} | 1.0x |")
    print(f"| nightrec.topk.top_k_unseen      | {ours_seconds:7.2f} | {spark_seconds / ours_seconds:.1f}x |")
    print(f"| FLOP bound (numpy matmul rate)  | {flop_bound:7.2f} | {spark_seconds / flop_bound:.1f}x |")
    print(f"\nexactness on {len(mine)} users: identical lists {same}, identical sets {same_sets} "
          f"(order differs only on float ties)")


if __name__ == "__main__":
    main(sys.argv[1:])
