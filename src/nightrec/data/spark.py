"""The one SparkSession a stage uses, configured from settings: local mode or any cluster master.

Nothing here depends on where executors run. What a cluster needs is configuration (docs/deploy.md):
the master, executor sizes, any other Spark property through `spark.conf`, an interpreter path that
exists on the workers, and a checkpoint folder on storage every executor shares.
"""

from __future__ import annotations

import atexit
import ipaddress
import logging
import os
import sys
import warnings

from pyspark.sql import SparkSession

from nightrec.settings import Settings, SettingsError, resolve

log = logging.getLogger("nightrec.data.spark")

# PySpark 4.2 warns on every pandas conversion that pandas 3 is "not yet fully supported". The
# pinned pandas 3 is what the pinned Airflow, MLflow and great_expectations install with, and the
# conversions nightrec makes (Arrow-backed toPandas / createDataFrame, pandas UDFs) run in its tests:
# the warning says nothing to whoever reads a task log.
warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas", category=FutureWarning)

# Settings that make Spark write plain parquet files that delta-rs can commit (see docs/lake.md).
LAKE_FRIENDLY_CONF = {
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    "spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs": "false",
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.sources.partitionColumnTypeInference.enabled": "false",
}

# Default checkpoint root, inside the lake (shared by every executor wherever the lake is); the leading
# underscore keeps it out of table discovery.
CHECKPOINT_FOLDER = "_checkpoints"


def spark_conf(settings: Settings) -> dict[str, str]:
    """Every Spark property nightrec sets, from settings; `spark.conf` entries win over the rest."""
    s = settings.spark
    conf = {
        "spark.master": s.master,
        "spark.driver.memory": s.driver_memory,
        "spark.sql.shuffle.partitions": str(s.shuffle_partitions),
        "spark.ui.enabled": "true",
        "spark.ui.port": str(s.ui_port),       # taken: Spark tries the next ports (spark.port.maxRetries)
        "spark.ui.showConsoleProgress": "false",  # progress bars would flood task logs
        # Checkpoint files of RDDs the driver no longer references are deleted during the run.
        "spark.cleaner.referenceTracking.cleanCheckpoints": "true",
        **LAKE_FRIENDLY_CONF,
    }
    if s.driver_host:
        conf["spark.driver.host"] = s.driver_host
    if s.executor_memory:
        conf["spark.executor.memory"] = s.executor_memory
    if s.executor_cores:
        conf["spark.executor.cores"] = str(s.executor_cores)
    conf.update({key: _conf_text(value) for key, value in s.conf.items()})
    return conf


def checkpoint_root(settings: Settings) -> str:
    """Where executors write ALS's lineage checkpoints: `spark.checkpoint_dir`, else <lake>/_checkpoints.

    Never a folder of the driver's own: on a cluster the executors write and read it.
    """
    if settings.spark.checkpoint_dir:
        return resolve(settings.home, settings.spark.checkpoint_dir)
    return f"{settings.path('lake').rstrip('/')}/{CHECKPOINT_FOLDER}"


def executor_python(settings: Settings, environ: dict[str, str] | None = None) -> str:
    """The interpreter executors start: `spark.python`, else $PYSPARK_PYTHON, else the driver's own."""
    environ = os.environ if environ is None else environ
    return settings.spark.python or environ.get("PYSPARK_PYTHON") or sys.executable


def on_this_machine(master: str) -> bool:
    """local[...] masters, and standalone masters whose every host is a loopback address."""
    if master.startswith("local"):
        return True
    if not master.startswith("spark://"):
        return False
    hosts = [address.rsplit(":", 1)[0].strip("[]") for address in master[len("spark://"):].split(",")]
    return all(_is_loopback(host) for host in hosts)


def get_spark(settings: Settings, app_name: str = "nightrec") -> SparkSession:
    conf = spark_conf(settings)
    if "PYSPARK_GATEWAY_PORT" in os.environ:
        # spark-submit launched us: its own options (--master, --executor-memory, --conf ...) win, and the
        # driver JVM is already running, so its memory and bind address are settled.
        submitted = _submitted_conf()
        conf = {key: value for key, value in conf.items() if key not in submitted and key != "spark.driver.memory"}
    else:
        _check_driver_address(conf)
    # Executors start this interpreter (the driver passes the path along): it must exist on every worker.
    os.environ["PYSPARK_PYTHON"] = executor_python(settings)
    builder = SparkSession.builder.appName(app_name)
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    context = spark.sparkContext
    context.setLogLevel("ERROR")
    if not context.getCheckpointDir():
        # ALS truncates its lineage here every 10 iterations; without it long fits overflow the stack.
        context.setCheckpointDir(checkpoint_root(settings))
        _end_at_exit(spark, context.getCheckpointDir())  # Spark made a folder of this application's own
    # The UI's Jobs page groups jobs by stage (one application may serve several stages in one process).
    context.setJobGroup(app_name, app_name)
    log.info("Spark UI for %s: %s (application %s, master %s)", app_name,
             context.uiWebUrl or "off (spark.ui.enabled=false)", context.applicationId, context.master)
    return spark


def _check_driver_address(conf: dict[str, str]) -> None:
    """Bind the driver where its executors can reach it (this process is about to start the JVM)."""
    master = conf["spark.master"]
    if on_this_machine(master):
        # Everything on this host: stay on loopback, which exists even where no other address does
        # (sandboxes, laptops offline). Spark would otherwise bind the host's external address.
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        return
    local_ip = os.environ.get("SPARK_LOCAL_IP", "")
    if _is_loopback(local_ip) and not {"spark.driver.host", "spark.driver.bindAddress"} & conf.keys():
        raise SettingsError(
            f"SPARK_LOCAL_IP={local_ip} binds the Spark driver to loopback, where executors of master {master} "
            "on other hosts cannot reach it: unset SPARK_LOCAL_IP, or set spark.driver_host "
            "(NIGHTREC_SPARK__DRIVER_HOST) to an address the executors can reach")


def _submitted_conf() -> set[str]:
    """Keys spark-submit set for this driver (the JVM's spark.* system properties)."""
    from pyspark import SparkConf, SparkContext

    SparkContext._ensure_initialized()  # attaches to spark-submit's JVM
    return {key for key, _ in SparkConf(loadDefaults=True).getAll()}


def _end_at_exit(spark: SparkSession, checkpoints: str | None) -> None:
    """When the driver process ends: delete this application's checkpoint folder (nothing outlives the
    application that wrote it; a killed driver leaves its folder, which may be deleted once it no
    longer runs), then stop the session, so the application ends cleanly on the cluster (executors
    released, event log complete) before the process returns."""
    path = filesystem = None
    if checkpoints:
        path = spark.sparkContext._jvm.org.apache.hadoop.fs.Path(checkpoints)
        filesystem = path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())

    def end() -> None:
        try:
            if filesystem is not None:
                filesystem.delete(path, True)
        except Exception:  # the JVM may be gone already; a leftover folder only takes space
            log.warning("could not delete Spark checkpoint folder %s", checkpoints)
        try:
            spark.stop()
        except Exception:  # already stopped, or the JVM is gone: nothing left to end
            pass

    # Python's exit hooks run while the JVM still serves this process (it ends once the process is gone).
    atexit.register(end)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _conf_text(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
