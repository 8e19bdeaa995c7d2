"""The watch's alerts, each raised by its real cause: a live version in Redis that grew older than
service.max_age_hours, and a night that never published by its deadline."""

import datetime as dt
import time

from helpers import alert_receivers, publish_sample
from nightrec.pipeline import alerts, watch


def test_a_version_that_goes_stale_alerts_once_while_it_stays_stale(make_settings, redis_url):
    with alert_receivers() as received:
        settings = make_settings(redis_url, service__max_age_hours="0.001", alerts__night_deadline="",
                                 **received.settings())
        published = publish_sample(redis_url, prefix=settings.redis.prefix)
        assert watch.run(settings) == []  # fresh: 3.6 s to go
        time.sleep(4)
        (alert,) = watch.run(settings)
        assert alert.cause == f"stale_version:{published.version}"
        received.wait(posts=2, mails=1)
        assert watch.run(settings)[0].cause == alert.cause  # still stale: found, folded, not sent again
        time.sleep(0.5)
    slack = [body["text"] for path, body in received.posts if path == "/slack"]
    assert len(slack) == 1 and len(received.mails) == 1
    assert f"the live version {published.version} (night 2024-01-01) is 0.0 h old" in slack[0]
    assert "past service.max_age_hours=0.001" in slack[0]


def test_a_night_that_never_published_by_its_deadline_alerts_unless_its_failure_was_announced(make_settings,
                                                                                               redis_url, tmp_path):
    now = dt.datetime.now(dt.timezone.utc)
    due = watch.due_night(now, "00:00")
    assert due == now.date() - dt.timedelta(days=1)
    with alert_receivers() as received:
        settings = make_settings(redis_url, alerts__night_deadline="00:00", **received.settings())
        publish_sample(redis_url, prefix=settings.redis.prefix, ds=due - dt.timedelta(days=1))  # the night before
        (late,) = watch.run(settings, now)
        assert late.cause == f"night_late:{due}" and f"the night of {due} has not published" in late.summary
        received.wait(posts=2, mails=1)
        assert len(received.mails) == 1 and f"night {due}" in received.mails[0]["Subject"]

        publish_sample(redis_url, prefix=settings.redis.prefix, ds=due)  # the night ran, late
        assert watch.run(settings, now) == []

        failed = make_settings(redis_url, alerts__night_deadline="00:00", redis__prefix="other",
                               paths__lake=str(tmp_path / "other"))
        publish_sample(redis_url, prefix=failed.redis.prefix, ds=due - dt.timedelta(days=1))
        alerts.raise_alert(failed, alerts.Alert(cause=f"night_failed:nightrec_nightly:{due}:train", night=str(due),
                                                summary="train failed", command="nightrec run"), now)
        assert watch.run(failed, now) == []  # the failure was the news
