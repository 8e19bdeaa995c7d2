"""A night with every store on S3 (the private S3 server): landing files, the Delta lake (s3a,
delta-spark), Data Docs and MLflow artifacts; published to a real Redis and served. The same night
run twice leaves the same state."""

import datetime as dt
import json
from pathlib import Path

import boto3
import pytest
import redis
from fastapi.testclient import TestClient

from conftest import settings_environ
from helpers import days_ending, write_landing
from nightrec.data import lake, storage
from nightrec.data.spark import use_storage
from nightrec.pipeline import drain_events, housekeeping, ingest, publish, score, smoke, train, validate
from nightrec.serving.api import create_app
from nightrec.settings import load_settings

DAY = dt.date(2024, 5, 20)
USERS, ITEMS = 40, 120


def night(spark, settings) -> dict:
    return {"drain": drain_events.run(settings, DAY),
            "ingest": ingest.run(spark, settings, DAY, lookback_days=5),
            "validate": validate.run(spark, settings, DAY, lookback_days=5),
            "train": train.run(spark, settings, DAY),
            "score": score.run(spark, settings, DAY),
            "publish": publish.run(spark, settings, DAY),
            "smoke": smoke.run(settings, DAY)}


def gold(spark, settings) -> list[tuple]:
    table = lake.read_table(spark, settings.table("gold/recommendations"), [DAY])
    return sorted((r.user_id, bytes(r.value)) for r in table.collect())


@pytest.fixture(scope="module")
def on_s3(spark, redis_server, s3_endpoint, tmp_path_factory):
    home = tmp_path_factory.mktemp("s3night")
    bucket = "nightly-on-s3"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    settings = load_settings("local", settings_environ(home, redis_server, stores=f"s3://{bucket}",
                                                       s3_endpoint=s3_endpoint))
    use_storage(spark)  # the session's s3a connector follows the settings just loaded, as get_spark does
    redis.Redis.from_url(redis_server).flushall()
    local = home / "delivered"
    write_landing(local, days_ending(DAY, 5), users=USERS, items=ITEMS)
    storage.upload_folder(local, settings.path("landing"))
    first = night(spark, settings)
    first_gold = gold(spark, settings)
    second = night(spark, settings)
    return settings, bucket, first, second, first_gold


def test_the_night_runs_with_every_store_on_s3(spark, on_s3):
    settings, bucket, first, _, _ = on_s3
    assert first["ingest"].rows > 0 and first["validate"].good_rows == first["ingest"].rows
    assert first["score"].users == USERS and first["publish"].users == USERS
    assert first["validate"].data_docs == f"s3://{bucket}/docs/dt={DAY}/index.html"
    assert storage.stat(first["validate"].data_docs).size > 0
    keys = {e.uri.removeprefix(f"s3://{bucket}/").split("/", 1)[0] for e in storage.walk(f"s3://{bucket}")}
    assert keys == {"landing", "lake", "docs", "artifacts"}
    assert any("/artifacts/" in e.uri for e in storage.walk(f"s3://{bucket}/artifacts"))  # the model's files
    with TestClient(create_app(settings)) as api:
        answer = api.get("/v1/users/1/recommendations", params={"k": 5}).json()
    assert answer["source"] == "personalized" and len(answer["items"]) == 5


def test_no_delta_log_entry_names_a_local_path(on_s3):
    _, bucket, _, _, _ = on_s3
    logs = [e for e in storage.walk(f"s3://{bucket}/lake") if "/_delta_log/" in e.uri and e.uri.endswith(".json")]
    assert logs
    for entry in logs:
        for line in storage.read_bytes(entry.uri).decode().splitlines():
            action = json.loads(line)
            assert "file:" not in json.dumps(action.get("add", {})) + json.dumps(action.get("remove", {})), entry.uri


def test_the_same_night_twice_leaves_the_same_lists(spark, on_s3):
    settings, _, first, second, first_gold = on_s3
    assert gold(spark, settings) == first_gold
    assert second["ingest"].rows == first["ingest"].rows and second["score"].users == first["score"].users
    silver = lake.read_table(spark, settings.table("silver/interactions"))
    assert silver.count() == first["validate"].good_rows  # replaced, never appended twice


def test_housekeeping_vacuums_the_lake_on_s3(spark, on_s3):
    settings, _, _, _, _ = on_s3
    every_night = settings.model_copy(update={"lake": settings.lake.model_copy(update={"maintenance_days": 0})})
    result = housekeeping.run(spark, every_night, DAY)
    assert set(result.tables) == set(lake.find_tables(settings.path("lake")))
    assert all(table["maintained"] for table in result.tables.values())
    assert lake.read_table(spark, settings.table("silver/interactions")).count() > 0


def test_a_drained_stream_lands_on_s3(spark, on_s3):
    settings, bucket, _, _, _ = on_s3
    with TestClient(create_app(settings)) as api:
        assert api.post("/v1/events", json={"user_id": 1, "item_id": 3, "event_type": "click"}).json()["stored"]
    drained = drain_events.run(settings, DAY)
    assert drained.events == 1 and drained.files[0].startswith(f"s3://{bucket}/landing/interactions/dt=")
    assert b'"item_id": "3"' in storage.read_bytes(drained.files[0])
    assert Path(storage.name_of(drained.files[0])).suffix == ".jsonl"
