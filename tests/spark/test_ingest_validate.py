import datetime as dt
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers import days_ending, synthetic_rows, write_csv, write_landing
from nightrec.data import lake
from nightrec.data.landing import LandingError
from nightrec.pipeline import ingest, validate

DAY = dt.date(2024, 3, 10)
NEXT_MORNING = dt.datetime(2024, 3, 11, 2, tzinfo=dt.timezone.utc)  # when the day's files were delivered


def test_csv_jsonl_and_parquet_files_of_a_day_land_in_bronze(spark, make_settings):
    settings = make_settings()
    folder = Path(settings.path("landing")) / "interactions" / f"dt={DAY}"
    rows = synthetic_rows(DAY, users=10, items=8, per_user=1)
    write_csv(folder / "a.csv", rows[:4])
    (folder / "b.jsonl").write_text("\n".join(json.dumps(dict(zip(
        ("user_id", "item_id", "event_type", "value", "ts"), r))) for r in rows[4:7]))
    pq.write_table(pa.table({"user_id": [r[0] for r in rows[7:]], "item_id": [r[1] for r in rows[7:]],
                             "event_type": [r[2] for r in rows[7:]],
                             "ts": [dt.datetime.fromisoformat(r[4]) for r in rows[7:]]}), folder / "c.parquet")
    result = ingest.run(spark, settings, DAY)
    assert result.rows == 10
    checked = validate.run(spark, settings, DAY)
    assert (checked.good_rows, checked.quarantined_rows) == (10, 0)
    silver = lake.read_table(spark, settings.table("silver/interactions")).orderBy("user_id").collect()
    assert [(r.user_id, r.item_id, r.event_type) for r in silver] == [(r[0], r[1], r[2]) for r in rows]
    assert {r.value for r in silver[7:]} == {1.0}  # parquet file had no value column: default 1


def test_bad_rows_are_quarantined_with_reasons_matching_great_expectations(spark, make_settings):
    settings = make_settings(VALIDATION__MAX_BAD_FRACTION=0.5)
    good = synthetic_rows(DAY, users=20, items=8, per_user=1)
    bad = [
        ("abc", 3, "click", 1, f"{DAY}T10:00:00Z"),          # user_id not a number
        (5, -2, "click", 1, f"{DAY}T10:00:00Z"),             # item_id not positive
        (6, 3, "teleport", 1, f"{DAY}T10:00:00Z"),           # unknown event type
        (7, 3, "click", "lots", f"{DAY}T10:00:00Z"),         # value not a number
        (7, 4, "click", "NaN", f"{DAY}T10:00:00Z"),          # value not a finite number
        (8, 3, "click", 1, "yesterday"),                     # ts not a timestamp
        (9, 3, "click", 1, "2024-03-09T23:59:59Z"),          # ts outside the day
        good[0],                                             # exact duplicate of a good row
    ]
    folder = Path(settings.path("landing")) / "interactions" / f"dt={DAY}"
    write_csv(folder / "day.csv", good + bad, delivered=NEXT_MORNING)
    # delivered at 10:00, an event dated after it by more than validation.clock_skew_seconds (900)
    write_csv(folder / "early.csv", [(10, 3, "click", 1, f"{DAY}T10:15:00Z"), (11, 3, "click", 1, f"{DAY}T10:16:00Z")],
              delivered=dt.datetime(DAY.year, DAY.month, DAY.day, 10, tzinfo=dt.timezone.utc))
    ingest.run(spark, settings, DAY)
    result = validate.run(spark, settings, DAY)
    # the exact repeat of a good row is dropped and counted, not quarantined
    assert (result.rows, result.good_rows, result.quarantined_rows, result.duplicates_dropped) == (30, 21, 8, 1)
    assert result.bad_rows_by_rule == {"user_id_valid": 1, "item_id_valid": 1, "event_type_known": 1,
                                       "value_valid": 2, "ts_valid": 1, "ts_inside_day": 1, "ts_not_future": 1,
                                       "request_id_valid": 0, "position_valid": 0, "no_conflicting_copy": 0}
    assert result.gx_unexpected == result.bad_rows_by_rule
    quarantine = lake.read_table(spark, settings.table("quarantine/interactions")).collect()
    reasons = {r.user_id: r.reasons for r in quarantine}
    assert reasons["abc"] == ["user_id_valid"] and reasons["9"] == ["ts_inside_day"]
    assert reasons["11"] == ["ts_not_future"] and "10" not in reasons  # 15 minutes ahead: within the skew
    assert Path(result.data_docs).is_file()


