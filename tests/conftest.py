"""One SparkSession for the whole test run (a cold start costs ~10 s), small and quiet."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from retailml.settings import Settings, load_settings

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")

TEST_OVERRIDES = {
    "spark.master": "local[2]",
    "spark.shuffle_partitions": 2,
    "spark.ui": False,
    "spark.driver_memory": "2g",
}


def make_settings(project_dir: Path, **overrides: object) -> Settings:
    """Settings for a test: everything under ``project_dir``, no environment, tiny Spark."""
    return load_settings(
        environ={}, project_dir=project_dir, overrides={**TEST_OVERRIDES, **overrides}
    )


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkSession]:
    from retailml.spark import build_session

    settings = make_settings(tmp_path_factory.mktemp("spark"))
    session = build_session(settings)
    yield session
    session.stop()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)
