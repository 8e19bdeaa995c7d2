"""Ingest: landing files of the window's days -> Delta bronze/interactions (+ item/user snapshots)."""

from __future__ import annotations

import datetime as dt
import sys
from dataclasses import dataclass, field

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from nightrec import lake
from nightrec.landing import LandingError, read_attributes, read_interactions
from nightrec.settings import Settings
from nightrec.stages import stage_main, window


@dataclass
class IngestResult:
    rows: int
    days_with_files: int
    first_day: str
    last_day: str
    days_without_files: list[str]
    attributes: dict[str, int] = field(default_factory=dict)


def run(spark: SparkSession, settings: Settings, ds: dt.date, lookback_days: int = 1) -> IngestResult:
    days = window(ds, lookback_days)
    landing = settings.path("landing")
    interactions, present = read_interactions(spark, landing, days)
    if interactions is None:
        raise LandingError(f"no interaction files for {days[0]}..{days[-1]} under "
                           f"{landing}/interactions/dt=YYYY-MM-DD/")
    # Days without files keep what bronze already has: a cleaned-up landing folder must not erase history.
    bronze = interactions.withColumn("ingested_at", F.current_timestamp())
    rows = lake.replace_partitions(bronze, settings.table("bronze/interactions"), present)
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
                                attributes_map.cast("map<string,string>").alias("attributes"), F.lit(ds).alias("dt"))
        attributes[name] = lake.replace_partitions(snapshot, settings.table(f"bronze/{name}"), [ds])
    return IngestResult(rows, len(present), present[0].isoformat(), present[-1].isoformat(),
                        [d.isoformat() for d in days if d not in present], attributes)


def main(argv=None) -> dict:
    return stage_main("ingest", run, argv, lookback=True)


if __name__ == "__main__":
    main(sys.argv[1:])
