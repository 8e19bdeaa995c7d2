"""The nightly analysis on landing files through ingest and validate, with a real MLflow and Redis:
metrics on counts worked out by hand, the decisions, and the automatic rollback."""

import datetime as dt
import json
import random
from pathlib import Path

import mlflow
import pytest
import redis
from mlflow import MlflowClient

from helpers import alert_receivers, assert_table_matches_ddl, tiny_bundle, write_csv
from nightrec.modeling import experiment_store, registry, tracking
from nightrec.pipeline import alerts, analyze, ingest, validate
from nightrec.serving.experiments import ExperimentError, parse_variant
from nightrec.serving.layout import Keys

DS = dt.date(2026, 11, 30)
STARTED = dt.datetime(2026, 11, 29, 12, tzinfo=dt.timezone.utc)
EVENT_HEADER = ("user_id", "item_id", "event_type", "value", "ts", "request_id", "position")


@pytest.fixture
def settings(make_settings, redis_url):
    settings = make_settings(redis_url, EXPERIMENTS__CLICK_EVENTS='["click"]', VALIDATION__MAX_BAD_FRACTION=0.5)
    experiment_store._experiment_id(settings)  # also points MLflow at the test store
    return settings


@pytest.fixture
def champion(settings):
    """Version 1 was champion, version 2 replaced it."""
    name, nightly = settings.mlflow.registered_model, tracking.configure(settings)
    for version in ("1", "2"):
        with mlflow.start_run(experiment_id=nightly, run_name=f"night {version}"):
            registry.log_candidate_model(tiny_bundle(5), name, {registry.RECIPE_TAG: json.dumps({"candidate": "pop"})})
        registry.set_aliases(name, version, None)
    return name


def shown(request_id: str, user: int, items: list[int], day: dt.date = DS, variant: str | None = None,
          experiment: str | None = None, explored: tuple[int, ...] = ()) -> dict:
    return {"request_id": request_id, "user_id": user, "experiment": experiment, "variant": variant,
            "version": f"{day:%Y%m%d}.1", "model_version": "nightrec/2", "source": "personalized", "items": items,
            "explored": list(explored), "ts": f"{day}T12:00:00.000+00:00"}


def event(user: int, item: int, kind: str, request_id: str = "", position: int | str = "", day: dt.date = DS):
    return (user, item, kind, 1, f"{day}T13:00:00Z", request_id, position)


def land(settings, impressions: dict[dt.date, list[dict]], events: dict[dt.date, list[tuple]]) -> None:
    landing = Path(settings.path("landing"))
    for day, rows in impressions.items():
        folder = landing / "impressions" / f"dt={day}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "stream-1_0.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    for day, rows in events.items():
        write_csv(landing / "interactions" / f"dt={day}" / "events.csv", rows, header=EVENT_HEADER)


def night(spark, settings, days: int = 1):
    ingest.run(spark, settings, DS, days)
    validate.run(spark, settings, DS, days)
    return analyze.run(spark, settings, DS, days)


def start(settings, variants=("control=champion:50", "treatment=1:50")):
    return experiment_store.start(settings, "ab1", [parse_variant(v) for v in variants], now=STARTED)


