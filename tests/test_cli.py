from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from pyspark.sql import SparkSession

from retailml.cli import cli

COMMANDS = [[], ["generate"], ["task"], ["run"], ["tables"], ["fetch-jars"]]


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    # mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI, so an earlier test's store would
    # leak into the settings of a command run here.
    for name in list(os.environ):
        if name.startswith("RETAILML_") or name == "MLFLOW_TRACKING_URI":
            monkeypatch.delenv(name)
    return tmp_path


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "retailml")
def test_every_command_has_help(command: list[str]) -> None:
    result = CliRunner().invoke(cli, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage: " in result.output


def test_bad_setting_is_one_line(in_tmp: Path) -> None:
    result = CliRunner().invoke(cli, ["--set", "spark.master=nowhere", "tables"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: invalid setting 'spark.master': not a Spark master URL: 'nowhere' (got 'nowhere')"
    ]


def test_missing_source_is_one_line(in_tmp: Path, spark: SparkSession) -> None:
    result = CliRunner().invoke(cli, ["task", "ingest", "--source", "no/such/dir"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert lines[-1] == f"Error: {in_tmp.resolve()}/no/such/dir: no such file or folder"
    assert not any("Traceback" in ln or "py4j" in ln for ln in lines)


def test_missing_table_tells_which_task_to_run(in_tmp: Path, spark: SparkSession) -> None:
    result = CliRunner().invoke(cli, ["task", "clean"])
    assert result.exit_code == 1
    assert "table bronze.transactions does not exist yet" in result.output
    assert "run `retailml task ingest` first" in result.output


def test_tables_lists_every_table(in_tmp: Path, spark: SparkSession) -> None:
    result = CliRunner().invoke(cli, ["tables"])
    assert result.exit_code == 0, result.output
    for name in (
        "bronze.transactions",
        "bronze.quarantine",
        "silver.transactions",
        "silver.products",
        "silver.customers",
    ):
        assert name in result.output
    assert "not written yet" in result.output


def test_debug_shows_the_traceback(in_tmp: Path, spark: SparkSession) -> None:
    result = CliRunner().invoke(cli, ["--debug", "task", "ingest", "--source", "nope"])
    assert result.exit_code == 1
    assert result.exception is not None and "no such file or folder" in str(result.exception)


def test_generate_command(in_tmp: Path) -> None:
    result = CliRunner().invoke(
        cli,
        [
            "generate",
            "--customers",
            "30",
            "--products",
            "20",
            "--days",
            "30",
            "--seed",
            "3",
            "--out",
            "gen",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "lines" in result.output and (in_tmp / "gen" / "transactions").is_dir()
    assert (in_tmp / "gen" / "ground_truth" / "taste.csv").is_file()


@pytest.mark.slow
def test_run_end_to_end_on_generated_data(
    in_tmp: Path, spark: SparkSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in {"CUSTOMERS": "150", "PRODUCTS": "60", "DAYS": "240"}.items():
        monkeypatch.setenv(f"RETAILML_GENERATE_{key}", value)
    # Keep training cheap: the families are tested in tests/stages/test_train.py.
    monkeypatch.setenv("RETAILML_FEATURES_TRAIN_CUTOFFS", "2")
    monkeypatch.setenv("RETAILML_TRAIN_FAMILIES", '["logistic_regression"]')
    monkeypatch.setenv("RETAILML_TRAIN_FOLDS", "2")
    monkeypatch.setenv("RETAILML_RECOMMEND_RANKS", "[8]")
    monkeypatch.setenv("RETAILML_RECOMMEND_REG_PARAMS", "[0.1]")
    monkeypatch.setenv("RETAILML_RECOMMEND_ALPHAS", "[10]")
    result = CliRunner().invoke(cli, ["run"])
    assert result.exit_code == 0, result.output
    assert "generated lines" in result.output
    counts = {}
    for line in result.output.splitlines():
        parts = line.split()
        if parts and parts[0] in (
            "bronze.transactions",
            "bronze.quarantine",
            "silver.transactions",
        ):
            counts[parts[0]] = int(parts[1].replace(",", ""))
    generated = int(result.output.split("data: ")[1].split()[0].replace(",", ""))
    assert counts["bronze.transactions"] + counts["bronze.quarantine"] == generated
    assert 0 < counts["silver.transactions"] <= counts["bronze.transactions"]
    for layer, table in [
        ("bronze", "transactions"),
        ("silver", "customers"),
        ("silver", "customer_features"),
    ]:
        assert (in_tmp / "lakehouse" / layer / table / "_delta_log").is_dir()
    assert "logistic_regression" in result.output and "promoted to champion" in result.output
    assert (in_tmp / "mlflow" / "mlflow.db").is_file()
    for table in ("purchase_propensity", "top_buyers", "recommendations"):
        assert (in_tmp / "lakehouse" / "gold" / table / "_delta_log").is_dir()
    assert "top predicted buyers:" in result.output and "NDCG@" in result.output

    # A second run reuses the data and leaves the same tables (no duplicates).
    again = CliRunner().invoke(cli, ["run"])
    assert again.exit_code == 0, again.output

    def tables(output: str) -> str:
        return output.split("tables:")[1].split("MLflow:")[0]

    assert tables(again.output) == tables(result.output)
    assert "champion kept" in again.output
    listing = CliRunner().invoke(cli, ["tables"])
    assert f"{counts['silver.transactions']:,}" in listing.output
