"""What the SparkSession is built from: settings -> Spark properties, without starting Spark."""

import json
import os
import sys

import pytest

from nightrec.data.spark import (
    CHECKPOINT_FOLDER,
    MANIFEST,
    SPARK_PACKAGES,
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
    assert checkpoint_root(load_settings("cluster", {})) == f"s3://nightrec/lake/{CHECKPOINT_FOLDER}"


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


def test_delta_runs_in_spark_without_deletion_vectors_and_s3_goes_through_s3a():
    conf = spark_conf(load_settings("local", {}))
    assert conf["spark.sql.extensions"] == "io.delta.sql.DeltaSparkSessionExtension"
    assert conf["spark.sql.catalog.spark_catalog"] == "org.apache.spark.sql.delta.catalog.DeltaCatalog"
    assert conf["spark.databricks.delta.properties.defaults.enableDeletionVectors"] == "false"
    assert conf["spark.hadoop.fs.s3.impl"] == "org.apache.hadoop.fs.s3a.S3AFileSystem"
    assert "spark.hadoop.fs.s3a.endpoint" not in conf and "spark.hadoop.fs.s3a.access.key" not in conf


def test_the_s3a_connector_follows_the_storage_settings():
    settings = load_settings("local", {"NIGHTREC_STORAGE__S3_ENDPOINT": "http://10.0.0.9:9000",
                                       "NIGHTREC_STORAGE__S3_PATH_STYLE": "true",
                                       "NIGHTREC_STORAGE__S3_REGION": "eu-west-1"})
    conf = spark_conf(settings)
    assert conf["spark.hadoop.fs.s3a.endpoint"] == "http://10.0.0.9:9000"
    assert conf["spark.hadoop.fs.s3a.connection.ssl.enabled"] == "false"
    assert conf["spark.hadoop.fs.s3a.path.style.access"] == "true"
    assert conf["spark.hadoop.fs.s3a.endpoint.region"] == "eu-west-1"
    load_settings("local", {})  # this process's storage settings back to the defaults


def test_the_jvm_packages_are_resolved_once_then_loaded_from_the_cache(tmp_path):
    environ = {"NIGHTREC_SPARK__PACKAGES_CACHE": str(tmp_path)}
    first = spark_conf(load_settings("local", environ))
    assert first["spark.jars.packages"] == ",".join(SPARK_PACKAGES) and first["spark.jars.ivy"] == str(tmp_path)
    assert first["spark.jars.ivySettings"].endswith("conf/ivysettings.xml") and "spark.jars" not in first
    (tmp_path / "jars").mkdir()
    for name in ("io.delta_delta-spark_4.2_2.13-4.4.0.jar", "org.apache.hadoop_hadoop-aws-3.5.0.jar"):
        (tmp_path / "jars" / name).write_bytes(b"PK")
    (tmp_path / MANIFEST).write_text(json.dumps({"packages": list(SPARK_PACKAGES),
                                                 "jars": sorted(p.name for p in (tmp_path / "jars").iterdir())}))
    local = spark_conf(load_settings("local", environ))
    assert "spark.jars.packages" not in local and "spark.jars" not in local  # one JVM: on its class path
    assert local["spark.driver.extraClassPath"].count(str(tmp_path / "jars")) == 2
    cluster = spark_conf(load_settings("local", {**environ, "NIGHTREC_SPARK__MASTER": "spark://10.0.0.1:7077"}))
    assert cluster["spark.jars"].split(",")[0] == str(tmp_path / "jars" / "io.delta_delta-spark_4.2_2.13-4.4.0.jar")
    imaged = spark_conf(load_settings("local", {**environ, "NIGHTREC_SPARK__MASTER": "spark://10.0.0.1:7077",
                                                "NIGHTREC_SPARK__PACKAGES_ON_WORKERS": "true"}))
    assert all(jar.startswith("local:/") for jar in imaged["spark.jars"].split(","))  # not shipped
    (tmp_path / MANIFEST).write_text(json.dumps({"packages": ["io.delta:delta-spark_4.2_2.13:4.3.0"],
                                                 "jars": ["io.delta_delta-spark_4.2_2.13-4.4.0.jar"]}))
    assert "spark.jars.packages" in spark_conf(load_settings("local", environ))  # other pins: resolved again
