"""A day's volume and mix against the days before it: the checks that see what row rules cannot
(a day with a tenth of the usual traffic, an event type flooding in, one client sending everything).

A day's profile: events in all and per event type, distinct users and items, the share of the day's
events from users and from items not seen in the `volume.history_days` before it, and the busiest
user's and item's share of the day. Each figure is judged by a robust z-score against the same figure
on the trailing complete days: (value - median) / scale, with scale = 1.4826 x MAD (the standard
deviation of normal data), floored so that ordinary swings are no news: for counts, `count_floor` of
the median (a weekly cycle) and its square root (Poisson noise of small counts); for shares,
`share_floor`. Profiles live in `ops/day_profiles` (no user or item ids: figures only), computed once
per day; a day revalidated later is profiled again.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from nightrec.settings import VolumeSettings

PROFILES = "ops/day_profiles"
PROFILE_SCHEMA = pa.schema([("dt", pa.string()), ("metric", pa.string()), ("value", pa.float64())])
SHARES = ("new_user_share", "new_item_share", "top_user_share", "top_item_share")
BANDS = ("ok", "warn", "fail")


@dataclass(frozen=True)
class Finding:
    """One figure of a day against its history."""

    metric: str
    value: float
    median: float
    scale: float
    z: float
    band: str  # ok, warn or fail

    def text(self) -> str:
        if self.metric in SHARES:
            said = f"{self.value:.1%} of the day's events (usually {self.median:.1%})"
        else:
            change = f", {self.value / self.median - 1:+.0%}" if self.median else ""
            said = f"{self.value:,.0f} (usually {self.median:,.0f}{change})"
        return f"{self.metric} {said}, z={self.z:+.1f}"


def day_profiles(rows: DataFrame, days: list[dt.date], history_days: int) -> dict[dt.date, dict[str, float]]:
    """The figures of each of `days` from rows (user_id, item_id, event_type, dt) that also cover the
    `history_days` before the first of them (who counts as already seen). Three aggregations whatever
    the number of days; one row per day and figure reaches the driver."""
    wanted = F.col("dt").isin(days)
    profiles: dict[dt.date, dict[str, float]] = {day: {} for day in days}
    for r in rows.where(wanted).groupBy("dt", "event_type").count().collect():
        profiles[r["dt"]][f"events:{r['event_type']}"] = float(r["count"])
    for profile in profiles.values():
        profile["events"] = float(sum(profile.values()))
    for key, noun in (("user_id", "user"), ("item_id", "item")):
        # new on a day: not active in the history_days before it (its previous active day is older, or none)
        previous = F.lag("dt").over(Window.partitionBy(key).orderBy("dt"))
        per_day = (rows.groupBy(key, "dt").count()
                   .withColumn("new", previous.isNull() | (F.datediff("dt", previous) > history_days))
                   .where(wanted).groupBy("dt")
                   .agg(F.count("*").alias("distinct"), F.max("count").alias("top"),
                        F.sum(F.when(F.col("new"), F.col("count"))).alias("new")))
        for r in per_day.collect():
            profile = profiles[r["dt"]]
            total = profile["events"] or 1.0
            profile[f"{noun}s"] = float(r["distinct"])
            profile[f"top_{noun}_share"] = float(r["top"] or 0) / total
            profile[f"new_{noun}_share"] = float(r["new"] or 0) / total
    return profiles


def judge(today: dict[str, float], history: Iterable[dict[str, float]], v: VolumeSettings) -> list[Finding]:
    """Each figure of today against the same figure on the days of `history` (a figure a day lacks, an
    event type it did not see, counts 0); nothing when history is shorter than min_history_days."""
    history = list(history)
    if len(history) < v.min_history_days:
        return []
    findings = []
    for metric in sorted(set(today).union(*history)):
        past = np.array([day.get(metric, 0.0) for day in history])
        value, median = today.get(metric, 0.0), float(np.median(past))
        spread = 1.4826 * float(np.median(np.abs(past - median)))
        floor = v.share_floor if metric in SHARES else max(v.count_floor * median, math.sqrt(median), 1.0)
        scale = max(spread, floor)
        z = (value - median) / scale
        band = "fail" if abs(z) >= v.fail_z else "warn" if abs(z) >= v.warn_z else "ok"
        findings.append(Finding(metric, value, median, scale, z, band))
    return findings


def worst_band(findings: Iterable[Finding]) -> str:
    return max((f.band for f in findings), key=BANDS.index, default="ok")


def history_days(day: dt.date, v: VolumeSettings) -> list[dt.date]:
    """The complete days a day is compared with, oldest first."""
    return [day - dt.timedelta(days=n) for n in range(v.history_days, 0, -1)]


def profile_rows(profiles: dict[dt.date, dict[str, float]]) -> pa.Table:
    return pa.Table.from_pylist([{"dt": day.isoformat(), "metric": metric, "value": value}
                                 for day, profile in sorted(profiles.items()) for metric, value in profile.items()],
                                schema=PROFILE_SCHEMA)


def read_profiles(rows: pa.Table) -> dict[dt.date, dict[str, float]]:
    profiles: dict[dt.date, dict[str, float]] = {}
    for row in rows.to_pylist():
        profiles.setdefault(dt.date.fromisoformat(row["dt"]), {})[row["metric"]] = row["value"]
    return profiles
