"""Interaction checks: one great_expectations suite for the record and Data Docs, and the same
rules as Spark conditions that route each failing row to quarantine with its reasons."""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from typing import Callable

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from nightrec.constants import EVENT_KEY, MAX_ID, MAX_POSITION, REQUEST_ID, SILVER_COLUMNS
from nightrec.data import storage

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

TYPED_COLUMNS = (*SILVER_COLUMNS, "seconds_into_day", "seconds_after_delivery")  # what the suite sees


@dataclass(frozen=True)
class Rule:
    name: str
    message: str
    is_bad: Callable[[], Column]          # row-level condition, true when the row breaks the rule
    expectation: Callable[[], object]     # the matching great_expectations expectation


def typed(bronze: DataFrame) -> DataFrame:
    """Raw landing text -> typed columns; what cannot be parsed becomes null (and fails a rule).

    `seconds_after_delivery` is how far an event's time lies after its file reached us (rows of
    tables written before delivery times were kept: after their ingest): a time the client claims,
    checked against one we saw."""
    def positive_id(column: str) -> Column:
        value = F.expr(f"try_cast(trim({column}) AS BIGINT)")
        return F.when((value >= 1) & (value <= MAX_ID), value.cast("int"))

    raw_value = F.trim(F.col("value"))
    number = F.expr("try_cast(trim(value) AS DOUBLE)")
    raw_request = F.trim(F.col("request_id"))
    raw_position = F.trim(F.col("position"))
    position = F.coalesce(F.expr("try_cast(trim(position) AS INT)"), F.lit(-1))
    arrived = [F.col(c) for c in ("delivered_at", "ingested_at") if c in bronze.columns] or [F.lit(None)]
    raw_ts = F.trim(F.col("ts"))
    ts = F.when(raw_ts.rlike(r"^\d{9,11}$"), F.timestamp_seconds(raw_ts.cast("bigint"))).otherwise(
        F.expr("try_cast(trim(ts) AS TIMESTAMP)"))
    return bronze.select(
        positive_id("user_id").alias("user_id"),
        positive_id("item_id").alias("item_id"),
        F.coalesce(F.lower(F.trim(F.col("event_type"))), F.lit("")).alias("event_type"),
        F.when(raw_value.isNull() | (raw_value == ""), F.lit(1.0))
        .when(~F.isnan(number) & (number >= 0) & (number < float("inf")), number).alias("value"),
        ts.alias("ts"),
        "dt",
        F.when(raw_request != "", F.lower(raw_request)).alias("request_id"),
        # present but not a whole number, or without the request it refers to: -1, which the rule (and
        # great_expectations) sees
        F.when(raw_position != "", F.when(raw_request != "", position).otherwise(-1)).alias("position"),
        (F.unix_timestamp(ts) - F.unix_timestamp(F.col("dt").cast("timestamp"))).alias("seconds_into_day"),
        (F.unix_timestamp(ts) - F.unix_timestamp(F.coalesce(*arrived))).alias("seconds_after_delivery"),
        F.struct(*[F.col(c) for c in ("user_id", "item_id", "event_type", "value", "ts", "request_id", "position",
                                      "source_file")]).alias("raw"),
    )


def mark_repeats(typed_rows: DataFrame) -> DataFrame:
    """Adds `kept_value` (the value of the copy an event keeps) and `duplicate` (an exact repeat of
    that copy: same user, item, event type, time and value, as at-least-once delivery produces;
    dropped and counted, never quarantined). The kept copy is the first with a usable value, by file
    and raw text: the same choice on every run."""
    event = Window.partitionBy(*EVENT_KEY).orderBy(F.col("value").isNull(), F.col("raw.source_file"),
                                                   F.col("raw.value"))
    complete = F.col("user_id").isNotNull() & F.col("item_id").isNotNull() & F.col("ts").isNotNull()
    return (typed_rows.withColumn("kept_value", F.first("value").over(event))
            .withColumn("duplicate", complete & F.col("value").isNotNull()
                        & (F.col("value") == F.col("kept_value")) & (F.row_number().over(event) > 1)))


