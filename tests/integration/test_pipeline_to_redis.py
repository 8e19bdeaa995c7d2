"""train -> score -> publish -> smoke on synthetic data, with real Spark, MLflow (sqlite) and Redis."""

import datetime as dt
import json
import time
from pathlib import Path

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient
from mlflow import MlflowClient

from conftest import settings_environ
from helpers import days_ending, write_landing
from nightrec.data import lake
from nightrec.modeling import registry, tracking
from nightrec.pipeline import ingest, publish, score, smoke, train, tune, validate
from nightrec.pipeline.publish import publish_frames
from nightrec.serving import loader as publisher
from nightrec.serving.api import create_app
from nightrec.serving.layout import Keys, decode, decode_user, encode
from nightrec.settings import load_settings

DAY = dt.date(2024, 5, 20)
USERS, ITEMS, NEW_USERS = 60, 200, 5


@pytest.fixture(scope="module")
def pipeline(spark, redis_server, tmp_path_factory):
    home = tmp_path_factory.mktemp("pipeline")
    settings = load_settings("local", settings_environ(home, redis_server, MODEL__RECIPE="tuned"))
    redis.Redis.from_url(redis_server).flushall()
    write_landing(Path(settings.path("landing")), days_ending(DAY, 10), users=USERS, items=ITEMS, new_users=NEW_USERS)
    ingest.run(spark, settings, DAY, lookback_days=10)
    validate.run(spark, settings, DAY, lookback_days=10)
    tuned = tune.run(spark, settings, DAY)
    trained = train.run(spark, settings, DAY)
    scored = score.run(spark, settings, DAY)
    published = publish.run(spark, settings, DAY)
    return settings, tuned, trained, scored, published


def test_tuning_compares_every_candidate_and_the_night_fits_its_choice(pipeline):
    settings, tuned, trained, _, _ = pipeline
    tracking.configure(settings)
    client = MlflowClient()
    name = settings.mlflow.registered_model
    assert set(tuned.holdout_ndcg) == set(tuned.validation_ndcg) == {"als", "itemknn", "neighbours", "content",
                                                                     "popularity", "hybrid"}
    # the recipe is the validation winner (the holdout only reports), and it beats popularity widely
    assert tuned.validation_ndcg[tuned.recipe["candidate"]] == max(tuned.validation_ndcg.values())
    assert tuned.holdout_ndcg[tuned.recipe["candidate"]] > 1.5 * tuned.holdout_ndcg["popularity"]
    for candidate in tuned.holdout_ndcg:
        runs = client.search_runs([client.get_run(tuned.run_id).info.experiment_id],
                                  f"tags.candidate = '{candidate}' and tags.kind = 'tuning'")
        assert runs and runs[0].data.tags["mlflow.parentRunId"] == tuned.run_id
        assert {"holdout_ndcg_at_10", "holdout_recall_at_100", "validation_ndcg_at_10"} <= set(runs[0].data.metrics)
    assert json.loads(client.get_registered_model(name).tags["tuned_recipe"]) == tuned.recipe

    assert trained.recipe_source == f"tuning run {tuned.run_id}" and trained.candidate == tuned.recipe["candidate"]
    assert trained.promoted and "no champion yet" in trained.reason
    champion = client.get_model_version_by_alias(name, "champion")
    assert str(champion.version) == trained.champion_version == trained.version
    assert json.loads(champion.tags["recipe"]) == tuned.recipe
    parent = client.get_run(trained.run_id)
    assert parent.data.tags["promotion_decision"] == "promoted" and parent.data.tags["candidate"] == trained.candidate
    metrics = parent.data.metrics
    for metric in ("precision", "recall", "ndcg", "map"):
        assert {f"holdout_{metric}_at_10", f"holdout_{metric}_at_100"} <= set(metrics)
    assert {"holdout_coverage_at_10", "holdout_novelty_at_10", "holdout_ndcg_at_10_warm"} <= set(metrics)
    artifacts = {a.path for a in client.list_artifacts(trained.run_id, "reports")}
    assert {"reports/metrics_vs_k.png", "reports/score_distribution.png", "reports/popularity_vs_catalog.png",
            "reports/sample_recommendations.json"} <= artifacts
    assert trained.holdout["ndcg_at_10"] == pytest.approx(tuned.holdout_ndcg[trained.candidate], abs=0.05)


