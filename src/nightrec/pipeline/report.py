"""The night's report: one self-contained HTML page (inline styles and SVG charts, nothing fetched)
that shows tonight against the nights before it, written beside the night's validation docs, logged
to MLflow with the night's training run, and linked from the alerts and `nightrec status`.

It is the nightly run's last task and runs whatever happened before it (a failed night gets a report
saying where and why). It reads only small records: each stage's summary (ops/stage_runs), the day
profiles (ops/day_profiles), the alerts (ops/alerts), the night's quarantine tables. It also raises
the metric alert of the night: the champion's holdout NDCG below its trailing median by more than
`alerts.holdout_drop`.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import logging
import statistics
from dataclasses import dataclass, field
from functools import partial

from redis.exceptions import RedisError

from nightrec.constants import STAGES
from nightrec.data import lake, storage, volume
from nightrec.pipeline import alerts, nights
from nightrec.pipeline.runtime import stage_main
from nightrec.settings import Settings

log = logging.getLogger("nightrec.pipeline.report")

HISTORY_NIGHTS = 30   # charts
DURATION_NIGHTS = 10  # a stage's usual duration: its median over this many nights before


@dataclass
class ReportResult:
    report: str
    state: str                      # success, failed (a stage failed) or incomplete (stages missing)
    failed_stage: str | None
    alerts: int                     # raised for the night, this one's included
    summary: list[str] = field(default_factory=list)


# --- Facts ---

def summary_of(runs: dict[str, dict], stage: str) -> dict:
    """A stage's summary in the night's runs ({} when it did not run or failed)."""
    return runs.get(stage, {}).get("summary", {})


def night_state(runs: dict[str, dict]) -> tuple[str, str | None]:
    failed = next((s for s in STAGES if runs.get(s, {}).get("state") == "failed"), None)
    if failed:
        return "failed", failed
    done = all(runs.get(s, {}).get("state") == "success" for s in STAGES if s != "report")
    return ("success" if done else "incomplete"), None


def champion_ndcg(train: dict, metric: str) -> float | None:
    """The holdout NDCG of the model that serves after the night (tonight's when promoted)."""
    if not train:
        return None
    return train["holdout"].get(metric) if train.get("promoted") else train.get("champion_holdout_ndcg")


def night_record(settings: Settings, ds: dt.date, runs: dict[str, dict]) -> dict:
    """What /healthz and /metrics tell about the night (the service reads it from Redis)."""
    state, failed = night_state(runs)
    get = partial(summary_of, runs)
    train, k = get("train"), settings.model.eval_k
    coverage = None
    if train:
        coverage = (train["holdout"].get(f"coverage_at_{k}") if train.get("promoted")
                    else train.get("champion_holdout_coverage"))
    return {"night": ds.isoformat(), "state": state, "failed_stage": failed,
            "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "stage_seconds": {stage: run["seconds"] for stage, run in runs.items() if stage != "report"},
            "rows_ingested": get("ingest").get("rows"), "rows_quarantined": get("validate").get("quarantined_rows"),
            "champion_holdout_ndcg": champion_ndcg(train, f"ndcg_at_{k}"), "champion_coverage": coverage,
            "users_published": get("publish").get("users"),
            "redis_used_memory_bytes": get("publish").get("redis_used_memory")}


def store_night_record(settings: Settings, record: dict) -> None:
    """Into Redis, unless a later night's record is there already (a backfill of an old night)."""
    from nightrec.serving.client import connect
    from nightrec.serving.layout import Keys

    keys = Keys(settings.redis.prefix)
    client = connect(settings.redis.url, settings.redis.cluster, timeout=10)
    try:
        stored = client.get(keys.night)
        if stored is None or json.loads(stored)["night"] <= record["night"]:
            client.set(keys.night, json.dumps(record))
    except RedisError as error:  # the page is written either way; /healthz keeps the night before
        log.error("the night's record not stored in Redis: %s", error)
    finally:
        client.close()


def holdout_alert(settings: Settings, ds: dt.date, history: dict[str, dict[str, dict]]) -> alerts.Alert | None:
    """The champion's holdout NDCG tonight below the median of the nights before by more than holdout_drop."""
    metric = f"ndcg_at_{settings.model.eval_k}"
    tonight = champion_ndcg(summary_of(history.get(ds.isoformat(), {}), "train"), metric)
    before = [v for night, runs in sorted(history.items()) if night < ds.isoformat()
              for v in [champion_ndcg(summary_of(runs, "train"), metric)] if v is not None]
    before = before[-settings.alerts.holdout_nights:]
    if tonight is None or len(before) < 3:
        return None
    usual = statistics.median(before)
    if tonight >= usual * (1 - settings.alerts.holdout_drop):
        return None
    return alerts.Alert(
        cause=f"holdout_drop:{ds}", severity="warning", night=ds.isoformat(), stage="train",
        summary=f"the champion's holdout {metric} is {tonight:.4f}, {tonight / usual - 1:+.1%} against its median "
                f"{usual:.4f} over the last {len(before)} nights "
                f"(alerts.holdout_drop={settings.alerts.holdout_drop:.0%})",
        command="`nightrec report --ds " + ds.isoformat() + "`: did the data change (volume, quarantine) or the model? "
                "compare the runs in MLflow; `nightrec rollback --ds " + ds.isoformat() + "` if the champion is to "
                "blame",
        report=nights.report_uri(settings, ds))


def quarantined_by_file(settings: Settings, ds: dt.date) -> list[tuple[str, int]]:
    root = settings.table("quarantine/interactions")
    if not lake.holds(root, ds):
        return []
    counts: dict[str, int] = {}
    for path in lake.small_table(root, ["source_file"], [ds])["source_file"].to_pylist():
        counts[path] = counts.get(path, 0) + 1
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:20]


