"""Housekeeping: the night's last task keeps disk use flat, so a year of nights fits.

- Snapshots: each night writes whole snapshots into a new `dt` partition (every user's list in
  the `gold/` tables, the item and user files in `bronze/items` and `bronze/users`); all but the
  newest `lake.snapshot_nights` nights (and tonight's) are dropped, so the lake grows with the
  events kept, not with nights times users. Event tables are history and keep every day.
- Lake: every Delta table under `paths.lake` (found by its `_delta_log`, not from a list), once in
  `lake.maintenance_days` (its log says when it was last vacuumed, or created), has the small files of its
  last week's partitions compacted (OPTIMIZE), then is vacuumed: files no current version needs
  are deleted once older than `lake.retention_days`, and log entries past that age expire at
  Delta's checkpoints, so time travel reaches back `lake.retention_days` (nightrec.data.lake.vacuum;
  docs/lake.md, "Retention: VACUUM and log expiry"). Nights replace whole partitions, so files do
  not pile up in between; erasure vacuums what it touches at once (nightrec.pipeline.privacy).
- MLflow: of the registered model's versions without an alias, the newest `mlflow.keep_versions`
  stay; older ones are deleted with their logged models' files (nightrec.modeling.registry.prune_versions).
  Aliased versions and the champion's rollback target always stay; runs and their metrics stay.
- Redis needs nothing here: each publish already deletes every version but the live and the
  previous one (nightrec.serving.loader.delete_stale_versions).

Ages are measured against the clock, not `ds`: a backfill of an old date deletes nothing young.
Snapshot nights are counted by date instead, as the data's dates need not be near the clock's.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from dataclasses import dataclass, field

from pyspark.sql import SparkSession

from nightrec.data import lake
from nightrec.modeling import registry, tracking
from nightrec.pipeline.runtime import stage_main
from nightrec.settings import Settings

log = logging.getLogger("nightrec.housekeeping")
COMPACT_DAYS = 7  # partitions of the last week are compacted (OPTIMIZE): where nights and late data write


@dataclass
class HousekeepingResult:
    bytes_freed: int                                      # lake and MLflow together
    retention_days: int
    tables: dict[str, dict] = field(default_factory=dict)  # per table: files and bytes deleted, partitions touched
    keep_versions: int = 0
    model_versions_deleted: list[str] = field(default_factory=list)
    model_versions_kept: list[str] = field(default_factory=list)
    model_bytes_freed: int = 0


def is_snapshot(table: str) -> bool:
    """Tables holding one whole snapshot per night (not events per event day)."""
    return table.startswith("gold/") or table in ("bronze/items", "bronze/users")


def run(spark: SparkSession, settings: Settings, ds: dt.date) -> HousekeepingResult:
    retention = dt.timedelta(days=settings.lake.retention_days)
    # less half a day: a night that starts a little earlier than a week ago still maintains
    every = dt.timedelta(days=settings.lake.maintenance_days - 0.5) if settings.lake.maintenance_days else None
    tables = {}
    for name in lake.find_tables(settings.path("lake")):
        root = settings.table(name)
        dropped = []
        if is_snapshot(name):
            dropped = lake.drop_old_partitions(spark, root, settings.lake.snapshot_nights, [ds])
            if dropped:
                log.info("%s: dropped the snapshots of %s (keeping the newest %d nights)", name,
                         ", ".join(dropped), settings.lake.snapshot_nights)
        last = lake.last_maintained(root, every) if every else None
        if last is not None:
            tables[name] = {"partitions_dropped": dropped, "maintained": False, "last_maintained": last.isoformat()}
            continue
        partitioned = lake.PARTITION in lake.read_table(spark, root).columns
        compacted = lake.compact(spark, root, ds - dt.timedelta(days=COMPACT_DAYS - 1) if partitioned else None)
        vacuumed = lake.vacuum(spark, root, retention)
        tables[name] = {**dataclasses.asdict(vacuumed), "partitions_dropped": dropped, "maintained": True,
                        "files_compacted": compacted}
        if vacuumed.files_deleted or vacuumed.log_files_deleted:
            log.info("%s: deleted %d data files (partitions %s) and %d log files, %d bytes", name,
                     vacuumed.files_deleted, ", ".join(vacuumed.partitions) or "-", vacuumed.log_files_deleted,
                     vacuumed.bytes_freed)

    tracking.configure(settings)
    name, keep = settings.mlflow.registered_model, settings.mlflow.keep_versions
    pruned = registry.prune_versions(name, keep)
    if pruned.deleted:
        log.info("%s: deleted versions %s with their files (%d bytes); kept %s", name,
                 ", ".join(pruned.deleted), pruned.bytes_freed, ", ".join(pruned.kept))

    lake_bytes = sum(t.get("bytes_freed", 0) for t in tables.values())
    return HousekeepingResult(
        bytes_freed=lake_bytes + pruned.bytes_freed,
        retention_days=settings.lake.retention_days,
        tables=tables,
        keep_versions=keep,
        model_versions_deleted=pruned.deleted,
        model_versions_kept=pruned.kept,
        model_bytes_freed=pruned.bytes_freed,
    )


def main(argv=None) -> dict:
    return stage_main("housekeeping", run, argv)
