"""Erasure end to end, with real Spark, MLflow (sqlite), Redis and the lookup service: a user with
events in landing files, the event stream, the lake, Redis and a registered model; `nightrec forget`
and one night; then nothing under the lake (every file, every version), the MLflow store or a dump of
Redis names them, but the records of the request itself."""

import datetime as dt
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis
import time_machine
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from conftest import settings_environ
from helpers import assert_table_matches_ddl, days_ending, write_csv, write_landing
from nightrec.cli import app as cli
from nightrec.data import lake, storage
from nightrec.data.landing import day_folder, managed_files
from nightrec.data.spark import use_storage
from nightrec.pipeline import analyze, drain_events, ingest, publish, records, score, train, validate
from nightrec.pipeline import privacy as privacy_stage
from nightrec.serving.api import create_app
from nightrec.serving.layout import Keys
from nightrec.settings import load_settings

USER = 987654321  # an id no other number in the test data spells
USERS, ITEMS = 60, 200
TODAY = dt.datetime.now(dt.timezone.utc).date()
# The service stamps what it records with its clock: set back to the start of TODAY (ticking) while the
# test's traffic runs, so a run that crosses midnight still lands its traffic in TODAY's folders.
SERVICE_CLOCK = dt.datetime.combine(TODAY, dt.time(), tzinfo=dt.timezone.utc)
NEEDLES = (str(USER).encode(), struct.pack("<i", USER), struct.pack(">i", USER), struct.pack("<q", USER))
KEYS = Keys("test")
EXEMPT = ("privacy/requests", "privacy/reports", "audit/log")  # the request's own records keep the id


def night(spark, settings, stages: list[str]) -> dict:
    modules = {"drain_events": drain_events, "privacy": privacy_stage, "ingest": ingest, "validate": validate,
               "analyze": analyze, "train": train, "score": score, "publish": publish}
    results = {}
    for stage in stages:
        module = modules[stage]
        if stage in ("drain_events", "privacy"):
            results[stage] = module.run(settings, TODAY)
        elif stage in ("ingest", "validate", "analyze"):
            results[stage] = module.run(spark, settings, TODAY, lookback_days=11)
        else:
            results[stage] = module.run(spark, settings, TODAY)
    return results


def traffic(settings, clicks: list[int]) -> None:
    """The user and others read their lists (impressions); the user clicks items (the event stream)."""
    with time_machine.travel(SERVICE_CLOCK, tick=True), TestClient(create_app(settings)) as api:
        for user in (USER, *range(1, 21)):
            assert api.get(f"/v1/users/{user}/recommendations").status_code == 200
        for item in clicks:
            event = {"user_id": USER, "item_id": item, "event_type": "click"}
            assert api.post("/v1/events", json=event).json()["stored"]


def holds_user(uri: str) -> bool:
    data = storage.read_bytes(uri)
    if any(needle in data for needle in NEEDLES):
        return True
    if data[:4] == b"PAR1":  # compressed pages hide values from a byte search: decode them too
        return str(USER) in json.dumps(pq.read_table(pa.BufferReader(data)).to_pylist(), default=str)
    return False


def files_holding_user(root: str) -> list[str]:
    """Every file (S3: every object) under root that names the user, relative to root."""
    base = root.rstrip("/")
    return sorted(e.uri[len(base):].lstrip("/") for e in storage.walk(base) if holds_user(e.uri))


def managed_files_holding_user(landing: str) -> list[str]:
    return sorted(e.uri for e in managed_files(landing) if holds_user(e.uri))


def redis_dump(client) -> bytes:
    """Every key's name and value, read by type (a logical dump: RDB files compress values)."""
    read = {"string": client.get, "hash": client.hgetall, "set": client.smembers, "stream": client.xrange,
            "zset": lambda key: client.zrange(key, 0, -1, withscores=True),
            "list": lambda key: client.lrange(key, 0, -1)}
    parts = []
    for key in client.scan_iter(count=1000):
        parts.append(key + b"=" + repr(read[client.type(key).decode()](key)).encode())
    return b"\n".join(parts)


def personal_lists(settings) -> dict[int, bytes]:
    table = lake.small_table(settings.table("gold/recommendations"), ["user_id", "value"], [TODAY])
    return dict(zip(table["user_id"].to_pylist(), table["value"].to_pylist()))


