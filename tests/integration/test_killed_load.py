"""A loader process killed (SIGKILL) half-way through a big load: the live version never changes and
every read during and after the kill is a complete, consistent answer of the previous version."""

import datetime as dt
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import redis
from fastapi.testclient import TestClient

from helpers import publish_sample
from nightrec.pipeline.publish import publish_frames
from nightrec.serving import loader as publisher
from nightrec.serving.api import create_app
from nightrec.serving.layout import Keys

LOADER = textwrap.dedent("""
    import datetime as dt, sys
    from pyspark.sql import functions as F
    from nightrec.serving import loader as publisher
    from nightrec.pipeline.publish import publish_frames
    from nightrec.serving.layout import encode
    from nightrec.settings import load_settings
    from nightrec.data.spark import get_spark

    spark = get_spark(load_settings("local", {}), "killed-loader")
    value = F.lit(encode(range(1000, 1100), [0.5] * 100))
    users = spark.range(1, 2_000_001, numPartitions=8).select(F.col("id").cast("int").alias("user_id"),
                                                              value.alias("value"))
    publish_frames(users, publisher.Extras({"global": ([1], [1.0])}), url=sys.argv[1], prefix="test",
                      ds=dt.date(2024, 1, 2), model_version="big/1")
""")


def test_killing_the_loader_mid_load_leaves_the_previous_version_live(spark, redis_url, make_settings):
    old = publish_sample(redis_url)
    client = redis.Redis.from_url(redis_url)
    keys = Keys("test")
    loader = subprocess.Popen([sys.executable, "-c", LOADER, redis_url], start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    answers, stop = [], threading.Event()

    def read_continuously():
        with TestClient(create_app(make_settings(redis_url, service__live_cache_seconds=0))) as api:
            while not stop.is_set():
                answers.append(api.get("/v1/users/2/recommendations", params={"k": 5}).json())

    reader = threading.Thread(target=read_continuously)
    reader.start()
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:  # wait until the new version holds a good share of its users
            new = [v.decode() for v in client.zrange(keys.versions, 0, -1) if v.decode() != old.version]
            if new and client.dbsize() > 200_000:
                break
            assert loader.poll() is None, "the loader ended before it could be killed"
            time.sleep(0.2)
        else:
            raise AssertionError("the loader never got half-way")
        os.killpg(loader.pid, signal.SIGKILL)  # the Python driver, its JVM and the workers
        loader.wait(30)
        time.sleep(1.0)
    finally:
        stop.set()
        reader.join(30)
        if loader.poll() is None:
            os.killpg(loader.pid, signal.SIGKILL)

    partial = new[0]
    assert client.get(keys.live).decode() == old.version
    assert not client.exists(keys.meta(partial)) and client.exists(keys.user(partial, 1))
    assert len(answers) > 20
    expected = {"source": "personalized", "version": old.version, "items": [2, 3, 4, 6, 7]}
    assert all({"source": a["source"], "version": a["version"], "items": [i["item_id"] for i in a["items"]]}
               == expected for a in answers)
    # what the killed load left behind goes with the first publish after LOAD_GRACE
    assert partial not in publish_sample(redis_url).deleted_versions  # it might still have been running
    client.zadd(keys.versions, {partial: time.time() - publisher.LOAD_GRACE - 60})
    after = publish_sample(redis_url)
    assert partial in after.deleted_versions and not client.exists(keys.user(partial, 1))


def test_the_loader_retries_when_redis_drops_its_connections(spark, redis_url):
    from pyspark.sql import functions as F

    from nightrec.serving.layout import decode

    client = redis.Redis.from_url(redis_url)
    # value: codec 1 holding the one item = the user id ("01 0100" + int32 id + float16 1.0)
    value = F.concat(F.unhex(F.lit("010100")),
                     F.unhex(F.lpad(F.hex(F.reverse(F.unhex(F.lpad(F.hex("id"), 8, "0")))), 8, "0")),
                     F.unhex(F.lit("003c")))
    users = spark.range(1, 300_001, numPartitions=4).select(F.col("id").cast("int").alias("user_id"),
                                                            value.alias("value")).cache()
    users.count()
    kills, stop = [], threading.Event()

    def drop_connections():  # a flaky network: every loader connection is cut, again and again
        while not stop.is_set():
            if client.dbsize() > 20_000:
                kills.append(client.client_kill_filter(_type="normal", skipme=True))
            time.sleep(0.05)

    cutter = threading.Thread(target=drop_connections)
    cutter.start()
    try:
        result = publish_frames(users, publisher.Extras({"global": ([1], [1.0])}), url=redis_url, prefix="test",
                                   ds=dt.date(2024, 1, 3), model_version="flaky/1")
    finally:
        stop.set()
        cutter.join(10)
    assert sum(kills) > 0  # connections really were cut during the load
    assert result.users == 300_000 and client.get(Keys("test").live).decode() == result.version
    assert len(list(client.scan_iter(match=Keys("test").user_prefix(result.version) + "*", count=10_000))) == 300_000
    assert decode(client.get(Keys("test").user(result.version, 123_456)))[0] == [123_456]


WRITER = textwrap.dedent("""
    import datetime as dt, sys
    from pyspark.sql import functions as F
    from nightrec.data import lake
    from nightrec.data.spark import get_spark
    from nightrec.settings import load_settings

    settings = load_settings("local")
    spark = get_spark(settings, "killed-writer")
    rows = spark.range(0, 30_000_000, numPartitions=60).select(
        F.col("id").alias("user_id"), F.sha2(F.col("id").cast("string"), 256).alias("label"),
        F.lit(dt.date(2024, 1, 1)).alias("dt"))
    lake.replace_partitions(rows, sys.argv[1], [dt.date(2024, 1, 1)])
""")


def test_killing_a_write_to_the_lake_on_s3_leaves_the_previous_version(spark, s3_store, s3_endpoint, tmp_path):
    """A night's write killed half-way on S3: readers keep the last commit, the next night replaces the
    day and a vacuum past the retention deletes what the killed write left."""
    import datetime as dt

    from pyspark.sql import functions as F

    from conftest import settings_environ
    from nightrec.data import lake, storage
    from nightrec.data.spark import use_storage
    from nightrec.settings import load_settings

    environ = settings_environ(tmp_path, stores=s3_store, s3_endpoint=s3_endpoint)
    settings = load_settings("local", environ)
    use_storage(spark)
    root, day = settings.table("gold/recommendations"), dt.date(2024, 1, 1)

    def rows(n, label):
        return spark.range(n).select(F.col("id").alias("user_id"), F.lit(label).alias("label"), F.lit(day).alias("dt"))

    lake.replace_partitions(rows(1000, "committed"), root, [day])
    committed = {e.uri for e in storage.walk(root)}
    writer = subprocess.Popen([sys.executable, "-c", WRITER, root], start_new_session=True,
                              env={**os.environ, **environ}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # until the write has put data files of its own
            if any(e.uri.endswith(".parquet") for e in storage.walk(root) if e.uri not in committed):
                break
            assert writer.poll() is None, "the write ended before it could be killed"
            time.sleep(0.2)
        else:
            raise AssertionError("the write never started putting files")
        os.killpg(writer.pid, signal.SIGKILL)
        writer.wait(30)
    finally:
        if writer.poll() is None:
            os.killpg(writer.pid, signal.SIGKILL)

    left = [e for e in storage.walk(root) if e.uri not in committed and "/_delta_log/" not in e.uri]
    assert left  # the killed write's files, in no version
    assert lake.version(root) == 0
    assert lake.read_table(spark, root).groupBy("label").count().collect() == [("committed", 1000)]
    assert lake.replace_partitions(rows(10, "next night"), root, [day]) == 10
    lake.vacuum(spark, root, dt.timedelta(0))  # S3 objects cannot be aged: a zero retention stands for a week
    assert not [e for e in left if storage.stat(e.uri) is not None]
    assert lake.read_table(spark, root).groupBy("label").count().collect() == [("next night", 10)]
