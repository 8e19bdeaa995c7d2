"""Validate: bronze -> silver/interactions, failing rows -> quarantine/interactions with reasons; then
the night's day against the days before it (nightrec.data.volume): a figure in the fail band stops the
night before training (silver keeps the day), one in the warn band raises an alert and goes on.

Exact repeats of an event (at-least-once delivery, a file delivered twice) are dropped and counted,
not quarantined: they don't count toward `validation.max_bad_fraction`."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, replace

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from nightrec.constants import SILVER_COLUMNS
from nightrec.data import lake, validation, volume
from nightrec.data.landing import ADDED_LATER, added_columns_last
from nightrec.data.tables import window
from nightrec.errors import PermanentError
from nightrec.pipeline import alerts, nights
from nightrec.pipeline.progress import Progress
from nightrec.pipeline.runtime import stage_main
from nightrec.settings import Settings


class ValidationFailed(PermanentError):
    pass


class VolumeCheckFailed(PermanentError):
    pass


@dataclass
class ValidateResult:
    rows: int
    good_rows: int
    quarantined_rows: int
    duplicates_dropped: int
    bad_fraction: float
    bad_rows_by_rule: dict[str, int]
    gx_unexpected: dict[str, int]
    data_docs: str | None
    volume: str = "unjudged"  # ok, warn, accepted (a fail under a silence), unjudged (short history) or off
    volume_findings: list[str] = field(default_factory=list)  # the figures outside the ok band


def run(spark: SparkSession, settings: Settings, ds: dt.date, lookback_days: int = 1) -> ValidateResult:
    days = window(ds, lookback_days)
    bronze = lake.read_table(spark, settings.table("bronze/interactions"), days)
    event_types = sorted(settings.events.weights)
    rule_list = validation.rules(event_types, settings.validation.clock_skew_seconds)
    checked = validation.with_reasons(validation.mark_repeats(validation.typed(bronze)), rule_list).cache()
    progress = Progress("validate", spark)
    try:
        result = _route(spark, settings, ds, days, checked, rule_list, progress)
    finally:
        checked.unpersist()
    if not settings.volume.enabled:
        return replace(result, volume="off")
    with progress.step("volume and mix against the days before"):
        findings = check_volume(spark, settings, ds, days)
    return replace(result, **act_on_volume(settings, ds, findings))


def check_volume(spark: SparkSession, settings: Settings, ds: dt.date,
                 revalidated: list[dt.date]) -> list[volume.Finding]:
    """Tonight's day against its history (ops/day_profiles): profiles the days tonight rewrote and
    history days not profiled yet (the first night after an upgrade), then judges the night's day."""
    v, silver, root = settings.volume, settings.table("silver/interactions"), settings.table(volume.PROFILES)
    wanted = [*volume.history_days(ds, v), ds]
    stored = volume.read_profiles(lake.small_table(root, dates=wanted)) if lake.table_exists(root) else {}
    held = set(lake.partitions(silver)) if lake.table_exists(silver) else set()
    todo = [d for d in wanted if d.isoformat() in held and (d in revalidated or d not in stored)]
    computed = {}
    if todo:
        first = todo[0] - dt.timedelta(days=v.history_days)
        rows = (lake.read_table(spark, silver).where(F.col("dt").between(F.lit(first), F.lit(ds)))
                .select("user_id", "item_id", "event_type", "dt"))
        computed = volume.day_profiles(rows, todo, v.history_days)
    if ds.isoformat() not in held:  # no events at all tonight: the emptiest day there is
        computed[ds] = {"events": 0.0, "users": 0.0, "items": 0.0}
    if computed:
        lake.replace_small(root, volume.profile_rows(computed), computed)
    profiles = {**stored, **computed}
    return volume.judge(profiles[ds], [profiles[d] for d in volume.history_days(ds, v) if d in profiles], v)


def act_on_volume(settings: Settings, ds: dt.date, findings: list[volume.Finding]) -> dict:
    """Stop the night on a fail band (unless a silence accepts the night), alert on a warn band; the
    result's volume fields."""
    if not findings:
        return {"volume": "unjudged"}
    notable = [f for f in findings if f.band != "ok"]
    band, said = volume.worst_band(findings), "; ".join(f.text() for f in notable)
    cause = f"volume:{ds}"
    accepted = band == "fail" and alerts.active_silence(settings, cause) is not None
    if band == "fail" and not accepted:
        raise VolumeCheckFailed(
            f"the day's volume or mix is far outside the {settings.volume.history_days} days before it: {said}. "
            f"Nothing was trained or published tonight; silver/interactions keeps the day.\n"
            f"  What to do: check the day's landing files and their producer (a lost or duplicated delivery, a bot, "
            f"a broken client). If the day is genuine (an outage, a sale), accept it and rerun the night: "
            f"`nightrec alerts silence {cause} --hours 24 --reason ...`, then `nightrec run --ds {ds}`.")
    if notable:
        alerts.raise_alert(settings, alerts.Alert(
            cause=cause, severity="warning", night=ds.isoformat(), stage="validate",
            summary=f"volume or mix unusual{' (accepted)' if accepted else ''}: {said}",
            command=f"`nightrec report --ds {ds}`; if unexpected, check the day's landing files and their producer",
            report=nights.report_uri(settings, ds)))
    return {"volume": "accepted" if accepted else band, "volume_findings": [f.text() for f in notable]}


