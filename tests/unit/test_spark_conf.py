"""What the SparkSession is built from: settings -> Spark properties, without starting Spark."""

import os
import sys

import pytest

from nightrec.data.spark import (
    CHECKPOINT_FOLDER,
    _check_driver_address,
    checkpoint_root,
    executor_python,
    on_this_machine,
    spark_conf,
)
from nightrec.settings import SettingsError, load_settings


def test_local_defaults_keep_the_ui_on_and_progress_bars_off():
    conf = spark_conf(load_settings("local", {}))
    assert conf["spark.master"] == "local[2]"
    assert conf["spark.ui.enabled"] == "true" and conf["spark.ui.port"] == "4040"
    assert conf["spark.ui.showConsoleProgress"] == "false"
    assert "spark.executor.memory" not in conf and "spark.executor.cores" not in conf


def test_executor_sizes_ui_port_driver_host_and_passthrough_come_from_settings():
    settings = load_settings("local", {
        "NIGHTREC_SPARK__MASTER": "spark://10.0.0.1:7077",
        "NIGHTREC_SPARK__EXECUTOR_MEMORY": "6g",
        "NIGHTREC_SPARK__EXECUTOR_CORES": "3",
        "NIGHTREC_SPARK__UI_PORT": "4500",
        "NIGHTREC_SPARK__DRIVER_HOST": "10.0.0.5",
        "NIGHTREC_SPARK__CONF": '{"spark.cores.max": 12, "spark.eventLog.enabled": true, "spark.ui.enabled": "false"}',
    })
    conf = spark_conf(settings)
    assert conf["spark.master"] == "spark://10.0.0.1:7077"
    assert conf["spark.executor.memory"] == "6g" and conf["spark.executor.cores"] == "3"
    assert conf["spark.ui.port"] == "4500" and conf["spark.driver.host"] == "10.0.0.5"
    assert conf["spark.cores.max"] == "12" and conf["spark.eventLog.enabled"] == "true"
    assert conf["spark.ui.enabled"] == "false"  # the passthrough wins over nightrec's own defaults


def test_bad_executor_memory_is_rejected_with_the_field_name():
    with pytest.raises(SettingsError, match="executor_memory"):
        load_settings("local", {"NIGHTREC_SPARK__EXECUTOR_MEMORY": "lots"})


def test_checkpoints_go_to_shared_storage_never_a_driver_temp_folder():
    settings = load_settings("local", {"NIGHTREC_PATHS__LAKE": "/srv/lake"})
    assert checkpoint_root(settings) == f"/srv/lake/{CHECKPOINT_FOLDER}"
    assert checkpoint_root(load_settings("local", {"NIGHTREC_PATHS__LAKE": "s3://bucket/lake"})) == \
        f"s3://bucket/lake/{CHECKPOINT_FOLDER}"
    configured = load_settings("local", {"NIGHTREC_SPARK__CHECKPOINT_DIR": "var/checkpoints"})
    assert checkpoint_root(configured) == str(configured.home / "var" / "checkpoints")
    assert checkpoint_root(load_settings("cluster", {})) == "/data/nightrec/checkpoints"


def test_executor_python_setting_then_environment_then_this_interpreter():
    settings = load_settings("local", {})
    assert executor_python(settings, {}) == sys.executable
    assert executor_python(settings, {"PYSPARK_PYTHON": "/opt/py/bin/python"}) == "/opt/py/bin/python"
    pinned = load_settings("local", {"NIGHTREC_SPARK__PYTHON": "/srv/venv/bin/python"})
    assert executor_python(pinned, {"PYSPARK_PYTHON": "/opt/py/bin/python"}) == "/srv/venv/bin/python"


@pytest.mark.parametrize("master, here", [
    ("local[2]", True), ("local", True), ("spark://127.0.0.1:7077", True), ("spark://localhost:7077", True),
    ("spark://127.0.0.1:7077,localhost:7078", True), ("spark://[::1]:7077", True),
    ("spark://spark-master:7077", False), ("spark://127.0.0.1:7077,10.0.0.2:7077", False),
    ("yarn", False), ("k8s://https://127.0.0.1:6443", False),
])
def test_which_masters_keep_everything_on_this_machine(master, here):
    assert on_this_machine(master) is here


def test_a_loopback_driver_is_refused_for_executors_on_other_hosts(monkeypatch):
    monkeypatch.setenv("SPARK_LOCAL_IP", "127.0.0.1")
    with pytest.raises(SettingsError, match="NIGHTREC_SPARK__DRIVER_HOST"):
        _check_driver_address({"spark.master": "spark://spark-master:7077"})
    _check_driver_address({"spark.master": "spark://spark-master:7077", "spark.driver.host": "10.0.0.5"})
    _check_driver_address({"spark.master": "spark://127.0.0.1:7077"})
    monkeypatch.delenv("SPARK_LOCAL_IP")
    _check_driver_address({"spark.master": "yarn"})
    assert "SPARK_LOCAL_IP" not in os.environ  # a remote master: Spark chooses the external address
