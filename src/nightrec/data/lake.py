"""Delta tables kept with delta-rs while Spark does the compute (see docs/lake.md).

Spark writes plain parquet files into the table folder; the driver then commits exactly those
files with delta-rs in one transaction that also removes the files of the partitions being
replaced. Until that commit, readers see the previous version: a crash leaves only uncommitted
files behind, never a half-replaced day. `vacuum` later deletes replaced and uncommitted files once
they are older than the retention (the nightly housekeeping task).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from deltalake import DeltaTable, Field, Schema
from deltalake.exceptions import TableNotFoundError
from deltalake.transaction import AddAction, create_table_with_add_actions
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_schema

from nightrec.errors import PermanentError

PARTITION = "dt"
_STATS_TYPES = (pa.types.is_integer, pa.types.is_floating, pa.types.is_date, pa.types.is_timestamp)


class LakeError(PermanentError):
    pass


def table_exists(root: str) -> bool:
    try:
        DeltaTable(root)
    except TableNotFoundError:
        return False
    return True


def read_table(spark: SparkSession, root: str, dates: Iterable[dt.date] | None = None) -> DataFrame:
    """The current version of a Delta table (optionally only some `dt` partitions) as a DataFrame."""
    try:
        table = DeltaTable(root)
    except TableNotFoundError:
        raise LakeError(f"no Delta table at {root}: the stage that writes it has not run yet") from None
    arrow_schema = pa.schema(table.schema().to_arrow())
    spark_schema = from_arrow_schema(arrow_schema)
    filters = None
    if dates is not None:
        filters = [(PARTITION, "in", sorted({d.isoformat() for d in dates}))]
        if not filters[0][2]:
            return spark.createDataFrame([], spark_schema)
    uris = table.file_uris(partition_filters=filters)
    if not uris:
        return spark.createDataFrame([], spark_schema)
    frame = spark.read.schema(spark_schema).option("basePath", root).parquet(*uris)
    return frame.select(*arrow_schema.names)


def replace_partitions(df: DataFrame, root: str, dates: Iterable[dt.date], new_columns: Iterable[str] = ()) -> int:
    """Make `dates` partitions of the table hold exactly the rows of `df`; returns rows committed.

    Partitions of `dates` absent from `df` end up empty. A row dated outside `dates` is an error.
    A table written before `new_columns` existed gains them; any other schema change is refused.
    """
    dates = sorted(set(dates))
    if PARTITION not in df.columns:
        raise LakeError(f"cannot write {root}: the frame has no {PARTITION!r} partition column")
    exists = table_exists(root)
    if exists:
        df = _evolve(root, df, set(new_columns))
    arrow_schema = _arrow_schema(df)
    fs, base = pafs.FileSystem.from_uri(root)
    before = _files(fs, base)
    if len(dates) > 1:
        # Many days at once (backfills): one file per day, not one per day per task.
        df = df.repartition(PARTITION)
    df.write.mode("append").partitionBy(PARTITION).parquet(root)
    written = _files(fs, base) - before
    for checksum in (p for p in written if p.endswith(".crc")):  # Hadoop's local side files: not table data
        fs.delete_file(checksum)
    new_files = sorted(p for p in written if p.endswith(".parquet"))
    adds = [_add_action(fs, base, path) for path in new_files]
    wanted = {d.isoformat() for d in dates}
    stray = {a.partition_values[PARTITION] for a in adds} - wanted
    if stray:
        raise LakeError(f"{root}: rows dated {sorted(stray)} fall outside the partitions being replaced "
                        f"{sorted(wanted)}")
    if exists:
        DeltaTable(root).create_write_transaction(
            adds, mode="overwrite", schema=arrow_schema, partition_by=[PARTITION],
            partition_filters=[(PARTITION, "in", sorted(wanted))],
        )
    else:
        create_table_with_add_actions(root, Schema.from_arrow(arrow_schema), adds, partition_by=[PARTITION])
    return sum(json.loads(a.stats)["numRecords"] for a in adds)


def drop_old_partitions(root: str, keep: int, also_keep: Iterable[dt.date] = ()) -> list[str]:
    """Remove from the current version every `dt` partition but the newest `keep` (and `also_keep`),
    in one commit; returns the dropped `dt` values, oldest first. Their files stay for time travel
    until a vacuum past the retention deletes them."""
    table = DeltaTable(root)
    dates = sorted({p[PARTITION] for p in table.partitions() if p.get(PARTITION)})
    spared = set(dates[-keep:] if keep > 0 else []) | {d.isoformat() for d in also_keep}
    dropped = [d for d in dates if d not in spared]
    if dropped:
        table.create_write_transaction([], mode="overwrite", schema=pa.schema(table.schema().to_arrow()),
                                       partition_by=[PARTITION], partition_filters=[(PARTITION, "in", dropped)])
    return dropped


def _arrow_schema(df: DataFrame) -> pa.Schema:
    schema = to_arrow_schema(df.schema, timezone="UTC")
    # Delta needs timezone-aware microsecond timestamps (naive ones would require timestamp_ntz).
    fields = [
        pa.field(f.name, pa.timestamp("us", tz="UTC")) if pa.types.is_timestamp(f.type) else f
        for f in schema
    ]
    return pa.schema(fields)


def _evolve(root: str, df: DataFrame, allowed: set[str]) -> DataFrame:
    """df with its columns in the table's order. A table gains the frame's allowed new columns (its
    older files read them as null); any other difference (another new column, a missing one, a
    changed type) is refused."""
    table = DeltaTable(root)
    current = pa.schema(table.schema().to_arrow())
    wanted = _arrow_schema(df)
    have = {f.name: str(f.type) for f in current}
    want = {f.name: str(f.type) for f in wanted}
    if any(want.get(name) != kind for name, kind in have.items()) or set(want) - set(have) - allowed:
        raise LakeError(f"schema of {root} is {list(have.items())}; refusing to write {list(want.items())}")
    added = [f.with_nullable(True) for f in wanted if f.name not in have]
    if added:
        table.alter.add_columns([Field.from_arrow(f) for f in added])
    return df.select(*current.names, *[f.name for f in added])


def _files(fs: pafs.FileSystem, base: str) -> set[str]:
    """Every file under the table root except the Delta log."""
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    return {i.path for i in infos if i.type == pafs.FileType.File and "/_delta_log/" not in i.path}


def _add_action(fs: pafs.FileSystem, base: str, path: str) -> AddAction:
    relative = path[len(base):].lstrip("/")
    partition = dict(unquote(part).split("=", 1) for part in relative.split("/")[:-1])
    if set(partition) != {PARTITION}:
        raise LakeError(f"unexpected file layout {relative!r}: expected {PARTITION}=<date>/<file>")
    info = fs.get_file_info(path)
    with fs.open_input_file(path) as handle:
        metadata = pq.read_metadata(handle)
    return AddAction(
        path=relative,
        size=info.size,
        partition_values=partition,
        modification_time=int(info.mtime.timestamp() * 1000) if info.mtime else int(time.time() * 1000),
        data_change=True,
        stats=json.dumps(_file_stats(metadata)),
    )


def _file_stats(metadata: pq.FileMetaData) -> dict:
    """numRecords, nullCount and min/max (numbers, dates, timestamps) from a parquet footer."""
    schema = metadata.schema.to_arrow_schema()
    null_count: dict[str, int] = {}
    minimum: dict[str, object] = {}
    maximum: dict[str, object] = {}
    for col in range(metadata.num_columns):
        path = metadata.schema.column(col).path
        if "." in path:  # leaf of a nested (list/struct) column: Delta keeps no stats for those here
            continue
        field = schema.field(path)
        groups = [metadata.row_group(g).column(col).statistics for g in range(metadata.num_row_groups)]
        if not groups or any(s is None or not s.has_null_count for s in groups):
            continue
        null_count[field.name] = sum(s.null_count for s in groups)
        with_values = [s for s in groups if s.has_min_max]
        if with_values and any(check(field.type) for check in _STATS_TYPES):
            minimum[field.name] = _json_value(min(s.min for s in with_values))
            maximum[field.name] = _json_value(max(s.max for s in with_values))
    return {"numRecords": metadata.num_rows, "minValues": minimum, "maxValues": maximum, "nullCount": null_count}


def _json_value(value: object) -> object:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


# --- Retention: VACUUM and log expiry (docs/lake.md, "Retention: VACUUM and log expiry") ---

RETENTION_PROPERTIES = ("delta.deletedFileRetentionDuration", "delta.logRetentionDuration")
LOG_FOLDER = "_delta_log"


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
    fs, base = pafs.FileSystem.from_uri(lake_root)
    base = base.rstrip("/")
    found, pending = [], [(base, 0)]
    while pending:
        folder, depth = pending.pop()
        infos = fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
        folders = [i for i in infos if i.type == pafs.FileType.Directory]
        if folder != base and any(i.base_name == LOG_FOLDER for i in folders):
            found.append(folder[len(base):].lstrip("/"))
        elif depth < max_depth:
            pending.extend((i.path, depth + 1) for i in folders if not i.base_name.startswith(("_", ".")))
    return sorted(found)


def vacuum(root: str, retention: dt.timedelta) -> VacuumResult:
    """Delete the files of `root` that its current version does not need and that are older than
    `retention`, and expire log entries older than it; returns what went.

    delta-rs's own VACUUM in full mode does the deleting: files the current version references are
    never touched; files replaced (tombstoned) more than `retention` ago go, and so do untracked files
    (parquet a failed write left behind) last modified more than `retention` ago. The table's
    `delta.deletedFileRetentionDuration` and `delta.logRetentionDuration` are set to `retention` so
    that other Delta engines honour the same window. Then a checkpoint is written and log entries
    past the retention (before the newest checkpoint older than it) are removed. Time travel to a
    version older than `retention` is no longer possible afterwards.
    """
    hours = math.ceil(retention.total_seconds() / 3600)
    if hours < 0:
        raise ValueError(f"retention must not be negative, got {retention}")
    try:
        table = DeltaTable(root)
    except TableNotFoundError:
        raise LakeError(f"no Delta table at {root}") from None
    fs, base = pafs.FileSystem.from_uri(root)
    base = base.rstrip("/")
    sizes_before = _sizes(fs, base)
    interval = f"interval {hours // 24} days" if hours % 24 == 0 else f"interval {hours} hours"
    configuration = table.metadata().configuration
    if any(configuration.get(key) != interval for key in RETENTION_PROPERTIES):
        # delta-rs may expire log entries right at this commit: the listing above counts them.
        table.alter.set_table_properties({key: interval for key in RETENTION_PROPERTIES})
        table = DeltaTable(root)
    current = {unquote(path) for path in pa.table(table.get_add_actions()).column("path").to_pylist()}

    planned = {unquote(path) for path in table.vacuum(retention_hours=hours, dry_run=True, full=True)}
    if planned & current:
        raise LakeError(f"{root}: vacuum planned to delete files of the current version "
                        f"{sorted(planned & current)[:5]}; nothing was deleted")
    deleted: list[str] = []
    if planned:
        deleted = [unquote(path) for path in table.vacuum(retention_hours=hours, dry_run=False, full=True)]
    table = DeltaTable(root)
    table.create_checkpoint()
    table.cleanup_metadata()

    sizes_after = _sizes(fs, base)
    missing = sorted(path for path in current if path not in sizes_after)
    if missing:
        raise LakeError(f"{root}: files of the current version are gone after the vacuum: {missing[:5]}")
    gone = [path for path in sizes_before if path not in sizes_after]
    log_gone = [path for path in gone if path.startswith(f"{LOG_FOLDER}/")]
    partitions = {part.split("=", 1)[1] for path in deleted
                  for part in path.split("/")[:-1] if part.startswith(f"{PARTITION}=")}
    return VacuumResult(
        version=DeltaTable(root).version(),
        files_deleted=len(deleted),
        bytes_freed=sum(sizes_before[path] for path in gone),
        partitions=sorted(partitions),
        log_files_deleted=len(log_gone),
    )


def _sizes(fs: pafs.FileSystem, base: str) -> dict[str, int]:
    """Size of every file under a table root (its log included), by path relative to the root."""
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    return {i.path[len(base):].lstrip("/"): i.size for i in infos if i.type == pafs.FileType.File}
