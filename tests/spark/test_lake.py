import datetime as dt

import pyarrow as pa
import pytest
from deltalake import DeltaTable
from pyspark.sql import functions as F

from nightrec import lake

D1, D2 = dt.date(2024, 1, 1), dt.date(2024, 1, 2)


def frame(spark, n, day, label="a"):
    return spark.range(n).select(F.col("id").alias("user_id"), F.lit(label).alias("label"),
                                 F.current_timestamp().alias("ts"), F.lit(day).alias("dt"))


def counts(spark, root):
    return {(r.dt, r.label): r["count"] for r in lake.read_table(spark, root).groupBy("dt", "label").count().collect()}


def test_replacing_a_partition_never_duplicates_and_keeps_the_others(spark, tmp_path):
    root = str(tmp_path / "t")
    assert lake.replace_partitions(frame(spark, 5, D1).unionByName(frame(spark, 7, D2)), root, [D1, D2]) == 12
    assert lake.replace_partitions(frame(spark, 3, D1, "b"), root, [D1]) == 3
    assert lake.replace_partitions(frame(spark, 3, D1, "b"), root, [D1]) == 3
    assert counts(spark, root) == {(D1, "b"): 3, (D2, "a"): 7}
    assert DeltaTable(root).version() == 2
    assert DeltaTable(root, version=0).to_pyarrow_table().num_rows == 12  # time travel still works
    assert not list(tmp_path.rglob("*.crc"))


def test_replacing_with_no_rows_empties_the_partition(spark, tmp_path):
    root = str(tmp_path / "t")
    lake.replace_partitions(frame(spark, 5, D1).unionByName(frame(spark, 2, D2)), root, [D1, D2])
    lake.replace_partitions(frame(spark, 5, D1).limit(0), root, [D1])
    assert counts(spark, root) == {(D2, "a"): 2}
    assert lake.read_table(spark, root, [D1]).count() == 0


def test_file_stats_let_delta_readers_count_and_skip(spark, tmp_path):
    root = str(tmp_path / "t")
    lake.replace_partitions(frame(spark, 10, D1), root, [D1])
    actions = pa.table(DeltaTable(root).get_add_actions(flatten=True)).to_pylist()
    assert sum(a["num_records"] for a in actions) == 10
    assert min(a["min.user_id"] for a in actions) == 0 and max(a["max.user_id"] for a in actions) == 9


def test_rows_outside_the_replaced_days_are_refused_and_nothing_is_committed(spark, tmp_path):
    root = str(tmp_path / "t")
    lake.replace_partitions(frame(spark, 4, D1), root, [D1])
    with pytest.raises(lake.LakeError, match="2024-01-02.*outside"):
        lake.replace_partitions(frame(spark, 4, D2), root, [D1])
    assert counts(spark, root) == {(D1, "a"): 4}
    assert DeltaTable(root).version() == 0


def test_schema_changes_are_refused(spark, tmp_path):
    root = str(tmp_path / "t")
    lake.replace_partitions(frame(spark, 4, D1), root, [D1])
    with pytest.raises(lake.LakeError, match="refusing to write"):
        lake.replace_partitions(frame(spark, 4, D1).withColumn("label", F.lit(1)), root, [D1])
    assert counts(spark, root) == {(D1, "a"): 4}
