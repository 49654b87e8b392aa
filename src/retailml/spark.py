"""The one SparkSession builder: local, a cluster, Spark Connect or the platform's session.

Delta Lake comes in through ``spark.jars.packages``. Spark resolves the package with Ivy at every
start; the install step (``retailml fetch-jars``) fills the Ivy cache once, so later starts — and
the tests — need no network. The driver JVM's own output goes to a log file, so the console shows
retailml's lines and one-line errors, not Ivy reports and Java stack traces.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from importlib import resources
from pathlib import Path

from pyspark import SparkConf, SparkContext
from pyspark.sql import SparkSession

from retailml.errors import SetupError
from retailml.settings import Settings

_MAVEN_GET = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:get"


def build_session(settings: Settings) -> SparkSession:
    """Start (or join) the SparkSession the settings describe, with Delta Lake enabled.

    Args:
        settings: The run's settings; ``settings.spark`` says which master and configuration.

    Returns:
        The session. In local mode the Python workers run this interpreter.

    Raises:
        SetupError: The Delta jars are not in the local cache, or the JVM did not start.
    """
    s = settings.spark
    if s.master == "existing":
        return SparkSession.builder.getOrCreate()
    if s.master.startswith("sc://"):
        # Spark Connect: the server owns the JVM, its jars and its configuration.
        return SparkSession.builder.remote(s.master).appName(s.app_name).getOrCreate()

    if s.delta_package and not delta_jars_cached(settings):
        raise SetupError(
            f"the Delta Lake jars ({s.delta_package}) are not in the local Ivy cache "
            f"({ivy_dir(settings)}); fetch them once with `make jars` or `retailml fetch-jars`"
        )
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    conf = spark_conf(settings)
    _launch_jvm(settings, conf)
    spark = SparkSession.builder.config(conf=conf).getOrCreate()
    spark.sparkContext.setLogLevel(s.log_level)
    return spark


@contextmanager
def session(settings: Settings) -> Iterator[SparkSession]:
    """A SparkSession for the duration of a command, stopped afterwards."""
    # A session that was already running (a notebook's, a test suite's) belongs to its owner.
    owned = SparkSession.getActiveSession() is None and settings.spark.master != "existing"
    spark = build_session(settings)
    try:
        yield spark
    finally:
        if owned:
            spark.stop()


def spark_context(spark: SparkSession) -> SparkContext | None:
    """The session's SparkContext; None on Spark Connect, which has none."""
    try:
        return spark.sparkContext
    except Exception:  # Spark Connect raises instead
        return None


