from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from retailml.errors import SettingsError
from retailml.settings import DELTA_PACKAGE, load_settings


def test_defaults(tmp_path: Path) -> None:
    s = load_settings(environ={}, project_dir=tmp_path)
    assert s.lake_root == "lakehouse"
    assert s.path(s.lake_root) == str(tmp_path.resolve() / "lakehouse")
    assert s.spark.master == "local[*]"
    assert s.spark.delta_package == DELTA_PACKAGE
    assert s.tracking_uri == f"sqlite:///{tmp_path.resolve()}/mlflow/mlflow.db"
    assert s.catalog is None and s.db_schema is None
    assert s.generate.start_date == date(2010, 1, 1)


def test_precedence_file_then_env_then_overrides(tmp_path: Path) -> None:
    (tmp_path / "retailml.toml").write_text(
        'seed = 1\nlake_root = "/lake/from/file"\n[spark]\nmaster = "local[3]"\n'
        "[generate]\ncustomers = 10\n"
    )
    env = {"RETAILML_SEED": "2", "RETAILML_SPARK_MASTER": "local[4]"}
    s = load_settings(environ=env, project_dir=tmp_path, overrides={"seed": 3})
    assert s.lake_root == "/lake/from/file"  # file only
    assert s.generate.customers == 10  # file only
    assert s.spark.master == "local[4]"  # env beats file
    assert s.seed == 3  # override beats env


def test_env_json_dict_and_mlflow_uri(tmp_path: Path) -> None:
    env = {
        "RETAILML_SPARK_CONF": '{"spark.executor.memory": "2g"}',
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000",
        "RETAILML_SCHEMA": "retail",
        "RETAILML_CATALOG": "main",
    }
    s = load_settings(environ=env, project_dir=tmp_path)
    assert s.spark.conf == {"spark.executor.memory": "2g"}
    assert s.tracking_uri == "http://127.0.0.1:5000"
    assert (s.catalog, s.db_schema) == ("main", "retail")


def test_databricks_runtime_uses_platform_session(tmp_path: Path) -> None:
    s = load_settings(environ={"DATABRICKS_RUNTIME_VERSION": "16.4"}, project_dir=tmp_path)
    assert s.spark.master == "existing"
    assert s.spark.delta_package == ""
    assert s.tracking_uri == "databricks"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RETAILML_SEED": "abc"}, "invalid setting 'seed'"),
        ({"RETAILML_SPARK_SHUFFLE_PARTITIONS": "0"}, "invalid setting 'spark.shuffle_partitions'"),
        ({"RETAILML_SPARK_MASTER": "nowhere"}, "not a Spark master URL: 'nowhere'"),
        ({"RETAILML_GENERATE_MALFORMED_FRACTION": "1.5"}, "'generate.malformed_fraction'"),
        ({"RETAILML_LAKE_ROOTS": "x"}, "unknown setting 'lake_roots'"),
        ({"RETAILML_CATALOG": "main; DROP"}, "invalid setting 'catalog'"),
    ],
)
def test_invalid_values_name_the_setting(tmp_path: Path, env: dict, message: str) -> None:
    with pytest.raises(SettingsError, match=message.replace("[", r"\[")):
        load_settings(environ=env, project_dir=tmp_path)


def test_bad_toml_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "retailml.toml"
    bad.write_text("seed = = 1")
    with pytest.raises(SettingsError, match=r"retailml\.toml: not valid TOML"):
        load_settings(environ={}, project_dir=tmp_path)
    with pytest.raises(SettingsError, match="settings file not found"):
        load_settings(environ={}, project_dir=tmp_path, config_file=tmp_path / "nope.toml")


def test_with_overrides_revalidates(tmp_path: Path) -> None:
    s = load_settings(environ={}, project_dir=tmp_path)
    assert s.with_overrides({"spark.master": "local[2]"}).spark.master == "local[2]"
    with pytest.raises(SettingsError, match=r"spark\.master"):
        s.with_overrides({"spark.master": "bogus"})


def test_uri_paths_are_kept(tmp_path: Path) -> None:
    s = load_settings(environ={}, project_dir=tmp_path, overrides={"lake_root": "s3a://b/lake"})
    assert s.path(s.lake_root) == "s3a://b/lake"
