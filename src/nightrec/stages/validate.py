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
    totals = checked.agg(
        F.count("*").alias("rows"),
        F.sum(F.when(F.size("reasons") > 0, 1).otherwise(0)).alias("bad"),
        *[F.sum(F.array_contains("reasons", r.name).cast("int")).alias(r.name) for r in rule_list],
    ).first()
    if not totals["rows"]:
        raise ValidationFailed(f"bronze/interactions has no rows for {days[0]}..{days[-1]}: run ingest first")
    present = [r["dt"] for r in checked.select("dt").distinct().collect()]
    by_rule = {r.name: int(totals[r.name] or 0) for r in rule_list}
    docs_dir = f"{settings.path('data_docs')}/dt={ds.isoformat()}"
    suite = validation.run_suite(checked, event_types, docs_dir, f"interactions_{ds:%Y%m%d}")

    quarantine = checked.where(F.size("reasons") > 0).select("raw.*", "reasons", "dt")
    lake.replace_partitions(quarantine, settings.table("quarantine/interactions"), present)
    rows, bad = int(totals["rows"]), int(totals["bad"] or 0)
    fraction = bad / rows
    if fraction > settings.validation.max_bad_fraction or suite.failed_table_checks:
        raise ValidationFailed(_failure_message(ds, rows, bad, settings.validation.max_bad_fraction,
                                                rule_list, by_rule, suite))
    silver = checked.where(F.size("reasons") == 0).select(*validation.SILVER_COLUMNS)
    good = lake.replace_partitions(silver, settings.table("silver/interactions"), present)
    checked.unpersist()
    return ValidateResult(rows, good, bad, round(fraction, 6), by_rule, suite.unexpected, suite.data_docs)


def _failure_message(ds, rows, bad, threshold, rule_list, by_rule, suite) -> str:
    lines = [f"interactions for {ds} failed validation: {bad} of {rows} rows ({bad / rows:.2%}) are bad, "
             f"threshold {threshold:.2%}; silver left unchanged, bad rows are in quarantine/interactions"]
    for rule in rule_list:
        if by_rule[rule.name] or suite.unexpected.get(rule.name):
            lines.append(f"  - {rule.name} ({rule.message}): {by_rule[rule.name]} rows quarantined, "
                         f"great_expectations unexpected_count={suite.unexpected.get(rule.name, 0)}")
    for check in suite.failed_table_checks:
        lines.append(f"  - table check failed: {check}")
    if suite.data_docs:
        lines.append(f"  Data Docs: {suite.data_docs}")
    return "\n".join(lines)


def main(argv=None) -> dict:
    return stage_main("validate", run, argv, lookback=True)


if __name__ == "__main__":
    main(sys.argv[1:])