def volume_history(settings: Settings, ds: dt.date) -> dict[dt.date, dict[str, float]]:
    root = settings.table(volume.PROFILES)
    days = [ds - dt.timedelta(days=n) for n in range(HISTORY_NIGHTS + settings.volume.history_days)]
    return volume.read_profiles(lake.small_table(root, dates=days)) if lake.table_exists(root) else {}


# --- Charts (inline SVG) ---

COLOURS = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563")
WIDTH, HEIGHT, PAD = 720, 220, 40


def line_chart(title: str, labels: list[str], series: dict[str, list[float | None]],
               bands: list[tuple[float, float, str]] = (), bands_from: int = 0) -> str:
    """Lines over labelled nights; bands: (low, high, colour) areas behind them, from the label at
    index bands_from to the last (the days they were computed from)."""
    values = [v for line in series.values() for v in line if v is not None] + [b for band in bands for b in band[:2]]
    if not values or not labels:
        return f'<p class="empty">{html.escape(title)}: no data yet</p>'
    low, high = min(values), max(values)
    pad = 0.05 * (high - low) if high > low else 0.1 * abs(high) or 1.0
    low, high = low - pad, high + pad

    def x(i: int) -> float:
        return PAD + (WIDTH - 2 * PAD) * (i / max(len(labels) - 1, 1))

    def y(v: float) -> float:
        return HEIGHT - PAD - (HEIGHT - 2 * PAD) * (v - low) / (high - low)

    parts = [f'<rect class="band" x="{x(bands_from):.1f}" y="{y(b_high):.1f}" '
             f'width="{max(x(len(labels) - 1) - x(bands_from), 4):.1f}" '
             f'height="{max(y(b_low) - y(b_high), 0.5):.1f}" fill="{colour}" opacity="0.35"/>'
             for b_low, b_high, colour in bands]
    legend = []
    for n, (name, line) in enumerate(series.items()):
        colour = COLOURS[n % len(COLOURS)]
        points = [f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(line) if v is not None]
        if len(points) > 1:  # one night is its dot alone
            parts.append(f'<polyline class="series" fill="none" stroke="{colour}" stroke-width="2" '
                         f'points="{" ".join(points)}"/>')
        last = next(((i, v) for i, v in reversed(list(enumerate(line))) if v is not None), None)
        if last:
            parts.append(f'<circle cx="{x(last[0]):.1f}" cy="{y(last[1]):.1f}" r="3.5" fill="{colour}"/>')
        legend.append(f'<span style="color:{colour}">&#9632; {html.escape(name)}</span>')
    axis = (f'<text x="4" y="{PAD - 6}" class="tick">{_number(high)}</text>'
            f'<text x="4" y="{HEIGHT - PAD + 4}" class="tick">{_number(low)}</text>'
            f'<text x="{PAD}" y="{HEIGHT - 10}" class="tick">{html.escape(labels[0])}</text>'
            f'<text x="{WIDTH - PAD}" y="{HEIGHT - 10}" class="tick" text-anchor="end">'
            f'{html.escape(labels[-1])}</text>')
    return (f'<figure><figcaption>{html.escape(title)}</figcaption>'
            f'<svg data-chart="{html.escape(title)}" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" '
            f'role="img"><line x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - PAD}" y2="{HEIGHT - PAD}" stroke="#999"/>'
            f'{"".join(parts)}{axis}</svg><div class="legend">{" ".join(legend)}</div></figure>')


