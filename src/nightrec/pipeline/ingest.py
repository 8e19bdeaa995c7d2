"""Ingest: landing files of the window's days -> Delta bronze/interactions (+ item/user snapshots).

Each file is inspected first (nightrec.data.landing): unreadable ones go to quarantine/files with their
reason and the rest of the day proceeds; empty ones are counted. A day fails only when more than
`validation.max_bad_file_fraction` of its non-empty files are unreadable: counted in files, not
bytes, since one large junk upload says nothing about the good files beside it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from dataclasses import dataclass, field

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from nightrec.data import lake, storage
from nightrec.data.landing import (
    ADDED_LATER,
    EMPTY,
    OK,
    QUARANTINED,
    SKIPPED,
    LandingError,
    LandingFile,
    added_columns_last,
    delivered_at,
    inspect_day,
    read_attributes,
    read_interactions,
    stray_folders,
)
from nightrec.data.tables import window, without_erased
from nightrec.pipeline.progress import Progress
from nightrec.pipeline.runtime import stage_main
from nightrec.settings import Settings

QUARANTINE_FILES_SCHEMA = ("path string, size long, sha256 string, format string, reason string, "
                           "found_at timestamp, dt date, modified timestamp, etag string")
QUARANTINE_FILES_ADDED = ("modified", "etag")  # when the file was delivered; its S3 ETag (empty on disk)


@dataclass
class IngestResult:
    rows: int
    days_with_files: int
    first_day: str
    last_day: str
    days_without_files: list[str]
    files_read: int = 0
    files: list[dict] = field(default_factory=list)               # path, size, etag, modified: each file read
    empty_files: list[str] = field(default_factory=list)
    quarantined_files: list[dict] = field(default_factory=list)   # path, reason
    skipped: list[dict] = field(default_factory=list)             # path, reason: in-progress files, folders
    stray_folders: list[str] = field(default_factory=list)        # under interactions/ but not dt=YYYY-MM-DD
    attributes: dict[str, int] = field(default_factory=dict)


class FilesUnreadable(LandingError):
    pass


def run(spark: SparkSession, settings: Settings, ds: dt.date, lookback_days: int = 1) -> IngestResult:
    days = window(ds, lookback_days)
    landing = settings.path("landing")
    inspected = {day: inspect_day(landing, day, settings.validation.max_line_bytes) for day in days}
    # Days without files keep what bronze already has: a cleaned-up landing folder must not erase
    # history, and neither must a folder holding only files still being written.
    present = [day for day, files in inspected.items() if any(f.status != SKIPPED for f in files or [])]
    if not present:
        raise LandingError(f"no interaction files for {days[0]}..{days[-1]} under "
                           f"{landing}/interactions/dt=YYYY-MM-DD/")
    files = same_objects_skipped([f for day_files in inspected.values() for f in day_files or []])
    record_quarantined(spark, settings, files, present)
    failing = failing_days(files, settings.validation.max_bad_file_fraction)
    if failing:
        raise FilesUnreadable(failure_message(failing, settings.validation.max_bad_file_fraction, ds, lookback_days))

    readable = sum(f.status == OK for f in files)
    bronze = read_interactions(spark, files).withColumn("ingested_at", F.current_timestamp())
    bronze = added_columns_last(first_delivered(spark, settings, bronze, files, present))
    bronze = without_erased(spark, settings, bronze)  # files we do not manage may still hold them
    with Progress("ingest", spark).step("read the files into bronze", files=readable, days=len(present)):
        rows = lake.replace_partitions(bronze, settings.table("bronze/interactions"), present, ADDED_LATER)
    attributes = {}
    for name, key in (("items", "item_id"), ("users", "user_id")):
        frame = read_attributes(spark, landing, name)
        if frame is None:
            continue
        if key not in frame.columns:
            raise LandingError(f"{landing}/{name}.*: attribute file needs an {key!r} column, has {frame.columns}")
        # Attribute columns differ between catalogs and over time: keep them in one map so the table's
        # schema never changes.
        attributes_map = F.create_map(*[x for c in frame.columns if c != key
                                        for x in (F.lit(c), F.col(c).cast("string"))])
        snapshot = frame.select(F.col(key).cast("string").alias(key),
                                attributes_map.cast("map<string,string>").alias("attributes"), F.lit(ds).alias("dt"),
                                delivered_at())
        if name == "users":
            snapshot = without_erased(spark, settings, snapshot)
        snapshot = snapshot.drop("delivered_at")
        attributes[name] = lake.replace_partitions(snapshot, settings.table(f"bronze/{name}"), [ds])
    return IngestResult(
        rows, len(present), present[0].isoformat(), present[-1].isoformat(),
        [d.isoformat() for d in days if d not in present],
        files_read=readable,
        files=[described(f) for f in files if f.status == OK],
        empty_files=[f.path for f in files if f.status == EMPTY],
        quarantined_files=[{**described(f), "reason": f.reason} for f in files if f.status == QUARANTINED],
        skipped=[{"path": f.path, "reason": f.reason} for f in files if f.status == SKIPPED],
        stray_folders=stray_folders(landing),
        attributes=attributes,
    )


def same_objects_skipped(files: list[LandingFile]) -> list[LandingFile]:
    """An object delivered again under another name (the same S3 ETag: the same bytes) is read once,
    in its first delivery; the others are skipped, naming it."""
    first: dict[str, LandingFile] = {}
    for f in sorted(files, key=lambda f: (f.modified or dt.datetime.max.replace(tzinfo=dt.timezone.utc), f.path)):
        if f.status == OK and f.etag:
            first.setdefault(f.etag, f)
    return [dataclasses.replace(f, status=SKIPPED, reason=f"the same object as {first[f.etag].path} "
                                                          f"(ETag {f.etag}): read once")
            if f.status == OK and f.etag and first[f.etag] is not f else f for f in files]


def first_delivered(spark: SparkSession, settings: Settings, bronze: DataFrame, files: list[LandingFile],
                    days: list[dt.date]) -> DataFrame:
    """Rows with their file's S3 ETag (`source_etag`), and as `delivered_at` the first delivery of that
    object bronze holds for these days: an object put again with the same bytes is no new delivery
    (erasure judges by it)."""
    etags = {f.path: f.etag for f in files if f.status == OK and f.etag}
    if not etags:
        return bronze.withColumn("source_etag", F.lit(None).cast("string"))
    bronze = bronze.withColumn("source_etag", F.create_map(*[F.lit(x) for item in etags.items() for x in item])
                               [F.col("source_file")])
    root = settings.table("bronze/interactions")
    if not lake.table_exists(root) or "source_etag" not in lake.read_table(spark, root).columns:
        return bronze
    earlier = (lake.read_table(spark, root, days).where(F.col("source_etag").isin(sorted(set(etags.values()))))
               .groupBy("source_etag").agg(F.min("delivered_at").alias("first_delivered_at")))
    return (bronze.join(F.broadcast(earlier), "source_etag", "left")
            .withColumn("delivered_at", F.least("delivered_at", "first_delivered_at")).drop("first_delivered_at"))


def described(f: LandingFile) -> dict:
    """A landing file as the summary shows it: where, how large, its S3 ETag, when delivered."""
    return {"path": f.path, "size": f.size, "etag": f.etag, "modified": f.modified.isoformat() if f.modified else None}


def record_quarantined(spark: SparkSession, settings: Settings, files: list[LandingFile], days: list[dt.date]) -> None:
    """quarantine/files holds exactly tonight's unreadable files of these days (a rerun after a fix
    clears them); the table exists from the first night on."""
    found_at = dt.datetime.now(dt.timezone.utc)
    rows = [(f.path, f.size, sha256(f.path), f.fmt or None, f.reason, found_at, f.day, f.modified, f.etag or None)
            for f in files if f.status == QUARANTINED]
    lake.replace_partitions(spark.createDataFrame(rows, QUARANTINE_FILES_SCHEMA), settings.table("quarantine/files"),
                            days, QUARANTINE_FILES_ADDED, empty=not rows)


def sha256(path: str) -> str | None:
    digest = hashlib.sha256()
    try:
        with storage.open_read(path) as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


def failing_days(files: list[LandingFile], max_fraction: float) -> dict[dt.date, list[LandingFile]]:
    """Days whose unreadable files are more than max_fraction of their non-empty files."""
    failing = {}
    for day in sorted({f.day for f in files}):
        counted = [f for f in files if f.day == day and f.status in (OK, QUARANTINED)]
        bad = [f for f in counted if f.status == QUARANTINED]
        if bad and len(bad) / len(counted) > max_fraction:
            failing[day] = bad
    return failing


def failure_message(failing: dict[dt.date, list[LandingFile]], max_fraction: float, ds: dt.date,
                    lookback_days: int) -> str:
    lines = []
    for day, bad in failing.items():
        lines.append(f"interaction files of {day} cannot be read ({len(bad)} unreadable, more than "
                     f"validation.max_bad_file_fraction={max_fraction:.0%} of the day's non-empty files):")
        lines.extend(f"  - {f.path}: {f.reason}" for f in bad)
    lines.append("  Nothing was ingested; the files are listed in quarantine/files. Fix or remove them, then rerun "
                 f"the night (nightrec run --ds {ds} --lookback-days {lookback_days}).")
    return "\n".join(lines)


def main(argv=None) -> dict:
    return stage_main("ingest", run, argv, lookback=True)
