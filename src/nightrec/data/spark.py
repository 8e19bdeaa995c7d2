"""The one SparkSession a stage uses, configured from settings: local mode or any cluster master.

Nothing here depends on where executors run. What a cluster needs is configuration (docs/deploy.md):
the master, executor sizes, any other Spark property through `spark.conf`, an interpreter path that
exists on the workers, and a checkpoint folder on storage every executor shares.
"""

from __future__ import annotations

import atexit
import fcntl
import ipaddress
import json
import logging
import os
import sys
import warnings
from pathlib import Path

from pyspark.sql import SparkSession

from nightrec.data import storage
from nightrec.settings import Settings, SettingsError, StorageSettings, resolve

log = logging.getLogger("nightrec.data.spark")

# PySpark 4.2 warns on every pandas conversion that pandas 3 is "not yet fully supported". The
# pinned pandas 3 is what the pinned Airflow, MLflow and great_expectations install with, and the
# conversions nightrec makes (Arrow-backed toPandas / createDataFrame, pandas UDFs) run in its tests:
# the warning says nothing to whoever reads a task log.
warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas", category=FutureWarning)

# The JVM packages nightrec's Spark needs beside pyspark's own jars, pinned here and nowhere else:
# Delta for pyspark 4.2 (the jar of delta-spark 4.4.0, the pip package's version) and the s3a
# connector built for pyspark's Hadoop 3.5.0 (hadoop-aws, with the AWS SDK v2 bundle it declares).
SPARK_PACKAGES = ("io.delta:delta-spark_4.2_2.13:4.4.0", "org.apache.hadoop:hadoop-aws:3.5.0")
# What those packages declare that pyspark already ships, in the versions Spark runs with: left out.
PROVIDED_BY_PYSPARK = (
    "org.apache.hadoop:hadoop-client-runtime", "org.apache.hadoop:hadoop-client-api",
    "org.apache.parquet:parquet-hadoop", "org.apache.parquet:parquet-column", "org.apache.parquet:parquet-common",
    "org.apache.parquet:parquet-encoding", "org.apache.parquet:parquet-format-structures",
    "org.apache.parquet:parquet-jackson", "com.fasterxml.jackson.core:jackson-databind",
    "com.fasterxml.jackson.core:jackson-core", "com.fasterxml.jackson.core:jackson-annotations",
    "org.apache.logging.log4j:log4j-slf4j2-impl", "org.apache.logging.log4j:log4j-api",
    "org.apache.logging.log4j:log4j-core", "org.slf4j:slf4j-api", "org.xerial.snappy:snappy-java",
    "com.github.luben:zstd-jni", "io.airlift:aircompressor", "commons-pool:commons-pool",
    "org.roaringbitmap:RoaringBitmap", "com.google.code.findbugs:jsr305", "org.locationtech.jts:jts-core",
)

FIXED_CONF = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.sources.partitionColumnTypeInference.enabled": "false",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    # Delta Lake (docs/lake.md). Retention is nightrec's to choose (erasure vacuums with none). No
    # deletion vectors: an erasure must rewrite the files holding a user, and delta-rs readers (the
    # CLI, other teams' tools) read only tables without them.
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
    "spark.databricks.delta.retentionDurationCheck.enabled": "false",
    # Each VACUUM leaves a commit: the log says when a table was last maintained (lake.last_maintained).
    "spark.databricks.delta.vacuum.logging.enabled": "true",
    "spark.databricks.delta.properties.defaults.enableDeletionVectors": "false",
    # No checksum files beside the commits: optional, they cost a job per write and repeat every
    # file's statistics (minimum and maximum ids) in the log.
    "spark.databricks.delta.writeChecksumFile.enabled": "false",
    # s3:// URIs (what boto3, delta-rs and MLflow take) go through the s3a connector too, so one URI
    # names an object for every reader; credentials come from the standard AWS chain.
    "spark.hadoop.fs.s3.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
    "spark.hadoop.fs.AbstractFileSystem.s3.impl": "org.apache.hadoop.fs.s3a.S3A",
    "spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs": "false",
}

