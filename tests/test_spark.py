from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from retailml.errors import SetupError
from retailml.spark import build_session, delta_jars_cached, spark_conf
from tests.conftest import make_settings


def test_session_has_delta_and_runs_this_python(spark: SparkSession, tmp_path: Path) -> None:
    path = str(tmp_path / "t")
    spark.range(3).write.format("delta").save(path)
    assert spark.read.format("delta").load(path).count() == 3
    assert os.environ["PYSPARK_PYTHON"] == sys.executable
    # Python workers really start this interpreter (the venv, with its packages).
    exe = spark.sparkContext.parallelize([0], 1).map(lambda _: __import__("sys").executable)
    assert exe.collect() == [sys.executable]
    assert spark.conf.get("spark.sql.session.timeZone") == "UTC"


def test_local_defaults_and_user_conf(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path,
        **{
            "spark.master": "local[3]",
            "spark.shuffle_partitions": None,
            "spark.conf": {"spark.sql.adaptive.enabled": "false"},
        },
    )
    conf = dict(spark_conf(settings).getAll())
    assert conf["spark.sql.shuffle.partitions"] == "6"  # 2 × cores
    assert conf["spark.jars.packages"] == settings.spark.delta_package
    assert conf["spark.sql.extensions"] == "io.delta.sql.DeltaSparkSessionExtension"
    assert conf["spark.sql.adaptive.enabled"] == "false"  # the user's conf wins


def test_cluster_master_keeps_spark_default_partitions(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, **{"spark.master": "spark://10.0.0.1:7077", "spark.shuffle_partitions": None}
    )
    conf = dict(spark_conf(settings).getAll())
    assert "spark.sql.shuffle.partitions" not in conf
    assert "spark.driver.host" not in conf


def test_missing_delta_jars_is_one_clear_error(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, **{"spark.ivy_dir": str(tmp_path / "empty-ivy")})
    assert not delta_jars_cached(settings)
    with pytest.raises(SetupError, match=r"Delta Lake jars .* `retailml fetch-jars`"):
        build_session(settings)
