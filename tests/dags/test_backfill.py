"""`nightrec backfill`: nights in order on one Airflow, stopping at the first that fails and resuming
there when run again; the lake and the live lists end as three single nights leave them."""

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from deltalake import DeltaTable

from conftest import settings_environ
from helpers import days_ending, write_landing
from nightrec.serving.layout import Keys, decode_user

pytestmark = [pytest.mark.airflow, pytest.mark.redis]

LAST = dt.date(2024, 6, 30)
DAYS = days_ending(LAST, 3)
TABLES = ("bronze/interactions", "silver/interactions", "quarantine/interactions", "quarantine/files",
          "gold/recommendations", "gold/fallbacks", "gold/similar_items")
NIGHTREC = str(Path(sys.executable).with_name("nightrec"))


def nightrec(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([NIGHTREC, *args], env=env, capture_output=True, text=True, timeout=1200)


def state(home: Path, url: str, prefix: str) -> tuple[dict, dict]:
    """Rows per lake table, and every user's live list."""
    counts = {t: DeltaTable(str(home / "lake" / t)).to_pyarrow_table().num_rows for t in TABLES}
    client, keys = redis.Redis.from_url(url), Keys(prefix)
    live = client.get(keys.live).decode()
    lists = {key.rsplit(b":", 1)[1]: decode_user(client.get(key))
             for key in client.scan_iter(match=keys.user_prefix(live) + "*")}
    return counts, lists


def test_a_backfill_resumes_after_a_failure_and_ends_as_single_nights_do(tmp_path, redis_url):
    backfilled, single = tmp_path / "backfilled", tmp_path / "single"
    for home in (backfilled, single):
        write_landing(home / "landing", DAYS, users=30, items=60)
    backfill_env = {**os.environ, **settings_environ(backfilled, redis_url, redis__prefix="backfilled"),
                    "AIRFLOW_HOME": str(backfilled / "airflow")}
    single_env = {**os.environ, **settings_environ(single, redis_url, redis__prefix="single"),
                  "AIRFLOW_HOME": str(single / "airflow")}

    # the second night's file arrives broken: the backfill stops there, the first night done
    second = backfilled / "landing" / "interactions" / f"dt={DAYS[1]}" / "events.csv"
    good = second.read_bytes()
    (second.parent / "events.parquet").write_bytes(b"PAR1 half an upload")
    second.unlink()
    failed = nightrec(backfill_env, "backfill", "--start", str(DAYS[0]), "--end", str(LAST))
    assert failed.returncode != 0
    assert f"night {DAYS[0]} done" in failed.stdout and f"night {DAYS[1]} failed" in failed.stdout
    assert f"stopped at {DAYS[1]}" in failed.stdout and f"for {LAST}" not in failed.stdout

    # fixed, the same command resumes at the second night
    (second.parent / "events.parquet").unlink()
    second.write_bytes(good)
    resumed = nightrec(backfill_env, "backfill", "--start", str(DAYS[0]), "--end", str(LAST))
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"night {DAYS[0]}: already done" in resumed.stdout
    assert f"night {DAYS[1]} done" in resumed.stdout and f"night {LAST} done" in resumed.stdout

    for day in DAYS:
        one = nightrec(single_env, "run", "--ds", str(day))
        assert one.returncode == 0, one.stdout[-3000:] + one.stderr[-3000:]

    counts, lists = state(backfilled, redis_url, "backfilled")
    assert counts["silver/interactions"] > 0 and len(lists) == 30
    assert (counts, lists) == state(single, redis_url, "single")
