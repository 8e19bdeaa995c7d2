"""Validate: bronze -> silver/interactions, failing rows -> quarantine/interactions with reasons."""

from __future__ import annotations

import datetime as dt
import sys
from dataclasses import dataclass

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from nightrec import lake, validation
from nightrec.errors import PermanentError
from nightrec.settings import Settings
from nightrec.stages import stage_main, window


class ValidationFailed(PermanentError):
    pass


@dataclass
class ValidateResult:
    rows: int
    good_rows: int
    quarantined_rows: int
    bad_fraction: float
    bad_rows_by_rule: dict[str, int]
    gx_unexpected: dict[str, int]
    data_docs: str | None


def run(spark: SparkSession, settings: Settings, ds: dt.date, lookback_days: int = 1) -> ValidateResult:
    days = window(ds, lookback_days)
    bronze = lake.read_table(spark, settings.table("bronze/interactions"), days)
    event_types = sorted(settings.events.weights)
    rule_list = validation.rules(event_types)
    checked = validation.with_reasons(validation.typed(bronze), rule_list).cache()
    try:
        return _route(settings, ds, checked, event_types, rule_list)
    finally:
        checked.unpersist()


def _route(settings, ds, checked, event_types, rule_list) -> ValidateResult:
    is_bad = (F.size("reasons") > 0).cast("int")
    per_day = {r["dt"]: (r["rows"], r["bad"]) for r in
               checked.groupBy("dt").agg(F.count("*").alias("rows"), F.sum(is_bad).alias("bad")).collect()}
    if not per_day:
        raise ValidationFailed(f"bronze/interactions has no rows for the days ending {ds}: run ingest first")
    by_rule = checked.agg(*[F.sum(F.array_contains("reasons", r.name).cast("int")).alias(r.name)
                            for r in rule_list]).first().asDict()
    docs_dir = f"{settings.path('data_docs')}/dt={ds.isoformat()}"
    suite = validation.run_suite(checked, event_types, docs_dir, f"interactions_{ds:%Y%m%d}")

    present = sorted(per_day)
    quarantine = checked.where(F.size("reasons") > 0).select("raw.*", "reasons", "dt")
    lake.replace_partitions(quarantine, settings.table("quarantine/interactions"), present)
    rows = sum(n for n, _ in per_day.values())
    bad = sum(b for _, b in per_day.values())
    threshold = settings.validation.max_bad_fraction
    failing_days = {day: (n, b) for day, (n, b) in per_day.items() if b / n > threshold}
    if failing_days:
        raise ValidationFailed(_failure_message(failing_days, threshold, rule_list, by_rule, suite))
    silver = checked.where(F.size("reasons") == 0).select(*validation.SILVER_COLUMNS)
    good = lake.replace_partitions(silver, settings.table("silver/interactions"), present)
    return ValidateResult(rows, good, bad, round(bad / rows, 6), by_rule, suite.unexpected, suite.data_docs)


def _failure_message(failing_days, threshold, rule_list, by_rule, suite) -> str:
    days = ", ".join(f"{day} ({bad} of {rows} rows, {bad / rows:.2%})" for day, (rows, bad) in sorted(failing_days.items()))
    lines = [f"interactions failed validation: more than {threshold:.2%} of rows are bad on {days}; "
             f"silver left unchanged, bad rows are in quarantine/interactions"]
    for rule in rule_list:
        if by_rule[rule.name] or suite.unexpected.get(rule.name):
            lines.append(f"  - {rule.name} ({rule.message}): {by_rule[rule.name]} rows quarantined, "
                         f"great_expectations unexpected_count={suite.unexpected.get(rule.name, 0)}")
    if suite.data_docs:
        lines.append(f"  Data Docs: {suite.data_docs}")
    return "\n".join(lines)


def main(argv=None) -> dict:
    return stage_main("validate", run, argv, lookback=True)


if __name__ == "__main__":
    main(sys.argv[1:])