def test_variant_metrics_on_counts_worked_out_by_hand(spark, settings, champion, redis_url):
    e = start(settings).experiment
    ab = {"experiment": e.id}
    items = [11, 12, 13, 14, 15]
    impressions = [
        shown("a1", 1, items, variant="control", **ab), shown("a2", 1, items, variant="control", **ab),
        shown("a3", 2, list(range(11, 23)), variant="control", **ab), shown("a4", 2, items, variant="control", **ab),
        shown("a5", 3, items, variant="control", **ab),
        shown("b1", 4, items, variant="treatment", **ab),
        shown("b2", 5, items, variant="treatment", **ab), shown("b3", 5, items, variant="treatment", explored=(5,),
                                                               **ab),
        shown("b4", 6, items, variant="treatment", **ab),
        shown("c1", 9, items),  # production traffic, outside the experiment
        {"request_id": "NOT HEX", "user_id": 3, "items": items, "ts": f"{DS}T12:00:00Z"},  # quarantined
        shown("a5", 3, items, variant="control", **ab),  # a drain repeated: kept once
    ]
    events = [
        event(1, 11, "click", "a1", 1),                    # u1: 1 of 2 impressions clicked
        event(2, 22, "click", "a3", 12),                   # u2: rank 12 is beyond CTR@10 ...
        event(2, 13, "click", "a4", 3), event(2, 13, "purchase", "a4", 3),  # ... a4 clicked and converted
        event(4, 12, "click", "b1", 2),                    # u4: 1 of 1
        event(5, 14, "click", "b2", 9),                    # u5: rank 9 names no item: rank 4 from the answer
        event(5, 15, "click", "b3", 5),                    # ... an explored position: not counted
        event(1, 11, "click", "b4", 1),                    # u1 sent u6's request id: not attributed
        event(7, 11, "view"),                              # not attributed to anything
    ]
    land(settings, {DS: impressions}, {DS: events})
    result = night(spark, settings)
    assert (result.impressions, result.quarantined_impressions, result.duplicate_impressions) == (10, 1, 1)
    assert result.experiment == "ab1" and result.decision == "continue"
    # control: clicked x = [1, 1, 0] of y = [2, 2, 1] impressions -> CTR 2/5 = 0.4; x - r y = [.2, .2, -.4],
    # var = .24 / 2 = .12, var(r) = .12 / (3 * (5/3)^2) = .0144 -> se .12
    # treatment: x = [1, 1, 0], y = [1, 2, 1] -> CTR 2/4 = 0.5; x - r y = [.5, 0, -.5], var = .25,
    # var(r) = .25 / (3 * (4/3)^2) = .046875
    assert result.variants["control"]["ctr_at_10"] == 0.4 and result.variants["treatment"]["ctr_at_10"] == 0.5
    client = MlflowClient()
    (night_run,) = client.search_runs([experiment_store._experiment_id(settings)],
                                      filter_string="tags.decision = 'continue'")
    m = night_run.data.metrics
    assert m["control_ctr_at_10_se"] == pytest.approx(0.12) and m["treatment_ctr_at_10_se"] == pytest.approx(
        0.046875 ** 0.5)
    assert m["control_conversion"] == pytest.approx(1 / 3) and m["treatment_conversion"] == 0
    assert m["control_events_per_user"] == pytest.approx(4 / 3) and m["treatment_events_per_user"] == 1
    assert m["control_users"] == 3 and m["treatment_impressions"] == 4
    assert m["treatment_vs_control_ctr_at_10_difference"] == pytest.approx(0.1)
    assert night_run.data.tags["mlflow.parentRunId"] == experiment_store.running(settings).run_id
    assert [a.path for a in client.list_artifacts(night_run.info.run_id)] == ["ctr_at_10_over_nights.png"]
    history = client.get_metric_history(experiment_store.running(settings).run_id, "treatment_ctr_at_10")
    assert [(h.step, h.value) for h in history] == [(1, 0.5)]  # night 1 of the experiment
    assert redis.Redis.from_url(redis_url).get(Keys("test").experiment) == e.to_json().encode()
    for table in ("silver_impressions", "quarantine_impressions", "silver_user_outcomes", "silver_interactions",
                  "quarantine_interactions", "bronze_interactions"):
        assert_table_matches_ddl(spark, settings, table)


def clicks(rng: random.Random, prefix: str, users: range, rate: float, day: dt.date = DS, **labels):
    """Each user sees 3 answers and clicks each with probability `rate` (at rank 1)."""
    impressions, events = [], []
    for user in users:
        for n in range(3):
            request_id = f"{prefix}{user:05x}{n}"
            impressions.append(shown(request_id, user, [21, 22, 23], day, **labels))
            if rng.random() < rate:
                events.append(event(user, 21, "click", request_id, 1, day))
    return impressions, events


def ab_night(spark, settings, seed: int, control_rate: float, treatment_rate: float):
    """An experiment started, 400 users per arm clicking at their arm's rate, one night analysed."""
    e = start(settings).experiment
    rng = random.Random(seed)
    control = clicks(rng, "a", range(1, 401), control_rate, variant="control", experiment=e.id)
    treatment = clicks(rng, "b", range(401, 801), treatment_rate, variant="treatment", experiment=e.id)
    land(settings, {DS: control[0] + treatment[0]}, {DS: control[1] + treatment[1]})
    return night(spark, settings)


def test_a_clearly_better_treatment_is_promoted_and_the_experiment_ends(spark, make_settings, settings, champion,
                                                                        redis_url):
    with alert_receivers() as received:
        settings = make_settings(redis_url, EXPERIMENTS__CLICK_EVENTS='["click"]', EXPERIMENTS__MIN_USERS="300",
                                 **received.settings())
        result = ab_night(spark, settings, 7, 0.10, 0.30)
        received.wait(posts=2, mails=1)
    e = experiment_store.all_experiments(settings)[0].experiment
    hook = dict(received.posts)["/hook"]
    assert (hook["cause"], hook["severity"]) == (f"experiment_decision:{e.id}:promote", "warning")
    assert hook["summary"].startswith("experiment ab1 ended, promoted: treatment: ")
    assert hook["command"].startswith("`nightrec experiment status`")
    assert result.decision == "promote" and "significantly better" in result.reason
    assert "nightrec/1 is now the champion" in result.reason
    assert registry.current_champion(champion).version == "1"
    assert experiment_store.running(settings) is None
    (ended,) = experiment_store.all_experiments(settings)
    assert ended.status == experiment_store.ENDED and "promote" in ended.reason
    assert redis.Redis.from_url(redis_url).get(Keys("test").experiment) is None


