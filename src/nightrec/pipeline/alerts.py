"""Alerts: short messages about a night to the data engineer's channels (settings `alerts`).

Channels: a Slack-compatible incoming webhook (Slack, Mattermost, Rocket.Chat take `{"text": ...}`),
a generic JSON webhook (the alert's fields), and email over SMTP. Each message names the night, the
stage, what happened and the first command to run, and links to the night's report.

Every alert is kept in the `ops/alerts` ledger (the report lists a night's). An alert whose cause was
already sent within `alerts.fold_hours` is folded: kept in the ledger, not sent again, and counted in
the next one that is sent (no storm from a task retried all night, or a check run every few minutes).
Sending never fails the caller: a channel that cannot be reached is logged and noted in the ledger.

A silence (`nightrec silence CAUSE_PREFIX --hours H --reason ...`, kept in `ops/silences`) holds back
every alert whose cause starts with its prefix until it ends: a planned migration, a holiday sale.
The alerts are still kept in the ledger, marked with the silence. A silenced volume check of a night
also accepts that night's volume (nightrec.pipeline.validate).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import json
import logging
import smtplib
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Literal

import httpx
import pyarrow as pa

from nightrec.settings import Settings

log = logging.getLogger("nightrec.pipeline.alerts")

LEDGER = "ops/alerts"
LEDGER_SCHEMA = pa.schema([
    ("at", pa.timestamp("us", tz="UTC")), ("cause", pa.string()), ("severity", pa.string()),
    ("night", pa.string()), ("stage", pa.string()), ("summary", pa.string()), ("command", pa.string()),
    ("report", pa.string()), ("sent_to", pa.list_(pa.string())), ("failed", pa.list_(pa.string())),
    ("folded", pa.bool_()), ("silenced", pa.string()),
])
SILENCES = "ops/silences"
SILENCE_SCHEMA = pa.schema([("at", pa.timestamp("us", tz="UTC")), ("prefix", pa.string()),
                            ("until", pa.timestamp("us", tz="UTC")), ("reason", pa.string()), ("by", pa.string())])


@dataclass(frozen=True)
class Alert:
    cause: str          # what folds repeats, e.g. "night_failed:nightrec_nightly:2026-12-06:ingest"
    summary: str                              # one line: what happened
    command: str                              # the first command to run
    severity: Literal["warning", "critical"] = "critical"
    night: str | None = None                  # the night's logical date, YYYY-MM-DD
    stage: str | None = None
    report: str | None = None                 # where the night's report is

    def text(self, folded: int = 0) -> str:
        where = " · ".join(x for x in (f"night {self.night}" if self.night else "", self.stage or "") if x)
        lines = [f"[nightrec] {self.severity.upper()}{' · ' + where if where else ''}: {self.summary}",
                 f"First: {self.command}"]
        if self.report:
            lines.append(f"Report: {self.report}")
        if folded:
            lines.append(f"({folded} more of the same since the last message were not sent)")
        return "\n".join(lines)


@dataclass
class Delivery:
    sent_to: list[str]
    failed: list[str]
    folded: bool
    silenced: str | None = None  # the prefix of the silence that held it back


def channels(settings: Settings) -> list[str]:
    """The configured channels, by name."""
    a = settings.alerts
    return [name for name, on in (("slack", a.slack_webhook_url), ("webhook", a.webhook_url),
                                  ("email", a.smtp_host and a.email_to)) if on]


def raise_alert(settings: Settings, alert: Alert, now: dt.datetime | None = None) -> Delivery:
    """Send the alert to every channel unless its cause was sent within alerts.fold_hours; keep it in
    the ledger either way."""
    now = now or dt.datetime.now(dt.timezone.utc)
    try:
        history = [row for row in recorded(settings) if row["cause"] == alert.cause]
        silence = active_silence(settings, alert.cause, now)
    except Exception:  # a ledger out of reach must not silence the alert: send it
        log.exception("%s or %s unreadable: alert %s sent without folding", LEDGER, SILENCES, alert.cause)
        history, silence = [], None
    since = now - dt.timedelta(hours=settings.alerts.fold_hours)
    if silence is not None:
        delivery = Delivery([], [], folded=False, silenced=silence["prefix"])
        log.info("alert silenced until %s (%s: %s): %s", silence["until"], silence["prefix"], silence["reason"],
                 alert.summary)
    elif any(not row["folded"] and not row.get("silenced") and row["at"] >= since for row in history):
        delivery = Delivery([], [], folded=True)
        log.info("alert folded (%s sent within %s h): %s", alert.cause, settings.alerts.fold_hours, alert.summary)
    else:
        held_back = len(list(itertools.takewhile(lambda row: row["folded"] or row.get("silenced"),
                                                 reversed(history))))
        delivery = _send(settings, alert, alert.text(held_back))
    _record(settings, alert, delivery, now)
    return delivery


def _send(settings: Settings, alert: Alert, text: str) -> Delivery:
    a = settings.alerts
    senders = {
        "slack": lambda: _post(a.slack_webhook_url, {"text": text}, a.timeout_seconds),
        "webhook": lambda: _post(a.webhook_url, {"text": text, **dataclasses.asdict(alert)}, a.timeout_seconds),
        "email": lambda: _email(settings, alert, text),
    }
    sent, failed = [], []
    configured = channels(settings)
    for name in configured:
        try:
            senders[name]()
            sent.append(name)
        except (OSError, httpx.HTTPError, smtplib.SMTPException) as error:
            failed.append(name)
            log.error("alert %s not sent to %s: %s", alert.cause, name, error)
    if not configured:
        log.warning("alert with no channel configured (settings alerts.*): %s", text)
    return Delivery(sent, failed, folded=False)


def _post(url: str, payload: dict, timeout: float) -> None:
    response = httpx.post(url, content=json.dumps(payload, default=str), timeout=timeout,
                          headers={"Content-Type": "application/json"})
    response.raise_for_status()


def _email(settings: Settings, alert: Alert, text: str) -> None:
    a = settings.alerts
    message = EmailMessage()
    message["Subject"] = text.splitlines()[0]
    message["From"] = a.email_from
    message["To"] = ", ".join(a.email_to)
    message.set_content(text)
    with smtplib.SMTP(a.smtp_host, a.smtp_port, timeout=a.timeout_seconds) as smtp:
        if a.smtp_starttls:
            smtp.starttls()
        if a.smtp_username:
            smtp.login(a.smtp_username, a.smtp_password)
        smtp.send_message(message)


# --- The ledger (a small Delta table, written and read in this process with delta-rs) ---

def recorded(settings: Settings, night: str | None = None) -> list[dict]:
    """Alerts in the ledger, oldest first (only those of one night, if given)."""
    from nightrec.data import lake

    root = settings.table(LEDGER)
    if not lake.table_exists(root):
        return []
    rows = sorted(lake.small_table(root).to_pylist(), key=lambda r: r["at"])
    return [r for r in rows if night is None or r["night"] == night]


def _record(settings: Settings, alert: Alert, delivery: Delivery, now: dt.datetime) -> None:
    from nightrec.data import lake

    row = {"at": now, "cause": alert.cause, "severity": alert.severity, "night": alert.night, "stage": alert.stage,
           "summary": alert.summary, "command": alert.command, "report": alert.report,
           "sent_to": delivery.sent_to, "failed": delivery.failed, "folded": delivery.folded,
           "silenced": delivery.silenced}
    try:
        lake.append_small(settings.table(LEDGER), pa.Table.from_pylist([row], schema=LEDGER_SCHEMA))
    except Exception:  # the message went out (or not) either way; a lost ledger row only weakens folding
        log.exception("alert %s not kept in %s", alert.cause, LEDGER)


# --- Silences (a small Delta table too) ---

def silence(settings: Settings, prefix: str, until: dt.datetime, reason: str, by: str,
            now: dt.datetime | None = None) -> None:
    """Hold back alerts whose cause starts with prefix until `until` (they are still kept in the ledger);
    replaces an earlier silence of the same prefix (`until` now: ends it)."""
    from nightrec.data import lake

    if not prefix.strip() or not reason.strip():
        raise ValueError("a silence needs a cause prefix and a reason")
    row = {"at": now or dt.datetime.now(dt.timezone.utc), "prefix": prefix, "until": until, "reason": reason, "by": by}
    lake.append_small(settings.table(SILENCES), pa.Table.from_pylist([row], schema=SILENCE_SCHEMA))


def silences(settings: Settings, now: dt.datetime | None = None) -> list[dict]:
    """The silences in force at `now`, the longest first."""
    from nightrec.data import lake

    root = settings.table(SILENCES)
    if not lake.table_exists(root):
        return []
    now = now or dt.datetime.now(dt.timezone.utc)
    newest = {}  # per prefix, the newest silence set before now: a later one (an end) replaces it
    for row in sorted(lake.small_table(root).to_pylist(), key=lambda row: row["at"]):
        if row["at"] <= now:
            newest[row["prefix"]] = row
    return sorted((row for row in newest.values() if now < row["until"]), key=lambda row: row["until"], reverse=True)


def active_silence(settings: Settings, cause: str, now: dt.datetime | None = None) -> dict | None:
    """The silence in force that covers this cause, if any."""
    return next((row for row in silences(settings, now) if cause.startswith(row["prefix"])), None)
