"""Bulk loader throughput vs `redis-benchmark -P 64` SET of the same value size, and Redis memory per user.

    .venv/bin/python bench/loader.py --users 1000000

Starts its own redis-server on a free port (nothing else in it), so INFO memory is ours alone.
The loader reads (user_id, value) rows as the score stage leaves them in gold/recommendations
(value: the list already packed, 603 bytes). Both writers run alternately, best of two each, on
this machine: the ratio is the figure to quote.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import subprocess
import sys
import time

import redis
from pyspark.sql import functions as F

from nightrec import publisher
from nightrec.benchmark import private_redis
from nightrec.redis_layout import encode
from nightrec.scoring import with_serving_value
from nightrec.settings import load_settings
from nightrec.spark import get_spark

VALUE_BYTES = len(encode(range(1, 101), [0.5] * 100))  # a top-100 list: 603 bytes


def redis_benchmark_set_rate(port: int, requests: int) -> float:
    out = subprocess.run(["redis-benchmark", "-p", str(port), "-t", "set", "-P", "64", "-d", str(VALUE_BYTES),
                          "-n", str(requests), "-r", str(requests), "-c", "50", "-q"],
                         capture_output=True, text=True, check=True).stdout
    return float(re.findall(r"SET: ([\d.]+) requests per second", out.replace("\r", "\n"))[-1])


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    spark = get_spark(load_settings(), "nightrec-bench-loader")
    cores = spark.sparkContext.defaultParallelism
    lists = (spark.range(1, args.users + 1, numPartitions=cores * 2)
             .select(F.col("id").cast("int").alias("user_id"),
                     F.transform(F.sequence(F.lit(1), F.lit(100)),
                                 lambda i: (F.pmod(F.col("id") * 7919 + i * 104729, F.lit(50_000)) + 1).cast("int"))
                     .alias("item_ids"),
                     F.transform(F.sequence(F.lit(1), F.lit(100)), lambda i: (F.lit(1.0) / i).cast("float"))
                     .alias("scores")))
    # (user_id, value) as the score stage writes it to gold/recommendations, built once, in memory:
    # the timings below are the writes
    recs = lists.mapInArrow(lambda batches: map(with_serving_value, batches),
                            "user_id int, item_ids array<int>, scores array<float>, value binary")
    recs = recs.select("user_id", "value").cache()
    recs.count()

    with private_redis() as port:
        client = redis.Redis(port=port)
        url = f"redis://127.0.0.1:{port}/0"
        load = dict(url=url, cluster=False, prefix="nightrec", kind="user")
        publisher.load_values(recs.limit(10_000), version="0", **load)  # Python workers started, code loaded
        bench_rates, load_seconds = [], []
        for attempt in range(2):  # alternating, best of two each: the machine is shared
            client.flushall()
            bench_rates.append(redis_benchmark_set_rate(port, args.users))
            client.flushall()
            empty = used_memory(client)
            started = time.perf_counter()
            written = publisher.load_values(recs, version=f"19980422.{attempt}", **load)
            load_seconds.append(time.perf_counter() - started)
            per_user = (used_memory(client) - empty) / written
        bench_rate, load_seconds = max(bench_rates), min(load_seconds)
        client.flushall()
        started = time.perf_counter()
        publisher.publish(recs, publisher.Extras({"global": ([1], [1.0])}), url=url, prefix="nightrec",
                          ds=dt.date(1998, 4, 22), model_version="bench/1")
        publish_seconds = time.perf_counter() - started

    load_rate, publish_rate = written / load_seconds, args.users / publish_seconds
    print(f"\n$ .venv/bin/python bench/loader.py --users {args.users}")
    print(f"{args.users} users x top-100 ({VALUE_BYTES}-byte values), {cores} Spark tasks, own redis-server, "
          "best of two alternating runs\n")
    print("| writer                                              | keys/s  | vs redis-benchmark |")
    print("|-----------------------------------------------------|--------:|-------------------:|")
    print(f"| redis-benchmark -t set -P 64 -c 50 -d {VALUE_BYTES}           | {bench_rate:7.0f} | 100% |")
    print(f"| nightrec loader (Spark tasks, MSET x {publisher.BATCH})          | {load_rate:7.0f} | "
          f"{100 * load_rate / bench_rate:.0f}% |")
    print(f"| whole publish (count, load, verify, flip, cleanup)  | {publish_rate:7.0f} | "
          f"{100 * publish_rate / bench_rate:.0f}% |")
    print(f"\nRedis memory per user (INFO used_memory delta / users): {per_user:.0f} bytes = {per_user / 1024:.2f} KB")


if __name__ == "__main__":
    main(sys.argv[1:])
