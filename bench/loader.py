"""Bulk loader throughput vs `redis-benchmark -P 64` SET of the same value size, and Redis memory per user.

    .venv/bin/python bench/loader.py --users 1000000
    .venv/bin/python bench/loader.py --users 1000000 --cluster

Starts its own redis-server on a free port (nothing else in it), so INFO memory is ours alone.
The loader reads (user_id, value) rows as the score stage leaves them in gold/recommendations
(value: the list already packed, 603 bytes). Both writers run alternately, best of two each, on
this machine: the ratio is the figure to quote.

--cluster: the same loader into one redis-server and into a 3-node Redis Cluster of its own
(3 primaries, no replicas, same machine), alternately, three runs each: median keys/s with the
spread, memory per user and Redis CPU per key summed over the cluster's nodes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import statistics
import subprocess
import sys
import time

import redis
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from nightrec.data.spark import get_spark
from nightrec.modeling.scoring import with_serving_value
from nightrec.pipeline.publish import load_values, publish_frames
from nightrec.serving import loader as publisher
from nightrec.serving.layout import encode
from nightrec.serving.redis_server import private_redis, private_redis_cluster
from nightrec.settings import load_settings

VALUE_BYTES = len(encode(range(1, 101), [0.5] * 100))  # a top-100 list: 603 bytes


def redis_benchmark_set_rate(port: int, requests: int) -> float:
    out = subprocess.run(["redis-benchmark", "-p", str(port), "-t", "set", "-P", "64", "-d", str(VALUE_BYTES),
                          "-n", str(requests), "-r", str(requests), "-c", "50", "-q"],
                         capture_output=True, text=True, check=True).stdout
    return float(re.findall(r"SET: ([\d.]+) requests per second", out.replace("\r", "\n"))[-1])


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def used_cpu(client: redis.Redis) -> float:
    """Seconds of CPU the server has used (its own threads, user + system)."""
    cpu = client.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--cluster", action="store_true", help="one redis-server vs a 3-node Redis Cluster")
    args = parser.parse_args(argv)
    spark = get_spark(load_settings(), "nightrec-bench-loader")
    cores = spark.sparkContext.defaultParallelism
    recs = user_lists(spark, args.users, partitions=cores * 2)
    if args.cluster:
        single_vs_cluster(recs, args.users, cores)
    else:
        loader_vs_redis_benchmark(recs, args.users, cores)


def user_lists(spark, users: int, partitions: int) -> DataFrame:
    """(user_id, value) as the score stage writes it to gold/recommendations, built once, in memory:
    the timings are the writes."""
    lists = (spark.range(1, users + 1, numPartitions=partitions)
             .select(F.col("id").cast("int").alias("user_id"),
                     F.transform(F.sequence(F.lit(1), F.lit(100)),
                                 lambda i: (F.pmod(F.col("id") * 7919 + i * 104729, F.lit(50_000)) + 1).cast("int"))
                     .alias("item_ids"),
                     F.transform(F.sequence(F.lit(1), F.lit(100)), lambda i: (F.lit(1.0) / i).cast("float"))
                     .alias("scores")))
    recs = lists.mapInArrow(lambda batches: map(with_serving_value, batches),
                            "user_id int, item_ids array<int>, scores array<float>, value binary")
    recs = recs.select("user_id", "value").cache()
    recs.count()
    return recs


def loader_vs_redis_benchmark(recs: DataFrame, users: int, cores: int) -> None:
    with private_redis() as port:
        client = redis.Redis(port=port)
        url = f"redis://127.0.0.1:{port}/0"
        load = dict(url=url, cluster=False, prefix="nightrec", kind="user")
        load_values(recs.limit(10_000), version="0", **load)  # Python workers started, code loaded
        bench_rates, load_seconds = [], []
        for attempt in range(2):  # alternating, best of two each: the machine is shared
            client.flushall()
            bench_rates.append(redis_benchmark_set_rate(port, users))
            client.flushall()
            empty = used_memory(client)
            started = time.perf_counter()
            written = load_values(recs, version=f"19980422.{attempt}", **load)
            load_seconds.append(time.perf_counter() - started)
            per_user = (used_memory(client) - empty) / written
        bench_rate, load_seconds = max(bench_rates), min(load_seconds)
        client.flushall()
        started = time.perf_counter()
        publish_frames(recs, publisher.Extras({"global": ([1], [1.0])}), url=url, prefix="nightrec",
                          ds=dt.date(1998, 4, 22), model_version="bench/1")
        publish_seconds = time.perf_counter() - started

    load_rate, publish_rate = written / load_seconds, users / publish_seconds
    print(f"\n$ .venv/bin/python bench/loader.py --users {users}")
    print(f"{users} users x top-100 ({VALUE_BYTES}-byte values), {cores} Spark tasks, own redis-server, "
          "best of two alternating runs\n")
    print("| writer                                              | keys/s  | vs redis-benchmark |")
    print("|-----------------------------------------------------|--------:|-------------------:|")
    print(f"| redis-benchmark -t set -P 64 -c 50 -d {VALUE_BYTES}           | {bench_rate:7.0f} | 100% |")
    print(f"| nightrec loader (Spark tasks, MSET x {publisher.BATCH})          | {load_rate:7.0f} | "
          f"{100 * load_rate / bench_rate:.0f}% |")
    print(f"| whole publish (count, load, verify, flip, cleanup)  | {publish_rate:7.0f} | "
          f"{100 * publish_rate / bench_rate:.0f}% |")
    print(f"\nRedis memory per user (INFO used_memory delta / users): {per_user:.0f} bytes = {per_user / 1024:.2f} KB")


def single_vs_cluster(recs: DataFrame, users: int, cores: int, runs: int = 3) -> None:
    with private_redis() as port, private_redis_cluster(nodes=3) as cluster_url:
        primaries = redis.RedisCluster.from_url(cluster_url).get_primaries()
        targets = {  # name -> (url, cluster, a client per primary: flush, INFO memory and cpu)
            f"one redis-server (MSET x {publisher.BATCH})": (f"redis://127.0.0.1:{port}/0", False,
                                                             [redis.Redis(port=port)]),
            "3-node Redis Cluster (SETs per node)": (cluster_url, True,
                                                     [redis.Redis(host=n.host, port=n.port) for n in primaries]),
        }
        for url, cluster, nodes in targets.values():  # Python workers started, code loaded
            load_values(recs.limit(10_000), url=url, cluster=cluster, prefix="nightrec", version="0",
                                  kind="user")
            for node in nodes:
                node.flushall()
        rates = {name: [] for name in targets}
        per_user, cpu_per_key = {}, {name: [] for name in targets}
        for attempt in range(runs):  # alternating: the machine is shared, a slow minute hits both
            for name, (url, cluster, nodes) in targets.items():
                empty = sum(used_memory(node) for node in nodes)
                cpu = sum(used_cpu(node) for node in nodes)
                started = time.perf_counter()
                written = load_values(recs, url=url, cluster=cluster, prefix="nightrec",
                                                version=f"19980422.{attempt}", kind="user")
                rates[name].append(written / (time.perf_counter() - started))
                cpu_per_key[name].append((sum(used_cpu(node) for node in nodes) - cpu) / written)
                per_user[name] = (sum(used_memory(node) for node in nodes) - empty) / written
                if written != users or sum(node.dbsize() for node in nodes) != users:
                    raise SystemExit(f"{name}: wrote {written} keys, expected {users}")
                for node in nodes:  # one target's data in memory at a time
                    node.flushall()

    base = statistics.median(next(iter(rates.values())))
    print(f"\n$ .venv/bin/python bench/loader.py --users {users} --cluster")
    print(f"{users} users x top-100 ({VALUE_BYTES}-byte values), {cores} Spark tasks, own servers on this machine, "
          f"median of {runs} alternating runs (min-max); Redis CPU: INFO cpu of all its nodes per key written\n")
    print("| target                               | keys/s (median) | min-max         | vs one node | memory per user "
          "| Redis CPU per key |")
    print("|--------------------------------------|----------------:|----------------:|------------:|----------------:"
          "|------------------:|")
    for name, measured in rates.items():
        median, spread = statistics.median(measured), f"{min(measured):.0f}-{max(measured):.0f}"
        print(f"| {name:<36} | {median:15.0f} | {spread:>15} | {100 * median / base:10.0f}% | "
              f"{per_user[name]:.0f} B = {per_user[name] / 1024:.2f} KB | "
              f"{1e6 * statistics.median(cpu_per_key[name]):14.2f} us |")


if __name__ == "__main__":
    main(sys.argv[1:])
