"""Delta tables written by Spark's Delta source (delta-spark), so every write runs in the executors
(see docs/lake.md).

A night replaces its own `dt` partitions with `replaceWhere`: one commit that adds the new files and
removes the old ones, so readers see the previous version until it lands and a crash leaves only
uncommitted files (deleted by a later VACUUM). Erasure deletes rows with DELETE and MERGE, vacuums
with no retention and cuts the log; housekeeping drops old snapshots, compacts recent partitions
(OPTIMIZE) and vacuums past the retention. Tables stay readable by other Delta engines (delta-rs
among them): no deletion vectors, no v2 checkpoints, protocol reader 1 / writer 2.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from dataclasses import dataclass, field

import pyarrow as pa
from pyspark.errors import AnalysisException
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from nightrec.data import storage
from nightrec.errors import PermanentError

PARTITION = "dt"
LOG_FOLDER = "_delta_log"
RETENTION_PROPERTIES = ("delta.deletedFileRetentionDuration", "delta.logRetentionDuration")


class LakeError(PermanentError):
    pass


def table_exists(root: str) -> bool:
    """A Delta table is at root: its log holds a commit or a checkpoint (no Spark needed)."""
    log = storage.listdir(storage.join(root, LOG_FOLDER))
    return any(e.name.endswith((".json", ".checkpoint.parquet")) for e in log)


def _delta(spark: SparkSession, root: str):
    from delta.tables import DeltaTable

    return DeltaTable.forPath(spark, root)


def read_table(spark: SparkSession, root: str, dates: Iterable[dt.date] | None = None,
               as_of: int | None = None) -> DataFrame:
    """A Delta table (optionally only some `dt` partitions) as a DataFrame: its current version, or
    version `as_of`."""
    if not table_exists(root):
        raise LakeError(f"no Delta table at {root}: the stage that writes it has not run yet")
    reader = spark.read.format("delta")
    frame = (reader if as_of is None else reader.option("versionAsOf", as_of)).load(root)
    if dates is not None:
        frame = frame.where(F.col(PARTITION).isin(sorted({d.isoformat() for d in dates})))
    return frame


def replace_partitions(df: DataFrame, root: str, dates: Iterable[dt.date], new_columns: Iterable[str] = (),
                       empty: bool = False) -> int:
    """Make `dates` partitions of the table hold exactly the rows of `df`, in one commit; returns the
    rows written.

    Partitions of `dates` absent from `df` end up empty. A row dated outside `dates` is an error and
    nothing is committed. A table written before `new_columns` existed gains them; any other schema
    change is refused. `empty`: the caller knows df has no rows; once the table exists, its days are
    cleared without writing (`clear_partitions`: no commit when they hold nothing).
    """
    dates = sorted(set(dates))
    if PARTITION not in df.columns or not dates:
        raise LakeError(f"cannot write {root}: the frame needs a {PARTITION!r} column and the days it replaces")
    if empty and table_exists(root):
        clear_partitions(df.sparkSession, root, dates)
        return 0
    wanted = [d.isoformat() for d in dates]
    writer_options = {"replaceWhere": f"{PARTITION} IN ({', '.join(repr(d) for d in wanted)})"}
    before = -1
    if table_exists(root):
        before = version(root)
        df, added = _evolve(df, root, set(new_columns))
        if added:
            writer_options["mergeSchema"] = "true"
    if len(dates) > 1:
        # Many days at once (backfills): one file per day, not one per day per task.
        df = df.repartition(PARTITION)
    try:
        df.write.format("delta").mode("overwrite").options(**writer_options).partitionBy(PARTITION).save(root)
    except AnalysisException as error:
        if "DELTA_REPLACE_WHERE_MISMATCH" not in str(error):
            raise
        stray = sorted({r[0].isoformat() for r in df.select(PARTITION).distinct().collect()} - set(wanted))
        raise LakeError(f"{root}: rows dated {stray} fall outside the partitions being replaced {wanted}; "
                        "nothing was committed") from None
    commit = last_commit(root)  # none when there was nothing to add or remove
    return int(commit["operationMetrics"].get("numOutputRows", 0)) if commit["version"] > before else 0


def last_commit(root: str) -> dict:
    """The newest commit's version, operation and metrics (as text), read from the log itself (a
    listing and one small file: no Spark job)."""
    newest = version(root)
    info = _commit_info(root, newest)
    return {"version": newest, "operation": info.get("operation"), "operationMetrics": info.get("operationMetrics", {})}


def version(root: str) -> int:
    """The table's current version: its newest commit in the log."""
    commits = _commits(root)
    if not commits:
        raise LakeError(f"no Delta table at {root}")
    return commits[0]


