"""Full runs of nightrec_nightly on Airflow's scheduler (`nightrec run` starts one for the night when
no airflow.api_url is set), twice; and a run that fails on bad data."""

import datetime as dt
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import redis
from deltalake import DeltaTable

from conftest import settings_environ
from helpers import alert_receivers, days_ending, open_in_chromium, synthetic_rows, write_csv, write_landing
from nightrec.constants import STAGES
from nightrec.serving.layout import Keys, decode_user

DAY = dt.date(2024, 6, 30)
TABLES = ("bronze/interactions", "bronze/items", "silver/interactions", "quarantine/interactions",
          "gold/recommendations", "gold/fallbacks", "gold/similar_items")


def run_dag(env) -> subprocess.CompletedProcess:
    nightrec = str(Path(sys.executable).with_name("nightrec"))
    return subprocess.run([nightrec, "run", "--ds", str(DAY), "--lookback-days", "8"], env=env,
                          capture_output=True, text=True, timeout=900)


def item_ids(stored):
    return stored if isinstance(stored, str) else stored[0]  # a segment's name, or the user's own items


def snapshot(home: Path, client: redis.Redis) -> tuple[dict, dict]:
    counts = {t: DeltaTable(str(home / "lake" / t)).to_pyarrow_table().num_rows for t in TABLES}
    keys = Keys("test")
    live = client.get(keys.live).decode()
    recs = {int(k.rsplit(b":", 1)[1].strip(b"{}")): item_ids(decode_user(client.get(k)))
            for k in client.scan_iter(match=keys.user_prefix(live) + "*")}
    return counts, recs


def test_nightly_dag_runs_end_to_end_and_a_rerun_changes_nothing(tmp_path, redis_url):
    rows = write_landing(tmp_path / "landing", days_ending(DAY, 8), users=40, items=120)
    env = {**os.environ, **settings_environ(tmp_path, redis_url, volume__enabled="true")}
    before = time.time()
    first = run_dag(env)
    wall = time.time() - before
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    for task in STAGES:
        assert re.search(rf"task {task}\s+success after", first.stdout), task

    # Airflow recorded the run as it happened: started during this call (not on its logical date),
    # lasting what the wall clock saw less Airflow's start, each task inside it
    record = newest_record(env)
    start, end = (dt.datetime.fromisoformat(record[k]).timestamp() for k in ("start_date", "end_date"))
    assert before < start < end < before + wall
    assert wall - 120 < record["duration"] <= wall
    tasks = record["tasks"]
    assert set(tasks) == set(STAGES) and all(t["state"] == "success" for t in tasks.values())
    assert sum(t["duration"] for t in tasks.values()) <= record["duration"]
    client = redis.Redis.from_url(redis_url)
    counts, recs = snapshot(tmp_path, client)
    assert counts["bronze/interactions"] == counts["silver/interactions"] == rows
    assert counts["gold/recommendations"] == len(recs) == 40
    assert {len(items) for items in recs.values()} == {20}

    report_shows_the_night(tmp_path / "docs" / f"dt={DAY}" / "report.html", rows, tmp_path / "report.png")

    second = run_dag(env)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    counts_again, recs_again = snapshot(tmp_path, client)
    assert counts_again == counts
    assert recs_again == recs


PAGE_FACTS = """JSON.stringify({
  state: document.getElementById('state').textContent,
  ingested: document.getElementById('rows-ingested').textContent,
  users: document.getElementById('published-users').textContent,
  volume: document.getElementById('volume').textContent,
  empty: [...document.querySelectorAll('.empty')].map(e => e.textContent),
  charts: [...document.querySelectorAll('svg[data-chart]')].map(svg => {
    const marks = [...svg.querySelectorAll('.series, circle')];
    const box = svg.getBoundingClientRect();
    return {title: svg.dataset.chart, width: box.width, height: box.height, marks: marks.length,
            drawn: marks.filter(m => { const b = m.getBBox(); return b.width > 0 || b.height > 0; }).length};
  }),
  resources: performance.getEntriesByType('resource').length,
})"""


def report_shows_the_night(report: Path, rows: int, screenshot: Path) -> None:
    """The night's report, opened in a real browser: the night's figures, and every chart drawn."""
    facts = json.loads(open_in_chromium(report.as_uri(), PAGE_FACTS, screenshot))
    assert facts["state"] == "success" and facts["ingested"] == f"{rows:,}" and facts["users"] == "40"
    assert facts["volume"] == "ok"  # tonight against the 7 days before it: the same users, the same volume
    assert facts["empty"] == [] and facts["resources"] == 0  # every section has data; nothing fetched
    titles = [chart["title"] for chart in facts["charts"]]
    assert len(titles) == 3 and titles[0] == "Seconds per stage tonight", titles
    for chart in facts["charts"]:
        assert chart["width"] > 600 and chart["height"] > 50 and chart["marks"] == chart["drawn"] > 0, chart
    assert screenshot.stat().st_size > 20_000


def newest_record(env: dict) -> dict:
    """Airflow's record of the newest run (`nightrec run` keeps it beside the run's log)."""
    runs = Path(env["AIRFLOW_HOME"]) / "logs" / "nightrec-runs"
    return json.loads(max(runs.glob("run-*.json"), key=lambda p: p.stat().st_mtime).read_text())