def _route(spark, settings, ds, days, checked, rule_list, progress) -> ValidateResult:
    bad = F.size("reasons") > 0
    dropped = F.col("duplicate") & ~bad
    with progress.step("check every row", days=len(days)):
        # per day: rows that count (exact repeats don't) and bad rows among them
        per_day = {r["dt"]: (r["rows"], r["bad"]) for r in checked.groupBy("dt").agg(
            F.sum((~dropped).cast("int")).alias("rows"), F.sum(bad.cast("int")).alias("bad")).collect()}
        totals = checked.agg(F.sum(dropped.cast("int")).alias("duplicates"),
                             *[F.sum(F.array_contains("reasons", r.name).cast("int")).alias(r.name)
                               for r in rule_list]).first().asDict()
    duplicates = int(totals.pop("duplicates") or 0)
    by_rule = {name: int(count or 0) for name, count in totals.items()}
    docs_dir = f"{settings.path('data_docs')}/dt={ds.isoformat()}"
    with progress.step("great_expectations suite and Data Docs"):
        suite = validation.run_suite(checked.where(~dropped), unreadable_files(spark, settings, days), rule_list,
                                     docs_dir, f"interactions_{ds:%Y%m%d}")
    if not per_day:  # the day's files were all empty: a valid night with no new events
        return ValidateResult(0, 0, 0, duplicates, 0.0, by_rule, suite.unexpected, suite.data_docs)

    present = sorted(per_day)
    counted = sum(n for n, _ in per_day.values())
    n_bad = sum(b for _, b in per_day.values())
    quarantine = added_columns_last(checked.where(bad).select("raw.*", "reasons", "dt"))
    lake.replace_partitions(quarantine, settings.table("quarantine/interactions"), present, ADDED_LATER,
                            empty=not n_bad)
    threshold = settings.validation.max_bad_fraction
    failing_days = {day: (n, b) for day, (n, b) in per_day.items() if b / n > threshold}
    if failing_days:
        worst_files = (quarantine.where(F.col("dt").isin(list(failing_days))).groupBy("source_file").count()
                       .orderBy(F.desc("count"), "source_file").limit(5).collect())
        raise ValidationFailed(_failure_message(failing_days, threshold, rule_list, by_rule, suite,
                                                [(r["source_file"], r["count"]) for r in worst_files]))
    silver = checked.where(~bad & ~F.col("duplicate")).select(*SILVER_COLUMNS)
    with progress.step("write silver", days=len(present)):
        good = lake.replace_partitions(silver, settings.table("silver/interactions"), present, ADDED_LATER)
    return ValidateResult(counted + duplicates, good, n_bad, duplicates, round(n_bad / counted, 6), by_rule,
                          suite.unexpected, suite.data_docs)


def unreadable_files(spark: SparkSession, settings: Settings, days: list[dt.date]):
    """The landing files tonight's ingest set aside (quarantine/files), for the Data Docs page."""
    root = settings.table("quarantine/files")
    if not lake.table_exists(root):
        return spark.createDataFrame([], "path string, reason string")
    return lake.read_table(spark, root, days).select("path", "reason")


def _failure_message(failing_days, threshold, rule_list, by_rule, suite, worst_files) -> str:
    days = ", ".join(f"{day} ({bad} of {rows} rows, {bad / rows:.2%})"
                     for day, (rows, bad) in sorted(failing_days.items()))
    lines = [f"interactions failed validation: more than {threshold:.2%} of rows are bad on {days}; "
             f"silver left unchanged, bad rows are in quarantine/interactions"]
    for rule in rule_list:
        if by_rule[rule.name] or suite.unexpected.get(rule.name):
            lines.append(f"  - {rule.name} ({rule.message}): {by_rule[rule.name]} rows quarantined, "
                         f"great_expectations unexpected_count={suite.unexpected.get(rule.name, 0)}")
    lines.append("  most bad rows in: " + "; ".join(f"{path} ({count})" for path, count in worst_files))
    if suite.data_docs:
        lines.append(f"  Data Docs: {suite.data_docs}")
    lines.append("  What to do: correct these files (or have their producer resend them) and rerun the night; if such "
                 "rows are expected, raise validation.max_bad_fraction.")
    return "\n".join(lines)


def main(argv=None) -> dict:
    return stage_main("validate", run, argv, lookback=True)
