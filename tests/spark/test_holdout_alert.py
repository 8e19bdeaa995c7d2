"""The champion's holdout metrics fall for a real reason, and the night's report raises the alert:
nights trained and reported as Airflow runs them (each stage's `main`, recorded in ops/stage_runs),
then a night whose events stopped following the users' tastes (a client release that logs the wrong
item on every event: the same users, the same volume, so the volume checks see nothing)."""

import datetime as dt
import random
from pathlib import Path

from conftest import settings_environ
from helpers import alert_receivers, days_ending, write_csv, write_landing
from nightrec.pipeline import alerts, ingest, report, train, validate
from nightrec.settings import load_settings

BAD_NIGHT = dt.date(2024, 4, 20)
USERS, ITEMS = 60, 120


def scrambled_rows(day: dt.date) -> list[tuple]:
    """Each user's usual number of events, on items drawn from the whole catalog."""
    rng = random.Random(str(day))
    return [(user, rng.randrange(1, ITEMS + 1), "click", 1, f"{day}T{rng.randrange(24):02d}:00:00Z")
            for user in range(1, USERS + 1) for _ in range(3)]


def test_a_night_whose_events_stop_following_tastes_alerts_on_the_champions_holdout(spark, tmp_path, monkeypatch):
    with alert_receivers() as received:
        for key, value in settings_environ(tmp_path, **received.settings()).items():
            monkeypatch.setenv(key, value)
        settings = load_settings("local")
        landing = Path(settings.path("landing"))
        days = days_ending(BAD_NIGHT, 12)
        write_landing(landing, days[:-1], users=USERS, items=ITEMS)
        write_csv(landing / "interactions" / f"dt={BAD_NIGHT}" / "events.csv", scrambled_rows(BAD_NIGHT))
        ingest.run(spark, settings, days[-2], lookback_days=11)
        validate.run(spark, settings, days[-2], lookback_days=11)

        usual = []
        # three ordinary nights (the fewest the alert judges from): the champion's usual holdout NDCG
        for night in days[-4:-1]:
            usual.append(train.main(["--ds", night.isoformat()]))
            report.main(["--ds", night.isoformat()])
        assert not alerts.recorded(settings)
        ndcg = [report.champion_ndcg(t, "ndcg_at_10") for t in usual]
        assert min(ndcg) > 0.2, ndcg

        ingest.run(spark, settings, BAD_NIGHT)
        validate.run(spark, settings, BAD_NIGHT)
        bad = train.main(["--ds", BAD_NIGHT.isoformat()])
        tonight = report.champion_ndcg(bad, "ndcg_at_10")
        summary = report.main(["--ds", BAD_NIGHT.isoformat()])

        raised = alerts.recorded(settings, BAD_NIGHT.isoformat())
        assert [r["cause"] for r in raised] == [f"holdout_drop:{BAD_NIGHT}"]
        assert summary["alerts"] == 1
        received.wait(posts=2, mails=1)
        slack = dict(received.posts)["/slack"]["text"]
        assert slack.startswith(f"[nightrec] WARNING · night {BAD_NIGHT} · train: the champion's holdout ndcg_at_10 "
                                f"is {tonight:.4f}")
        assert "report.html" in slack and f"nightrec report --ds {BAD_NIGHT}" in slack
        assert tonight < 0.9 * sorted(ndcg)[1]  # below the median of the three nights by more than 10%