def spark_conf(settings: Settings) -> SparkConf:
    """The Spark configuration for a new session: Delta, local defaults, then the user's conf."""
    s = settings.spark
    local = s.master.startswith("local")
    # loadDefaults=False: never inherit the system properties of a JVM already running here.
    conf = SparkConf(loadDefaults=False).setMaster(s.master).setAppName(s.app_name)
    if s.delta_package:
        conf.set("spark.jars.packages", s.delta_package)
    # Always explicit: the JVM's default (user.home from the password database) can differ from
    # $HOME, and then Spark would resolve into a folder this process does not check.
    conf.set("spark.jars.ivy", str(ivy_dir(settings)))
    conf.set("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
    conf.set("spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog")
    conf.set("spark.sql.adaptive.enabled", "true")
    conf.set("spark.sql.session.timeZone", "UTC")
    conf.set("spark.ui.enabled", str(s.ui).lower())
    conf.set("spark.ui.showConsoleProgress", "false")
    # The status store keeps every SQL execution's plan description (UI or not). The
    # recommender's plans are deep (generators, windows, joins per cutoff): unbounded, their
    # strings filled a 2 GiB test driver over one test session, and one ran a 1 GiB driver out
    # of memory while being built. Bounded strings, and fewer kept executions, bound that.
    conf.set("spark.sql.maxPlanStringLength", "65536")
    conf.set("spark.sql.ui.retainedExecutions", "200")
    conf.set("spark.sql.warehouse.dir", f"{settings.path(settings.lake_root)}/_warehouse")
    log4j = resources.files("retailml") / "log4j2.properties"
    conf.set("spark.driver.extraJavaOptions", f"-Dlog4j.configurationFile=file:{log4j}")
    if s.driver_memory:
        conf.set("spark.driver.memory", s.driver_memory)
    partitions = s.shuffle_partitions or (2 * _local_cores(s.master) if local else None)
    if partitions:
        conf.set("spark.sql.shuffle.partitions", str(partitions))
    if local:
        conf.set("spark.driver.host", "127.0.0.1")
        conf.set("spark.driver.bindAddress", "127.0.0.1")
        # Delta rebuilds table state with 50 tasks by default: far too many for small local
        # tables, where that alone costs seconds per write.
        conf.set("spark.databricks.delta.snapshotPartitions", str(partitions or 2))
    for key, value in s.conf.items():
        conf.set(key, value)
    return conf


def ivy_dir(settings: Settings) -> Path:
    """The Ivy folder Spark resolves ``spark.jars.packages`` into."""
    configured = settings.spark.conf.get("spark.jars.ivy") or settings.spark.ivy_dir
    if configured:
        return Path(settings.path(configured))
    return Path.home() / ".ivy2.5.2"


def delta_jars_cached(settings: Settings) -> bool:
    """Whether the Delta package's jar is already in the Ivy cache (no network needed)."""
    group, artifact, version = settings.spark.delta_package.split(":")
    return (ivy_dir(settings) / "jars" / f"{group}_{artifact}-{version}.jar").is_file()


def fetch_delta_jars(settings: Settings) -> Path:
    """Resolve the Delta package into the Ivy cache once, so later starts work offline.

    Spark's own resolver is tried first. Where it cannot reach the Maven repository but ``mvn``
    can (a mirror in ``~/.m2/settings.xml``), the artifacts Ivy reports missing are fetched into
    ``~/.m2/repository`` with ``mvn dependency:get``, which Ivy reads before the network.

    Returns:
        The Ivy cache folder.

    Raises:
        SetupError: Neither route found the jars.
    """
    package = settings.spark.delta_package
    if not package:
        raise SetupError("spark.delta_package is empty: Delta is expected on the classpath")
    conf = spark_conf(settings).setMaster("local[1]").set("spark.ui.enabled", "false")
    log = _log_file(settings)
    wanted = [package]
    for _attempt in range(6):
        if wanted and shutil.which("mvn") and _attempt > 0:
            for coordinate in wanted:
                _mvn_get(coordinate, transitive=coordinate == package)
        try:
            _launch_jvm(settings, conf)
            SparkContext(conf=conf).stop()
            return ivy_dir(settings)
        except Exception:
            _reset_gateway()
            wanted = _failed_downloads(log.read_text(errors="replace")) or [package]
            if not shutil.which("mvn"):
                break
    raise SetupError(
        f"could not fetch {package}: Spark's resolver failed (see {log}) "
        + ("and so did mvn" if shutil.which("mvn") else "and mvn is not installed")
    )


def _launch_jvm(settings: Settings, conf: SparkConf) -> None:
    """Start the driver JVM with its stdout/stderr in the log file instead of the console."""
    if SparkContext._gateway is not None:
        return
    from pyspark.java_gateway import launch_gateway

    if settings.spark.master.startswith("local"):
        # Workers must run this interpreter, which has the packages (pandas, numpy...).
        os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    log = _log_file(settings)
    with log.open("w") as out:
        try:
            gateway = launch_gateway(conf, popen_kwargs={"stdout": out, "stderr": out})
        except Exception as exc:
            tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
            raise SetupError(f"Spark did not start ({exc.__class__.__name__}): {tail}") from exc
    SparkContext._gateway = gateway
    SparkContext._jvm = gateway.jvm


def _reset_gateway() -> None:
    with suppress(Exception):
        if SparkContext._gateway is not None:
            SparkContext._gateway.shutdown()
    SparkContext._gateway = None
    SparkContext._jvm = None


def _log_file(settings: Settings) -> Path:
    folder = Path(settings.path(settings.log_dir))
    folder.mkdir(parents=True, exist_ok=True)
    return folder / "spark-driver.log"


def _local_cores(master: str) -> int:
    match = re.fullmatch(r"local\[(\d+)(?:,\d+)?\]", master)
    if match:
        return int(match.group(1))
    return 1 if master == "local" else os.cpu_count() or 1


def _failed_downloads(log: str) -> list[str]:
    """Ivy's "download failed: org#name;version!file.jar" lines as Maven coordinates."""
    found = re.findall(r"download failed: ([^#\s]+)#([^;\s]+);([^!\s]+)!", log)
    return sorted({f"{g}:{a}:{v}" for g, a, v in found})


def _mvn_get(coordinate: str, *, transitive: bool) -> None:
    subprocess.run(
        ["mvn", "-q", "-B", _MAVEN_GET, f"-Dartifact={coordinate}", f"-Dtransitive={transitive}"],
        check=False,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