def last_maintained(root: str, within: dt.timedelta) -> dt.datetime | None:
    """When the table was last vacuumed, or else created, if within the given time from now (read from
    the log's newest commits backwards until one is older: a few small files, no Spark job)."""
    since = dt.datetime.now(dt.timezone.utc) - within
    for commit in _commits(root):
        info = _commit_info(root, commit)
        at = dt.datetime.fromtimestamp(info.get("timestamp", 0) / 1000, dt.timezone.utc)
        if at < since:
            return None
        if info.get("operation") == "VACUUM END" or commit == 0:
            return at
    return None


def _commits(root: str) -> list[int]:
    """The versions in the table's log, newest first."""
    return sorted((int(e.name[:-5]) for e in storage.listdir(storage.join(root, LOG_FOLDER))
                   if e.name.endswith(".json") and e.name[:-5].isdigit()), reverse=True)


def _commit_info(root: str, commit: int) -> dict:
    lines = storage.read_bytes(storage.join(root, LOG_FOLDER, f"{commit:020}.json")).decode().splitlines()
    return next((json.loads(line)["commitInfo"] for line in lines if line.startswith('{"commitInfo"')), {})


def _evolve(df: DataFrame, root: str, allowed: set[str]) -> tuple[DataFrame, list[str]]:
    """df with its columns in the table's order, and the allowed new columns it brings (appended to
    the table, null in older files); any other difference (another new column, a missing one, a
    changed type) is refused."""
    current = table_schema(root)
    have = {f.name: f.dataType.simpleString() for f in current}
    want = {f.name: f.dataType.simpleString() for f in df.schema}
    if any(want.get(name) != kind for name, kind in have.items()) or set(want) - set(have) - allowed:
        raise LakeError(f"schema of {root} is {list(have.items())}; refusing to write {list(want.items())}")
    added = [name for name in want if name not in have]
    return df.select(*current.names, *added), added


def table_schema(root: str) -> StructType:
    """The table's schema as Spark sees it, from its log (Delta keeps Spark's own schema JSON)."""
    from deltalake import DeltaTable

    schema = DeltaTable(root, storage_options=storage.delta_rs_options(root)).schema()
    return StructType.fromJson(json.loads(schema.to_json()))


def delete_rows(spark: SparkSession, root: str, condition: Column) -> int:
    """Delete the rows matching condition (files rewritten by the executors); returns how many."""
    return _rows_removed(spark, root, lambda table: table.delete(condition), "numDeletedRows")


def delete_matching(spark: SparkSession, root: str, column: str, values: DataFrame) -> int:
    """Delete the rows whose `column` equals one of `values` (a one-column frame), by MERGE: exact
    text needs no quoting; returns how many."""
    source = values.select(F.col(values.columns[0]).alias("value")).distinct().alias("source")
    return _rows_removed(spark, root, lambda table: table.alias("target").merge(
        source, f"target.`{column}` = source.value").whenMatchedDelete().execute(), "numTargetRowsDeleted")


def _rows_removed(spark: SparkSession, root: str, change, metric: str) -> int:
    """Run a change on the table; the rows its commit removed (0 when it had nothing to commit)."""
    before = version(root)
    change(_delta(spark, root))
    commit = last_commit(root)
    return int(commit["operationMetrics"].get(metric, 0)) if commit["version"] > before else 0


