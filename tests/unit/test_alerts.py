"""Alerts reach a local Slack-style webhook, a JSON webhook and an SMTP server; repeats are folded."""

import datetime as dt
from pathlib import Path

from helpers import alert_receivers
from nightrec.pipeline import alerts

NOW = dt.datetime(2026, 12, 7, 3, 0, tzinfo=dt.timezone.utc)


def failed_ingest(**changes) -> alerts.Alert:
    fields = dict(cause="task_failed:nightrec_nightly:ingest", night="2026-12-06", stage="ingest",
                  summary="task failed after 2 tries: no interaction files for 2026-12-06",
                  command="nightrec status --ds 2026-12-06", report="/reports/dt=2026-12-06/index.html")
    return alerts.Alert(**{**fields, **changes})


def test_an_alert_reaches_every_channel_with_the_night_the_stage_and_the_first_command(make_settings):
    with alert_receivers() as received:
        settings = make_settings(**received.settings())
        delivery = alerts.raise_alert(settings, failed_ingest(), NOW)
        assert delivery.sent_to == ["slack", "webhook", "email"] and not delivery.failed
        received.wait(posts=2, mails=1)
    slack = dict(received.posts)["/slack"]["text"]
    assert slack.startswith("[nightrec] CRITICAL · night 2026-12-06 · ingest: task failed after 2 tries")
    assert "First: nightrec status --ds 2026-12-06" in slack and "Report: /reports/dt=2026-12-06/index.html" in slack
    hook = dict(received.posts)["/hook"]
    assert hook["cause"] == "task_failed:nightrec_nightly:ingest" and hook["night"] == "2026-12-06"
    (mail,) = received.mails
    assert mail["To"] == "oncall@example.com" and mail["Subject"] == slack.splitlines()[0]
    assert [r["cause"] for r in alerts.recorded(settings, "2026-12-06")] == ["task_failed:nightrec_nightly:ingest"]


def test_repeats_within_the_fold_window_are_kept_not_sent_and_counted_in_the_next_message(make_settings):
    with alert_receivers() as received:
        settings = make_settings(**received.settings())
        alerts.raise_alert(settings, failed_ingest(), NOW)
        for minutes in (10, 20, 30):
            assert alerts.raise_alert(settings, failed_ingest(), NOW + dt.timedelta(minutes=minutes)).folded
        other = alerts.raise_alert(settings, failed_ingest(cause="stale_version", stage=None), NOW)
        after_the_window = NOW + dt.timedelta(hours=settings.alerts.fold_hours, minutes=1)
        later = alerts.raise_alert(settings, failed_ingest(), after_the_window)
        received.wait(posts=6, mails=3)
    assert not other.folded and not later.folded
    slack = [body["text"] for path, body in received.posts if path == "/slack"]
    assert len(slack) == 3 and len(received.mails) == 3
    assert "(3 more of the same since the last message were not sent)" in slack[-1]
    assert sum(r["folded"] for r in alerts.recorded(settings)) == 3 and len(alerts.recorded(settings)) == 6


def test_an_unreachable_channel_is_noted_and_the_others_still_get_the_alert(make_settings):
    from nightrec.serving.redis_server import free_port

    with alert_receivers() as received:
        settings = make_settings(**{**received.settings(), "alerts__webhook_url": f"http://127.0.0.1:{free_port()}/down",
                                    "alerts__timeout_seconds": "2"})
        delivery = alerts.raise_alert(settings, failed_ingest(), NOW)
        received.wait(posts=1, mails=1)
    assert delivery.sent_to == ["slack", "email"] and delivery.failed == ["webhook"]
    assert alerts.recorded(settings)[0]["failed"] == ["webhook"]


def test_an_unreadable_ledger_never_silences_an_alert(make_settings, tmp_path):
    with alert_receivers() as received:
        settings = make_settings(**received.settings())
        log = Path(settings.table(alerts.LEDGER)) / "_delta_log"
        log.mkdir(parents=True)
        (log / f"{0:020}.json").write_text("not a Delta commit")
        delivery = alerts.raise_alert(settings, failed_ingest(), NOW)
        received.wait(posts=2, mails=1)
    assert delivery.sent_to == ["slack", "webhook", "email"] and len(received.posts) == 2


def test_a_silence_holds_back_matching_alerts_until_it_ends_and_the_next_message_counts_them(make_settings):
    with alert_receivers() as received:
        settings = make_settings(**received.settings())
        alerts.silence(settings, "night_failed:nightrec_nightly:2026-12-06", NOW + dt.timedelta(hours=2),
                       "database migration", "ops", now=NOW - dt.timedelta(minutes=1))
        held = alerts.raise_alert(settings, failed_ingest(cause="night_failed:nightrec_nightly:2026-12-06:ingest"), NOW)
        other = alerts.raise_alert(settings, failed_ingest(cause="stale_version"), NOW)
        later = alerts.raise_alert(settings, failed_ingest(cause="night_failed:nightrec_nightly:2026-12-06:ingest"),
                                   NOW + dt.timedelta(hours=3))
        received.wait(posts=4, mails=2)
    assert held.silenced == "night_failed:nightrec_nightly:2026-12-06" and not held.sent_to
    assert other.sent_to and later.sent_to  # another cause, and the same one after the silence ended
    slack = [body["text"] for path, body in received.posts if path == "/slack"]
    assert len(slack) == 2 and "(1 more of the same since the last message were not sent)" in slack[-1]
    assert sorted((r["cause"], r["silenced"] or "") for r in alerts.recorded(settings)) == [
        ("night_failed:nightrec_nightly:2026-12-06:ingest", ""),
        ("night_failed:nightrec_nightly:2026-12-06:ingest", "night_failed:nightrec_nightly:2026-12-06"),
        ("stale_version", "")]
    assert alerts.silences(settings, NOW)[0]["reason"] == "database migration"
    assert alerts.silences(settings, NOW + dt.timedelta(hours=3)) == []
    alerts.silence(settings, "night_failed:nightrec_nightly:2026-12-06", NOW + dt.timedelta(minutes=5), "ended", "ops",
                   now=NOW)  # ended early: the newest silence of a prefix replaces the one before
    assert alerts.silences(settings, NOW + dt.timedelta(minutes=10)) == []