def test_events_keep_the_request_they_are_attributed_to(spark, make_settings):
    """request_id and position are optional columns; a table written before them gains them."""
    settings = make_settings(VALIDATION__MAX_BAD_FRACTION=0.9)
    folder = Path(settings.path("landing")) / "interactions" / f"dt={DAY}"
    write_csv(folder / "old.csv", synthetic_rows(DAY, users=5, items=8, per_user=1))
    ingest.run(spark, settings, DAY)
    validate.run(spark, settings, DAY)  # silver, bronze and quarantine now exist without the new columns
    at = f"{DAY}T10:00:00Z"
    rows = [{"user_id": 1, "item_id": 3, "event_type": "click", "ts": at},  # the first lines lack the keys
            {"user_id": 2, "item_id": 3, "event_type": "click", "ts": at, "request_id": "a1b2c3", "position": 2},
            {"user_id": 3, "item_id": 3, "event_type": "purchase", "ts": at, "request_id": "A1B2C3"},
            {"user_id": 4, "item_id": 3, "event_type": "click", "ts": at, "request_id": "not-hex", "position": 1},
            {"user_id": 5, "item_id": 3, "event_type": "click", "ts": at, "position": 1},
            {"user_id": 6, "item_id": 3, "event_type": "click", "ts": at, "request_id": "ff", "position": "first"},
            {"user_id": 7, "item_id": 3, "event_type": "click", "ts": at, "request_id": "ff", "position": 0}]
    (folder / "new.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [rows[0]] * 25 + rows[1:]))
    ingest.run(spark, settings, DAY)
    result = validate.run(spark, settings, DAY)
    assert result.bad_rows_by_rule["request_id_valid"] == 1 and result.bad_rows_by_rule["position_valid"] == 3
    assert result.gx_unexpected == result.bad_rows_by_rule
    silver = {(r.user_id, r.item_id): (r.request_id, r.position)
              for r in lake.read_table(spark, settings.table("silver/interactions"), [DAY]).collect()}
    assert silver[(2, 3)] == ("a1b2c3", 2) and silver[(3, 3)] == ("a1b2c3", None) and silver[(1, 3)] == (None, None)
    quarantine = {r.user_id: r.reasons for r in lake.read_table(spark, settings.table("quarantine/interactions"),
                                                                [DAY]).collect()}
    assert quarantine == {"4": ["request_id_valid"], "5": ["position_valid"], "6": ["position_valid"],
                          "7": ["position_valid"]}


def test_a_day_with_too_many_bad_rows_fails_and_keeps_silver(spark, make_settings):
    settings = make_settings()
    landing_day = Path(settings.path("landing")) / "interactions" / f"dt={DAY}"
    good = synthetic_rows(DAY, users=20, items=8, per_user=1)
    write_csv(landing_day / "day.csv", good)
    ingest.run(spark, settings, DAY)
    validate.run(spark, settings, DAY)
    write_csv(landing_day / "day.csv", good[:10] + [(u, 1, "teleport", 1, f"{DAY}T01:00:00Z") for u in range(1, 6)])
    ingest.run(spark, settings, DAY)
    with pytest.raises(validate.ValidationFailed) as failure:
        validate.run(spark, settings, DAY)
    message = str(failure.value)
    assert "more than 5.00% of rows are bad on 2024-03-10 (5 of 15 rows, 33.33%)" in message
    assert "event_type_known" in message and "unexpected_count=5" in message
    assert "most bad rows in: " in message and "day.csv (5)" in message and "What to do:" in message
    assert lake.read_table(spark, settings.table("silver/interactions")).count() == 20
    assert lake.read_table(spark, settings.table("quarantine/interactions")).count() == 5


def test_reingesting_a_window_replaces_rather_than_duplicates(spark, make_settings):
    settings = make_settings()
    days = days_ending(DAY, 3)
    total = write_landing(Path(settings.path("landing")), days, users=12, items=16)
    for _ in range(2):
        first = ingest.run(spark, settings, DAY, lookback_days=5)
        validate.run(spark, settings, DAY, lookback_days=5)
    assert first.days_with_files == 3 and first.days_without_files == [str(DAY - dt.timedelta(days=d)) for d in (4, 3)]
    for table in ("bronze/interactions", "silver/interactions"):
        assert lake.read_table(spark, settings.table(table)).count() == total
    items = {r.item_id: r.attributes for r in lake.read_table(spark, settings.table("bronze/items")).collect()}
    assert len(items) == 16 and items["3"] == {"title": "Item 3", "genres": "group3", "year": "2003"}


def test_missing_landing_data_and_missing_columns_are_named(spark, make_settings):
    settings = make_settings()
    with pytest.raises(LandingError, match="no interaction files for 2024-03-10..2024-03-10"):
        ingest.run(spark, settings, DAY)
    write_csv(Path(settings.path("landing")) / "interactions" / f"dt={DAY}" / "x.csv", [(1, 2)],
              header=("user_id", "item"))
    with pytest.raises(LandingError,
                       match=r"x.csv: no column\(s\) item_id, event_type, ts; its columns are: user_id, item"):
        ingest.run(spark, settings, DAY)


def test_one_bad_day_fails_even_when_the_window_average_passes(spark, make_settings):
    settings = make_settings()
    landing = Path(settings.path("landing")) / "interactions"
    before = DAY - dt.timedelta(days=1)
    write_csv(landing / f"dt={before}" / "a.csv", synthetic_rows(before, users=60, items=8, per_user=2))
    write_csv(landing / f"dt={DAY}" / "b.csv", [(1, 2, "teleport", 1, f"{DAY}T01:00:00Z")])
    ingest.run(spark, settings, DAY, lookback_days=2)
    with pytest.raises(validate.ValidationFailed, match=rf"bad on {DAY} \(1 of 1 rows, 100.00%\);"):
        validate.run(spark, settings, DAY, lookback_days=2)
    assert not lake.table_exists(settings.table("silver/interactions"))
