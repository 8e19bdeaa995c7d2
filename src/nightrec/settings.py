"""Typed settings: conf/base.toml (every key and its default), overlaid with conf/<env>.toml (what an
environment changes), overlaid with NIGHTREC_<SECTION>__<KEY> environment variables."""

from __future__ import annotations

import datetime as dt
import json
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from nightrec.errors import PermanentError

ENV_PREFIX = "NIGHTREC_"


class SettingsError(PermanentError):
    pass


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Paths(_Section):
    landing: str
    lake: str
    data_docs: str
    airflow_home: str


class AirflowSettings(_Section):
    """Where nights are scheduled and run (docs/deploy.md, "Production")."""

    runner: Literal["scheduler", "in-process"]  # how `nightrec run` runs a night (conf/base.toml)
    database: str  # metadata DB (sql_alchemy_conn), e.g. postgresql+psycopg2://airflow@db/airflow; empty: SQLite
    schedule: str  # the nightly DAG's schedule, e.g. "0 2 * * *"; empty: nights run only when triggered
    parallelism: int = Field(ge=1)  # task processes the LocalExecutor runs at once
    api_url: str  # a running Airflow API server `nightrec run` triggers nights on; empty: it starts Airflow itself
    api_username: str
    api_password: str  # from the environment: NIGHTREC_AIRFLOW__API_PASSWORD


class StorageSettings(_Section):
    """How S3 is reached when a path is an s3:// URI (credentials: the standard AWS chain, never here)."""

    s3_endpoint: str  # e.g. http://127.0.0.1:9000 (a local S3 server); empty: AWS ($AWS_ENDPOINT_URL if set)
    s3_region: str  # empty: $AWS_REGION / $AWS_DEFAULT_REGION, else us-east-1
    s3_path_style: bool  # bucket in the path, not the host name (most S3-compatible servers need it)

    def endpoint(self) -> str:
        return self.s3_endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL", "")

    def region(self) -> str:
        return self.s3_region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


class SparkSettings(_Section):
    master: str  # local[N], spark://host:7077, yarn, k8s://https://host:443 (docs/deploy.md)
    driver_memory: str
    driver_host: str  # address executors reach the driver at (spark.driver.host); empty: Spark's choice
    executor_memory: str = Field(pattern=r"^$|^[0-9]+([kmgtpKMGTP][bB]?)?$")  # spark.executor.memory, e.g. 8g;
                                                                              # empty: 1g
    executor_cores: int | None = Field(None, ge=1)  # spark.executor.cores; unset: Spark's (standalone: all of a
                                                    # worker's)
    python: str  # interpreter executors start (a path on the workers); empty: $PYSPARK_PYTHON,
                 # else the driver's
    shuffle_partitions: int = Field(ge=1)
    ui_port: int = Field(ge=0, le=65535)  # Spark UI; when taken Spark uses the next free port
                                          # (logged by each stage)
    checkpoint_dir: str  # ALS checkpoints, on storage every executor shares; empty: <lake>/_checkpoints
    packages_cache: str  # Delta's and s3a's jars, resolved from Maven once
    packages_on_workers: bool  # true: every worker has the same cache at the same path (an image, or
                               # workers on the driver's host): the jars are not shipped to executors
    conf: dict[str, str | int | float | bool]  # any other Spark property, e.g. {"spark.cores.max": 8}; wins


class ValidationSettings(_Section):
    max_bad_fraction: float = Field(ge=0.0, le=1.0)  # of a day's rows
    max_bad_file_fraction: float = Field(ge=0.0, le=1.0)  # of a day's non-empty files, quarantined
    max_line_bytes: int = Field(ge=1024)  # a longer line in a CSV/JSON file quarantines it
    clock_skew_seconds: float = Field(ge=0)  # events dated further after their file's delivery
                                             # are quarantined (clients' clocks run ahead)


