"""Publish: gold tables of ds -> a new Redis version (users, fallbacks, neighbours, item metadata),
verified, then made live by one atomic flip."""

from __future__ import annotations

import datetime as dt
import sys
from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from nightrec import lake, publisher
from nightrec.errors import PermanentError
from nightrec.redis_layout import check_name
from nightrec.settings import Settings
from nightrec.stages import stage_main
from nightrec.stages.score import GLOBAL, is_personal, unavailable_items
from nightrec.stages.train import attributes


@dataclass
class PublishStageResult:
    version: str
    previous: str | None
    users: int
    similar_items: int
    segments: int
    categories: int
    model_version: str
    deleted_versions: list[str]


def item_categories(items: DataFrame | None) -> dict[str, list[int]]:
    """category -> item ids, from the item file's `category` column, else every `|`-separated genre
    (lower case); names Redis keys cannot hold are left out."""
    if items is None:
        return {}
    names = F.coalesce(F.split(F.col("attributes")["category"], r"\|"), F.split(F.col("attributes")["genres"], r"\|"))
    rows = (items.select("item_id", F.explode(names).alias("category"))
            .select("item_id", F.lower(F.trim("category")).alias("category")).where("category != ''")
            .groupBy("category").agg(F.collect_list("item_id").alias("items")).collect())
    categories = {}
    for row in rows:
        try:
            categories[check_name(row.category, "category")] = row["items"]
        except ValueError:
            continue
    return categories


def run(spark: SparkSession, settings: Settings, ds: dt.date) -> PublishStageResult:
    recs = lake.read_table(spark, settings.table("gold/recommendations"), [ds])
    first = recs.select("model_version").where(is_personal(F.col("model_version"))).first()
    if first is None:
        raise PermanentError(f"gold/recommendations has no personal lists for {ds}: run score first")
    fallbacks = {r.segment: (r.item_ids, r.scores)
                 for r in lake.read_table(spark, settings.table("gold/fallbacks"), [ds]).collect()}
    if GLOBAL not in fallbacks:
        raise PermanentError(f"gold/fallbacks has no global list for {ds}: run score first")
    similar = None
    if lake.table_exists(settings.table("gold/similar_items")):
        similar = lake.read_table(spark, settings.table("gold/similar_items"), [ds])
    items = attributes(spark, settings, "items", ds)
    extras = publisher.Extras(fallbacks, item_categories(items), sorted(unavailable_items(items)))
    result = publisher.publish(recs, extras, url=settings.redis.url, prefix=settings.redis.prefix, ds=ds,
                               model_version=first.model_version, similar=similar, cluster=settings.redis.cluster)
    return PublishStageResult(result.version, result.previous, result.users, result.similar_items, len(fallbacks),
                              len(extras.categories), first.model_version, result.deleted_versions)


def main(argv=None) -> dict:
    return stage_main("publish", run, argv)


if __name__ == "__main__":
    main(sys.argv[1:])
