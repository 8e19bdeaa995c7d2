"""nightrec_nightly: service events and landing files of the logical date -> Delta lake -> models -> Redis.

Configuration only: each task runs one stage's `main` (nightrec.pipeline.<stage>) in the task's own
process. A stage is imported when its task runs, not when the scheduler parses this file: Spark,
MLflow and great_expectations take seconds to import.
"""

from datetime import datetime, timedelta

from airflow.sdk import Param, chain, dag, task

from nightrec.pipeline.orchestration import airflow_task, task_failed
from nightrec.settings import load_settings


@task
def drain_events(ds=None) -> dict:
    from nightrec.pipeline.drain_events import main
    return airflow_task(main, ds)


@task
def privacy(ds=None) -> dict:
    from nightrec.pipeline.privacy import main
    return airflow_task(main, ds)


@task
def ingest(ds=None, params=None) -> dict:
    from nightrec.pipeline.ingest import main
    return airflow_task(main, ds, params["lookback_days"])


@task
def validate(ds=None, params=None) -> dict:
    from nightrec.pipeline.validate import main
    return airflow_task(main, ds, params["lookback_days"])


@task
def analyze(ds=None, params=None) -> dict:
    from nightrec.pipeline.analyze import main
    return airflow_task(main, ds, params["lookback_days"])


@task
def train(ds=None) -> dict:
    from nightrec.pipeline.train import main
    return airflow_task(main, ds)


@task
def score(ds=None) -> dict:
    from nightrec.pipeline.score import main
    return airflow_task(main, ds)


@task
def publish(ds=None) -> dict:
    from nightrec.pipeline.publish import main
    return airflow_task(main, ds)


@task
def smoke(ds=None) -> dict:
    from nightrec.pipeline.smoke import main
    return airflow_task(main, ds)


@task
def housekeeping(ds=None) -> dict:
    from nightrec.pipeline.housekeeping import main
    return airflow_task(main, ds)


@task
def report(ds=None) -> dict:
    from nightrec.pipeline.report import main
    return airflow_task(main, ds)


@dag(
    dag_id="nightrec_nightly",
    schedule=load_settings().airflow.schedule or None,  # airflow.schedule; none: runs only when triggered
    # Early and static, so backfills of historical dates (the MovieLens demo replays 1998) are valid runs;
    # catchup stays off: a new deployment schedules only the latest night.
    start_date=datetime(1995, 1, 1),
    catchup=False,
    max_active_runs=1,  # one writer per Delta table
    tags=["nightrec", "recommendations"],
    # a task failing after its retries raises one alert for the night (nightrec.pipeline.alerts)
    default_args={"owner": "nightrec", "retries": 2, "retry_delay": timedelta(minutes=5),
                  "on_failure_callback": task_failed},
    params={"lookback_days": Param(1, type="integer", minimum=1, maximum=3660,
                                   description="landing days ending at the logical date to (re)ingest and validate")},
    doc_md=__doc__,
)
def nightrec_nightly():
    # report is a teardown: it runs whether the night failed or not (a failed night's report says where and
    # why), and the run's state stays the night's own
    chain(drain_events(), privacy(), ingest(), validate(), analyze(), train(), score(), publish(), smoke(),
          housekeeping(), report().as_teardown())


nightrec_nightly()