class VolumeSettings(_Section):
    """Each day's volume and mix against the days before it (nightrec.data.volume, docs/runbook.md)."""

    enabled: bool  # off: no profiles, no judgement (a source too young or too bursty to judge by its past)
    history_days: int = Field(ge=3)  # a day is compared with this many complete days before it
    min_history_days: int = Field(ge=3)  # with fewer days of history, the day is profiled, not judged
    warn_z: float = Field(gt=0)  # robust z-score (median and MAD of the history) that warns ...
    fail_z: float = Field(gt=0)  # ... and that stops the night before training
    count_floor: float = Field(ge=0)  # a count's scale is at least this share of its median
    share_floor: float = Field(gt=0)  # a share's scale is at least this much (of the day's events)

    @model_validator(mode="after")
    def _bands(self):
        if self.fail_z <= self.warn_z:
            raise ValueError(f"volume.fail_z ({self.fail_z}) must be above volume.warn_z ({self.warn_z})")
        if self.min_history_days > self.history_days:
            raise ValueError("volume.min_history_days cannot exceed volume.history_days")
        return self


class EventSettings(_Section):
    weights: dict[str, float]

    @field_validator("weights")
    @classmethod
    def _positive(cls, weights: dict[str, float]) -> dict[str, float]:
        if not weights:
            raise ValueError("at least one event type is needed")
        bad = [name for name, w in weights.items() if w <= 0]
        if bad:
            raise ValueError(f"event weights must be > 0: {bad}")
        return weights


class ModelSettings(_Section):
    train_window_days: int = Field(ge=1)
    holdout_share: float = Field(gt=0, lt=0.5)  # each user's latest items held out: the promotion decision
    search_space: str
    recipe: str  # "tuned": what `nightrec tune` chose last; or a recipe file to pin one
    evaluation_users: int = Field(ge=100)  # holdout users scored for the promotion gate
    seed: int
    top_k: int = Field(ge=1, le=1000)
    eval_k: int = Field(ge=1)
    validation_users: int = Field(ge=1)  # users sampled for the search and the blend weights
    random_validation_share: float = Field(ge=0, lt=0.5)  # second search fold; 0: latest-items fold only
    item_knn_max_items: int = Field(ge=1)
    recency_half_life_days: float = Field(gt=0)
    max_per_category: int | None = Field(None, ge=1)
    cold_user_max_items: int = Field(ge=0)
    promotion_tolerance: float = Field(ge=0)
    segment_min_users: int = Field(ge=1)
    trending_half_life_days: float = Field(ge=0)
    similar_k: int = Field(ge=1, le=1000)  # neighbours stored per item ("more like this")
    retrieval: Literal["auto", "exact", "retrieved"]  # auto: retrieved from retrieval_min_items catalog items
    retrieval_min_items: int = Field(ge=1)
    retrieval_depth: int = Field(ge=1, le=5000)  # candidates each source names per user


class TuningSettings(_Section):
    sample_users: int = Field(ge=100)  # users (with all their events) the search works on
    budget_minutes: float = Field(gt=0)  # no new trial starts after this; each family gets one


class MlflowSettings(_Section):
    tracking_uri: str
    artifact_root: str
    experiment: str
    registered_model: str
    backend_store: str  # the tracking server's database (`nightrec mlflow-server`); empty: tracking_uri's store
    serve_artifacts: bool  # the server proxies artifact_root: clients log artifacts through it (mlflow-artifacts:/)
    keep_versions: int = Field(ge=0)  # unaliased model versions kept; older ones are deleted with their files


class LakeSettings(_Section):
    retention_days: int = Field(ge=1)  # replaced data files and log entries kept this long (time travel window)
    snapshot_nights: int = Field(ge=1)  # nights of per-night snapshots kept (gold outputs, item/user attributes)
    maintenance_days: int = Field(ge=0)  # a table is compacted and vacuumed once in this many days; 0: every night


class RedisSettings(_Section):
    url: str  # redis:// or rediss:// (TLS); the password goes in the URL, from the environment
    prefix: str = Field(pattern=r"^[0-9A-Za-z._-]{1,32}$")
    cluster: bool  # true: the URL names one node of a Redis Cluster