def partitions(root: str) -> list[str]:
    """The `dt` values the table's current version holds files of, oldest first (read from its log
    in this process: no Spark job)."""
    from deltalake import DeltaTable

    table = DeltaTable(root, storage_options=storage.delta_rs_options(root))
    return sorted({values[PARTITION] for values in table.partitions()})


def holds(root: str, day: dt.date) -> bool:
    """The table exists and its current version has files for `day` (its log only: no Spark job)."""
    return table_exists(root) and day.isoformat() in partitions(root)


def clear_partitions(spark: SparkSession, root: str, dates: Iterable[dt.date]) -> int:
    """Make `dates` partitions of the table empty; returns the rows removed. No commit when they hold
    nothing already, or when there is no table: a night with nothing to set aside costs no write."""
    wanted = sorted({d.isoformat() for d in dates})
    if not table_exists(root) or not set(wanted) & set(partitions(root)):
        return 0
    return delete_rows(spark, root, F.col(PARTITION).isin(wanted))


def drop_old_partitions(spark: SparkSession, root: str, keep: int, also_keep: Iterable[dt.date] = ()) -> list[str]:
    """Remove from the current version every `dt` partition but the newest `keep` (and `also_keep`),
    in one commit; returns the dropped `dt` values, oldest first. Their files stay for time travel
    until a vacuum past the retention deletes them."""
    dates = partitions(root)
    spared = set(dates[-keep:] if keep > 0 else []) | {d.isoformat() for d in also_keep}
    dropped = [d for d in dates if d not in spared]
    if dropped:
        _delta(spark, root).delete(F.col(PARTITION).isin(dropped))  # whole partitions: no file is rewritten
    return dropped


def compact(spark: SparkSession, root: str, since: dt.date | None = None) -> int:
    """OPTIMIZE: small files of the partitions from `since` (all without) rewritten into fewer; returns
    the files removed."""
    builder = _delta(spark, root).optimize()
    if since is not None:
        builder = builder.where(f"{PARTITION} >= '{since.isoformat()}'")
    metrics = builder.executeCompaction().first()["metrics"]
    return int(metrics["numFilesRemoved"])


# --- Retention: VACUUM and log expiry (docs/lake.md, "Retention: VACUUM and log expiry") ---

@dataclass
class VacuumResult:
    version: int                  # the table's version after the vacuum (its own commits included)
    files_deleted: int            # data files: replaced ones and untracked leftovers of failed writes
    bytes_freed: int              # data and log bytes together
    partitions: list[str] = field(default_factory=list)  # `dt` values whose files were deleted
    log_files_deleted: int = 0


def find_tables(lake_root: str, max_depth: int = 3) -> list[str]:
    """Every Delta table under `lake_root` (a folder holding `_delta_log`), as paths relative to it,
    sorted: e.g. ["bronze/interactions", "gold/recommendations", ...]. A table's own folders are
    not searched further; folders starting with `_` or `.` are skipped."""
    base = lake_root.rstrip("/")
    found, pending = [], [(base, 0)]
    while pending:
        folder, depth = pending.pop()
        folders = [e for e in storage.listdir(folder) if e.is_dir]
        if folder != base and any(e.name == LOG_FOLDER for e in folders):
            found.append(folder[len(base):].lstrip("/"))
        elif depth < max_depth:
            pending.extend((e.uri, depth + 1) for e in folders if not e.name.startswith(("_", ".")))
    return sorted(found)


