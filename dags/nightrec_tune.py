"""nightrec_tune: the weekly search. Tries every candidate's hyperparameters and the hybrid's blend
weights on a sample of users, compares the candidates in MLflow, and makes the best one the recipe
that the nightly run fits from then on (it still has to pass the nightly promotion gate).

Configuration only: the task runs nightrec.pipeline.tune's `main`. Scheduled apart from the
nightly run (Sunday noon, UTC) so the two don't compete for the same cores.
"""

from datetime import datetime, timedelta

from airflow.sdk import dag, task

from nightrec.pipeline.orchestration import airflow_task, task_failed


@task
def tune(ds=None) -> dict:
    from nightrec.pipeline.tune import main  # imported when the task runs, not when the DAG is parsed
    return airflow_task(main, ds)


@dag(
    dag_id="nightrec_tune",
    schedule="0 12 * * 0",
    start_date=datetime(1995, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["nightrec", "tuning"],
    # a task failing after its retries raises one alert for the night (nightrec.pipeline.alerts)
    default_args={"owner": "nightrec", "retries": 2, "retry_delay": timedelta(minutes=10),
                  "on_failure_callback": task_failed},
    doc_md=__doc__,
)
def nightrec_tune():
    tune()


nightrec_tune()
