"""Publish: gold tables of ds -> a new Redis version (users, fallbacks, neighbours, item metadata),
verified, then made live by one atomic flip."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from functools import partial

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from nightrec.constants import GLOBAL_SEGMENT
from nightrec.data import lake
from nightrec.data.tables import attributes
from nightrec.errors import PermanentError
from nightrec.modeling import experiment_store
from nightrec.modeling.dataset import ItemFacts
from nightrec.modeling.fallbacks import is_personal
from nightrec.pipeline.runtime import stage_main
from nightrec.serving import loader
from nightrec.serving.client import connect
from nightrec.serving.experiments import Experiment
from nightrec.serving.layout import check_name
from nightrec.settings import Settings


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
    experiment: str | None = None  # the id (name@start) of the experiment the version serves
    variant_users: dict[str, int] = field(default_factory=dict)
    redis_used_memory: int | None = None  # bytes, after the load (INFO memory; a cluster's nodes summed)


@dataclass
class SparkValues:
    """A DataFrame of (id, value) rows as the loader's ValueSource: its tasks write their own rows."""

    frame: DataFrame

    def count(self) -> int:
        return self.frame.count()

    def write(self, write_batches) -> int:
        def written(batches):
            for n in write_batches(batches):
                yield pa.RecordBatch.from_pydict({"written": [n]})

        counts = self.frame.mapInArrow(written, "written long")
        return int(counts.agg(F.sum("written")).first()[0] or 0)

    def sample(self, n: int) -> list[tuple[int, bytes]]:
        return [(int(row[0]), bytes(row[1])) for row in self.frame.limit(n).collect()]


def load_values(frame: DataFrame, *, url: str, cluster: bool, prefix: str, version: str, kind: str) -> int:
    """Write every (id, value) row of frame under the version; returns how many keys were written."""
    return SparkValues(frame).write(partial(loader.write_values, url=url, cluster=cluster, prefix=prefix,
                                            version=version, kind=kind))


def publish_frames(recs: DataFrame, extras: loader.Extras, *, url: str, prefix: str, ds: dt.date, model_version: str,
                   similar: DataFrame | None = None, cluster: bool = False,
                   variants: loader.VariantLists | None = None) -> loader.PublishResult:
    """loader.publish of recs (user_id, value, ...) and similar (item_id, value, ...) from Spark."""
    return loader.publish(SparkValues(recs.select("user_id", "value")), extras, url=url, prefix=prefix, ds=ds,
                          model_version=model_version, cluster=cluster,
                          similar=None if similar is None else SparkValues(similar.select("item_id", "value")),
                          variants=variants)


def variant_lists(variants: DataFrame | None) -> loader.VariantLists | None:
    """The score stage's variant lists (user_id, value, variant, model_version, experiment) as the loader
    takes them (None: none tonight)."""
    first = variants.select("experiment").first() if variants is not None else None
    if first is None:
        return None
    pairs = variants.select("variant", "model_version").distinct().collect()
    models = {row.variant: row.model_version for row in pairs}
    return loader.VariantLists(Experiment.from_json(first.experiment).id, {
        name: (SparkValues(variants.where(F.col("variant") == name).select("user_id", "value")), model)
        for name, model in sorted(models.items())})


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
    if GLOBAL_SEGMENT not in fallbacks:
        raise PermanentError(f"gold/fallbacks has no global list for {ds}: run score first")
    similar = variants = None
    if lake.holds(settings.table("gold/similar_items"), ds):
        similar = lake.read_table(spark, settings.table("gold/similar_items"), [ds])
    if lake.holds(settings.table("gold/variant_recommendations"), ds):
        variants = lake.read_table(spark, settings.table("gold/variant_recommendations"), [ds])
    items = attributes(spark, settings, "items", ds)
    extras = loader.Extras(fallbacks, item_categories(items), sorted(ItemFacts.read(items).unavailable_ids()))
    lists = experiment_lists(settings, variants)
    result = publish_frames(recs, extras, url=settings.redis.url, prefix=settings.redis.prefix, ds=ds,
                            model_version=first.model_version, similar=similar, cluster=settings.redis.cluster,
                            variants=lists)
    return PublishStageResult(result.version, result.previous, result.users, result.similar_items, len(fallbacks),
                              len(extras.categories), first.model_version, result.deleted_versions,
                              lists.experiment_id if lists else None, result.variant_users,
                              redis_used_memory(settings))


def redis_used_memory(settings: Settings) -> int | None:
    client = connect(settings.redis.url, settings.redis.cluster)
    try:
        if settings.redis.cluster:  # every primary's section, by node
            return sum(int(node["used_memory"]) for node in client.info("memory", target_nodes="primaries").values())
        return int(client.info("memory")["used_memory"])
    finally:
        client.close()


def experiment_lists(settings: Settings, variants: DataFrame | None) -> loader.VariantLists | None:
    """The experiment this version serves: the one the score stage wrote variant lists for, or a running
    one whose every variant serves the champion's lists (it needs none). An experiment started after
    tonight's score serves from the next version: its treatment's lists do not exist yet."""
    lists = variant_lists(variants)
    if lists is None:
        running = experiment_store.running(settings)
        if running is not None and not running.experiment.keyed:
            return loader.VariantLists(running.experiment.id, {})
    return lists


def main(argv=None) -> dict:
    return stage_main("publish", run, argv)