def vacuum(spark: SparkSession, root: str, retention: dt.timedelta) -> VacuumResult:
    """Delete the files of `root` that its current version does not need and that are older than
    `retention`; returns what went.

    Delta's VACUUM does the deleting: files the current version references are never touched; files
    replaced more than `retention` ago go, and so do untracked files (parquet a failed write left
    behind) last modified more than `retention` ago. The table's `delta.deletedFileRetentionDuration`
    and `delta.logRetentionDuration` are set to `retention`, so Delta expires log entries past it at
    its checkpoints (every readers' engine honours the same window). Time travel to a version older
    than `retention` is no longer possible afterwards.
    """
    hours = retention.total_seconds() / 3600
    if hours < 0:
        raise ValueError(f"retention must not be negative, got {retention}")
    if not table_exists(root):
        raise LakeError(f"no Delta table at {root}")
    whole_hours = int(hours) if hours == int(hours) else None
    interval = (f"interval {whole_hours // 24} days" if whole_hours is not None and whole_hours % 24 == 0
                else f"interval {round(hours * 3600)} seconds")
    configuration = _delta(spark, root).detail().first()["properties"] or {}
    if any(configuration.get(key) != interval for key in RETENTION_PROPERTIES):
        spark.sql(f"ALTER TABLE delta.`{root}` SET TBLPROPERTIES ("
                  + ", ".join(f"'{key}' = '{interval}'" for key in RETENTION_PROPERTIES) + ")")
    sizes_before = _sizes(root)
    _delta(spark, root).vacuum(hours)
    sizes_after = _sizes(root)
    gone = [path for path in sizes_before if path not in sizes_after]
    # Hidden files (Hadoop's .crc beside each local file) count in the bytes, not as files.
    data_gone = [path for path in gone if not path.startswith(f"{LOG_FOLDER}/") and not storage.name_of(path)
                 .startswith(".")]
    partitions = {part.split("=", 1)[1] for path in data_gone
                  for part in path.split("/")[:-1] if part.startswith(f"{PARTITION}=")}
    return VacuumResult(
        version=version(root),
        files_deleted=len(data_gone),
        bytes_freed=sum(sizes_before[path] for path in gone),
        partitions=sorted(partitions),
        log_files_deleted=sum(path.startswith(f"{LOG_FOLDER}/") and not storage.name_of(path).startswith(".")
                              for path in gone),
    )


def cut_log(spark: SparkSession, root: str) -> int:
    """Checkpoint the current version and delete every log entry before it; returns the files deleted.

    For erasure: earlier commits name what they deleted (a DELETE's predicate) and hold file
    statistics (minimum and maximum ids), whatever their age. Time travel restarts here."""
    spark._jvm.org.apache.spark.sql.delta.DeltaLog.forTable(spark._jsparkSession, root).checkpoint()
    current = version(root)
    deleted = 0
    for entry in storage.listdir(storage.join(root, LOG_FOLDER)):
        number = entry.name.split(".", 1)[0]
        if not entry.is_dir and number.isdigit() and int(number) < current:
            storage.delete(entry.uri)
            deleted += 1
    return deleted


def _sizes(root: str) -> dict[str, int]:
    """Size of every file under a table root (its log included), by path relative to the root."""
    base = root.rstrip("/")
    return {entry.uri[len(base):].lstrip("/"): entry.size for entry in storage.walk(base)}


# --- Small tables without Spark (ledgers, reports, the CLI): delta-rs on the same tables ---

def small_table(root: str, columns: list[str] | None = None, dates: Iterable[dt.date] | None = None) -> pa.Table:
    """A small table's current version (optionally some `dt` partitions), read in this process."""
    from deltalake import DeltaTable

    partitions = None if dates is None else [(PARTITION, "in", sorted({d.isoformat() for d in dates}))]
    return DeltaTable(root, storage_options=storage.delta_rs_options(root)).to_pyarrow_table(
        columns=columns, partitions=partitions)


def append_small(root: str, rows: pa.Table) -> None:
    """Append a few rows in one commit (creating the table; a new column joins it), from this process."""
    from deltalake import write_deltalake

    write_deltalake(root, rows, mode="append", schema_mode="merge", storage_options=storage.delta_rs_options(root))


def replace_small(root: str, rows: pa.Table, dates: Iterable[dt.date]) -> None:
    """Make `dates` partitions hold exactly `rows` (a `dt` column of ISO dates), in one commit, from
    this process (creating the table)."""
    from deltalake import write_deltalake

    options = storage.delta_rs_options(root)
    if not table_exists(root):
        write_deltalake(root, rows, mode="append", partition_by=[PARTITION], storage_options=options)
        return
    days = ", ".join(f"'{d.isoformat()}'" for d in sorted(set(dates)))
    write_deltalake(root, rows, mode="overwrite", predicate=f"{PARTITION} IN ({days})", storage_options=options)
