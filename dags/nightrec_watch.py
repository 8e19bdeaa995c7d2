"""nightrec_watch: every 15 minutes, alerts on a stale live version or a night late past its deadline
(nightrec.pipeline.watch). A separate DAG because the failures it looks for leave no nightly task to
fail: a run that never started, a scheduler that stopped queuing, a version that no longer changes."""

from datetime import datetime

from airflow.sdk import dag, task

from nightrec.settings import load_settings


@task
def watch() -> list[str]:
    from nightrec.pipeline.watch import main
    return main()


@dag(
    dag_id="nightrec_watch",
    schedule="*/15 * * * *" if load_settings().airflow.schedule else None,  # only where nights are scheduled
    start_date=datetime(2024, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["nightrec", "operations"],
    default_args={"owner": "nightrec", "retries": 0},
    doc_md=__doc__,
)
def nightrec_watch():
    watch()


nightrec_watch()