def bar_chart(title: str, bars: list[tuple[str, float, float | None]]) -> str:
    """Horizontal bars (label, tonight, usual): tonight's bar with a tick at the usual value."""
    if not bars:
        return f'<p class="empty">{html.escape(title)}: no data yet</p>'
    top = max(max(v, u or 0) for _, v, u in bars) or 1.0
    row, left, width = 22, 130, WIDTH - 130 - 70
    parts = []
    for n, (label, value, usual) in enumerate(bars):
        yy = 6 + n * row
        parts.append(f'<text x="{left - 6}" y="{yy + 13}" class="tick" text-anchor="end">{html.escape(label)}</text>'
                     f'<rect class="series" x="{left}" y="{yy}" width="{max(width * value / top, 1):.1f}" height="15" '
                     f'fill="#2563eb"/><text x="{left + width * value / top + 6:.1f}" y="{yy + 13}" class="tick">'
                     f'{_number(value)}</text>')
        if usual is not None:
            ux = left + width * usual / top
            parts.append(f'<line x1="{ux:.1f}" y1="{yy - 2}" x2="{ux:.1f}" y2="{yy + 17}" stroke="#111" '
                         f'stroke-width="2"/>')
    height = 12 + len(bars) * row
    return (f'<figure><figcaption>{html.escape(title)} (black tick: the usual)</figcaption>'
            f'<svg data-chart="{html.escape(title)}" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}" '
            f'role="img">{"".join(parts)}</svg></figure>')


def _number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.4g}"


