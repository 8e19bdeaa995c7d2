"""Validate: bronze -> silver/interactions, failing rows -> quarantine/interactions with reasons.

Exact repeats of an event (at-least-once delivery, a file delivered twice) are dropped and counted,
not quarantined: they don't count toward `validation.max_bad_fraction`."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from nightrec.constants import SILVER_COLUMNS
from nightrec.data import lake, validation
from nightrec.data.landing import ADDED_LATER, added_columns_last
from nightrec.data.tables import window
from nightrec.errors import PermanentError
from nightrec.pipeline.progress import Progress
from nightrec.pipeline.runtime import stage_main
from nightrec.settings import Settings


class ValidationFailed(PermanentError):
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


def run(spark: SparkSession, settings: Settings, ds: dt.date, lookback_days: int = 1) -> ValidateResult:
    days = window(ds, lookback_days)
    bronze = lake.read_table(spark, settings.table("bronze/interactions"), days)
    event_types = sorted(settings.events.weights)
    rule_list = validation.rules(event_types, settings.validation.clock_skew_seconds)
    checked = validation.with_reasons(validation.mark_repeats(validation.typed(bronze)), rule_list).cache()
    try:
        return _route(spark, settings, ds, days, checked, rule_list, Progress("validate", spark))
    finally:
        checked.unpersist()


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
