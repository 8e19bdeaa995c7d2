"""nightrec_nightly: service events and landing files of the logical date -> Delta lake -> models -> Redis.

Configuration only: every task is one call into the nightrec package (see README, "Orchestration").
"""

from datetime import datetime, timedelta

from airflow.sdk import Param, chain, dag, task

# Equal to nightrec.stages.STAGES (tests/dags keeps them in step); spelled out so parsing imports nothing heavy.
STAGES = ("drain_events", "ingest", "validate", "train", "score", "publish", "smoke", "housekeeping")


def _stage_task(stage: str):
    @task(task_id=stage)
    def run(ds=None, params=None) -> dict:
        from nightrec.orchestration import run_airflow_task  # heavy imports stay out of DAG parsing

        return run_airflow_task(stage, ds, params["lookback_days"])

    return run()


@dag(
    dag_id="nightrec_nightly",
    schedule="@daily",
    # Early and static, so backfills of historical dates (the MovieLens demo replays 1998) are valid runs;
    # catchup stays off: a new deployment schedules only the latest night.
    start_date=datetime(1995, 1, 1),
    catchup=False,
    max_active_runs=1,  # one writer per Delta table
    tags=["nightrec", "recommendations"],
    default_args={"owner": "nightrec", "retries": 2, "retry_delay": timedelta(minutes=5)},
    params={"lookback_days": Param(1, type="integer", minimum=1, maximum=3660,
                                   description="landing days ending at the logical date to (re)ingest and validate")},
    doc_md=__doc__,
)
def nightrec_nightly():
    chain(*[_stage_task(stage) for stage in STAGES])


nightrec_nightly()
