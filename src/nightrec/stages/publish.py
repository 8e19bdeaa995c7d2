"""Publish: gold/recommendations of ds -> a new Redis version, verified, then made live."""

from __future__ import annotations

import datetime as dt
import sys
from dataclasses import dataclass

from pyspark.sql import SparkSession

from nightrec import lake, publisher
from nightrec.errors import PermanentError
from nightrec.settings import Settings
from nightrec.stages import stage_main


@dataclass
class PublishStageResult:
    version: str
    previous: str | None
    users: int
    model_version: str
    deleted_versions: list[str]


def run(spark: SparkSession, settings: Settings, ds: dt.date) -> PublishStageResult:
    recs = lake.read_table(spark, settings.table("gold/recommendations"), [ds])
    first = recs.select("model_version").first()
    if first is None:
        raise PermanentError(f"gold/recommendations has nothing for {ds}: run score first")
    fallback = lake.read_table(spark, settings.table("gold/fallbacks"), [ds]).where("segment = 'global'").first()
    if fallback is None:
        raise PermanentError(f"gold/fallbacks has no global list for {ds}: run score first")
    result = publisher.publish(recs, (fallback.item_ids, fallback.scores), url=settings.redis.url,
                               prefix=settings.redis.prefix, ds=ds, model_version=first.model_version)
    return PublishStageResult(result.version, result.previous, result.users, first.model_version,
                              result.deleted_versions)


def main(argv=None) -> dict:
    return stage_main("publish", run, argv)


if __name__ == "__main__":
    main(sys.argv[1:])
