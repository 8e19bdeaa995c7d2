"""Online experiments kept in MLflow: one run per experiment in the MLflow experiment
`experiments.mlflow_experiment`, its definition and state in tags (visible and searchable in the UI),
its nightly analyses as child runs. MLflow is the record; the Redis key `{<p>}:experiment` is what
the lookup reads, written on start and stop and re-written from MLflow by the nightly analysis.

One experiment runs at a time: variants split all users, and two splits over the same users would
confound each other.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from nightrec.errors import PermanentError
from nightrec.modeling import registry, tracking
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
    return client.create_experiment(name, artifact_location=f"{tracking.artifact_location(settings)}/{name}")


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
          now: dt.datetime | None = None) -> StoredExperiment:
    current = running(settings)
    if current is not None:
        raise ExperimentError(f"experiment {current.experiment.name} is running: stop it first "
                              f"(one experiment at a time)")
    now = now or dt.datetime.now(dt.timezone.utc)
    if until is not None and until < now.date():
        raise ExperimentError(f"--until {until} lies in the past")
    experiment = Experiment(name, tuple(pin_models(settings, variants)), now.isoformat(timespec="seconds"),
                            until.isoformat() if until else None)
    client = MlflowClient()
    run = client.create_run(_experiment_id(settings), run_name=name, tags={
        DEFINITION_TAG: experiment.to_json(), STATUS_TAG: RUNNING, "started_at": experiment.started_at,
        "until": experiment.until or "", **{f"variant.{v.name}": describe(v) for v in experiment.variants}})
    client.set_terminated(run.info.run_id)  # nightly analyses log to it later; it is not an open process
    write_redis(settings, experiment)
    return StoredExperiment(run.info.run_id, experiment, RUNNING)


def describe(variant: Variant) -> str:
    rules = "".join(f", {key}={value}" for key, value in variant.rules.items())
    model = variant.model if variant.model == CHAMPION else f"version {variant.model}"
    return f"{model}, weight {variant.weight}{rules}"


def end(settings: Settings, reason: str, status: str = STOPPED, now: dt.datetime | None = None) -> StoredExperiment:
    """Stop the running experiment: users get the champion's lists again within a second or so."""
    current = running(settings)
    if current is None:
        raise ExperimentError("no experiment is running")
    ended_at = (now or dt.datetime.now(dt.timezone.utc)).isoformat(timespec="seconds")
    client = MlflowClient()
    for key, value in ((STATUS_TAG, status), (REASON_TAG, reason), (ENDED_TAG, ended_at)):
        client.set_tag(current.run_id, key, value)
    write_redis(settings, None)
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
