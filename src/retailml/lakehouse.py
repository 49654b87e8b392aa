"""Table names → Delta locations, and the only place that reads and writes tables.

A logical name such as ``silver.transactions`` is a folder ``<lake_root>/silver/transactions``
by default. With a catalog configured it is a catalog table: ``catalog.schema.silver_transactions``
when a schema is set, else ``catalog.silver.transactions`` (one schema per layer, the usual
medallion layout in Unity Catalog).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from delta.tables import DeltaTable
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from retailml import schemas as S
from retailml.errors import TableNotFoundError
from retailml.settings import Settings


@dataclass(frozen=True)
class TableSpec:
    """A table's contract: its schema, which task writes it and what it holds."""

    name: str
    schema: StructType
    producer: str
    description: str
    partition_by: tuple[str, ...] = field(default=())


TABLES: dict[str, TableSpec] = {
    spec.name: spec
    for spec in (
        TableSpec(
            "bronze.transactions",
            S.BRONZE_TRANSACTIONS,
            "ingest",
            "every valid source row in the canonical schema, with lineage",
        ),
        TableSpec(
            "bronze.quarantine",
            S.BRONZE_QUARANTINE,
            "ingest",
            "source rows that could not be parsed or failed validation, with the reason",
        ),
        TableSpec(
            "silver.transactions",
            S.SILVER_TRANSACTIONS,
            "clean",
            "typed, de-duplicated transactions; returns and guests flagged",
        ),
        TableSpec(
            "silver.products",
            S.SILVER_PRODUCTS,
            "clean",
            "one row per product: best name, category, price statistics",
        ),
        TableSpec(
            "silver.customers",
            S.SILVER_CUSTOMERS,
            "clean",
            "one row per known customer: first/last purchase, country, counts",
        ),
        TableSpec(
            "silver.customer_features",
            S.CUSTOMER_FEATURES,
            "features",
            "point-in-time customer features per cutoff date, with the future purchase label",
        ),
        TableSpec(
            "gold.purchase_propensity",
            S.PURCHASE_PROPENSITY,
            "score",
            "every customer's purchase probability, decile and rank per as-of date",
        ),
        TableSpec(
            "gold.top_buyers",
            S.TOP_BUYERS,
            "score",
            "the top predicted buyers at the latest as-of date, with their key facts",
        ),
        TableSpec(
            "gold.recommendations",
            S.RECOMMENDATIONS,
            "recommend",
            "both lists (for_you, discover) of k products per customer and as-of date, from "
            "the two-stage recommender, filled from popularity",
        ),
        TableSpec(
            "gold.similar_products",
            S.SIMILAR_PRODUCTS,
            "recommend",
            "item-kNN's most similar products per product (bought together), as each "
            "recommender version computed them at its first serve and serves with them",
        ),
        TableSpec(
            "ops.workflow_runs",
            S.WORKFLOW_RUNS,
            "run",
            "the workflow's runs: tasks covered, trigger, status (append-only, latest row wins)",
        ),
        TableSpec(
            "ops.task_runs",
            S.TASK_RUNS,
            "run",
            "every task attempt of every run: status, start, end, error, outputs",
        ),
        TableSpec(
            "ops.ingested_files",
            S.INGESTED_FILES,
            "ingest",
            "every source file ingested: size, modification time, content hash, rows, batch",
        ),
        TableSpec(
            "ops.lineage",
            S.LINEAGE_TABLE,
            "run",
            "per task, the table and model versions it last built from (unchanged: skipped)",
        ),
        TableSpec(
            "ops.quality",
            S.QUALITY_CHECKS,
            "run",
            "every data-quality gate of every batch (ingest, clean): value, threshold, action, "
            "passed",
        ),
        TableSpec(
            "ops.drift",
            S.DRIFT,
            "run",
            "population stability index of every feature (train) and of the score (score), "
            "per as-of date",
        ),
    )
}


# Delta operations that leave a table's rows as they were.
_NOT_DATA_CHANGES = frozenset(
    {
        "OPTIMIZE",
        "VACUUM START",
        "VACUUM END",
        "ADD CONSTRAINT",
        "DROP CONSTRAINT",
        "SET TBLPROPERTIES",
        "UNSET TBLPROPERTIES",
    }
)


@dataclass(frozen=True)
class HistoryEntry:
    """One commit of a Delta table: its version, when, the operation and what it did."""

    version: int
    timestamp: datetime
    operation: str  # WRITE, MERGE, OPTIMIZE, VACUUM START, …
    parameters: dict[str, str]  # e.g. mode, predicate
    metrics: dict[str, str]  # e.g. numOutputRows, numFiles (Delta's names, as text)


