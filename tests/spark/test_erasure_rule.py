"""Which rows of an erased user ingest keeps: judged by when their file reached us, never by the
event times the file claims. The same scenario is built around a clock at several hours of the day
(the erasure done at that hour), so the outcome cannot depend on when the test runs."""

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import write_deltalake

from helpers import synthetic_rows, write_csv
from nightrec.data import lake
from nightrec.pipeline import ingest, records, validate
from nightrec.pipeline.privacy import REPORT_SCHEMA

DAY = dt.date(2024, 3, 10)
USER = 987654321
UTC = dt.timezone.utc


def erasure_done_at(settings, requested: dt.datetime, done: dt.datetime) -> None:
    write_deltalake(settings.table(records.PRIVACY.table), pa.Table.from_pylist(
        [{"id": f"{int(requested.timestamp() * 1000)}-0", "at": requested, "kind": "erasure", "user_id": USER,
          "requester": "cli:test"}], schema=records.PRIVACY.schema))
    write_deltalake(settings.table("privacy/reports"), pa.Table.from_pylist(
        [{"request_id": f"{int(requested.timestamp() * 1000)}-0", "user_id": USER, "done_at": done,
          "removed": "{}"}], schema=REPORT_SCHEMA))


@pytest.mark.parametrize("hour", [0.5, 2, 11.99, 12.01, 23.5])
def test_a_file_delivered_before_the_erasure_loses_the_user_whatever_its_event_times(spark, make_settings, hour):
    settings = make_settings()
    clock = dt.datetime.combine(DAY, dt.time(), tzinfo=UTC) + dt.timedelta(hours=hour)
    erasure_done_at(settings, requested=clock - dt.timedelta(minutes=20), done=clock)
    folder = Path(settings.path("landing")) / "interactions" / f"dt={DAY}"
    others = synthetic_rows(DAY, users=10, items=8, per_user=1)
    # Delivered before the erasure was done: every row of the user goes, the ones dated after the
    # erasure (a client's clock, or a file held back) as much as the others.
    theirs_before = [(USER, 1, "click", 1, f"{DAY}T00:00:01Z"), (USER, 2, "click", 1, f"{DAY}T12:00:00Z"),
                     (USER, 3, "view", 1, f"{DAY}T23:59:59Z")]
    write_csv(folder / "before.csv", others + theirs_before, delivered=clock - dt.timedelta(minutes=1))
    # Delivered after it: a new start, whatever the rows say about their own time.
    theirs_after = [(USER, 4, "click", 1, f"{DAY}T00:00:02Z")]
    write_csv(folder / "after.csv", theirs_after, delivered=clock + dt.timedelta(minutes=1))

    ingest.run(spark, settings, DAY)
    bronze = lake.read_table(spark, settings.table("bronze/interactions")).collect()
    assert sorted(int(r.item_id) for r in bronze if r.user_id == str(USER)) == [4]
    assert len(bronze) == len(others) + 1
    delivered = {Path(r.source_file).name: r.delivered_at.replace(tzinfo=UTC) for r in bronze}
    assert delivered == {"before.csv": clock - dt.timedelta(minutes=1), "after.csv": clock + dt.timedelta(minutes=1)}


def test_a_pending_erasure_drops_every_row_of_the_user(spark, make_settings):
    settings = make_settings()
    write_deltalake(settings.table(records.PRIVACY.table), pa.Table.from_pylist(
        [{"id": "1-0", "at": dt.datetime(2024, 3, 11, tzinfo=UTC), "kind": "erasure", "user_id": USER,
          "requester": "cli:test"}], schema=records.PRIVACY.schema))
    folder = Path(settings.path("landing")) / "interactions" / f"dt={DAY}"
    write_csv(folder / "late.csv", [(USER, 4, "click", 1, f"{DAY}T00:00:02Z"), (1, 4, "click", 1, f"{DAY}T01:00:00Z")],
              delivered=dt.datetime(2024, 3, 12, tzinfo=UTC))  # after the request, which is not carried out yet
    ingest.run(spark, settings, DAY)
    assert [r.user_id for r in lake.read_table(spark, settings.table("bronze/interactions")).collect()] == ["1"]


def test_events_dated_after_their_delivery_beyond_the_clock_skew_are_quarantined(spark, make_settings):
    settings = make_settings(VALIDATION__CLOCK_SKEW_SECONDS=60, VALIDATION__MAX_BAD_FRACTION=0.9)
    delivered = dt.datetime(2024, 3, 10, 8, tzinfo=UTC)
    rows = [(1, 1, "click", 1, f"{DAY}T07:59:00Z"), (2, 1, "click", 1, f"{DAY}T08:01:00Z"),
            (3, 1, "click", 1, f"{DAY}T08:01:01Z"), (4, 1, "click", 1, f"{DAY}T20:00:00Z")]
    write_csv(Path(settings.path("landing")) / "interactions" / f"dt={DAY}" / "day.csv", rows, delivered=delivered)
    ingest.run(spark, settings, DAY)
    result = validate.run(spark, settings, DAY, lookback_days=1)
    assert result.bad_rows_by_rule["ts_not_future"] == 2 and result.gx_unexpected["ts_not_future"] == 2
    quarantined = lake.read_table(spark, settings.table("quarantine/interactions")).collect()
    assert sorted((r.user_id, r.reasons) for r in quarantined) == [("3", ["ts_not_future"]), ("4", ["ts_not_future"])]
