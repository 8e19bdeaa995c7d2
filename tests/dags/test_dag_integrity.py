"""The DAG files import cleanly, stay light to parse, name each stage's code, and say what the platform
promises: tags, retries, the stage order."""

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nightrec.constants import STAGES as STAGE_ORDER

DAGS = Path(__file__).parents[2] / "dags"


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_dag_files_import_without_errors(dagbag):
    assert dagbag.import_errors == {}
    assert sorted(dagbag.dags) == ["nightrec_nightly", "nightrec_tune", "nightrec_watch"]


def test_schedule_and_run_policy(dagbag):
    dag = dagbag.dags["nightrec_nightly"]
    assert dag.schedule is None  # conf/local.toml: nights run when `nightrec run` triggers them
    assert dag.catchup is False and dag.max_active_runs == 1
    assert dag.start_date.year == 1995  # static, never datetime.now()
    assert {"nightrec"} <= set(dag.tags)
    assert dag.params["lookback_days"] == 1


def test_the_schedule_is_a_setting():
    """Parsed in another environment (the scheduler's), the DAG takes that environment's schedule."""
    probe = ("from airflow.dag_processing.dagbag import DagBag; "
             f"print(DagBag(dag_folder={str(DAGS / 'nightrec_nightly.py')!r}).dags['nightrec_nightly'].schedule)")
    for env, expected in (({"NIGHTREC_ENV": "production"}, "0 2 * * *"),
                          ({"NIGHTREC_ENV": "local", "NIGHTREC_AIRFLOW__SCHEDULE": "@hourly"}, "@hourly")):
        parsed = subprocess.run([sys.executable, "-c", probe], env={**os.environ, **env}, capture_output=True,
                                text=True, check=True)
        assert parsed.stdout.strip().splitlines()[-1] == expected


def test_every_task_retries(dagbag):
    for dag in (dagbag.dags["nightrec_nightly"], dagbag.dags["nightrec_tune"]):
        for task in dag.tasks:
            assert task.retries >= 2, task.task_id


def test_tuning_runs_weekly_apart_from_the_nightly_run(dagbag):
    dag = dagbag.dags["nightrec_tune"]
    assert dag.schedule == "0 12 * * 0" and dag.catchup is False and dag.max_active_runs == 1
    assert [t.task_id for t in dag.tasks] == ["tune"]


def test_tasks_run_the_stages_in_order(dagbag):
    dag = dagbag.dags["nightrec_nightly"]
    assert sorted(t.task_id for t in dag.tasks) == sorted(STAGE_ORDER)
    for upstream, downstream in zip(STAGE_ORDER, STAGE_ORDER[1:]):
        assert dag.get_task(upstream).downstream_task_ids == {downstream}
    assert STAGE_ORDER[-2:] == ("housekeeping", "report")  # retention runs once the night's work is live
    report = dag.get_task("report")  # then the night's report, whatever happened before it
    assert report.is_teardown and report.downstream_task_ids == set()
    assert [t.task_id for t in dag.leaves] == ["report"] and report.trigger_rule == "all_done_setup_success"


def test_each_task_names_its_stage_directly(dagbag):
    """One hop from a task to its code: the task's callable imports its stage's main by name."""
    for dag in dagbag.dags.values():
        for task in dag.tasks:
            source = inspect.getsource(task.python_callable)
            assert f"from nightrec.pipeline.{task.task_id} import main" in source, task.task_id


def test_the_watch_looks_every_quarter_hour_where_nights_are_scheduled_and_never_retries(dagbag):
    dag = dagbag.dags["nightrec_watch"]
    assert dag.schedule is None  # conf/local.toml schedules no nights: nothing to watch
    assert [(t.task_id, t.retries) for t in dag.tasks] == [("watch", 0)]  # the next look is 15 minutes away
    probe = ("from airflow.dag_processing.dagbag import DagBag; "
             f"print(DagBag(dag_folder={str(DAGS / 'nightrec_watch.py')!r}).dags['nightrec_watch'].schedule)")
    parsed = subprocess.run([sys.executable, "-c", probe], env={**os.environ, "NIGHTREC_ENV": "production"},
                            capture_output=True, text=True, check=True)
    assert parsed.stdout.strip().splitlines()[-1] == "*/15 * * * *"


@pytest.mark.parametrize("name", ["nightrec_nightly.py", "nightrec_tune.py", "nightrec_watch.py"])
def test_parsing_a_dag_file_imports_nothing_heavy(name):
    """The scheduler parses DAG files often: Spark, MLflow and the rest load only when a task runs."""
    heavy = ("pyspark", "mlflow", "great_expectations", "deltalake", "numpy", "pandas", "pyarrow", "redis")
    probe = (f"import runpy, sys; runpy.run_path({str(DAGS / name)!r}); "
             f"print(sorted(m for m in {heavy!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-W", "ignore", "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"