def count_user(settings, name: str) -> int:
    column = "raw" if name == "quarantine/impressions" else "user_id"
    values = lake.small_table(settings.table(name), [column])[column].to_pylist()
    if column == "raw":
        return sum(str(USER) in raw for raw in values)
    return values.count(USER if name.startswith(("silver", "gold")) else str(USER))


@pytest.fixture(scope="module", params=["local", "s3"])
def erasure(request, spark, redis_server, tmp_path_factory):
    """The user everywhere, `nightrec forget`, one night: with the stores on local disk, and on S3."""
    home = tmp_path_factory.mktemp(f"erasure-{request.param}")
    stores = endpoint = None
    if request.param == "s3":
        endpoint = request.getfixturevalue("s3_endpoint")
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="erasure")
        stores = "s3://erasure"
    environ = settings_environ(home, redis_server, stores=stores, s3_endpoint=endpoint or "")
    settings = load_settings("local", environ)
    use_storage(spark)
    client = redis.Redis.from_url(redis_server)
    client.flushall()
    # Files other teams deliver: written here, then (S3) uploaded, which delivers them now.
    landing = home / "delivered" if stores else Path(settings.path("landing"))
    # Delivered files end yesterday, so no event they hold is dated after their delivery at any hour.
    days = days_ending(TODAY - dt.timedelta(days=1), 10)
    write_landing(landing, days, users=USERS, items=ITEMS)
    liked = [i for i in range(1, ITEMS + 1) if i % 4 == USER % 4]
    for n, day in enumerate(days):  # the user's history in files delivered by others, one bad row with it
        at = f"{day}T12:00:0{n % 10}Z"
        rows = [(USER, liked[n], "click", 1, at), (USER, liked[n + 10], "view", 1, at), (USER, 3, "teleport", 1, at)]
        write_csv(landing / "interactions" / f"dt={day}" / "user.csv", rows)
    # Delivered at midnight, before the erasure whenever this runs, with events dated after it: the
    # erasure judges by delivery, never by the times a file claims (quarantined as future until then).
    held_back = [(user, 1 + user % ITEMS, "view", 1, f"{TODAY}T00:0{user % 10}:00Z") for user in range(1, USERS + 1)]
    held_back += [(USER, liked[n], "click", 1, f"{TODAY}T23:59:5{n}Z") for n in range(3)]
    write_csv(landing / "interactions" / f"dt={TODAY}" / "held-back.csv", held_back,
              delivered=dt.datetime.combine(TODAY, dt.time(), tzinfo=dt.timezone.utc))
    with open(landing / "users.csv", "a") as users:
        users.write(f"{USER},33,F\n")
    if stores:
        storage.upload_folder(landing, settings.path("landing"))

    night(spark, settings, ["ingest", "validate", "analyze", "train", "score", "publish"])
    traffic(settings, liked[20:23])
    night(spark, settings, ["drain_events"])  # e.g. a rerun: the stream lands
    drained, = [e.uri for e in storage.listdir(day_folder(settings.path("landing"), TODAY, "impressions"))
                if e.name.startswith("stream-")]
    # one of their answers goes to quarantine (a request id no lookup made)
    bad = {"request_id": "not-hex", "user_id": USER, "items": [1], "ts": f"{TODAY}T01:00:00Z"}
    storage.write_bytes(drained, storage.read_bytes(drained) + json.dumps(bad).encode() + b"\n")
    night(spark, settings, ["ingest", "validate", "analyze"])
    traffic(settings, liked[23:24])  # still in the stream at the night
    before = {
        "tables": {name: count_user(settings, name)
                   for name in ("bronze/interactions", "bronze/users", "silver/interactions", "quarantine/interactions",
                                "silver/impressions", "silver/user_outcomes", "gold/recommendations",
                                "quarantine/impressions")},
        "landing": managed_files_holding_user(settings.path("landing")),
        "stream": sum(int(f[b"user_id"]) == USER for _, f in client.xrange(KEYS.events)),
        "held_back_quarantined": sum(r["user_id"] == str(USER) and r["reasons"] == ["ts_not_future"] for r in (
            lake.small_table(settings.table("quarantine/interactions"), ["user_id", "reasons"]).to_pylist())),
        "lists": personal_lists(settings),
    }

    with mock.patch.dict(os.environ, environ):
        forgot = CliRunner().invoke(cli, ["forget", str(USER)])
    assert forgot.exit_code == 0, forgot.output
    results = night(spark, settings, ["drain_events", "privacy", "ingest", "validate", "analyze", "score", "publish"])
    after_lists = personal_lists(settings)
    results |= night(spark, settings, ["train"])  # a model trained after the erasure
    return Erased(request.param, environ, settings, client, before, after_lists, results)