class ServiceSettings(_Section):
    live_cache_seconds: float = Field(ge=0)  # how long a worker reuses the live version id it read
    consumed_ttl_days: float = Field(gt=0)  # posted events filter items out this long after the user's last one
    events_max_len: int = Field(ge=1000)  # stream cap (approximate) if the nightly drain stops
    max_body_bytes: int = Field(ge=1024)
    impression_sample_rate: float = Field(ge=0, le=1)  # share of users whose answers are recorded; 0: none
    impressions_max_batches: int = Field(ge=1000)  # impression stream cap in entries (one per busy
                                                   # worker per 50 ms: 1.7M a day each)
    max_age_hours: float = Field(gt=0)  # a live version older than this is stale: alert, /healthz degraded
    degraded_status: int = Field(ge=200, le=599)  # /healthz's status code when degraded


class RateLimit(_Section):
    per_second: float = Field(gt=0)  # sustained requests per second of one key, over all workers
    burst: int = Field(ge=1)  # requests a key may send at once after being quiet


class AuthSettings(_Section):
    enabled: bool  # API keys on every route but open_paths (docs/security.md)
    open_paths: list[str]  # reachable without a key (probes, scrapers)
    refresh_seconds: float = Field(gt=0, le=2)  # a worker re-reads the keys this often: revocation delay
    rate_limits: dict[str, RateLimit]  # per scope: read, events, admin

    @field_validator("rate_limits")
    @classmethod
    def _every_scope(cls, limits: dict[str, RateLimit]) -> dict[str, RateLimit]:
        if sorted(limits) != ["admin", "events", "read"]:
            raise ValueError(f"rate_limits needs exactly the scopes read, events and admin, got {sorted(limits)}")
        return limits


class ExperimentSettings(_Section):
    mlflow_experiment: str  # MLflow experiment holding one run per online experiment
    k: int = Field(ge=1, le=100)  # CTR@k: a click counts when the item was shown at rank <= k
    click_events: list[str]  # event types that count as a click
    conversion_event: str
    min_users: int = Field(ge=10)  # users per variant before the experiment's decisive look
    alpha: float = Field(gt=0, lt=0.5)  # two-sided significance of that look
    harm_z: float = Field(gt=0)  # before it: stop early when the treatment is worse beyond this z
    # the champion check (experiment_stats.champion_check): each night against the same weekday in the
    # baseline_weeks weeks before; rolled back when the CUSUM of the nightly falls, sum of (-z - rollback_k)
    # over the last nights (at most rollback_window), exceeds rollback_h and those nights fell more than
    # rollback_drop (relative)
    rollback_drop: float = Field(gt=0, lt=1)
    baseline_weeks: int = Field(ge=2, le=12)
    rollback_window: int = Field(ge=1, le=28)  # nights the CUSUM looks back over; one rollback per this many
    rollback_k: float = Field(ge=0)  # the CUSUM's reference value: a night adds to it when z < -rollback_k
    rollback_h: float = Field(gt=0)  # its decision interval


class AlertSettings(_Section):
    """Where alerts go (nightrec.pipeline.alerts, docs/runbook.md); an empty channel is off."""

    slack_webhook_url: str  # a Slack-compatible incoming webhook (secret: from the environment)
    webhook_url: str  # a generic JSON webhook: the alert's fields
    smtp_host: str  # email over SMTP; empty: no email
    smtp_port: int = Field(ge=1, le=65535)
    smtp_starttls: bool
    smtp_username: str
    smtp_password: str  # from the environment: NIGHTREC_ALERTS__SMTP_PASSWORD
    email_from: str
    email_to: list[str]
    fold_hours: float = Field(ge=0)  # the same cause again within this long is kept, not sent again
    night_deadline: str  # HH:MM UTC on the day after a night's date by which it must be published; "": none
    holdout_drop: float = Field(gt=0, lt=1)  # the champion's holdout NDCG this far (relative) below ...
    holdout_nights: int = Field(ge=3)  # ... its median over this many nights before: an alert
    timeout_seconds: float = Field(gt=0)  # per channel: an unreachable one never holds a night up for long


    @field_validator("night_deadline")
    @classmethod
    def _time_of_day(cls, value: str) -> str:
        if value:
            dt.time.fromisoformat(value)
        return value


