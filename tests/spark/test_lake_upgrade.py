"""A lake written by the release before delta-spark opens and takes the next night, with no
migration step. tests/data/lake_before_delta_spark was written by that release (delta-rs commits of
Spark-written files, a housekeeping run's checkpoints and retention properties included): one night
of 30 users over 2024-06-26..28 (tests/helpers.write_landing), ingested, validated, trained, scored."""

import datetime as dt
import shutil
from pathlib import Path

from deltalake import DeltaTable
from pyspark.sql import functions as F

from helpers import write_landing
from nightrec.data import lake
from nightrec.pipeline import housekeeping, ingest, privacy, validate

FIXTURE = Path(__file__).parents[1] / "data" / "lake_before_delta_spark"
OLD_DAYS = [dt.date(2024, 6, 26), dt.date(2024, 6, 27), dt.date(2024, 6, 28)]
NEXT = dt.date(2024, 6, 29)


def test_a_lake_of_the_previous_release_takes_the_next_night(spark, make_settings):
    settings = make_settings(MLFLOW__KEEP_VERSIONS="5")
    shutil.copytree(FIXTURE, settings.path("lake"))
    old_silver = lake.read_table(spark, settings.table("silver/interactions")).count()
    assert old_silver > 0 and lake.find_tables(settings.path("lake")) == sorted(
        str(p.parent.relative_to(FIXTURE)) for p in FIXTURE.rglob("_delta_log"))

    write_landing(Path(settings.path("landing")), [NEXT], users=30, items=40)
    ingest.run(spark, settings, NEXT)
    result = validate.run(spark, settings, NEXT)
    gold = settings.table("gold/recommendations")
    tonight = lake.read_table(spark, gold).withColumn("dt", F.lit(NEXT))
    lake.replace_partitions(tonight, gold, [NEXT])

    bronze = lake.read_table(spark, settings.table("bronze/interactions"))
    delivered = {r.dt: r.known for r in bronze.groupBy("dt").agg(F.count("delivered_at").alias("known")).collect()}
    assert set(delivered) == {*OLD_DAYS, NEXT}
    assert delivered[NEXT] > 0 and all(delivered[d] == 0 for d in OLD_DAYS)  # a column gained, null before it
    assert lake.read_table(spark, settings.table("silver/interactions")).count() == old_silver + result.good_rows
    assert lake.partitions(gold) == [str(OLD_DAYS[-1]), str(NEXT)]

    # Erasure on tables the older release created: delete, vacuum, log cut.
    user = 7
    removed = privacy.erase_from_lake(spark, settings, {user})
    assert removed["lake:bronze/interactions"] > 0 and removed["lake:gold/recommendations"] == 2
    assert lake.read_table(spark, settings.table("silver/interactions")).where(F.col("user_id") == user).count() == 0

    summary = housekeeping.run(spark, settings, NEXT)
    assert set(summary.tables) == set(lake.find_tables(settings.path("lake")))
    for name in summary.tables:  # still standard Delta tables other engines read (protocol 1/2, no new features)
        table = DeltaTable(settings.table(name))
        assert (table.protocol().min_reader_version, table.protocol().min_writer_version) == (1, 2)
        assert table.to_pyarrow_table().num_rows == lake.read_table(spark, settings.table(name)).count()
