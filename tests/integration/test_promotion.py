"""The promotion gate and rollback across nights, with real Spark, MLflow (sqlite) and Redis."""

import datetime as dt
from pathlib import Path

import mlflow
import pytest
import redis
from fastapi.testclient import TestClient
from mlflow import MlflowClient
from pyspark.sql import functions as F

from conftest import settings_environ
from helpers import assert_table_matches_ddl, days_ending, write_landing
from nightrec.data import lake
from nightrec.modeling import experiment_store, registry, tracking
from nightrec.modeling.fallbacks import is_personal
from nightrec.pipeline import ingest, publish, score, train, validate
from nightrec.serving.api import create_app
from nightrec.serving.experiments import parse_variant
from nightrec.serving.layout import Keys
from nightrec.settings import load_settings

DAY = dt.date(2024, 5, 20)
WORSE_RECIPE = str(Path(__file__).parents[1] / "data" / "recipe_worse.toml")


@pytest.fixture(scope="module")
def nights(spark, redis_server, tmp_path_factory):
    home = tmp_path_factory.mktemp("promotion")

    def settings(**overrides):
        return load_settings("local", settings_environ(home, redis_server, **overrides))

    redis.Redis.from_url(redis_server).flushall()
    base = settings()
    write_landing(Path(base.path("landing")), days_ending(DAY, 10), users=60, items=120)
    ingest.run(spark, base, DAY, lookback_days=10)
    validate.run(spark, base, DAY, lookback_days=10)
    first = train.run(spark, base, DAY)
    score.run(spark, base, DAY)
    publish.run(spark, base, DAY)
    return settings, first


def test_a_worse_candidate_is_not_promoted_and_the_champion_stays_live(spark, nights):
    settings, first = nights
    base = settings()
    live_before = redis.Redis.from_url(base.redis.url).get(Keys(base.redis.prefix).live)
    worse = train.run(spark, settings(MODEL__RECIPE=WORSE_RECIPE), DAY)
    assert not worse.promoted and "champion kept" in worse.reason
    assert worse.champion_version == first.champion_version
    assert worse.champion_holdout_ndcg > worse.holdout["ndcg_at_10"] + 0.01
    tracking.configure(base)
    client = MlflowClient()
    name = base.mlflow.registered_model
    assert str(client.get_model_version_by_alias(name, "champion").version) == first.champion_version
    # tonight's best is registered and marked as the challenger; the run says why it was not promoted
    challenger = client.get_model_version_by_alias(name, "challenger")
    assert str(challenger.version) == worse.version
    tags = client.get_run(worse.run_id).data.tags
    assert tags["promotion_decision"] == "kept" and tags["promotion_reason"] == worse.reason
    # scoring keeps serving the champion's recommendations
    scored = score.run(spark, base, DAY)
    assert scored.model_version == f"{name}/{first.champion_version}"
    assert redis.Redis.from_url(base.redis.url).get(Keys(base.redis.prefix).live) == live_before


def test_an_experiment_serves_the_challenger_to_its_share_of_users_until_stopped(spark, nights):
    settings, first = nights
    base = settings(SERVICE__LIVE_CACHE_SECONDS="0")
    tracking.configure(base)
    name, keys = base.mlflow.registered_model, Keys(base.redis.prefix)
    challenger = str(MlflowClient().get_model_version_by_alias(name, "challenger").version)
    stored = experiment_store.start(base, "worse", [parse_variant("control=champion:70"),
                                                    parse_variant("treatment=challenger:30")])
    e = stored.experiment
    assert e.variant("treatment").model == challenger  # pinned at the start: later nights move the alias
    try:
        scored = score.run(spark, base, DAY)
        published = publish.run(spark, base, DAY)
        with TestClient(create_app(base)) as api:
            answers = {u: api.get(f"/v1/users/{u}/recommendations", params={"k": 100}).json() for u in range(1, 61)}
    finally:
        experiment_store.end(base, "seen enough")
    personal = {r.user_id for r in lake.read_table(spark, base.table("gold/recommendations"), [DAY])
                .where(is_personal(F.col("model_version"))).collect()}
    treated = {u for u in personal if e.assign(u).name == "treatment"}
    rows = {r.user_id: r for r in lake.read_table(spark, base.table("gold/variant_recommendations"), [DAY]).collect()}
    assert set(rows) == treated and 8 < len(treated) < 30
    assert {r.model_version for r in rows.values()} == {f"{name}/{challenger}"}
    assert_table_matches_ddl(spark, base, "gold_variant_recommendations")
    assert scored.variant_users == published.variant_users == {"treatment": len(treated)}
    client = redis.Redis.from_url(base.redis.url)
    assert all(client.get(keys.variant_user(published.version, "treatment", u)) == rows[u].value for u in treated)
    assert sum(1 for _ in client.scan_iter(match=f"{keys.variant_prefix(published.version, 'treatment')}*")) == \
        len(treated)
    for user, answer in answers.items():
        assert answer["variant"] == e.assign(user).name
        expected = rows[user].item_ids if user in treated else None
        if expected is not None:
            assert [i["item_id"] for i in answer["items"]] == list(expected)[:len(answer["items"])]
            assert answer["model_version"] == f"{name}/{challenger}"
        else:
            assert answer["model_version"] == f"{name}/{first.champion_version}"
    # stopped: the next night scores and publishes no variant lists
    assert score.run(spark, base, DAY).variant_users == {}
    again = publish.run(spark, base, DAY)
    assert again.experiment is None and not client.hexists(keys.meta(again.version), "experiment")
    # an A/A test needs no lists of its own: it serves from the next version published
    aa = experiment_store.start(base, "aa", [parse_variant("a=champion:50"), parse_variant("b=champion:50")])
    try:
        served = publish.run(spark, base, DAY)
        with TestClient(create_app(base)) as api:
            arms = {u: api.get(f"/v1/users/{u}/recommendations").json()["variant"] for u in range(1, 61)}
    finally:
        experiment_store.end(base, "seen enough")
    assert served.experiment == aa.experiment.id and served.variant_users == {}
    assert arms == {u: aa.experiment.assign(u).name for u in range(1, 61)} and set(arms.values()) == {"a", "b"}