class ExplorationSettings(_Section):
    enabled: bool  # bandit exploration in the lookup's answers (docs/experiments.md)
    every: int = Field(ge=2, le=100)  # one position in this many: ranks every, 2 x every, ...
    max_impressions: int = Field(ge=1)  # items shown fewer times than this (window_days) may be explored
    pool_size: int = Field(ge=1, le=10_000)  # least-shown items, never-shown first (one draw each per answer)
    window_days: int = Field(ge=1)


class Settings(_Section):
    env: str
    home: Path
    paths: Paths
    airflow: AirflowSettings
    storage: StorageSettings
    spark: SparkSettings
    validation: ValidationSettings
    volume: VolumeSettings
    events: EventSettings
    model: ModelSettings
    tuning: TuningSettings
    mlflow: MlflowSettings
    redis: RedisSettings
    service: ServiceSettings
    lake: LakeSettings
    experiments: ExperimentSettings
    exploration: ExplorationSettings
    auth: AuthSettings
    alerts: AlertSettings

    def path(self, name: str) -> str:
        """A `paths` entry as an absolute path (URIs such as s3a://... are kept as they are)."""
        return resolve(self.home, getattr(self.paths, name))

    def table(self, name: str) -> str:
        """Root of a Delta table, e.g. table("silver/interactions")."""
        return f"{self.path('lake').rstrip('/')}/{name}"


def resolve(home: Path, value: str) -> str:
    if "://" in value or Path(value).is_absolute():
        return value
    return str((home / value).resolve())


def project_home() -> Path:
    """NIGHTREC_HOME, else the checkout this package lives in, else the working directory."""
    if os.environ.get("NIGHTREC_HOME"):
        return Path(os.environ["NIGHTREC_HOME"]).resolve()
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "conf").is_dir():
        return checkout
    return Path.cwd()


def _env_overrides(environ: dict[str, str]) -> dict[str, dict[str, Any]]:
    """NIGHTREC_REDIS__URL=... -> {"redis": {"url": "..."}}; JSON values (numbers, objects) are parsed."""
    overrides: dict[str, dict[str, Any]] = {}
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX) or "__" not in key:
            continue
        section, _, field = key[len(ENV_PREFIX):].lower().partition("__")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        overrides.setdefault(section, {})[field] = value
    return overrides


def merged(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """overlay over base, tables merged key by key (so an environment's file names only what it changes)."""
    out = dict(base)
    for key, value in overlay.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise SettingsError(f"{path} is not valid TOML: {error}") from None


def load_settings(env: str | None = None, environ: dict[str, str] | None = None) -> Settings:
    environ = dict(os.environ if environ is None else environ)
    env = env or environ.get("NIGHTREC_ENV", "local")
    home = project_home()
    conf_dir = Path(environ.get("NIGHTREC_CONF_DIR", home / "conf"))
    base_file, conf_file = conf_dir / "base.toml", conf_dir / f"{env}.toml"
    for path in (base_file, conf_file):
        if not path.is_file():
            raise SettingsError(f"no settings file for environment {env!r}: {path} does not exist")
    data = merged(_read_toml(base_file), _read_toml(conf_file))
    for section, values in _env_overrides(environ).items():
        if not isinstance(data.get(section), dict):
            raise SettingsError(f"environment override for unknown settings section {section!r}")
        data[section].update(values)
    try:
        settings = Settings(env=env, home=home, **data)
    except ValidationError as error:
        raise SettingsError(f"invalid settings ({base_file} + {conf_file.name} + NIGHTREC_* environment): "
                            f"{error}") from None
    global _loaded_storage
    _loaded_storage = settings.storage  # every store of this process is reached the way these settings say
    return settings


_loaded_storage: StorageSettings | None = None


def loaded_storage() -> StorageSettings:
    """The storage settings this process loaded last (nightrec.data.storage reaches S3 with them)."""
    return _loaded_storage if _loaded_storage is not None else load_settings().storage
