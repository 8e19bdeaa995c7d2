import datetime as dt
import os
import shutil
import time
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable
from pyspark.sql import functions as F

from nightrec.data import lake

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
    assert lake.version(root) == 2
    assert spark.read.format("delta").option("versionAsOf", 0).load(root).count() == 12  # time travel
    assert DeltaTable(root, version=0).to_pyarrow_table().num_rows == 12  # other engines read it too


def test_replacing_with_no_rows_empties_the_partition(spark, tmp_path):
    root = str(tmp_path / "t")
    lake.replace_partitions(frame(spark, 5, D1).unionByName(frame(spark, 2, D2)), root, [D1, D2])
    lake.replace_partitions(frame(spark, 5, D1).limit(0), root, [D1])
    assert counts(spark, root) == {(D2, "a"): 2}
    assert lake.read_table(spark, root, [D1]).count() == 0


def test_clearing_partitions_commits_only_when_they_hold_rows(spark, tmp_path):
    root = str(tmp_path / "t")
    assert lake.clear_partitions(spark, root, [D1]) == 0  # no table: none is made
    assert not lake.table_exists(root)
    lake.replace_partitions(frame(spark, 5, D1).unionByName(frame(spark, 2, D2)), root, [D1, D2])
    assert lake.partitions(root) == [str(D1), str(D2)]
    assert lake.clear_partitions(spark, root, [D1]) == 5
    assert lake.version(root) == 1 and counts(spark, root) == {(D2, "a"): 2}
    assert lake.partitions(root) == [str(D2)]
    assert lake.clear_partitions(spark, root, [D1]) == 0  # already empty: no commit
    assert lake.replace_partitions(frame(spark, 5, D1).limit(0), root, [D1], empty=True) == 0  # nor here
    assert lake.version(root) == 1
    assert lake.replace_partitions(frame(spark, 5, D2).limit(0), root, [D2], empty=True) == 0
    assert lake.version(root) == 2 and counts(spark, root) == {}


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
    assert lake.version(root) == 0


def test_a_table_gains_new_columns_but_refuses_other_schema_changes(spark, tmp_path):
    root = str(tmp_path / "t")
    lake.replace_partitions(frame(spark, 4, D1), root, [D1])
    with pytest.raises(lake.LakeError, match="refusing to write"):
        lake.replace_partitions(frame(spark, 4, D1).withColumn("label", F.lit(1)), root, [D1])  # another type
    with pytest.raises(lake.LakeError, match="refusing to write"):
        lake.replace_partitions(frame(spark, 4, D1).drop("label"), root, [D1])
    assert counts(spark, root) == {(D1, "a"): 4}
    wider = frame(spark, 2, D2).select(F.lit("r1").alias("request_id"), "*")
    with pytest.raises(lake.LakeError, match="refusing to write"):
        lake.replace_partitions(wider, root, [D2])  # a column nobody declared new: a mistake, not a migration
    # a declared new column, wherever the frame has it: appended to the table, null in the older files
    assert lake.replace_partitions(wider, root, [D2], new_columns=["request_id"]) == 2
    rows = {(r.dt, r.request_id) for r in lake.read_table(spark, root).collect()}
    assert rows == {(D1, None), (D2, "r1")}
    assert lake.read_table(spark, root).columns == ["user_id", "label", "ts", "dt", "request_id"]
    assert DeltaTable(root).schema().to_arrow().names == ["user_id", "label", "ts", "dt", "request_id"]


# --- deletes, compaction ---

def test_deleting_by_condition_and_by_matching_values_rewrites_only_the_files_that_hold_them(spark, tmp_path):
    root = str(tmp_path / "t")
    lake.replace_partitions(frame(spark, 10, D1).unionByName(frame(spark, 10, D2)), root, [D1, D2])
    assert lake.delete_rows(spark, root, F.col("user_id").isin([3, 4])) == 4
    assert lake.delete_rows(spark, root, F.col("user_id") == 99) == 0
    text = spark.createDataFrame([("a",), ("zzz",)], "label string")
    assert lake.delete_matching(spark, root, "label", text) == 16
    assert lake.read_table(spark, root).count() == 0


def test_compaction_rewrites_a_partitions_small_files_into_one_and_keeps_its_rows(spark, tmp_path):
    root = str(tmp_path / "t")
    lake.replace_partitions(frame(spark, 50, D1).repartition(5), root, [D1])
    lake.replace_partitions(frame(spark, 6, D2).repartition(3), root, [D2])
    assert len(current_files(root)) == 8
    assert lake.compact(spark, root, since=D2) == 3  # only the partitions from D2
    assert len(current_files(root)) == 6
    assert lake.compact(spark, root) == 5
    assert counts(spark, root) == {(D1, "a"): 50, (D2, "a"): 6}


# --- retention: lake.vacuum ---

