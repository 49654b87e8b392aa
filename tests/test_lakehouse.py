from __future__ import annotations

from pathlib import Path

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from retailml.errors import TableNotFoundError
from retailml.lakehouse import TABLES, Lakehouse
from retailml.settings import Settings
from retailml.workflow import TASK_ORDER
from tests.conftest import make_settings

CUSTOMERS = [
    "customer_id",
    "country",
    "first_purchase",
    "last_purchase",
    "invoices",
    "purchase_lines",
    "return_lines",
    "distinct_products",
    "total_spent",
]


def customers(spark: SparkSession, rows: list[tuple]) -> object:
    df = spark.createDataFrame(rows, "customer_id string, country string, invoices long")
    return df.select(
        "customer_id",
        "country",
        F.lit(None).cast("timestamp").alias("first_purchase"),
        F.lit(None).cast("timestamp").alias("last_purchase"),
        "invoices",
        F.lit(1).alias("purchase_lines"),
        F.lit(0).alias("return_lines"),
        F.lit(1).alias("distinct_products"),
        F.lit(9.5).alias("total_spent"),
    )


def test_locations(tmp_path: Path, spark: SparkSession) -> None:
    by_path = Lakehouse(make_settings(tmp_path), spark)
    assert (
        by_path.location("silver.transactions")
        == f"{tmp_path.resolve()}/lakehouse/silver/transactions"
    )
    with_schema = Lakehouse(make_settings(tmp_path, catalog="main", schema="retail"), spark)
    assert with_schema.location("bronze.quarantine") == "main.retail.bronze_quarantine"
    per_layer = Lakehouse(make_settings(tmp_path, catalog="main"), spark)
    assert per_layer.location("bronze.quarantine") == "main.bronze.quarantine"
    with pytest.raises(KeyError, match="unknown table"):
        by_path.location("gold.nothing")


def test_every_table_has_a_schema_and_producer() -> None:
    for name, spec in TABLES.items():
        assert name.split(".")[0] in {"bronze", "silver", "gold", "ops"}
        assert spec.schema.fields and spec.producer
        # The producer is a task of the workflow, or the runner itself (the run history).
        assert spec.producer in (*TASK_ORDER, "run")


def test_overwrite_read_version(settings: Settings, spark: SparkSession) -> None:
    lake = Lakehouse(settings, spark)
    assert not lake.exists("silver.customers") and lake.version("silver.customers") is None
    with pytest.raises(TableNotFoundError, match="run `retailml task clean` first"):
        lake.read("silver.customers")
    lake.overwrite("silver.customers", customers(spark, [("1", "UK", 2)]))
    lake.overwrite("silver.customers", customers(spark, [("1", "UK", 3), ("2", "FR", 1)]))
    assert lake.version("silver.customers") == 1
    assert sorted(lake.read("silver.customers").columns) == sorted(CUSTOMERS)
    assert lake.read("silver.customers").count() == 2


def test_replace_where_is_idempotent(settings: Settings, spark: SparkSession) -> None:
    lake = Lakehouse(settings, spark)
    lake.overwrite("silver.customers", customers(spark, [("1", "UK", 1), ("2", "FR", 1)]))
    for _ in range(2):
        lake.replace_where("silver.customers", customers(spark, [("2", "FR", 5)]), "country = 'FR'")
    rows = {r.customer_id: r.invoices for r in lake.read("silver.customers").collect()}
    assert rows == {"1": 1, "2": 5}


def test_merge_upserts_on_keys(settings: Settings, spark: SparkSession) -> None:
    lake = Lakehouse(settings, spark)
    lake.merge("silver.customers", customers(spark, [("1", "UK", 1)]), ["customer_id"])
    lake.merge(
        "silver.customers", customers(spark, [("1", "UK", 4), ("3", "DE", 2)]), ["customer_id"]
    )
    rows = {r.customer_id: r.invoices for r in lake.read("silver.customers").collect()}
    assert rows == {"1": 4, "3": 2}


def test_conform_rejects_wrong_columns(settings: Settings, spark: SparkSession) -> None:
    lake = Lakehouse(settings, spark)
    with pytest.raises(ValueError, match=r"missing \['country'"):
        lake.overwrite("silver.customers", customers(spark, [("1", "UK", 1)]).drop("country"))


def test_catalog_tables(tmp_path: Path, spark: SparkSession) -> None:
    lake = Lakehouse(
        make_settings(tmp_path, catalog="spark_catalog", schema="retailml_test"), spark
    )
    lake.overwrite("silver.customers", customers(spark, [("1", "UK", 1)]))
    assert spark.catalog.tableExists("spark_catalog.retailml_test.silver_customers")
    assert lake.read("silver.customers").count() == 1
    assert lake.version("silver.customers") == 0
    spark.sql("DROP TABLE spark_catalog.retailml_test.silver_customers")