def test_recommendations_follow_the_taste_groups_and_skip_seen_items(spark, pipeline):
    settings, _, trained, scored, _ = pipeline
    assert scored.users == USERS + NEW_USERS and scored.new_users == NEW_USERS
    assert scored.min_items_per_user == settings.model.top_k
    gold = {r.user_id: r.item_ids
            for r in lake.read_table(spark, settings.table("gold/recommendations"), [DAY]).collect()}
    seen = {(r.user_id, r.item_id) for r in lake.read_table(spark, settings.table("silver/interactions")).collect()}
    assert not [(u, i) for u, items in gold.items() for i in items if (u, i) in seen]
    # Within a group tastes are uniform: a good model keeps almost every top-10 item inside the group.
    own_group = sum(1 for u, items in gold.items() if u <= USERS for i in items[:10] if i % 4 == u % 4)
    assert own_group / (10 * USERS) > 0.9


def test_redis_holds_every_user_of_gold_under_the_live_version(spark, pipeline):
    settings, _, _, _, published = pipeline
    client = redis.Redis.from_url(settings.redis.url)
    keys = Keys(settings.redis.prefix)
    assert client.get(keys.live).decode() == published.version and published.users == USERS + NEW_USERS
    segments = 0
    for row in lake.read_table(spark, settings.table("gold/recommendations"), [DAY]).collect():
        stored = decode_user(client.get(keys.user(published.version, row.user_id)))
        if isinstance(stored, str):  # a user without history refers to the segment list gold copies
            segments += 1
            assert row.model_version in (f"segment:{stored}", "popular:global")
            stored = decode(client.get(keys.fallback(published.version, stored)))
        ids, scores = stored
        assert bytes(row.value) == client.get(keys.user(published.version, row.user_id))
        assert ids == list(row.item_ids)
        assert scores == pytest.approx(list(row.scores), rel=2e-3, abs=1e-3)
    assert segments == NEW_USERS
    assert client.hget(keys.meta(published.version), "model_version").decode() == published.model_version
    # neighbours of every item that has any, and category members, under the same version
    similar = lake.read_table(spark, settings.table("gold/similar_items"), [DAY]).collect()
    taken = lake.read_table(spark, settings.table("silver/interactions")).select("item_id").distinct().count()
    assert published.similar_items == len(similar) == taken
    for row in similar[:20]:
        assert decode(client.get(keys.similar(published.version, row.item_id)))[0] == list(row.item_ids)
        assert row.item_id not in row.item_ids and 0 < len(row.item_ids) <= settings.model.similar_k
    assert published.categories == 4 and published.segments >= 1


def test_similar_items_stay_inside_the_taste_group(spark, pipeline):
    settings = pipeline[0]
    similar = lake.read_table(spark, settings.table("gold/similar_items"), [DAY]).collect()
    same = sum(1 for row in similar for i in row.item_ids[:5] if i % 4 == row.item_id % 4)
    assert same / (5 * len(similar)) > 0.95


def test_smoke_stage_checks_through_the_service(pipeline):
    settings, _, _, _, published = pipeline
    result = smoke.run(settings, DAY)
    assert result.live_version == published.version and result.unknown_user_source == "trending"


def test_republishing_flips_atomically_and_keeps_one_previous_version(spark, pipeline):
    settings, _, _, _, first = pipeline
    client = redis.Redis.from_url(settings.redis.url)
    keys = Keys(settings.redis.prefix)
    second = publish.run(spark, settings, DAY)
    assert second.previous == first.version
    assert client.exists(keys.user(first.version, 1))  # the previous version stays readable for rollback
    # a load that starts after ours belongs to someone else still writing: never deleted under them
    client.zadd(keys.versions, {"someone-else": 4102444800})
    client.set(keys.user("someone-else", 1), b"in progress")
    third = publish.run(spark, settings, DAY)
    assert third.previous == second.version and third.deleted_versions == [first.version]
    assert not client.keys(keys.version_pattern(first.version))
    assert client.get(keys.user("someone-else", 1)) == b"in progress"
    client.zrem(keys.versions, "someone-else")


def test_an_older_load_never_replaces_a_newer_live_version(spark, pipeline):
    settings = pipeline[0]
    client = redis.Redis.from_url(settings.redis.url)
    keys = Keys(settings.redis.prefix)
    live = publish.run(spark, settings, DAY).version
    client.zadd(keys.versions, {"slow-load": time.time() - 60})  # started before the live one, finishing now
    client.hset(keys.meta("slow-load"), "ds", str(DAY))
    with pytest.raises(publisher.PublishError, match="a newer version is live"):
        publisher.flip(client, keys, "slow-load")
    assert client.get(keys.live).decode() == live
    client.zrem(keys.versions, "slow-load")
    client.delete(keys.meta("slow-load"))


