"""One SparkSession for the whole test run (a cold start costs ~10 s), small and quiet."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession

from retailml.settings import GATES, Settings, load_settings

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")

TEST_OVERRIDES = {
    "spark.master": "local[2]",
    "spark.shuffle_partitions": 2,
    "spark.ui": False,
    "spark.driver_memory": "2g",
}


# Spark's interpreted evaluation instead of generated code, for the test session only. The tests'
# frames have tens of rows and most queries run once, so compiling each query's generated Java
# (Janino) and then JIT-compiling the new classes costs more than running it: a quarter of the
# test JVM's samples were in code generation. Four mid-size stage tests (features, clean,
# successive halving, score) took 182 s and 195 s this way against 232 s and 236 s with
# generated code, run alternately in one session. Results do not depend on it (Spark tests
# both paths); the end-to-end run through the CLI runs the product's default, generated code
# (the `generated_code` fixture).
INTERPRETED = {
    "spark.sql.codegen.wholeStage": "false",
    "spark.sql.codegen.factoryMode": "NO_CODEGEN",
}

# For tests of parsing, whose tiny files are mostly bad rows on purpose: every data-quality gate
# only warns (the gates have tests of their own).
GATES_WARN = {"quality.warn": list(GATES)}


def make_settings(project_dir: Path, **overrides: object) -> Settings:
    """Settings for a test: everything under ``project_dir``, no environment, tiny Spark."""
    return load_settings(
        environ={}, project_dir=project_dir, overrides={**TEST_OVERRIDES, **overrides}
    )


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkSession]:
    from retailml.spark import build_session

    settings = make_settings(tmp_path_factory.mktemp("spark"), **{"spark.conf": INTERPRETED})
    session = build_session(settings)
    yield session
    session.stop()


@pytest.fixture
def generated_code(spark: SparkSession) -> Iterator[None]:
    """The test session with Spark's generated code, as the product runs, for one test."""
    for key in INTERPRETED:
        spark.conf.unset(key)  # back to Spark's default
    try:
        yield
    finally:
        for key, value in INTERPRETED.items():
            spark.conf.set(key, value)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


def assert_delta_inputs(run: Any, lake: Any, tables: list[str]) -> None:
    """The MLflow run logged each table, as it is now, as a Delta input dataset for training
    (its path, version and row count)."""
    found = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert sorted(found) == sorted(tables)
    for name in tables:
        entry = found[name]
        assert entry.dataset.source_type == "delta_table"
        source = json.loads(entry.dataset.source)
        assert source["path"] == lake.location(name)
        assert str(source["delta_table_version"]) == str(lake.version(name))
        assert {t.key: t.value for t in entry.tags}["mlflow.data.context"] == "training"
        # The exact row count, not MLflow's approximate one (a full pass through Python).
        assert json.loads(entry.dataset.profile) == {"approx_count": lake.read(name).count()}
