"""The watch: checks that run every few minutes outside the nightly run (the `nightrec_watch` DAG, or
`nightrec watch` from cron), because the failures they look for leave no task to fail:

- the live version is older than `service.max_age_hours` (nights failing or not running: the apps
  serve ever older lists);
- the night of a date has not published by `alerts.night_deadline` (UTC, the next day): it never
  started, is still running, or is stuck. A night whose failure was already announced is not
  announced again here.

Each finding is an alert (nightrec.pipeline.alerts), folded while its cause lasts.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from nightrec.pipeline import alerts
from nightrec.serving.client import connect
from nightrec.serving.layout import Keys
from nightrec.settings import Settings


@dataclass(frozen=True)
class LiveVersion:
    version: str
    night: dt.date
    published_at: dt.datetime

    def age_hours(self, now: dt.datetime) -> float:
        return (now - self.published_at).total_seconds() / 3600


def live_version(settings: Settings) -> LiveVersion | None:
    """The version Redis serves, with its night and when it was published (None before the first)."""
    keys = Keys(settings.redis.prefix)
    client = connect(settings.redis.url, settings.redis.cluster, timeout=10)
    try:
        version = client.get(keys.live)
        meta = client.hgetall(keys.meta(version.decode())) if version else {}
    finally:
        client.close()
    if not meta:
        return None
    return LiveVersion(version.decode(), dt.date.fromisoformat(meta[b"ds"].decode()),
                       dt.datetime.fromisoformat(meta[b"published_at"].decode()))


def due_night(now: dt.datetime, deadline: str) -> dt.date:
    """The newest night whose deadline (HH:MM UTC on the day after it) has passed at `now`."""
    passed_today = now.time() >= dt.time.fromisoformat(deadline)
    return now.date() - dt.timedelta(days=1 if passed_today else 2)


def stale_version(settings: Settings, live: LiveVersion | None, now: dt.datetime) -> alerts.Alert | None:
    if live is None or live.age_hours(now) <= settings.service.max_age_hours:
        return None
    return alerts.Alert(
        cause=f"stale_version:{live.version}", night=live.night.isoformat(),
        summary=f"the live version {live.version} (night {live.night}) is {live.age_hours(now):.1f} h old, past "
                f"service.max_age_hours={settings.service.max_age_hours:g}: the apps get lists that old, and "
                f"/healthz answers degraded",
        command="`nightrec status`, then the last nights' runs in Airflow (failed, missing or paused?)")


def late_night(settings: Settings, live: LiveVersion | None, now: dt.datetime) -> alerts.Alert | None:
    deadline = settings.alerts.night_deadline
    if not deadline:
        return None
    night = due_night(now, deadline)
    if live is not None and live.night >= night:
        return None
    announced = [row for row in alerts.recorded(settings, night.isoformat())
                 if row["cause"].startswith("night_failed:") and not row["folded"]]
    if announced:  # its failure was the news
        return None
    return alerts.Alert(
        cause=f"night_late:{night}", night=night.isoformat(),
        summary=f"the night of {night} has not published by its deadline ({deadline} UTC the next day); the live "
                f"version is {'of night ' + str(live.night) if live else 'none'}: the run never started, or is still "
                f"running, or is stuck",
        command=f"`nightrec status`; in Airflow, the nightrec_nightly run of {night} (paused DAG? scheduler down? "
                f"a task queued for hours?)")


def run(settings: Settings, now: dt.datetime | None = None) -> list[alerts.Alert]:
    """Look once; raise and return the alerts found."""
    now = now or dt.datetime.now(dt.timezone.utc)
    live = live_version(settings)
    found = [a for a in (stale_version(settings, live, now), late_night(settings, live, now)) if a is not None]
    for alert in found:
        alerts.raise_alert(settings, alert, now)
    return found


def main() -> list[str]:
    """One look with the process's settings (the nightrec_watch DAG's task, `nightrec watch`): the
    alerts' summaries."""
    from nightrec.settings import load_settings

    return [alert.summary for alert in run(load_settings())]
