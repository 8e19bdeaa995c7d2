"""Online metrics from what users did with what they were shown: impressions (silver/impressions)
joined to the events attributed to them by request id (silver/interactions), per user, then per
group (a variant, or a night of production traffic) as sums, so that nothing per user reaches the
driver. The statistics are nightrec.modeling.experiment_stats'.

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


def per_user(impressions: DataFrame, events: DataFrame, group: Column, *, k: int, click_events: list[str],
             conversion_event: str) -> DataFrame:
    """(group, user_id, shown, clicked, converted, events) from impressions (request_id, user_id, items,
    explored, ...) and events (request_id, user_id, item_id, event_type, position)."""
    shown = impressions.select(group.alias("group"), "request_id", "user_id", "items", "explored")
    attributed = (events.where(F.col("request_id").isNotNull())
                  .select("request_id", F.col("user_id").alias("event_user"), "item_id", "event_type", "position")
                  .join(shown, "request_id")
                  .where(F.col("event_user") == F.col("user_id")))  # an id sent with another user's event: ignored
    rank = F.coalesce(F.col("position"), F.array_position("items", F.col("item_id")).cast("int"))
    click = (F.col("event_type").isin(click_events) & rank.between(1, k)
             & ~F.array_contains("explored", rank))
    per_request = attributed.groupBy("request_id").agg(
        F.max(click.cast("int")).alias("clicked"), F.max((F.col("event_type") == conversion_event).cast("int"))
        .alias("converted"), F.count("*").alias("events"))
    return (shown.join(per_request, "request_id", "left").fillna(0, ["clicked", "converted", "events"])
            .groupBy("group", "user_id").agg(F.count("*").alias("shown"), F.sum("clicked").alias("clicked"),
                                             F.max("converted").alias("converted"), F.sum("events").alias("events")))


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
