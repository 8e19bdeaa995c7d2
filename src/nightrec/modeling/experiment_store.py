"""Online experiments kept in MLflow: one run per experiment in the MLflow experiment
`experiments.mlflow_experiment`, its definition and state in tags (visible and searchable in the UI),
its nightly analyses as child runs. MLflow is the record; the Redis key `{<p>}:experiment` is what
the lookup reads, written on start and stop and re-written from MLflow by the nightly analysis.

One experiment runs at a time: variants split all users, and two splits over the same users would
confound each other.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from nightrec.errors import PermanentError
from nightrec.modeling import registry, reports, tracking
from nightrec.serving import audit
from nightrec.serving.client import connect
from nightrec.serving.experiments import CHALLENGER, CHAMPION, Experiment, ExperimentError, Variant
from nightrec.serving.layout import Keys
from nightrec.settings import Settings

DEFINITION_TAG = "nightrec.experiment"   # the definition as JSON (nightrec.serving.experiments)
STATUS_TAG = "nightrec.status"           # running | stopped | ended
REASON_TAG = "nightrec.reason"           # why it ended, in a sentence
ENDED_TAG = "nightrec.ended_at"
RUNNING, STOPPED, ENDED = "running", "stopped", "ended"


@dataclass
class StoredExperiment:
    run_id: str
    experiment: Experiment
    status: str
    reason: str = ""
    ended_at: str = ""


def _experiment_id(settings: Settings) -> str:
    tracking.configure(settings)
    client = MlflowClient()
    found = client.get_experiment_by_name(settings.experiments.mlflow_experiment)
    if found is not None:
        return found.experiment_id
    name = settings.experiments.mlflow_experiment
    return client.create_experiment(name, artifact_location=tracking.experiment_location(settings, name))


def _stored(run) -> StoredExperiment:
    tags = run.data.tags
    return StoredExperiment(run.info.run_id, Experiment.from_json(tags[DEFINITION_TAG]), tags.get(STATUS_TAG, ""),
                            tags.get(REASON_TAG, ""), tags.get(ENDED_TAG, ""))


def all_experiments(settings: Settings) -> list[StoredExperiment]:
    """Every experiment ever started, newest first."""
    runs = MlflowClient().search_runs([_experiment_id(settings)], filter_string=f"tags.`{DEFINITION_TAG}` != ''",
                                      order_by=["attributes.start_time DESC"], max_results=1000)
    return [_stored(run) for run in runs]


def running(settings: Settings) -> StoredExperiment | None:
    runs = MlflowClient().search_runs([_experiment_id(settings)], filter_string=f"tags.`{STATUS_TAG}` = '{RUNNING}'",
                                      order_by=["attributes.start_time DESC"], max_results=2)
    return _stored(runs[0]) if runs else None


def pin_models(settings: Settings, variants: list[Variant]) -> list[Variant]:
    """`challenger` becomes the version it names now (a treatment must not change under the experiment);
    `champion` is followed each night, as production is. Every version named must exist."""
    name, client, pinned = settings.mlflow.registered_model, MlflowClient(), []
    for variant in variants:
        model = variant.model
        try:
            if model == CHALLENGER:
                model = str(client.get_model_version_by_alias(name, CHALLENGER).version)
            elif model != CHAMPION:
                client.get_model_version(name, model)
            else:
                client.get_model_version_by_alias(name, CHAMPION)
        except MlflowException:
            raise ExperimentError(f"variant {variant.name}: {name} has no {variant.model!r} "
                                  f"({'alias' if variant.model in (CHAMPION, CHALLENGER) else 'version'})") from None
        pinned.append(Variant(variant.name, model, variant.weight, variant.rules))
    return pinned


def start(settings: Settings, name: str, variants: list[Variant], until: dt.date | None = None,
          now: dt.datetime | None = None, actor: str = "") -> StoredExperiment:
    current = running(settings)
    if current is not None:
        raise ExperimentError(f"experiment {current.experiment.name} is running: stop it first "
                              f"(one experiment at a time)")
    now = now or dt.datetime.now(dt.timezone.utc)
    if until is not None and until <= now.date():
        raise ExperimentError(f"--until {until}: the last day must come after today (the experiment serves from the "
                              f"next night's version)")
    experiment = Experiment(name, tuple(pin_models(settings, variants)), now.isoformat(timespec="milliseconds"),
                            until.isoformat() if until else None)
    client = MlflowClient()
    run = client.create_run(_experiment_id(settings), run_name=name, tags={
        DEFINITION_TAG: experiment.to_json(), STATUS_TAG: RUNNING, "started_at": experiment.started_at,
        "until": experiment.until or "", **{f"variant.{v.name}": describe(v) for v in experiment.variants}})
    client.set_terminated(run.info.run_id)  # nightly analyses log to it later; it is not an open process
    stored = StoredExperiment(run.info.run_id, experiment, RUNNING)
    try:
        hold_versions(settings, experiment, True)
        write_redis(settings, experiment)
    except Exception as error:  # not half-started: the record says it never ran
        client.set_tag(run.info.run_id, STATUS_TAG, STOPPED)
        client.set_tag(run.info.run_id, REASON_TAG, f"could not start: {error!r}")
        raise
    audit.record(settings, "experiment_started", actor or audit.cli_actor(), name, run_id=run.info.run_id,
                 until=experiment.until, variants={v.name: describe(v) for v in experiment.variants})
    return stored


def hold_versions(settings: Settings, experiment: Experiment, hold: bool) -> None:
    """An alias per pinned variant keeps its version from housekeeping's pruning while the experiment runs."""
    client, name = MlflowClient(), settings.mlflow.registered_model
    for variant in experiment.variants:
        if variant.model not in (CHAMPION, CHALLENGER):
            alias = f"experiment-{experiment.name}-{variant.name}"
            if hold:
                client.set_registered_model_alias(name, alias, variant.model)
            else:
                try:
                    client.delete_registered_model_alias(name, alias)
                except MlflowException:
                    pass  # already gone