def test_a_load_failing_half_way_leaves_the_live_version_untouched(spark, pipeline):
    settings, _, _, _, _ = pipeline
    client = redis.Redis.from_url(settings.redis.url)
    keys = Keys(settings.redis.prefix)
    live_before = client.get(keys.live)
    good = [(u, encode([1, 2, 3], [0.3, 0.2, 0.1])) for u in range(1, 200)]
    broken = spark.createDataFrame(good + [(999, None)], "user_id int, value binary")
    with pytest.raises(Exception, match="user 999 has no value"):
        publish_frames(broken.repartition(4), publisher.Extras({"global": ([1], [1.0])}), url=settings.redis.url,
                          prefix=settings.redis.prefix, ds=DAY, model_version="broken/1")
    assert client.get(keys.live) == live_before
    with TestClient(create_app(settings)) as api:
        body = api.get("/v1/users/1/recommendations").json()
    assert body["version"] == live_before.decode() and len(body["items"]) == 10
    # an abandoned load is cleaned up by the first publish after LOAD_GRACE (it might still be running before)
    abandoned = [v.decode() for v in client.zrange(keys.versions, 0, -1)
                 if v not in (client.get(keys.live), client.get(keys.previous))]
    assert abandoned
    assert not set(abandoned) & set(publish.run(spark, settings, DAY).deleted_versions)
    client.zadd(keys.versions, {v: time.time() - publisher.LOAD_GRACE - 60 for v in abandoned})
    assert set(abandoned) <= set(publish.run(spark, settings, DAY).deleted_versions)


def test_sql_table_definitions_match_the_tables_written(spark, pipeline):
    from helpers import assert_table_matches_ddl, ddl_tables

    settings = pipeline[0]
    # the experiments' tables are checked where they are written: tests/spark/test_analyze.py, test_promotion.py;
    # the records of requests in tests/integration/test_erasure.py; the operations records in
    # tests/spark/test_volume_checks.py
    elsewhere = {"silver_impressions", "quarantine_impressions", "silver_user_outcomes", "silver_item_outcomes",
                 "gold_variant_recommendations", "privacy_requests", "privacy_reports", "audit_log",
                 "ops_stage_runs", "ops_day_profiles", "ops_alerts", "ops_silences"}
    assert len(ddl_tables()) == 20
    for name in set(ddl_tables()) - elsewhere:
        assert_table_matches_ddl(spark, settings, name)


def test_retrieved_scoring_forced_on_finds_the_exact_lists_and_says_so(spark, pipeline):
    """The night's exact lists against a score stage forced to shortlists of 30 candidates per
    source (of 200 items): nearly the same lists, the same scores, the mode recorded on the model
    version and shown by status."""
    from nightrec.cli import _champion_summary

    settings, _, _, exact_night, _ = pipeline
    assert exact_night.scoring.startswith("exact")

    def personal_lists():
        rows = lake.read_table(spark, settings.table("gold/recommendations"), [DAY]).collect()
        personal = [r for r in rows if r.model_version == exact_night.model_version]
        return {r.user_id: dict(zip(r.item_ids, r.scores)) for r in personal}

    exact = personal_lists()
    forced = settings.model_copy(update={"model": settings.model.model_copy(
        update={"retrieval": "retrieved", "retrieval_depth": 30})})
    night = score.run(spark, forced, DAY)
    retrieved = personal_lists()
    assert night.scoring.startswith("retrieved: 30 candidates per source")
    champion, _ = registry.load_champion(settings.mlflow.registered_model)
    assert ("HNSW" in night.scoring) == (champion.weights.get("als", 0) > 0)  # the index is over ALS's factors
    assert set(retrieved) == set(exact) and {len(items) for items in retrieved.values()} == {settings.model.top_k}
    recall = np.mean([len(retrieved[u].keys() & exact[u].keys()) / len(exact[u]) for u in exact])
    assert recall >= 0.95, recall
    for user, items in retrieved.items():
        shared = sorted(items.keys() & exact[user].keys())
        np.testing.assert_allclose([items[i] for i in shared], [exact[user][i] for i in shared], rtol=1e-4, atol=1e-4)
    assert f"scored {night.scoring} (night of {DAY})" in _champion_summary(forced)