def test_rollback_restores_the_previous_champion_and_republishes_it(spark, nights):
    settings, first = nights
    # A night whose gate lets anything through (tolerance 1) promotes the worse candidate...
    forced = train.run(spark, settings(MODEL__RECIPE=WORSE_RECIPE, MODEL__PROMOTION_TOLERANCE="1.0"), DAY)
    assert forced.promoted and forced.champion_version != first.champion_version
    base = settings()
    tracking.configure(base)
    name = base.mlflow.registered_model
    assert registry.current_champion(name).version == forced.champion_version
    # ... and one rollback brings the earlier champion back, live in Redis.
    old, new = registry.rollback(name)
    assert (old, new) == (forced.champion_version, first.champion_version)
    score.run(spark, base, DAY)
    published = publish.run(spark, base, DAY)
    assert published.model_version == f"{name}/{first.champion_version}"
    client = redis.Redis.from_url(base.redis.url)
    keys = Keys(base.redis.prefix)
    assert client.hget(keys.meta(client.get(keys.live).decode()), "model_version").decode() == published.model_version
    with pytest.raises(Exception, match="no version 999"):
        registry.rollback(name, "999")


def test_the_gate_judges_the_champion_by_a_fit_that_never_saw_the_holdout(spark, nights):
    """The same recipe on the same data again: the champion's holdout-free fit is tonight's model
    over again, so both score alike (the served champion, refit on the whole window, has seen the
    held-out items and would look far better). Runs last: the rollback above made `first` champion."""
    settings, first = nights
    tracking.configure(settings())
    assert registry.current_champion(settings().mlflow.registered_model).version == first.champion_version
    again = train.run(spark, settings(), DAY)
    assert again.promoted and again.champion_holdout_ndcg is not None
    assert again.champion_holdout_ndcg == pytest.approx(again.holdout["ndcg_at_10"], abs=0.01)
    assert first.holdout["ndcg_at_10"] == pytest.approx(again.holdout["ndcg_at_10"], abs=0.01)


class PickledModel(mlflow.pyfunc.PythonModel):  # what nightrec registered before its arrays + manifest format
    def predict(self, context, model_input, params=None):
        return model_input


def test_a_champion_in_the_old_pickled_format_is_replaced_by_tonights_model(spark, nights, tmp_path):
    settings, _ = nights
    base = settings()
    experiment = tracking.configure(base)
    name, client = base.mlflow.registered_model, MlflowClient()
    (tmp_path / "bundle.pkl").write_bytes(b"\x80\x05N.")
    with mlflow.start_run(experiment_id=experiment):
        info = mlflow.pyfunc.log_model(name="model", python_model=PickledModel(), registered_model_name=name,
                                       artifacts={"bundle": str(tmp_path / "bundle.pkl")})
    old = str(info.registered_model_version)
    client.set_model_version_tag(name, old, registry.RECIPE_TAG, '{"candidate": "popularity", "params": '
                                 '{"popularity": {"half_life_days": 0}}, "weights": {"popularity": 1.0}}')
    client.set_model_version_tag(name, old, "ds", DAY.isoformat())
    client.set_registered_model_alias(name, "champion", old)

    tonight = train.run(spark, settings(MODEL__RECIPE=WORSE_RECIPE), DAY)  # even a worse recipe: it can be served
    assert tonight.promoted and "cannot be loaded by this nightrec" in tonight.reason and "pickled" in tonight.reason
    assert score.run(spark, base, DAY).model_version == f"{name}/{tonight.version}"
