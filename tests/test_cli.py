from __future__ import annotations

import csv
import io
import os
import re
from datetime import datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from pyspark.sql import SparkSession

from retailml.cli import cli
from retailml.workflow import TASK_ORDER
from tests.browser import check_page

COMMANDS = [
    [],
    ["generate"],
    ["task"],
    ["run"],
    ["runs"],
    ["bundle"],
    ["tables"],
    ["customer"],
    ["maintain"],
    ["fetch-jars"],
]


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
    assert lines[-1] == (
        f"Error: task ingest failed: {in_tmp.resolve()}/no/such/dir: no such file or folder"
    )
    # Printed once; a user's mistake is not retried: it would fail the same way.
    assert result.output.count("no such file or folder") == 1
    assert "retrying" not in result.output
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
    # A table's history: one line naming the task that writes it, or the known tables.
    result = CliRunner().invoke(cli, ["tables", "--history", "gold.top_buyers"])
    assert result.exit_code == 1
    assert "table gold.top_buyers does not exist yet" in result.output
    assert "run `retailml task score` first" in result.output
    result = CliRunner().invoke(cli, ["tables", "--history", "gold.nope"])
    assert result.exit_code == 2
    assert "'gold.nope' is not a table; the tables: bronze.transactions" in result.output


def test_debug_shows_the_traceback(in_tmp: Path, spark: SparkSession) -> None:
    result = CliRunner().invoke(cli, ["--debug", "task", "ingest", "--source", "nope"])
    assert result.exit_code == 1
    assert "Traceback (most recent call last)" in result.output
    assert "InputError" in result.output and "no such file or folder" in result.output


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
@pytest.mark.usefixtures("generated_code")
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
    # One training window for the rankers: their windows' loop is run (with three) in
    # tests/stages/test_recommend.py.
    monkeypatch.setenv("RETAILML_RECOMMEND_RANKER_WINDOWS", "1")
    result = CliRunner().invoke(cli, ["run"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "generated lines" in out
    run_id = out.split("run ", 1)[1].split(":")[0]
    counts = {}
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] in (
            "bronze.transactions",
            "bronze.quarantine",
            "silver.transactions",
        ):
            counts[parts[0]] = int(parts[1].replace(",", ""))
    generated = int(out.split("data: ")[1].split()[0].replace(",", ""))
    assert counts["bronze.transactions"] + counts["bronze.quarantine"] == generated
    assert 0 < counts["silver.transactions"] <= counts["bronze.transactions"]
    # Every table of the lake exists, the run history included.
    from retailml.lakehouse import TABLES

    for name in TABLES:
        layer, table = name.split(".")
        assert (in_tmp / "lakehouse" / layer / table / "_delta_log").is_dir(), name
    assert "logistic_regression" in out and "promoted to champion" in out
    assert (in_tmp / "mlflow" / "mlflow.db").is_file()
    assert "top predicted buyers:" in out and "NDCG@" in out
    # The summary table: every task succeeded once, in DAG order.
    summary = [ln.split() for ln in out.split("task ")[-1].splitlines()[2:9]]
    assert [row[:3] for row in summary] == [[task, "succeeded", "1"] for task in TASK_ORDER], out
    # The report exists, has every plot, and renders in a real browser without errors.
    report = in_tmp / "reports" / run_id / "index.html"
    assert f"report: {report}" in out
    check = check_page(report, in_tmp / "report.png")
    assert check.images >= 8 and check.images_loaded == check.images, check
    assert check.console_errors == [], check.console_errors

    # The history knows the run and its tasks.
    listing = CliRunner().invoke(cli, ["runs"])
    assert listing.exit_code == 0, listing.output
    assert run_id in listing.output and "succeeded" in listing.output
    detail = CliRunner().invoke(cli, ["runs", run_id])
    assert detail.exit_code == 0, detail.output
    assert all(task in detail.output for task in TASK_ORDER)

    def tables(output: str) -> str:
        lines = output.split("tables:")[1].split("MLflow:")[0].splitlines()
        return "\n".join(ln for ln in lines if ln.strip() and not ln.split()[0].startswith("ops."))

    # Day 2: one new file (new invoices of the last month): only it is read and MERGEd.
    files = sorted((in_tmp / "data" / "transactions").glob("*.csv"))
    header, *rows = files[-1].read_text(encoding="utf-8").splitlines()
    (files[-1].parent / "new.csv").write_text(
        "\n".join([header, *(f"N{r}" for r in rows)]) + "\n", encoding="utf-8"
    )
    day2 = CliRunner().invoke(cli, ["run"])
    assert day2.exit_code == 0, day2.output
    assert f"{len(files)} files unchanged since their last ingest: not read" in day2.output
    assert "merged the rows of 1 new or changed files" in day2.output
    assert "retrained: " in day2.output or "no retraining needed" in day2.output
    assert tables(day2.output) != tables(out)

    # Day 3: nothing new: every task says so and no table is written.
    day3 = CliRunner().invoke(cli, ["run"])
    assert day3.exit_code == 0, day3.output
    assert "nothing new" in day3.output
    for task in TASK_ORDER[1:]:
        assert f"{task}: up to date" in day3.output, task
    assert tables(day3.output) == tables(day2.output)
    # silver.transactions: the first run's write and constraint, the second run's MERGE.
    history = CliRunner().invoke(cli, ["tables", "--history", "silver.transactions"])
    assert history.exit_code == 0, history.output
    commits = [ln.split() for ln in history.output.splitlines()[2:]]
    assert [(c[0], c[3]) for c in commits] == [("2", "MERGE"), ("1", "ADD"), ("0", "WRITE")]

    # One full ingest and clean over all the files gives the same silver tables.
    full = CliRunner().invoke(cli, ["run", "--full", "--only", "ingest", "--only", "clean"])
    assert full.exit_code == 0, full.output

    def silver(output: str) -> list[str]:
        return [ln for ln in tables(output).splitlines() if ln.split()[0].startswith("silver.")]

    assert silver(full.output) == silver(day2.output)

    assert f"numOutputRows={counts['silver.transactions']}" in history.output

    # A shifted batch: on the last day two customers in three buy once more (a promotion day),
    # so at the scoring cutoff most recencies are a day. The next run finds the drift and retrains,
    # even at five times the default threshold (150 customers: monitor.min_rows=1).
    def largest_psi() -> float:
        drift = spark.read.format("delta").load(str(in_tmp / "lakehouse" / "ops" / "drift"))
        drift = drift.where("comparison = 'train_vs_score' AND feature <> 'tenure_days'")
        return float(drift.agg({"psi": "max"}).first()[0])

    assert largest_psi() < 1.0  # every earlier run's drift, sampling noise on 150 customers
    shifted_file = files[-1].parent / "promotion.csv"
    shifted_file.write_text(promotion_day(files), encoding="utf-8")
    shifted = CliRunner().invoke(
        cli,
        ["--set", "monitor.psi_threshold=1.0", "--set", "monitor.min_rows=1", "run",
         "--only", "ingest", "--only", "clean", "--only", "features", "--only", "train"],
    )  # fmt: skip
    assert shifted.exit_code == 0, shifted.output
    assert "merged the rows of 1 new or changed files" in shifted.output
    reason = shifted.output.split("retrained: feature drift: ")[1].splitlines()[0]
    assert float(reason.split(" PSI ")[1].split()[0]) > 1.0, reason
    assert largest_psi() > 1.0


def promotion_day(files: list[Path]) -> str:
    """A file in the generated format in which two of every three customers of ``files`` buy
    one unit of a product they bought before, on the last day of the data."""

    def dated(text: str | None) -> bool:  # the generator breaks some dates on purpose
        try:
            return datetime.strptime(text or "", "%Y-%m-%d %H:%M:%S") is not None
        except ValueError:
            return False

    def positive(text: str | None) -> bool:
        try:
            return float(text or "") > 0
        except ValueError:
            return False

    rows = [
        row
        for f in files
        for row in csv.DictReader(f.read_text(encoding="utf-8").splitlines())
        if dated(row["InvoiceDate"])
    ]
    last = max(row["InvoiceDate"][:10] for row in rows)
    bought = {
        row["Customer ID"]: row
        for row in rows
        if row["Customer ID"]
        and row["StockCode"][:1].isdigit()
        and re.fullmatch(r"[1-9]\d*", row["Quantity"] or "")
        and positive(row["Price"])
    }
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for i, (_, row) in enumerate(sorted(bought.items())):
        if i % 3:  # two customers in three: the holdout's labels must not all be 1
            writer.writerow(
                {**row, "Invoice": f"P{i}", "Quantity": "1", "InvoiceDate": f"{last} 12:00:00"}
            )
    return out.getvalue()


@pytest.mark.parametrize("command", [["run"], ["maintain"]], ids=" ".join)
def test_a_second_writer_on_the_same_lake_is_refused(in_tmp: Path, command: list[str]) -> None:
    from retailml.settings import load_settings
    from retailml.workflow.lock import RunLock

    with RunLock(load_settings(environ={}, project_dir=in_tmp), "busy-run"):
        result = CliRunner().invoke(cli, command)
    assert result.exit_code == 1
    (line,) = result.output.strip().splitlines()
    assert line.startswith("Error: another retailml run is writing to this lake (run busy-run, ")


def test_runs_without_history_and_unknown_run(in_tmp: Path, spark: SparkSession) -> None:
    result = CliRunner().invoke(cli, ["runs"])
    assert result.exit_code == 0, result.output
    assert "no workflow runs yet" in result.output
    result = CliRunner().invoke(cli, ["runs", "nope"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith("Error: no workflow run 'nope'")


def test_a_task_of_an_external_run_is_recorded_under_its_run_id(
    in_tmp: Path, spark: SparkSession
) -> None:
    result = CliRunner().invoke(cli, ["task", "clean", "--run-id", "job-run-7"])
    assert result.exit_code == 1
    assert "run `retailml task ingest` first" in result.output
    listing = CliRunner().invoke(cli, ["runs"])
    assert "job-run-7" in listing.output and "external" in listing.output
    detail = CliRunner().invoke(cli, ["runs", "job-run-7"])
    assert "clean" in detail.output and "failed" in detail.output
    assert "TableNotFoundError" in detail.output


def test_a_run_id_must_be_a_plain_name(in_tmp: Path) -> None:
    result = CliRunner().invoke(cli, ["task", "report", "--run-id", "../../etc"])
    assert result.exit_code == 2
    assert "use letters, digits" in result.output