def last_log_tail(env: dict, lines: int = 20) -> str:
    """The last lines of the newest run's Airflow log before its report task (which runs after a failure)."""
    runs = Path(env["AIRFLOW_HOME"]) / "logs" / "nightrec-runs"
    newest = max(runs.glob("run-*.log"), key=lambda p: p.stat().st_mtime)
    before_report = newest.read_text().split("[DAG TEST] starting task_id=report")[0]
    return "\n".join(before_report.splitlines()[-lines:])


def test_bad_data_fails_the_run_with_the_reason_no_stack_trace_and_one_alert(tmp_path, redis_url):
    folder = tmp_path / "landing" / "interactions" / f"dt={DAY}"
    folder.mkdir(parents=True)
    with alert_receivers() as received:
        env = {**os.environ, **settings_environ(tmp_path, redis_url), **received.environ()}
        (folder / "day.parquet").write_bytes(b"PAR1 half an upload")  # the day's only file is unreadable: ingest fails
        unreadable = run_dag(env)
        unreadable_tail = last_log_tail(env)
        received.wait(posts=2, mails=1)
        first_alerts = (list(received.posts), list(received.mails))
        (folder / "day.parquet").unlink()
        (folder / "day.csv").write_text("user_id,item_id,event_type,value,ts\n1,2,teleport,1,2024-06-30T01:00:00Z\n")
        invalid = run_dag(env)  # its only row is bad: validate fails
        invalid_tail = last_log_tail(env)
        received.wait(posts=4, mails=2)

    # each failed night: exactly one message per channel, naming the night, the task and the reason
    posts, mails = first_alerts
    assert sorted(path for path, _ in posts) == ["/hook", "/slack"] and len(mails) == 1
    slack = dict(posts)["/slack"]["text"]
    assert f"night {DAY} · ingest: ingest failed after 1 try: FilesUnreadable" in slack, slack
    assert f"nightrec run --ds {DAY}" in slack and mails[0]["Subject"] == slack.splitlines()[0]
    assert len(received.posts) == 4 and len(received.mails) == 2
    assert f"night {DAY} · validate: validate failed after 1 try: ValidationFailed" in received.posts[-1][1]["text"]

    assert unreadable.returncode != 0 and invalid.returncode != 0
    assert "day.parquet: not a readable Parquet file" in unreadable.stdout
    assert "failed validation" in invalid.stdout and "event_type_known" in invalid.stdout
    for tail, reason in ((unreadable_tail, "not a readable Parquet file"), (invalid_tail, "event_type_known")):
        assert reason in tail, tail
        # neither Python frames nor Java ones ("at org.apache...(File.scala:12)")
        assert not re.search(r"Traceback|File \"|^\s+at [\w$.]+\(|Py4JJavaError|Exception in thread", tail, re.M), tail
    assert not redis.Redis.from_url(redis_url).exists(Keys("test").live)
    # the failed night's report says where and why it stopped (the rerun's: validate)
    page = (tmp_path / "docs" / f"dt={DAY}" / "report.html").read_text()
    assert "<b>validate failed:</b> ValidationFailed: interactions failed validation" in page
    assert "class='state failed'" in page


def test_a_night_with_a_tenth_of_the_usual_events_stops_before_training_and_says_why(tmp_path, redis_url):
    landing = tmp_path / "landing"
    write_landing(landing, days_ending(DAY - dt.timedelta(days=1), 8), users=40, items=120)  # 120 events a day
    thin = synthetic_rows(DAY, users=4, items=120)  # a tenth of the users: a tenth of the events
    write_csv(landing / "interactions" / f"dt={DAY}" / "events.csv", thin)
    with alert_receivers() as received:
        env = {**os.environ, **settings_environ(tmp_path, redis_url, volume__enabled="true"), **received.environ()}
        night = subprocess.run([str(Path(sys.executable).with_name("nightrec")), "run", "--ds", str(DAY),
                                "--lookback-days", "9"], env=env, capture_output=True, text=True, timeout=900)
        received.wait(posts=2, mails=1)
    assert night.returncode != 0 and "VolumeCheckFailed" in night.stdout, night.stdout[-3000:]
    ran = DeltaTable(str(tmp_path / "lake" / "ops" / "stage_runs")).to_pyarrow_table().column("stage").to_pylist()
    assert "validate" in ran and "train" not in ran  # stopped before training
    (mail,) = received.mails
    assert "validate failed after 1 try: VolumeCheckFailed: the day's volume or mix is far outside" in mail["Subject"]
    assert "events 12 (usually 120, -90%)" in mail.get_content()
    page = (tmp_path / "docs" / f"dt={DAY}" / "report.html").read_text()
    assert "<b>validate failed:</b> VolumeCheckFailed" in page and "events 12 (usually 120, -90%)" in page
    silver = DeltaTable(str(tmp_path / "lake" / "silver" / "interactions")).to_pyarrow_table(
        partitions=[("dt", "=", str(DAY))])
    assert silver.num_rows == len(thin)  # the lake keeps the day
