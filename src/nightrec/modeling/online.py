"""Online metrics from what users did with what they were shown: impressions (silver/impressions)
joined to the events attributed to them by request id (silver/interactions), summed once per user
and impression day (silver/user_outcomes: what a night adds, computed once, not every night again),
then per user over the nights a question spans, then per group (a variant, or production traffic
tonight vs before) as sums, so that nothing per user reaches the driver. The statistics are
nightrec.modeling.experiment_stats'.

- CTR@k: impressions with at least one click-type event on an item shown at rank <= k (explored
  positions, the bandit's, left out) / impressions; clustered by user (delta method).
- conversion: users with an attributed conversion event / users shown anything.
- events per user: attributed events / users.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from nightrec.modeling.experiment_stats import Estimate, Sums, mean_of_sums, proportion, ratio_of_sums


@dataclass(frozen=True)
class GroupMetrics:
    users: int
    impressions: int
    clicked: int
    ctr: Estimate
    conversion: Estimate
    events_per_user: Estimate
    ctr_sums: Sums

    def as_dict(self, prefix: str, k: int) -> dict[str, float]:
        return {f"{prefix}_users": self.users, f"{prefix}_impressions": self.impressions,
                f"{prefix}_clicked": self.clicked, **self.ctr.as_dict(f"{prefix}_ctr_at_{k}"),
                **self.conversion.as_dict(f"{prefix}_conversion"),
                **self.events_per_user.as_dict(f"{prefix}_events_per_user")}


def user_outcomes(impressions: DataFrame, events: DataFrame, *, k: int, click_events: list[str],
                  conversion_event: str) -> DataFrame:
    """(dt, experiment, variant, personalized, user_id, shown, clicked, converted, events) per impression
    day, from impressions (request_id, user_id, items, explored, ...) and events (request_id, user_id,
    item_id, event_type, position)."""
    attributed = _attributed(impressions, events)
    # the rank the answer gave the item: a position that names another item (or none) is not trusted
    given = F.col("position").between(1, F.size("items"))
    rank = F.when(given & (F.element_at("items", F.when(given, F.col("position"))) == F.col("item_id")),
                  F.col("position")).otherwise(F.array_position("items", F.col("item_id")).cast("int"))
    click = (F.col("event_type").isin(click_events) & rank.between(1, k)
             & ~F.array_contains("explored", rank))
    per_request = attributed.groupBy("request_id").agg(
        F.max(click.cast("int")).alias("clicked"), F.max((F.col("event_type") == conversion_event).cast("int"))
        .alias("converted"), F.count("*").alias("events"))
    return (impressions.select("dt", "experiment", "variant", (F.col("source") == "personalized").alias("personalized"),
                               "request_id", "user_id")
            .join(per_request, "request_id", "left").fillna(0, ["clicked", "converted", "events"])
            .groupBy("dt", "experiment", "variant", "personalized", "user_id")
            .agg(F.count("*").alias("shown"), F.sum("clicked").cast("int").alias("clicked"),
                 F.max("converted").cast("int").alias("converted"), F.sum("events").cast("int").alias("events")))


def item_outcomes(impressions: DataFrame, events: DataFrame, click_events: list[str]) -> DataFrame:
    """(dt, item_id, impressions, clicks) per impression day: how often each item was shown, and in how
    many of those answers it was clicked (what bandit exploration samples from)."""
    shown = impressions.select("dt", F.explode("items").alias("item_id")).groupBy("dt", "item_id").agg(
        F.count("*").alias("impressions"))
    clicks = (_attributed(impressions, events)
              .where(F.col("event_type").isin(click_events) & F.array_contains("items", F.col("item_id")))
              .groupBy("dt", "item_id").agg(F.countDistinct("request_id").alias("clicks")))
    return (shown.join(clicks, ["dt", "item_id"], "left").fillna(0, ["clicks"])
            .select("dt", "item_id", F.col("impressions").cast("int"), F.col("clicks").cast("int")))


def _attributed(impressions: DataFrame, events: DataFrame) -> DataFrame:
    """Events joined to the impression their request id names (with its dt, items, explored); an id
    sent with another user's event is ignored."""
    shown = impressions.select("dt", "request_id", "user_id", "items", "explored")
    return (events.where(F.col("request_id").isNotNull())
            .select("request_id", F.col("user_id").alias("event_user"), "item_id", "event_type", "position")
            .join(shown, "request_id").where(F.col("event_user") == F.col("user_id")))


def per_user(outcomes: DataFrame, group: Column) -> DataFrame:
    """user_outcomes rows (of the nights wanted) -> (group, user_id, shown, clicked, converted, events)."""
    return outcomes.groupBy(group.alias("group"), "user_id").agg(
        F.sum("shown").alias("shown"), F.sum("clicked").alias("clicked"), F.max("converted").alias("converted"),
        F.sum("events").alias("events"))


def group_metrics(users: DataFrame, alpha: float = 0.05) -> dict[str, GroupMetrics]:
    """per_user rows -> metrics per group (a handful of rows collected)."""
    x, y, e = F.col("clicked").cast("double"), F.col("shown").cast("double"), F.col("events").cast("double")
    rows = users.groupBy("group").agg(
        F.count("*").alias("n"), F.sum(x).alias("x"), F.sum(y).alias("y"), F.sum(x * x).alias("xx"),
        F.sum(y * y).alias("yy"), F.sum(x * y).alias("xy"), F.sum("converted").alias("converted"),
        F.sum(e).alias("e"), F.sum(e * e).alias("ee")).collect()
    metrics = {}
    for row in rows:
        sums = Sums(int(row.n), row.x, row.y, row.xx, row.yy, row.xy)
        metrics[row.group] = GroupMetrics(int(row.n), int(row.y), int(row.x), ratio_of_sums(sums, alpha),
                                          proportion(int(row.converted), int(row.n), alpha),
                                          mean_of_sums(int(row.n), row.e, row.ee, alpha), sums)
    return metrics