MONTH_AGO = time.time() - 30 * 86400


def data_files(root) -> set[str]:
    """Data files on disk (committed or not), relative to the table root."""
    return {str(p.relative_to(root)) for p in Path(root).rglob("*.parquet") if "_delta_log" not in p.parts}


def current_files(root) -> set[str]:
    return set(pa.table(DeltaTable(root).get_add_actions()).column("path").to_pylist())


def age(path: Path) -> Path:
    os.utime(path, (MONTH_AGO, MONTH_AGO))
    return path


def test_vacuum_deletes_replaced_files_past_retention_and_keeps_the_current_version(spark, tmp_path):
    root = str(tmp_path / "t")
    lake.replace_partitions(frame(spark, 5, D1).unionByName(frame(spark, 7, D2)), root, [D1, D2])
    first = data_files(root)
    lake.replace_partitions(frame(spark, 3, D1, "b"), root, [D1])
    rows, current = counts(spark, root), current_files(root)
    replaced = first - current
    assert replaced and all(p.startswith(f"dt={D1}/") for p in replaced)
    replaced_bytes = sum((Path(root) / p).stat().st_size for p in replaced)

    result = lake.vacuum(spark, root, dt.timedelta(0))  # every replaced file is past a zero retention

    assert data_files(root) == current
    assert result.files_deleted == len(replaced) and result.partitions == [str(D1)]
    assert result.bytes_freed >= replaced_bytes
    assert counts(spark, root) == rows == {(D1, "b"): 3, (D2, "a"): 7}


def test_vacuum_keeps_what_time_travel_within_the_retention_needs(spark, tmp_path):
    root = str(tmp_path / "t")
    lake.replace_partitions(frame(spark, 5, D1), root, [D1])
    first = data_files(root)
    for path in first:
        age(Path(root) / path)  # written a month ago ...
    lake.replace_partitions(frame(spark, 3, D1, "b"), root, [D1])  # ... replaced just now
    # Leftovers of failed writes: parquet files no commit mentions.
    some_file = Path(root) / sorted(current_files(root))[0]
    old_leftover = age(Path(shutil.copy(some_file, some_file.with_name("part-00009-failed-old.snappy.parquet"))))
    young_leftover = Path(shutil.copy(some_file, some_file.with_name("part-00009-failed-young.snappy.parquet")))

    result = lake.vacuum(spark, root, dt.timedelta(days=7))

    assert first <= data_files(root)  # replaced within the retention: still there for time travel
    assert DeltaTable(root, version=0).to_pyarrow_table().num_rows == 5
    assert not old_leftover.exists() and young_leftover.exists()  # untracked files go by their age
    assert result.files_deleted == 1 and result.partitions == [str(D1)]
    assert counts(spark, root) == {(D1, "b"): 3}
    config = DeltaTable(root).metadata().configuration  # other Delta engines see the same window
    assert config["delta.deletedFileRetentionDuration"] == config["delta.logRetentionDuration"] == "interval 7 days"


def test_cutting_the_log_leaves_no_entry_naming_what_was_deleted(spark, tmp_path):
    root = str(tmp_path / "t")
    needle = 987654321
    lake.replace_partitions(frame(spark, 5, D1).union(spark.range(needle, needle + 1).select(
        F.col("id").alias("user_id"), F.lit("a").alias("label"), F.current_timestamp().alias("ts"),
        F.lit(D1).alias("dt"))), root, [D1])
    lake.delete_rows(spark, root, F.col("user_id").isin([needle]))
    lake.vacuum(spark, root, dt.timedelta(0))
    assert lake.cut_log(spark, root) > 0

    log = Path(root) / "_delta_log"
    assert not [p.name for p in log.rglob("*") if p.is_file() and str(needle).encode() in p.read_bytes()]
    assert {p.name.split(".")[0] for p in log.iterdir() if p.name[0].isdigit()} == {f"{lake.version(root):020}"}
    assert counts(spark, root) == {(D1, "a"): 5}
    assert DeltaTable(root).to_pyarrow_table().num_rows == 5
    lake.replace_partitions(frame(spark, 2, D2), root, [D2])  # and the table takes the next night
    assert counts(spark, root) == {(D1, "a"): 5, (D2, "a"): 2}


def test_find_tables_discovers_every_table_and_nothing_else(spark, tmp_path):
    for name in ("bronze/interactions", "gold/recommendations"):
        lake.replace_partitions(frame(spark, 2, D1), str(tmp_path / name), [D1])
    (tmp_path / "exports" / "2024").mkdir(parents=True)
    (tmp_path / "_scratch" / "t" / "_delta_log").mkdir(parents=True)
    assert lake.find_tables(str(tmp_path)) == ["bronze/interactions", "gold/recommendations"]
    assert lake.find_tables(str(tmp_path / "missing")) == []