def rules(event_types: list[str], clock_skew_seconds: float) -> list[Rule]:
    """Every row rule; an event may be dated at most `clock_skew_seconds` after its file reached us."""
    import great_expectations.expectations as gxe

    skew = int(clock_skew_seconds)

    return [
        Rule("user_id_valid", "user_id missing or not an integer in 1..2^31-1",
             lambda: F.col("user_id").isNull(), lambda: gxe.ExpectColumnValuesToNotBeNull(column="user_id")),
        Rule("item_id_valid", "item_id missing or not an integer in 1..2^31-1",
             lambda: F.col("item_id").isNull(), lambda: gxe.ExpectColumnValuesToNotBeNull(column="item_id")),
        Rule("event_type_known", f"event_type not one of {event_types}",
             lambda: ~F.col("event_type").isin(event_types),
             lambda: gxe.ExpectColumnValuesToBeInSet(column="event_type", value_set=event_types)),
        Rule("value_valid", "value is not a non-negative number",
             lambda: F.col("value").isNull(), lambda: gxe.ExpectColumnValuesToNotBeNull(column="value")),
        Rule("ts_valid", "ts missing or not an ISO-8601 timestamp / epoch seconds",
             lambda: F.col("ts").isNull(), lambda: gxe.ExpectColumnValuesToNotBeNull(column="ts")),
        Rule("ts_inside_day", "ts outside the landing day dt (UTC)",
             lambda: F.col("seconds_into_day").isNotNull() & ~F.col("seconds_into_day").between(0, 86399),
             lambda: gxe.ExpectColumnValuesToBeBetween(column="seconds_into_day", min_value=0, max_value=86399)),
        Rule("ts_not_future", f"ts more than {skew} s (validation.clock_skew_seconds) after its file was delivered",
             lambda: F.col("seconds_after_delivery") > skew,
             lambda: gxe.ExpectColumnValuesToBeBetween(column="seconds_after_delivery", max_value=skew)),
        Rule("request_id_valid", "request_id is not 1-32 hexadecimal digits (the lookup answer's request_id)",
             lambda: F.col("request_id").isNotNull() & ~F.col("request_id").rlike(REQUEST_ID),
             lambda: gxe.ExpectColumnValuesToMatchRegex(column="request_id", regex=REQUEST_ID)),
        Rule("position_valid", f"position is not a whole number in 1..{MAX_POSITION}, or comes without a request_id",
             lambda: F.col("position").isNotNull() & ~F.col("position").between(1, MAX_POSITION),
             lambda: gxe.ExpectColumnValuesToBeBetween(column="position", min_value=1, max_value=MAX_POSITION)),
        Rule("no_conflicting_copy", "the same user_id, item_id, event_type and ts as another row, with another value",
             lambda: F.col("user_id").isNotNull() & F.col("item_id").isNotNull() & F.col("ts").isNotNull()
             & F.col("value").isNotNull() & (F.col("value") != F.col("kept_value")),
             lambda: gxe.ExpectCompoundColumnsToBeUnique(column_list=list(EVENT_KEY),
                                                           ignore_row_if="any_value_is_missing")),
    ]


def with_reasons(typed_rows: DataFrame, rule_list: list[Rule]) -> DataFrame:
    reasons = F.filter(
        F.array(*[F.when(rule.is_bad(), F.lit(rule.name)) for rule in rule_list]), lambda r: r.isNotNull())
    return typed_rows.withColumn("reasons", reasons)


@dataclass
class SuiteResult:
    unexpected: dict[str, int]      # rule -> unexpected row count reported by GX
    data_docs: str | None


@dataclass
class Check:
    """One great_expectations suite: its expectations, each under the name of the rule it mirrors
    (None: reported in Data Docs only), and the rows it runs on."""

    name: str
    expectations: list[tuple[str | None, object]]
    frame: DataFrame


def run_suite(typed_rows: DataFrame, unreadable_files: DataFrame, rule_list: list[Rule], docs_dir: str,
              run_name: str) -> SuiteResult:
    """Run the great_expectations suites on the typed rows and on the landing files the ingest could
    not read (quarantine/files: `path`, `reason`), and build Data Docs into docs_dir: the page lists
    those files with their reasons."""
    import great_expectations.expectations as gxe

    return run_checks([
        Check("interactions", [(rule.name, rule.expectation()) for rule in rule_list],
              typed_rows.select(*TYPED_COLUMNS)),
        Check("landing_files", [(None, gxe.ExpectColumnValuesToBeNull(column="unreadable"))],
              unreadable_files.select(F.concat_ws(": ", "path", "reason").alias("unreadable"))),
    ], docs_dir, run_name)


def run_checks(checks: list[Check], docs_dir: str, run_name: str) -> SuiteResult:
    """Each check's suite on its rows, Data Docs into docs_dir; unexpected counts by rule name."""
    import great_expectations as gx

    for noisy in ("great_expectations", "py4j"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    # Data Docs are built on this machine's disk, then copied to the store when that is elsewhere (S3).
    remote = storage.is_s3(docs_dir)
    folder = storage.scratch_folder("nightrec-docs-") if remote else storage.local_path(docs_dir)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False}
    site = "nightrec_docs"
    context.add_data_docs_site(site_name=site, site_config={
        "class_name": "SiteBuilder",
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(folder)},
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
    })
    source = context.data_sources.add_spark(name="nightrec")
    names, unexpected = {}, {}
    for check in checks:
        suite = context.suites.add(gx.ExpectationSuite(name=check.name))
        for rule_name, expectation in check.expectations:
            added = suite.add_expectation(expectation)
            if rule_name is not None:
                names[added.id] = rule_name
        batch = source.add_dataframe_asset(name=check.name).add_batch_definition_whole_dataframe("day")
        validation = context.validation_definitions.add(gx.ValidationDefinition(name=check.name, data=batch,
                                                                                suite=suite))
        checkpoint = context.checkpoints.add(gx.Checkpoint(
            name=f"{run_name}_{check.name}", validation_definitions=[validation],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="docs", site_names=[site])],
            result_format={"result_format": "SUMMARY"}))
        result = checkpoint.run(batch_parameters={"dataframe": check.frame})
        unexpected.update({names[item.expectation_config.id]: int(item.result.get("unexpected_count") or 0)
                           for run_result in result.run_results.values() for item in run_result.results
                           if item.expectation_config.id in names})
    built = (folder / "index.html").exists()
    if remote:
        storage.upload_folder(folder, docs_dir)
        shutil.rmtree(folder, ignore_errors=True)
    return SuiteResult(unexpected, storage.join(docs_dir, "index.html") if built else None)
