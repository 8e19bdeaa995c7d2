"""Impressions: the answers the lookup service gave (landing/impressions/dt=<day>/*.jsonl, written
by the nightly drain) -> typed rows checked by rules, each mirrored by a great_expectations
expectation as the interactions' are -> silver/impressions; rows that break a rule ->
quarantine/impressions with their reasons. A request id seen twice (a drain repeated) is kept once.
"""

from __future__ import annotations

import datetime as dt

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from nightrec.constants import MAX_ID, REQUEST_ID
from nightrec.data import storage
from nightrec.data.landing import day_folder
from nightrec.data.validation import Rule

FIELDS = ("request_id", "user_id", "experiment", "variant", "version", "model_version", "source", "items",
          "explored", "ts")
LANDING_SCHEMA = ("request_id string, user_id long, experiment string, variant string, version string, "
                  "model_version string, source string, items array<long>, explored array<long>, ts string, "
                  "corrupt string")
SILVER_COLUMNS = (*FIELDS, "dt")
SUITE_COLUMNS = ("corrupt", "request_id", "user_id", "items", "experiment_given", "variant_given", "ts",
                 "seconds_into_day")


def landing_files(landing: str, days: list[dt.date]) -> list[str]:
    """The drained impression files of these days (names starting with . or _ are not data)."""
    return sorted(e.uri for day in days for e in storage.listdir(day_folder(landing, day, "impressions"))
                  if not e.is_dir and e.name.endswith(".jsonl") and not e.name.startswith((".", "_")))


def read(spark: SparkSession, paths: list[str]) -> DataFrame:
    """Landing lines -> typed rows, `dt` from their folder, `raw` (the line as read); a value that
    cannot be read becomes null (or "" for request_id) and breaks a rule."""
    frame = (spark.read.schema(LANDING_SCHEMA).option("mode", "PERMISSIVE")
             .option("columnNameOfCorruptRecord", "corrupt").json(paths))
    ts = F.expr("try_cast(ts AS TIMESTAMP)")
    day = F.to_date(F.regexp_extract(F.input_file_name(), r"/dt=(\d{4}-\d{2}-\d{2})/", 1))
    ids = F.col("items")
    return frame.select(
        F.coalesce(F.lower(F.trim("request_id")), F.lit("")).alias("request_id"),
        F.when(F.col("user_id").between(1, MAX_ID), F.col("user_id").cast("int")).alias("user_id"),
        "experiment", "variant", "version", "model_version", "source",
        F.when((F.size(ids) > 0) & F.forall(ids, lambda i: i.between(1, MAX_ID)),
               F.transform(ids, lambda i: i.cast("int"))).alias("items"),
        F.coalesce(F.transform("explored", lambda p: p.cast("int")), F.array().cast("array<int>")).alias("explored"),
        ts.alias("ts"), day.alias("dt"),
        (F.unix_timestamp(ts) - F.unix_timestamp(day.cast("timestamp"))).alias("seconds_into_day"),
        "corrupt", F.coalesce("corrupt", F.to_json(F.struct(*FIELDS))).alias("raw"))


def rules() -> list[Rule]:
    import great_expectations.expectations as gxe

    return [
        Rule("line_readable", "not a JSON object of impression fields with their types",
             lambda: F.col("corrupt").isNotNull(), lambda: gxe.ExpectColumnValuesToBeNull(column="corrupt")),
        Rule("request_id_valid", "request_id missing or not 1-32 hexadecimal digits",
             lambda: ~F.col("request_id").rlike(REQUEST_ID),
             lambda: gxe.ExpectColumnValuesToMatchRegex(column="request_id", regex=REQUEST_ID)),
        Rule("user_id_valid", "user_id missing or not an integer in 1..2^31-1",
             lambda: F.col("user_id").isNull(), lambda: gxe.ExpectColumnValuesToNotBeNull(column="user_id")),
        Rule("items_valid", "items missing, empty, or not item ids in 1..2^31-1",
             lambda: F.col("items").isNull(), lambda: gxe.ExpectColumnValuesToNotBeNull(column="items")),
        Rule("variant_with_experiment", "a variant without its experiment, or an experiment without a variant",
             lambda: F.col("experiment_given") != F.col("variant_given"),
             lambda: gxe.ExpectColumnPairValuesToBeEqual(column_A="experiment_given", column_B="variant_given")),
        Rule("ts_valid", "ts missing or not an ISO-8601 timestamp",
             lambda: F.col("ts").isNull(), lambda: gxe.ExpectColumnValuesToNotBeNull(column="ts")),
        Rule("ts_inside_day", "ts outside the landing day dt (UTC)",
             lambda: F.col("seconds_into_day").isNotNull() & ~F.col("seconds_into_day").between(0, 86399),
             lambda: gxe.ExpectColumnValuesToBeBetween(column="seconds_into_day", min_value=0, max_value=86399)),
    ]


def checked(rows: DataFrame, rule_list: list[Rule]) -> DataFrame:
    """rows + `reasons` (the rules each row breaks) + `duplicate` (a later copy of a request id)."""
    rows = rows.withColumns({"experiment_given": F.col("experiment").isNotNull(),
                             "variant_given": F.col("variant").isNotNull()})
    reasons = F.filter(F.array(*[F.when(rule.is_bad(), F.lit(rule.name)) for rule in rule_list]),
                       lambda r: r.isNotNull())
    copies = Window.partitionBy("request_id").orderBy("raw")
    return rows.withColumns({"reasons": reasons,
                             "duplicate": (F.col("request_id") != "") & (F.row_number().over(copies) > 1)})