def describe(variant: Variant) -> str:
    rules = "".join(f", {key}={value}" for key, value in variant.rules.items())
    model = variant.model if variant.model == CHAMPION else f"version {variant.model}"
    return f"{model}, weight {variant.weight}{rules}"


def end(settings: Settings, reason: str, status: str = STOPPED, now: dt.datetime | None = None,
        actor: str = "") -> StoredExperiment:
    """Stop the running experiment: users get the champion's lists again within a second or so."""
    write_redis(settings, None)  # first: users get the champion's lists again even if MLflow fails below
    current = running(settings)
    if current is None:
        raise ExperimentError("no experiment is running")
    ended_at = (now or dt.datetime.now(dt.timezone.utc)).isoformat(timespec="seconds")
    client = MlflowClient()
    for key, value in ((STATUS_TAG, status), (REASON_TAG, reason), (ENDED_TAG, ended_at)):
        client.set_tag(current.run_id, key, value)
    hold_versions(settings, current.experiment, False)
    audit.record(settings, "experiment_stopped", actor or audit.cli_actor(), current.experiment.name,
                 run_id=current.run_id, status=status, reason=reason)
    return StoredExperiment(current.run_id, current.experiment, status, reason, ended_at)


def write_redis(settings: Settings, experiment: Experiment | None) -> None:
    """What the lookup serves: the running experiment, or none."""
    keys, client = Keys(settings.redis.prefix), connect(settings.redis.url, settings.redis.cluster)
    try:
        if experiment is None:
            client.delete(keys.experiment)
        else:
            client.set(keys.experiment, experiment.to_json())
    finally:
        client.close()


def model_version(settings: Settings, variant: Variant) -> str:
    """The registered version a variant serves tonight."""
    if variant.model == CHAMPION:
        champion = registry.current_champion(settings.mlflow.registered_model)
        if champion is None:
            raise PermanentError(f"no {settings.mlflow.registered_model}@{CHAMPION}: run train first")
        return champion.version
    return variant.model


def night(stored: StoredExperiment, ds: dt.date) -> int:
    """Which night of the experiment ds is (its first night: 0)."""
    return (ds - dt.datetime.fromisoformat(stored.experiment.started_at).date()).days


def log_night(settings: Settings, stored: StoredExperiment, ds: dt.date, metrics: dict[str, float],
              decision: str, reason: str, chart_metric: str) -> str:
    """A child run for the night's analysis (metrics, decision, a chart of chart_metric over the nights so
    far), and the same metrics on the experiment's run at step = night, which MLflow charts over nights."""
    client, step = MlflowClient(), night(stored, ds)
    finite = {key: float(value) for key, value in metrics.items() if value == value}  # MLflow refuses nan
    timestamp = int(dt.datetime.now(dt.timezone.utc).timestamp() * 1000)
    for key, value in finite.items():
        client.log_metric(stored.run_id, key, value, timestamp, step)
    client.set_tag(stored.run_id, "last_decision", f"{ds}: {decision}")
    run = client.create_run(_experiment_id(settings), run_name=f"{stored.experiment.name} {ds}", tags={
        "mlflow.parentRunId": stored.run_id, "ds": ds.isoformat(), "decision": decision, "reason": reason[:5000],
        "night": str(step)})
    for key, value in finite.items():
        client.log_metric(run.info.run_id, key, value, timestamp, step)
    series = {variant.name: _history(client, stored.run_id, f"{variant.name}_{chart_metric}")
              for variant in stored.experiment.variants}
    with tempfile.TemporaryDirectory() as folder:
        chart = reports.metric_over_nights({k: v for k, v in series.items() if v}, chart_metric,
                                           f"{stored.experiment.name}: {chart_metric} by variant, 95% intervals",
                                           Path(folder) / f"{chart_metric}_over_nights.png")
        client.log_artifact(run.info.run_id, str(chart))
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def _history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float, float, float]]:
    """(night, value, low, high) of a metric and its interval, latest value per night."""
    def by_step(name: str) -> dict[int, float]:
        return {m.step: m.value for m in sorted(client.get_metric_history(run_id, name), key=lambda m: m.timestamp)}

    values, lows, highs = by_step(key), by_step(f"{key}_low"), by_step(f"{key}_high")
    return [(step, values[step], lows.get(step, values[step]), highs.get(step, values[step]))
            for step in sorted(values)]


def log_champion_check(settings: Settings, ds: dt.date, metrics: dict[str, float], decision: str,
                       reason: str) -> str:
    """The nightly check of the champion's CTR against its trailing baseline, as its own run."""
    client = MlflowClient()
    run = client.create_run(_experiment_id(settings), run_name=f"champion check {ds}", tags={
        "nightrec.check": "champion", "ds": ds.isoformat(), "decision": decision, "reason": reason[:5000]})
    for key, value in metrics.items():
        if value == value:
            client.log_metric(run.info.run_id, key, float(value))
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def recent_rollback(settings: Settings, since: dt.date) -> str | None:
    """The night of the last automatic rollback on or after `since`, if any: one rollback per baseline
    window, so a fall that outlasts it does not walk the champion back version after version."""
    wanted = "tags.`nightrec.check` = 'champion' and tags.decision = 'rollback'"  # tags compare only by (in)equality
    runs = MlflowClient().search_runs([_experiment_id(settings)], filter_string=wanted, max_results=1000)
    nights = [run.data.tags["ds"] for run in runs if run.data.tags["ds"] >= since.isoformat()]
    return max(nights, default=None)
