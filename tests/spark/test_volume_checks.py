"""A day far from the days before it stops the night in validate (the lake keeps it); a busier day
warns and goes on; a silence accepts a day known to be unusual."""

import datetime as dt
from pathlib import Path

import pytest

from helpers import alert_receivers, assert_table_matches_ddl, days_ending, synthetic_rows, write_csv, write_landing
from nightrec.data import lake
from nightrec.pipeline import alerts, ingest, nights, validate

DAY = dt.date(2024, 3, 15)


def land(settings, day: dt.date, **kwargs) -> int:
    rows = synthetic_rows(day, **kwargs)
    write_csv(Path(settings.path("landing")) / "interactions" / f"dt={day}" / "events.csv", rows)
    return len(rows)


def night(spark, settings, day: dt.date, lookback: int = 1):
    ingest.run(spark, settings, day, lookback_days=lookback)
    return validate.run(spark, settings, day, lookback_days=lookback)


def test_a_thin_day_fails_validate_a_busier_one_warns_and_a_silence_accepts(spark, make_settings):
    with alert_receivers() as received:
        settings = make_settings(volume__enabled="true", **received.settings())
        write_landing(Path(settings.path("landing")), days_ending(DAY - dt.timedelta(days=1), 14))  # 180 rows a day
        thin = land(settings, DAY, users=6)  # a tenth of the users, a tenth of the events
        with pytest.raises(validate.VolumeCheckFailed, match=r"events 18 \(usually 180, -90%\)") as failed:
            night(spark, settings, DAY, lookback=15)
        assert f"nightrec alerts silence volume:{DAY}" in str(failed.value)
        silver = lake.read_table(spark, settings.table("silver/interactions"), [DAY]).count()
        assert silver == thin  # the lake keeps the day; nothing quarantined
        assert not alerts.recorded(settings)  # a failed night's one alert is the task's (orchestration)

        busier = DAY + dt.timedelta(days=1)
        land(settings, busier, per_user=4)  # the same users, a third more events
        result = night(spark, settings, busier)
        assert result.volume == "warn" and any(f.startswith("events 240 (usually 180, +33%)")
                                               for f in result.volume_findings)
        received.wait(posts=2, mails=1)
        slack = dict(received.posts)["/slack"]["text"]
        assert slack.startswith(f"[nightrec] WARNING · night {busier} · validate: volume or mix unusual: ")

        alerts.silence(settings, f"volume:{DAY}", dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1),
                       "a known outage of the app", "ops")
        accepted = night(spark, settings, DAY)
        assert accepted.volume == "accepted" and accepted.volume_findings
        assert [r["silenced"] for r in alerts.recorded(settings, str(DAY))] == [f"volume:{DAY}"]
    assert len(received.mails) == 1  # the silenced one was kept, not sent

    nights.record_stage(settings, DAY, "validate", "success", 12.5, {"rows": thin})
    for name in ("ops_stage_runs", "ops_day_profiles", "ops_alerts", "ops_silences"):
        assert_table_matches_ddl(spark, settings, name)
