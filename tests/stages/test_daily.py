"""Daily runs below the workflow: new files only, MERGE into silver equal to a rebuild, the
quality gates, the constraints, and the PSI."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from retailml import lineage
from retailml.errors import QualityGateError
from retailml.generate import generate_data
from retailml.lakehouse import Lakehouse
from retailml.ml import drift
from retailml.settings import Settings
from retailml.stages import clean, ingest
from tests.conftest import make_settings

SILVER = ("silver.transactions", "silver.products", "silver.customers")
HEADER = "Invoice,StockCode,Description,Quantity,InvoiceDate,Price,Customer ID,Country"


def _source(tmp_path: Path) -> tuple[Settings, Path, list[Path]]:
    """A small generated shop, its monthly files in ``src``."""
    settings = make_settings(
        tmp_path / "p", **{"generate.customers": 60, "generate.products": 30, "generate.days": 120}
    )
    data = generate_data(settings)
    src = tmp_path / "src"
    src.mkdir()
    files = []
    for f in sorted(data.files):
        files.append(Path(shutil.copy(f, src / f.name)))
    return settings, src, files


def _snapshot(lake: Lakehouse) -> dict[str, list]:
    def key(row: object) -> str:
        return repr(row)

    return {name: sorted(lake.read(name).drop("ingested_at").collect(), key=key) for name in SILVER}


def test_a_new_and_a_changed_file_are_merged_into_silver_equal_to_a_rebuild(
    tmp_path: Path, spark: SparkSession
) -> None:
    settings, src, files = _source(tmp_path)
    last = files[-1]
    held = tmp_path / last.name
    last.rename(held)
    first = ingest.run(settings, spark, source=str(src))
    assert first.files == len(files) - 1
    assert isinstance(clean.run(settings, spark), clean.CleanResult)

    # Day 2: the last month arrives; an earlier file is corrected (a line removed, one
    # added) and repeats a line of the new file (a duplicate across files).
    held.rename(last)
    new_lines = last.read_text(encoding="utf-8").splitlines()
    old = files[0]
    lines = old.read_text(encoding="utf-8").splitlines()
    old.write_text("\n".join([*lines[:-1], new_lines[1]]) + "\n", encoding="utf-8")
    second = ingest.run(settings, spark, source=str(src))
    assert (second.files, second.unchanged) == (2, len(files) - 2)
    merged = clean.run(settings, spark)
    assert isinstance(merged, clean.CleanResult) and merged.merged_files == 2
    lake = Lakehouse(settings, spark)
    incremental = _snapshot(lake)

    # Day 3: nothing new, nothing written.
    versions = {n: lake.version(n) for n in (*SILVER, "bronze.transactions")}
    assert ingest.run(settings, spark, source=str(src)).files == 0
    assert isinstance(clean.run(settings, spark), lineage.UpToDate)
    assert {n: lake.version(n) for n in versions} == versions

    # One full run over all the files gives the same silver tables.
    full = settings.with_overrides({"workflow.full": True})
    ingest.run(full, spark, source=str(src))
    rebuilt = clean.run(full, spark)
    assert isinstance(rebuilt, clean.CleanResult) and rebuilt.merged_files is None
    assert _snapshot(lake) == incremental
    assert rebuilt.transactions == merged.transactions


def test_a_batch_of_nonsense_prices_fails_its_gate_and_leaves_silver_unchanged(
    tmp_path: Path, spark: SparkSession
) -> None:
    settings, src, _ = _source(tmp_path)
    ingest.run(settings, spark, source=str(src))
    clean.run(settings, spark)
    lake = Lakehouse(settings, spark)
    before = {n: lake.version(n) for n in (*SILVER, "bronze.transactions")}
    rows = [f"9{i},P{i},THING,1,2011-01-0{1 + i % 9} 10:00,{price},C1,UK" for i, price in
            enumerate(["abc", "-", "n/a", "1,2,3", "??"] * 4)]  # fmt: skip
    bad = src / "2011-01.csv"
    bad.write_text("\n".join([HEADER, *rows]) + "\n", encoding="utf-8")
    with pytest.raises(QualityGateError, match=r"quarantine_share .*FAILED.*2011-01\.csv"):
        ingest.run(settings, spark, source=str(src))
    assert {n: lake.version(n) for n in before} == before
    # Prices that parse but are nonsense (zero; a negative one is quarantined) pass ingest
    # and stop at clean.
    rows = [f"9{i},P{i},THING,1,2011-01-0{1 + i % 9} 10:00,0.00,C1,UK" for i in range(20)]
    bad.write_text("\n".join([HEADER, *rows]) + "\n", encoding="utf-8")
    ingest.run(settings, spark, source=str(src))
    with pytest.raises(QualityGateError, match=r"bad_price_share 1 .*FAILED.*2011-01\.csv"):
        clean.run(settings, spark)
    assert {n: lake.version(n) for n in SILVER} == {n: before[n] for n in SILVER}
    breached = lake.read("ops.quality").where("NOT passed").select("stage", "gate", "action")
    assert {tuple(r) for r in breached.collect()} == {
        ("ingest", "quarantine_share", "fail"),
        ("clean", "bad_price_share", "fail"),
        # Warnings: P0..P19 are products silver never saw; 20 rows against a month's file.
        ("clean", "unknown_product_share", "warn"),
        ("ingest", "batch_rows_ratio", "warn"),
    }
    # The constraint holds every writer of silver to a non-zero quantity.
    zero = lake.read("silver.transactions").limit(1).withColumn("quantity", F.lit(0))
    with pytest.raises(Exception, match="quantity_not_zero"):
        lake.append("silver.transactions", zero)


def test_psi_is_zero_for_the_same_rows_and_large_for_a_shifted_batch(spark: SparkSession) -> None:
    base = spark.range(2000).selectExpr("CAST(id % 100 AS DOUBLE) AS x", "CAST(id AS DOUBLE) AS y")
    shifted = base.selectExpr("x + 30 AS x", "y")
    same = drift.psi(base, base, ["x", "y"])
    assert same.values == {"x": 0.0, "y": 0.0} and same.expected_rows == 2000
    moved = drift.psi(base, shifted, ["x", "y"])
    assert moved.values["x"] > 0.2 and moved.values["y"] == 0.0
    assert moved.worst() == ("x", moved.values["x"])
    assert moved.worst(ignore=["x"]) == ("y", 0.0)
    assert moved.worst(min_rows=5000) is None  # too few rows: noise, not drift


def test_psi_equals_the_formula_over_the_reference_quantile_bins(spark: SparkSession) -> None:
    base = spark.range(1000).selectExpr("CAST(id % 100 AS DOUBLE) AS x")
    # A quarter missing (a bin of its own), the rest shifted up: some bins empty (EPSILON).
    actual = spark.range(400).selectExpr("IF(id % 4 = 0, NULL, CAST(id % 50 + 60 AS DOUBLE)) AS x")
    found = drift.psi(base, actual, ["x"])
    edges = sorted(set(base.approxQuantile("x", [i / 10 for i in range(1, 10)], 0.001)))

    def shares(values: list[float | None]) -> dict[int, float]:
        bins = [-1 if v is None else sum(v > e for e in edges) for v in values]
        return {b: bins.count(b) / len(bins) for b in set(bins)}

    e = shares([r.x for r in base.collect()])
    a = shares([r.x for r in actual.collect()])
    expected = sum(
        (pa - pe) * math.log(pa / pe)
        for b in set(e) | set(a)
        for pe, pa in [(max(e.get(b, 0.0), drift.EPSILON), max(a.get(b, 0.0), drift.EPSILON))]
    )
    assert found.values["x"] == pytest.approx(expected, rel=1e-12)
    assert (found.expected_rows, found.actual_rows) == (1000, 400)


def test_psi_does_not_depend_on_how_the_reference_rows_are_laid_out(spark: SparkSession) -> None:
    """The same reference rows in other partitions and orders give the same bin edges, so the
    same PSI: a drift decision never flips on a rewrite of the same features. More than the
    sketch's 50,000-row buffer, so the order within one partition matters too."""
    generated = spark.range(60_000).selectExpr(
        "EXP(3 + 1.5 * RANDN(11)) AS x",  # many distinct values: where the sketch's error shows
        "CAST(FLOOR(RAND(12) * 400) AS DOUBLE) AS y",
    )
    rows = generated.collect()
    base = spark.createDataFrame(rows, generated.schema)  # fixed values
    actual = spark.createDataFrame(
        [(r.x * 1.1, r.y + 5) for r in rows[:5_000]], "x double, y double"
    )
    layouts = [
        base,
        base.repartition(4),
        base.repartition(3, "y").orderBy(F.rand(1)),
        base.orderBy(F.desc("x")).coalesce(2),
        base.orderBy("x").coalesce(1),
        base.orderBy(F.desc("x")).coalesce(1),
    ]
    found = {tuple(sorted(drift.psi(e, actual, ["x", "y"]).values.items())) for e in layouts}
    assert len(found) == 1, found