def test_a_worse_treatment_stops_early_and_an_unclear_one_ends_on_its_last_day(spark, make_settings, champion,
                                                                             redis_url):
    settings = make_settings(redis_url, EXPERIMENTS__CLICK_EVENTS='["click"]')
    result = ab_night(spark, settings, 8, 0.40, 0.10)
    assert result.decision == "stop" and "early-stop boundary" in result.reason
    assert registry.current_champion(champion).version == "2"  # nothing promoted

    with pytest.raises(ExperimentError, match="must come after today"):
        experiment_store.start(settings, "ab2", [parse_variant("a=champion:50"), parse_variant("b=1:50")],
                               until=STARTED.date(), now=STARTED)
    until = experiment_store.start(settings, "ab2", [parse_variant("a=champion:50"), parse_variant("b=1:50")],
                                   until=DS, now=STARTED)
    client = MlflowClient()
    assert str(client.get_model_version_by_alias(champion, "experiment-ab2-b").version) == "1"  # kept from pruning
    assert until.experiment.until == DS.isoformat()
    result = analyze.run(spark, settings, DS)  # no impressions of ab2 at all
    assert result.decision == "no_difference" and "reached its last day" in result.reason
    assert experiment_store.running(settings) is None
    assert "experiment-ab2-b" not in client.get_registered_model(champion).aliases


def test_a_steady_champion_is_kept_a_fall_is_rolled_back_once_and_the_alert_reaches_its_channels(
        spark, make_settings, redis_url, champion):
    yesterday = DS - dt.timedelta(days=1)
    with alert_receivers() as received:
        settings = make_settings(redis_url, EXPERIMENTS__CLICK_EVENTS='["click"]', **received.settings())
        rng = random.Random(9)
        impressions, events = {}, {}
        for back in range(15, -1, -1):  # two weeks and a night of steady traffic, then tonight at half the rate
            day = DS - dt.timedelta(days=back)
            impressions[day], events[day] = clicks(rng, f"{back:02d}", range(1, 301), 0.15 if back == 0 else 0.30, day)
        land(settings, impressions, events)
        ingest.run(spark, settings, yesterday, 15)
        validate.run(spark, settings, yesterday, 15)
        steady = analyze.run(spark, settings, yesterday, 15)  # a Sunday against the two Sundays before
        assert steady.champion_check == "keep" and "the geometric mean of 2 Sundays before" in steady.champion_reason
        assert registry.current_champion(champion).version == "2" and not alerts.recorded(settings)

        result = night(spark, settings)
        assert result.champion_check == "rollback" and "champion version 2 -> 1" in result.champion_reason
        assert "vs its weekday baseline" in result.champion_reason and "2 Mondays before: -" in result.champion_reason
        assert "CUSUM of the nightly falls" in result.champion_reason and "> 1.4" in result.champion_reason
        assert registry.current_champion(champion).version == "1"
        received.wait(posts=2, mails=1)
        again = analyze.run(spark, settings, DS)  # the same fall on the next look: not walked back further
        assert again.champion_check == "keep" and "the champion is now nightrec/1" in again.champion_reason
        assert registry.current_champion(champion).version == "1"
    hook = dict(received.posts)["/hook"]
    assert (hook["cause"], hook["severity"], hook["night"], hook["stage"]) == (
        f"rollback:{champion}:{DS}", "critical", DS.isoformat(), "analyze")
    assert hook["summary"].startswith(f"champion {champion} rolled back from version 2 to 1: tonight's CTR@10")
    assert hook["command"].startswith("`nightrec status`") and "--to 2" in hook["command"]
    assert "First: `nightrec status`" in dict(received.posts)["/slack"]["text"] and len(received.mails) == 1
    assert len(received.posts) == 2  # the second look kept: no second alert
    assert [r["cause"] for r in alerts.recorded(settings, DS.isoformat())] == [f"rollback:{champion}:{DS}"]


def test_the_exploration_pool_holds_the_least_shown_available_items(spark, make_settings, redis_url, champion):
    from nightrec.serving.layout import decode_item_stats

    settings = make_settings(redis_url, EXPERIMENTS__CLICK_EVENTS='["click"]', EXPLORATION__ENABLED="true",
                             EXPLORATION__MAX_IMPRESSIONS="3")
    write_csv(Path(settings.path("landing")) / "items.csv",
              [(i, f"Item {i}", "no" if i == 26 else "yes") for i in range(21, 27)],
              header=("item_id", "title", "available"))
    land(settings, {DS: [shown("a1", 1, [21, 22]), shown("a2", 2, [21, 22]), shown("a3", 3, [21, 23])]},
         {DS: [event(1, 22, "click", "a1", 2), event(2, 22, "view", "a2", 2)]})
    result = night(spark, settings)
    assert result.explore_pool == 4
    assert_table_matches_ddl(spark, settings, "silver_item_outcomes")
    ids, shown_times, clicked = decode_item_stats(redis.Redis.from_url(redis_url).get(Keys("test").explore))
    # 21 was shown 3 times (not fewer than max_impressions), 26 is unavailable; never-shown items first
    assert (ids.tolist(), shown_times.tolist(), clicked.tolist()) == ([24, 25, 23, 22], [0, 0, 1, 2], [0, 0, 0, 1])