class Lakehouse:
    """Reads and writes the project's Delta tables by logical name.

    Args:
        settings: Where the lake is (``lake_root``, or ``catalog`` and ``schema``).
        spark: The session to read and write with.
    """

    def __init__(self, settings: Settings, spark: SparkSession) -> None:
        self.settings = settings
        self.spark = spark
        self._root = settings.path(settings.lake_root).rstrip("/")

    def spec(self, name: str) -> TableSpec:
        """The table's spec; a name that is not a table is a bug, so it raises KeyError."""
        try:
            return TABLES[name]
        except KeyError:
            raise KeyError(f"unknown table {name!r}; known: {', '.join(TABLES)}") from None

    def location(self, name: str) -> str:
        """Where the table lives: a path, or a catalog table name."""
        layer, table = self.spec(name).name.split(".")
        catalog, schema = self.settings.catalog, self.settings.db_schema
        if catalog:
            return f"{catalog}.{schema}.{layer}_{table}" if schema else f"{catalog}.{layer}.{table}"
        return f"{self._root}/{layer}/{table}"

    @property
    def _by_name(self) -> bool:
        return bool(self.settings.catalog)

    def exists(self, name: str) -> bool:
        """Whether the table has been written."""
        location = self.location(name)
        if self._by_name:
            return bool(self.spark.catalog.tableExists(location))
        return bool(DeltaTable.isDeltaTable(self.spark, location))

    def read(self, name: str, version: int | None = None) -> DataFrame:
        """The table's current version, or an earlier ``version`` (Delta time travel; gone
        once VACUUM removed its files).

        Raises:
            TableNotFoundError: The task that writes it has not run yet.
        """
        self._require(name)
        if version is not None:
            return self.spark.sql(f"SELECT * FROM {self._sql_name(name)} VERSION AS OF {version}")
        if self._by_name:
            return self.spark.table(self.location(name))
        return self.spark.read.format("delta").load(self.location(name))

    def version(self, name: str) -> int | None:
        """The table's latest Delta version, or None if it does not exist."""
        if not self.exists(name):
            return None
        row = self._delta(name).history(1).select("version").first()
        return int(row["version"]) if row else None

    def data_version(self, name: str) -> int | None:
        """The version of the table's newest commit that changed its rows, or None if it does
        not exist. OPTIMIZE, VACUUM and property or constraint changes do not count, so that
        `retailml maintain` does not make the next run redo its work."""
        if not self.exists(name):
            return None
        rows = self._delta(name).history(20).select("version", "operation").collect()
        for r in rows:  # newest first
            if str(r["operation"]) not in _NOT_DATA_CHANGES:
                return int(r["version"])
        return int(rows[-1]["version"]) if rows else None

    def history(self, name: str, limit: int = 20) -> list[HistoryEntry]:
        """The table's ``limit`` newest commits, newest first (``DESCRIBE HISTORY``; see Delta
        Lake's "Table utility commands" documentation). Bounded: a table written daily gains a
        commit a day.

        Raises:
            TableNotFoundError: The table has not been written yet.
        """
        self._require(name)
        rows = (
            self._delta(name)
            .history(limit)
            .select("version", "timestamp", "operation", "operationParameters", "operationMetrics")
            .collect()
        )
        return [
            HistoryEntry(
                version=int(r["version"]),
                timestamp=r["timestamp"],
                operation=str(r["operation"]),
                parameters=dict(r["operationParameters"] or {}),
                metrics=dict(r["operationMetrics"] or {}),
            )
            for r in rows
        ]

    def files(self, name: str) -> int:
        """Data files in the table's current version."""
        row = self.spark.sql(f"DESCRIBE DETAIL {self._sql_name(name)}").select("numFiles").first()
        return int(row["numFiles"]) if row else 0

    def optimize(self, name: str, zorder_by: Sequence[str] = ()) -> None:
        """Compact the table's small files (Delta's OPTIMIZE), clustering by ``zorder_by``
        (Z-order) when given. Readers see the same rows; the old files stay until VACUUM."""
        optimizer = self._delta(name).optimize()
        if zorder_by:
            optimizer.executeZOrderBy(*zorder_by)
        else:
            optimizer.executeCompaction()

    def vacuum(self, name: str, retention_hours: int) -> None:
        """Delete the files no version younger than ``retention_hours`` needs (Delta's VACUUM).

        Below Delta's safety default (168 hours) its check is lifted for this call only: a
        reader of a version older than that (time travel, a long query) may then fail.
        """
        check = "spark.databricks.delta.retentionDurationCheck.enabled"
        if retention_hours >= 168:
            self._delta(name).vacuum(float(retention_hours))
            return
        before = self.spark.conf.get(check, "true") or "true"
        self.spark.conf.set(check, "false")
        try:
            self._delta(name).vacuum(float(retention_hours))
        finally:
            self.spark.conf.set(check, before)

    def _sql_name(self, name: str) -> str:
        location = self.location(name)
        return location if self._by_name else f"delta.`{location}`"

    def overwrite(self, name: str, df: DataFrame) -> None:
        """Replace the whole table with ``df`` in one atomic commit (its schema too, so a table
        written by an earlier version of the schema is replaced, not refused)."""
        self._write(name, df, mode="overwrite", options={"overwriteSchema": "true"})

    def replace_where(self, name: str, df: DataFrame, condition: str) -> None:
        """Replace exactly the rows matching ``condition`` with ``df`` (one atomic commit).

        Every row of ``df`` must match the condition; Delta rejects the write otherwise. This is
        the idempotent write for a slice of a table (one source file, one as-of date). A column
        the table lacks (written by an earlier version of the schema) is added, null in the
        rows not replaced.
        """
        if not self.exists(name):
            self._write(name, df, mode="overwrite")
            return
        options = {"replaceWhere": condition, "mergeSchema": "true"}
        self._write(name, df, mode="overwrite", options=options)

    def append(self, name: str, df: DataFrame) -> None:
        """Add rows. Use only where re-running cannot duplicate (for example a run log)."""
        self._write(name, df, mode="append")

    def merge(self, name: str, df: DataFrame, keys: Sequence[str]) -> None:
        """Upsert ``df`` on ``keys``: matching rows are updated, new ones inserted."""
        if not self.exists(name):
            self._write(name, df, mode="overwrite")
            return
        condition = " AND ".join(f"t.`{k}` <=> s.`{k}`" for k in keys)
        (
            self._delta(name)
            .alias("t")
            .merge(self.conform(name, df).alias("s"), condition)
            .whenMatchedUpdateAll()
            .whenNotMatchedInsertAll()
            .execute()
        )

    def merge_keys(self, name: str, keys: DataFrame, rows: DataFrame, key: str) -> None:
        """Make the table's rows of the keys in ``keys`` exactly ``rows`` (one MERGE commit):
        a key's row is updated when ``rows`` has it and deleted when it does not, and a new key
        is inserted. Rows of other keys are untouched. ``rows`` must have one row per key.

        Args:
            name: The table.
            keys: One column, ``key``: every key whose rows this write decides.
            rows: The new rows of (some of) those keys, in the table's schema.
            key: The key column.
        """
        present = "_present"
        source = (
            keys.select(key)
            .distinct()
            .join(self.conform(name, rows).withColumn(present, F.lit(True)), key, "left")
        )
        if not self.exists(name):
            self._write(name, source.where(F.col(present)).drop(present), mode="overwrite")
            return
        names = self.spec(name).schema.fieldNames()
        columns: dict[str, str | Column] = {c: f"s.`{c}`" for c in names}
        (
            self._delta(name)
            .alias("t")
            .merge(source.alias("s"), f"t.`{key}` = s.`{key}`")
            .whenMatchedDelete(f"s.{present} IS NULL")
            .whenMatchedUpdate(set=columns)
            .whenNotMatchedInsert(f"s.{present}", values=columns)
            .execute()
        )

    def add_constraints(self, name: str, constraints: dict[str, str]) -> None:
        """Hold every writer of the table to ``constraints`` (name → SQL condition) with Delta
        CHECK constraints (see Delta Lake's "Constraints" documentation); one already there
        is left as it is. Delta checks the existing rows when a constraint is added and
        refuses it if any breaks it.
        """
        have = {
            k.removeprefix("delta.constraints.").lower()
            for k in self._delta(name).detail().first()["properties"]  # type: ignore[index]
            if k.startswith("delta.constraints.")
        }
        table = self._sql_name(name)
        for constraint, condition in constraints.items():
            if constraint.lower() not in have:
                sql = f"ALTER TABLE {table} ADD CONSTRAINT {constraint} CHECK ({condition})"
                self.spark.sql(sql)

    def conform(self, name: str, df: DataFrame) -> DataFrame:
        """``df`` with exactly the table's columns, in order and with its types.

        Raises:
            ValueError: ``df`` lacks a column of the table or has one the table does not — a
                bug in the task that wrote it, never a user error.
        """
        schema = self.spec(name).schema
        expected, actual = set(schema.fieldNames()), set(df.columns)
        if expected != actual:
            raise ValueError(
                f"{name}: columns differ from the schema; missing {sorted(expected - actual)}, "
                f"unexpected {sorted(actual - expected)}"
            )
        return df.select([F.col(f.name).cast(f.dataType).alias(f.name) for f in schema.fields])

    def _require(self, name: str) -> None:
        """Raise the one-line error naming the task that writes ``name`` if it does not exist."""
        if not self.exists(name):
            producer = self.spec(name).producer
            command = "retailml run" if producer == "run" else f"retailml task {producer}"
            raise TableNotFoundError(
                f"table {name} does not exist yet ({self.location(name)}); run `{command}` first"
            )

    def _delta(self, name: str) -> DeltaTable:
        if self._by_name:
            return DeltaTable.forName(self.spark, self.location(name))
        return DeltaTable.forPath(self.spark, self.location(name))

    def _write(
        self, name: str, df: DataFrame, *, mode: str, options: dict[str, str] | None = None
    ) -> None:
        spec = self.spec(name)
        writer = self.conform(name, df).write.format("delta").mode(mode).options(**(options or {}))
        if spec.partition_by:
            writer = writer.partitionBy(*spec.partition_by)
        location = self.location(name)
        if self._by_name:
            schema = location.rsplit(".", 1)[0]
            self.spark.sql(f"CREATE SCHEMA IF NOT EXISTS {schema}")
            writer.saveAsTable(location)
        else:
            writer.save(location)