@dataclass
class Erased:
    kind: str                  # where the stores are: local | s3
    environ: dict[str, str]    # the settings' environment (for the CLI)
    settings: object
    client: redis.Redis
    before: dict
    after_lists: dict[int, bytes]
    results: dict


def test_the_user_was_everywhere_before(erasure):
    before = erasure.before
    assert all(count > 0 for count in before["tables"].values()), before["tables"]
    # In the stream: the event posted after the drain, and the drained one the stream keeps as its newest.
    assert before["landing"] and before["stream"] == 2 and USER in before["lists"]
    if erasure.kind == "local":  # delivered at midnight (on S3 an upload is delivered when it happens)
        assert before["held_back_quarantined"] == 3  # dated after their delivery: quarantined, not learnt from


def test_nothing_in_the_lake_names_the_user_in_any_version(erasure):
    settings, results = erasure.settings, erasure.results
    found = files_holding_user(settings.path("lake"))
    assert found and all(path.startswith(EXEMPT) for path in found), found  # the request's records only
    assert USER in lake.small_table(settings.table("privacy/requests"))["user_id"].to_pylist()
    removed = results["privacy"].removed
    assert results["privacy"].erased_users == 1
    assert removed["lake:silver/interactions"] > 0 and removed["lake:bronze/users"] == 1
    assert removed["landing:rows"] > 0 and removed["redis:events"] == 1  # the night's drain kept one


def test_no_file_of_any_store_names_them_but_the_requests_records(erasure):
    """Every file the stores hold (on S3: every object in the bucket), and the MLflow database. The
    files other teams delivered to the landing zone are theirs: erasure never edits them (ingest
    leaves the user's rows out instead)."""
    settings = erasure.settings
    stores = storage.parent_of(settings.path("lake"))
    found = files_holding_user(stores)
    delivered = [path for path in found if path.startswith("landing/")]
    assert {storage.name_of(path) for path in delivered} == {"user.csv", "users.csv", "held-back.csv"}
    assert all(path.startswith(tuple(f"lake/{name}" for name in EXEMPT)) for path in found if path not in delivered)
    assert managed_files_holding_user(settings.path("landing")) == []
    assert files_holding_user(settings.mlflow.artifact_root) == []
    assert not holds_user(settings.mlflow.tracking_uri.removeprefix("sqlite:///"))


def test_a_dump_of_redis_names_them_nowhere(erasure):
    dump = redis_dump(erasure.client)
    assert b"nightrec" in dump or b"test:" in dump  # the dump read something
    assert not any(needle in dump for needle in NEEDLES)


def test_their_lists_are_non_personalised_and_everyone_elses_unchanged(erasure):
    settings, before, after_lists = erasure.settings, erasure.before, erasure.after_lists
    assert USER not in after_lists
    others = {u: v for u, v in before["lists"].items() if u != USER}
    assert after_lists == others
    with TestClient(create_app(settings)) as api:
        assert api.get(f"/v1/users/{USER}/recommendations").json()["source"] == "trending"
        assert api.get("/v1/users/1/recommendations").json()["source"] == "personalized"


def test_the_records_match_their_table_definitions(spark, erasure):
    for name in ("privacy_requests", "privacy_reports", "audit_log"):
        assert_table_matches_ddl(spark, erasure.settings, name)


def test_privacy_status_reports_what_went_where(erasure):
    settings, client = erasure.settings, erasure.client
    with mock.patch.dict(os.environ, erasure.environ):
        status = CliRunner().invoke(cli, ["privacy", "status", str(USER)]).output
        audit = CliRunner().invoke(cli, ["audit", "--action", "erasure_done"]).output
    assert "erasure" in status and "done" in status and "lake:silver/interactions" in status
    assert "no mark in Redis" in status
    assert "erasure_done" in audit and str(USER) in audit
    rows = records.read(client, KEYS, records.AUDIT, settings)
    assert [r["action"] for r in rows if r["target"] == str(USER)] == ["erasure_requested", "erasure_done"]