# --- The page ---

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:980px;color:#111}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:6px 0} td,th{padding:3px 10px;border-bottom:1px solid #eee;text-align:left}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums} .state{font-weight:600;padding:2px 8px;border-radius:4px}
.success{background:#dcfce7} .failed{background:#fee2e2} .incomplete{background:#fef9c3} .warning{color:#a16207}
.critical{color:#b91c1c} .error{background:#fee2e2;padding:8px;border-radius:4px;white-space:pre-wrap}
figure{margin:10px 0} figcaption{font-weight:600;margin-bottom:2px} .tick{font-size:11px;fill:#555}
.legend span{margin-right:14px;font-size:12px} .empty{color:#777} .muted{color:#666}
"""


def render(settings: Settings, ds: dt.date, history: dict[str, dict[str, dict]], profiles, quarantine_files,
           night_alerts: list[dict]) -> str:
    runs = history.get(ds.isoformat(), {})
    state, failed = night_state(runs)
    get = partial(summary_of, runs)
    ingest, validate, train = get("ingest"), get("validate"), get("train")
    publish, analyze = get("publish"), get("analyze")
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>nightrec night {ds}</title>"
           f"<style>{STYLE}</style></head><body>",
           f"<h1>Night {ds} <span class='state {state}' id='state'>{state}</span></h1>",
           f"<p class='muted'>report written {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC</p>"]
    if failed:
        out.append(f"<p class='error' id='failure'><b>{failed} failed:</b> {html.escape(runs[failed]['error'] or '')}"
                   f"<br>Nothing after it ran; Redis keeps serving the last published version.</p>")

    earlier = [n for n in sorted(history) if n < ds.isoformat()][-DURATION_NIGHTS:]
    out.append("<h2>Stages</h2><table><tr><th>stage</th><th>state</th><th class=n>seconds</th>"
               f"<th class=n>usual (median of the {len(earlier)} nights before)</th></tr>")
    bars = []
    for stage in STAGES[:-1]:  # all but this report
        run = runs.get(stage)
        usual = [history[n][stage]["seconds"] for n in earlier if history[n].get(stage, {}).get("state") == "success"]
        median = statistics.median(usual) if usual else None
        seconds = run["seconds"] if run else None
        out.append(f"<tr><td>{stage}</td><td>{run['state'] if run else 'not run'}</td>"
                   f"<td class=n>{'' if seconds is None else f'{seconds:.1f}'}</td>"
                   f"<td class=n>{'–' if median is None else f'{median:.1f}'}</td></tr>")
        if seconds is not None:
            bars.append((stage, seconds, median))
    out.append("</table>" + bar_chart("Seconds per stage tonight", bars))

    out.append("<h2>Rows</h2><table>")
    for label, value in (("landing files read", ingest.get("files_read")), ("rows ingested", ingest.get("rows")),
                         ("rows into silver", validate.get("good_rows")),
                         ("rows quarantined", validate.get("quarantined_rows")),
                         ("exact repeats dropped", validate.get("duplicates_dropped")),
                         ("files quarantined", len(ingest.get("quarantined_files", [])) if ingest else None)):
        out.append(f"<tr><td>{label}</td><td class=n id='{label.replace(' ', '-')}'>"
                   f"{'' if value is None else f'{value:,}'}</td></tr>")
    out.append("</table>")
    rules = {rule: n for rule, n in validate.get("bad_rows_by_rule", {}).items() if n}
    if rules:
        out.append("<table><tr><th>rule</th><th class=n>rows quarantined</th></tr>" + "".join(
            f"<tr><td>{html.escape(r)}</td><td class=n>{n:,}</td></tr>" for r, n in rules.items()) + "</table>")
    if quarantine_files:
        out.append("<table><tr><th>file</th><th class=n>rows quarantined</th></tr>" + "".join(
            f"<tr><td>{html.escape(p)}</td><td class=n>{n:,}</td></tr>" for p, n in quarantine_files) + "</table>")
    for item in ingest.get("quarantined_files", []):
        out.append(f"<p>file set aside: {html.escape(item['path'])}: {html.escape(item['reason'])}</p>")

    out.append(_volume_section(settings, ds, profiles, validate))
    out.append(_model_section(settings, ds, history, train))

    out.append("<h2>Published</h2>")
    if publish:
        published = (("version", publish["version"]), ("previous", publish["previous"] or "–"),
                     ("users", f"{publish['users']:,}"), ("similar items", f"{publish['similar_items']:,}"),
                     ("segments", publish["segments"]), ("categories", publish["categories"]),
                     ("model", publish["model_version"]), ("Redis memory", _bytes(publish.get("redis_used_memory"))))
        out.append("<table>" + "".join(f"<tr><td>{k}</td><td class=n id='published-{k.replace(' ', '-')}'>"
                                       f"{html.escape(str(v))}</td></tr>" for k, v in published) + "</table>")
    else:
        out.append("<p class='empty'>nothing published tonight: Redis serves the version before</p>")

    out.append("<h2>Experiments and the champion check</h2>")
    if analyze.get("experiment"):
        out.append(f"<p>experiment <b>{html.escape(analyze['experiment'])}</b>: {html.escape(str(analyze['decision']))}"
                   f" — {html.escape(analyze.get('reason') or '')}</p><table><tr><th>variant</th><th class=n>users</th>"
                   f"<th class=n>CTR@{settings.experiments.k}</th><th class=n>95% interval</th></tr>")
        metric = f"ctr_at_{settings.experiments.k}"
        for name, v in analyze.get("variants", {}).items():
            out.append(f"<tr><td>{html.escape(name)}</td><td class=n>{v['users']:,}</td>"
                       f"<td class=n>{v[metric]:.4f}</td>"
                       f"<td class=n>{v[metric + '_low']:.4f} – {v[metric + '_high']:.4f}</td></tr>")
        out.append("</table>")
    else:
        out.append("<p class='muted'>no experiment tonight</p>")
    if analyze.get("champion_check"):
        out.append(f"<p>champion check: <b>{html.escape(analyze['champion_check'])}</b> — "
                   f"{html.escape(analyze.get('champion_reason') or '')}</p>")

    out.append(f"<h2>Alerts raised for this night ({len(night_alerts)})</h2>")
    if night_alerts:
        out.append("<table><tr><th>at (UTC)</th><th>severity</th><th>what</th><th>went to</th></tr>")
        for row in night_alerts:
            went = ("silenced: " + row["silenced"] if row.get("silenced") else "folded" if row["folded"]
                    else ", ".join(row["sent_to"]) or "no channel")
            out.append(f"<tr><td>{row['at']:%H:%M}</td><td class='{row['severity']}'>{row['severity']}</td>"
                       f"<td>{html.escape(row['summary'])}</td><td>{html.escape(went)}</td></tr>")
        out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out)


def _volume_section(settings: Settings, ds: dt.date, profiles, validate: dict) -> str:
    out = [f"<h2>Volume: the last {HISTORY_NIGHTS} nights</h2>"]
    band = validate.get("volume", "unjudged")
    out.append(f"<p>volume and mix check: <b id='volume'>{html.escape(band)}</b></p>")
    out += [f"<p class='warning'>{html.escape(f)}</p>" for f in validate.get("volume_findings", [])]
    days = [ds - dt.timedelta(days=n) for n in range(HISTORY_NIGHTS - 1, -1, -1)]
    types = sorted({m for d in days for m in profiles.get(d, {}) if m.startswith("events")})
    series = {m.removeprefix("events:") if m != "events" else "all events":
              [profiles.get(d, {}).get(m) for d in days] for m in types}
    bands = []
    history = [profiles[d] for d in volume.history_days(ds, settings.volume) if d in profiles]
    findings = volume.judge(profiles.get(ds, {}), history, settings.volume)
    total = next((f for f in findings if f.metric == "events"), None)
    if total:
        v = settings.volume
        bands = [(total.median - v.fail_z * total.scale, total.median + v.fail_z * total.scale, "#fca5a5"),
                 (total.median - v.warn_z * total.scale, total.median + v.warn_z * total.scale, "#fde68a")]
    out.append(line_chart("Events per night by event type (shaded: tonight's warn and fail bands of all events, "
                          "over the days they come from)", [d.isoformat() for d in days], series, bands,
                          bands_from=max(len(days) - 1 - settings.volume.history_days, 0)))
    return "".join(out)


def _model_section(settings: Settings, ds: dt.date, history: dict[str, dict[str, dict]], train: dict) -> str:
    metric = f"ndcg_at_{settings.model.eval_k}"
    out = ["<h2>Models</h2>"]
    if train:
        out.append(f"<p>tonight's model <b>{html.escape(train['candidate'])}</b> (version {train['version']}): "
                   f"{html.escape(train['reason'])}</p>"
                   f"<table><tr><th>holdout metric</th><th class=n>tonight's model</th>"
                   f"</tr>" + "".join(f"<tr><td>{k}</td><td class=n id='holdout-{k}'>{v:.4f}</td></tr>"
                                      for k, v in sorted(train["holdout"].items())) + "</table>")
        if train.get("champion_holdout_ndcg") is not None:
            out.append(f"<p>the champion before tonight on the same holdout: {metric} "
                       f"{train['champion_holdout_ndcg']:.4f}</p>")
    else:
        out.append("<p class='empty'>no model trained tonight</p>")
    nights_shown = [n for n in sorted(history) if n <= ds.isoformat()][-HISTORY_NIGHTS:]
    trains = [summary_of(history[n], "train") for n in nights_shown]
    out.append(line_chart(f"Holdout {metric} per night", nights_shown, {
        "tonight's model": [t["holdout"].get(metric) if t else None for t in trains],
        "the champion after the night": [champion_ndcg(t, metric) for t in trains]}))
    return "".join(out)


def _bytes(n: int | None) -> str:
    return "" if n is None else f"{n / 2**20:,.1f} MiB"


# --- The stage ---

def run(settings: Settings, ds: dt.date) -> ReportResult:
    history = nights.stage_runs(settings, ds - dt.timedelta(days=HISTORY_NIGHTS + DURATION_NIGHTS))
    raised = holdout_alert(settings, ds, history)
    if raised:
        alerts.raise_alert(settings, raised)
    night_alerts = alerts.recorded(settings, ds.isoformat())
    page = render(settings, ds, history, volume_history(settings, ds), quarantined_by_file(settings, ds), night_alerts)
    uri = nights.report_uri(settings, ds)
    storage.write_bytes(uri, page.encode())
    runs = history.get(ds.isoformat(), {})
    store_night_record(settings, night_record(settings, ds, runs))
    _log_to_mlflow(settings, runs, page, ds)
    state, failed = night_state(runs)
    return ReportResult(uri, state, failed, len(night_alerts), terminal_summary(history.get(ds.isoformat(), {})))


def terminal_summary(runs: dict[str, dict]) -> list[str]:
    get = partial(summary_of, runs)
    lines = []
    if get("validate"):
        v = get("validate")
        lines.append(f"rows: {v['good_rows']:,} into silver, {v['quarantined_rows']:,} quarantined; "
                     f"volume {v.get('volume', 'unjudged')}")
    if get("train"):
        t = get("train")
        lines.append(f"model: {t['reason']}")
    if get("publish"):
        p = get("publish")
        lines.append(f"published: version {p['version']}, {p['users']:,} users (previous {p['previous']})")
    return lines


def _log_to_mlflow(settings: Settings, runs: dict[str, dict], page: str, ds: dt.date) -> None:
    """Into the night's training run (none when train did not run tonight)."""
    run_id = summary_of(runs, "train").get("run_id")
    if not run_id:
        return
    from mlflow import MlflowClient

    from nightrec.modeling import tracking

    tracking.configure(settings)
    MlflowClient().log_text(run_id, page, f"report/night-{ds}.html")


def main(argv=None) -> dict:
    return stage_main("report", run, argv, needs_spark=False)