# Default checkpoint root, inside the lake (shared by every executor wherever the lake is); the leading
# underscore keeps it out of table discovery.
CHECKPOINT_FOLDER = "_checkpoints"
MANIFEST = "nightrec-jars.json"


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
        # Delta's log replay and VACUUM's listing default to 50 and 10,000 tasks: one JVM replays a log
        # in one task (a night's tables hold thousands of files, not millions); a cluster as it shuffles.
        "spark.databricks.delta.snapshotPartitions": "1" if s.master.startswith("local") else str(s.shuffle_partitions),
        "spark.sql.sources.parallelPartitionDiscovery.parallelism": str(s.shuffle_partitions),
        **FIXED_CONF,
        **s3a_conf(settings.storage),
        **packages_conf(settings),
    }
    if s.driver_host:
        conf["spark.driver.host"] = s.driver_host
    if s.executor_memory:
        conf["spark.executor.memory"] = s.executor_memory
    if s.executor_cores:
        conf["spark.executor.cores"] = str(s.executor_cores)
    conf.update({key: _conf_text(value) for key, value in s.conf.items()})
    return conf


def s3a_conf(options: StorageSettings) -> dict[str, str]:
    """The s3a connector's endpoint, region and addressing, from the same settings boto3 uses."""
    conf = {"spark.hadoop.fs.s3a.endpoint.region": options.region(),
            "spark.hadoop.fs.s3a.path.style.access": "true" if options.s3_path_style else "false"}
    endpoint = options.endpoint()
    if endpoint:
        conf["spark.hadoop.fs.s3a.endpoint"] = endpoint
        conf["spark.hadoop.fs.s3a.connection.ssl.enabled"] = "false" if endpoint.startswith("http://") else "true"
    return conf


def use_storage(spark: SparkSession) -> None:
    """Point a running session's s3a connector at this process's S3 options (a session outlives the
    settings it was built with when the process loads others, as tests do)."""
    hadoop = spark.sparkContext._jsc.hadoopConfiguration()
    for key, value in s3a_conf(storage.options()).items():
        hadoop.set(key.removeprefix("spark.hadoop."), value)
    if not storage.options().endpoint():
        hadoop.unset("fs.s3a.endpoint")


def packages_conf(settings: Settings) -> dict[str, str]:
    """SPARK_PACKAGES for this session: the cached jars once resolved (no resolution at start, and
    sessions starting at once never resolve into the same cache), else resolved from Maven Central
    by this session into the cache (`spark.packages_cache`)."""
    cache = Path(settings.spark.packages_cache).expanduser()
    jars = cached_jars(cache)
    if jars:
        # The driver takes them on its class path as they are (spark.jars would copy them, 700 MB, every
        # session); executors elsewhere get them shipped, or find them at the same path on their host.
        conf = {"spark.driver.extraClassPath": ":".join(str(j) for j in jars)}
        if not settings.spark.master.startswith("local"):
            where = "local:" if settings.spark.packages_on_workers else ""
            conf["spark.jars"] = ",".join(f"{where}{j}" for j in jars)
        return conf
    return {"spark.jars.packages": ",".join(SPARK_PACKAGES), "spark.jars.excludes": ",".join(PROVIDED_BY_PYSPARK),
            "spark.jars.ivy": str(cache),
            "spark.jars.ivySettings": str(Path(settings.home) / "conf" / "ivysettings.xml")}


def cached_jars(cache: Path) -> list[Path]:
    """The jars a resolution of exactly SPARK_PACKAGES left in the cache; [] before one."""
    manifest = cache / MANIFEST
    try:
        recorded = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return []
    jars = [cache / "jars" / name for name in recorded.get("jars", [])]
    if recorded.get("packages") != list(SPARK_PACKAGES) or not jars or not all(j.is_file() for j in jars):
        return []
    return jars


def record_resolved(spark: SparkSession, cache: Path) -> None:
    """After a session resolved SPARK_PACKAGES into the cache: remember its jars for the next ones."""
    resolved = spark.sparkContext.getConf().get("spark.jars", "")
    jars = sorted(Path(uri.removeprefix("file://").removeprefix("file:")).name for uri in resolved.split(",") if uri)
    temporary = cache / f".{MANIFEST}.{os.getpid()}"
    temporary.write_text(json.dumps({"packages": list(SPARK_PACKAGES), "jars": jars}))
    temporary.replace(cache / MANIFEST)


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
    if "spark.jars.packages" in conf:
        cache = Path(conf["spark.jars.ivy"])
        cache.mkdir(parents=True, exist_ok=True)
        with open(cache / ".lock", "w") as lock:  # one resolution at a time into the cache
            fcntl.flock(lock, fcntl.LOCK_EX)
            spark = builder.getOrCreate()
            record_resolved(spark, cache)
    else:
        spark = builder.getOrCreate()
    use_storage(spark)
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
