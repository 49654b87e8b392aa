"""Ingest: source files → ``bronze.transactions`` and ``bronze.quarantine``.

Every data line of every file ends up in exactly one of the two tables: valid rows in the
canonical schema, the others with their raw line and the reason. Re-ingesting a file replaces
that file's rows (Delta ``replaceWhere`` on ``source_file``), so running twice adds nothing.
"""

from __future__ import annotations

import csv
import gzip
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType, TimestampType

from retailml import schemas as S
from retailml.errors import InputError
from retailml.lakehouse import Lakehouse
from retailml.settings import Settings

CSV_SUFFIXES = (".csv", ".csv.gz", ".txt", ".tsv")
PARQUET_SUFFIXES = (".parquet",)
_CORRUPT = "_corrupt_record"


@dataclass(frozen=True)
class Layout:
    """How a source layout maps onto the canonical columns.

    ``columns`` maps canonical column → source column. Canonical columns a layout lacks take
    the constant in ``constants`` (for example quantity 1 for an event log), or null.
    """

    name: str
    columns: dict[str, str]
    constants: dict[str, str] = field(default_factory=dict)

    @property
    def required_source_columns(self) -> list[str]:
        return [self.columns[c] for c in S.REQUIRED_COLUMNS if c in self.columns]


ONLINE_RETAIL_II = Layout(
    "online_retail_ii",
    {
        S.INVOICE_ID: "Invoice",
        S.PRODUCT_ID: "StockCode",
        S.PRODUCT_NAME: "Description",
        S.QUANTITY: "Quantity",
        S.EVENT_TIME: "InvoiceDate",
        S.UNIT_PRICE: "Price",
        S.CUSTOMER_ID: "Customer ID",
        S.COUNTRY: "Country",
    },
    {S.EVENT_TYPE: S.PURCHASE},
)
ONLINE_RETAIL = Layout(
    "online_retail",
    {
        S.INVOICE_ID: "InvoiceNo",
        S.PRODUCT_ID: "StockCode",
        S.PRODUCT_NAME: "Description",
        S.QUANTITY: "Quantity",
        S.EVENT_TIME: "InvoiceDate",
        S.UNIT_PRICE: "UnitPrice",
        S.CUSTOMER_ID: "CustomerID",
        S.COUNTRY: "Country",
    },
    {S.EVENT_TYPE: S.PURCHASE},
)
REES46 = Layout(
    "rees46",
    {
        S.EVENT_TIME: "event_time",
        S.EVENT_TYPE: "event_type",
        S.PRODUCT_ID: "product_id",
        S.CATEGORY: "category_code",
        S.PRODUCT_NAME: "brand",
        S.UNIT_PRICE: "price",
        S.CUSTOMER_ID: "user_id",
        S.INVOICE_ID: "user_session",
    },
    {S.QUANTITY: "1"},
)
CANONICAL = Layout(
    "canonical",
    {c: c for c in S.CANONICAL_COLUMNS if c != S.EVENT_TYPE},
    {S.EVENT_TYPE: S.PURCHASE},
)
KNOWN_LAYOUTS = (ONLINE_RETAIL_II, ONLINE_RETAIL, REES46, CANONICAL)
EVENT_TYPES = (S.PURCHASE, S.VIEW, S.CART, S.REMOVE_FROM_CART)


@dataclass(frozen=True)
class SourceFile:
    """One input file, its format and its column names (from the header or Parquet footer)."""

    path: str
    format: str
    columns: tuple[str, ...]
    header: str = ""


@dataclass(frozen=True)
class IngestResult:
    """What one ingest run did; ``input_rows == bronze_rows + quarantine_rows`` always."""

    files: int
    input_rows: int
    bronze_rows: int
    quarantine_rows: int
    reasons: dict[str, int]
    batch_id: str

    def headline(self) -> str:
        return f"{self.bronze_rows:,} bronze rows, {self.quarantine_rows:,} quarantined"

    def summary(self) -> list[str]:
        lines = [
            f"{self.files} files, {self.input_rows:,} input rows → bronze.transactions "
            f"{self.bronze_rows:,} + bronze.quarantine {self.quarantine_rows:,}"
        ]
        return lines + [f"  quarantined {n:>8,}  {reason}" for reason, n in self.reasons.items()]


def detect_layout(
    columns: Sequence[str], *, source: str, mapping: dict[str, str] | None = None
) -> Layout:
    """The layout of a file with these columns.

    Args:
        columns: The file's column names, in order.
        source: The file, for error messages.
        mapping: A user column mapping (canonical → source column); overrides detection.

    Raises:
        InputError: A required column is missing; the message names the file and the column.
    """
    present = {c.strip().lower(): c for c in columns}
    if mapping:
        unknown = sorted(set(mapping) - set(S.CANONICAL_COLUMNS))
        if unknown:
            raise InputError(
                f"ingest.column_mapping: unknown canonical column {unknown[0]!r}; "
                f"known: {', '.join(S.CANONICAL_COLUMNS)}"
            )
        unmapped = [c for c in (S.PRODUCT_ID, S.UNIT_PRICE, S.EVENT_TIME) if c not in mapping]
        if unmapped:
            raise InputError(
                f"ingest.column_mapping: required column {unmapped[0]!r} is not mapped"
            )
        defaults = {S.EVENT_TYPE: S.PURCHASE, S.QUANTITY: "1"}
        constants = {k: v for k, v in defaults.items() if k not in mapping}
        candidates: Iterable[Layout] = [Layout("custom", dict(mapping), constants)]
    else:
        candidates = KNOWN_LAYOUTS

    def missing(layout: Layout) -> list[str]:
        return [c for c in layout.columns.values() if c.strip().lower() not in present]

    best = min(candidates, key=lambda lay: len(missing(lay)))
    gaps = missing(best)
    required_gaps = [c for c in gaps if c in best.required_source_columns]
    if mapping and gaps:
        raise InputError(f"{source}: missing column {gaps[0]!r} named in ingest.column_mapping")
    if not mapping and (required_gaps or len(gaps) > len(best.columns) // 2):
        absent = (required_gaps or gaps)[0]
        raise InputError(
            f"{source}: missing column {absent!r} (closest known layout: {best.name}; "
            f"columns found: {', '.join(columns)}); map other layouts with ingest.column_mapping"
        )
    # Optional columns the file lacks become nulls; source names take the file's spelling.
    resolved = {
        canonical: present[src.strip().lower()]
        for canonical, src in best.columns.items()
        if src.strip().lower() in present
    }
    return Layout(best.name, resolved, best.constants)


def list_source_files(spark: SparkSession, source: str) -> list[str]:
    """The data files under ``source`` (a file or folder, local or any Hadoop URI), sorted.

    Raises:
        InputError: Nothing is there, or no file has a known suffix.
    """
    if "://" not in source or source.startswith("file:"):
        root = Path(source.removeprefix("file://").removeprefix("file:"))
        if not root.exists():
            raise InputError(f"{source}: no such file or folder")
        if root.is_file():
            return [str(root)]
        found = sorted(
            str(p)
            for p in root.rglob("*")
            if p.is_file()
            and not any(part.startswith((".", "_")) for part in p.relative_to(root).parts)
        )
    else:
        found = _list_hadoop(spark, source)
    data = [f for f in found if f.lower().endswith(CSV_SUFFIXES + PARQUET_SUFFIXES)]
    if not data:
        raise InputError(f"{source}: empty folder: no .csv or .parquet files")
    return data


def _list_hadoop(spark: SparkSession, source: str) -> list[str]:
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(source)  # type: ignore[union-attr]
    fs = path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    if not fs.exists(path):
        raise InputError(f"{source}: no such file or folder")
    files, it = [], fs.listFiles(path, True)
    while it.hasNext():
        status = it.next()
        name = status.getPath().toString()
        if not status.getPath().getName().startswith((".", "_")):
            files.append(name)
    return sorted(files)


def inspect_file(spark: SparkSession, path: str, *, fmt: str, delimiter: str) -> SourceFile:
    """Read a file's column names without reading its data.

    Raises:
        InputError: The file is empty or has an unreadable header.
    """
    is_parquet = fmt == "parquet" or (fmt == "auto" and path.lower().endswith(PARQUET_SUFFIXES))
    if is_parquet:
        try:
            columns = tuple(spark.read.parquet(path).columns)
        except Exception as exc:
            raise InputError(
                f"{path}: not a readable Parquet file ({exc.__class__.__name__})"
            ) from None
        return SourceFile(path, "parquet", columns)
    header = _first_line(spark, path).lstrip("\ufeff")
    if not header.strip():
        raise InputError(f"{path}: empty file (no header line)")
    columns = tuple(c.strip() for c in next(csv.reader([header], delimiter=delimiter)))
    duplicated = sorted({c for c in columns if columns.count(c) > 1})
    if duplicated:
        raise InputError(f"{path}: column {duplicated[0]!r} appears twice in the header")
    return SourceFile(path, "csv", columns, header)


def _first_line(spark: SparkSession, path: str) -> str:
    if "://" in path and not path.startswith("file:"):
        row = spark.read.text(path).first()
        return row[0] if row else ""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", errors="replace", newline="") as fh:
        return str(fh.readline()).rstrip("\r\n")


def read_source(spark: SparkSession, file: SourceFile, *, delimiter: str) -> DataFrame:
    """One file as rows of its own columns (all strings for CSV) plus ``raw`` and ``source_file``.

    CSV lines are read as text first so that the quarantine keeps the exact line; a line with the
    wrong number of fields gets ``_corrupt_record`` set.
    """
    if file.format == "parquet":
        df = spark.read.parquet(file.path)
        raw = F.to_json(F.struct(*[F.col(f"`{c}`") for c in df.columns]))
        return df.select(
            *[F.col(f"`{c}`") for c in df.columns],
            raw.alias(S.RAW),
            F.lit(None).cast("string").alias(_CORRUPT),
            F.lit(file.path).alias(S.SOURCE_FILE),
        )
    positional = [f"_c{i}" for i in range(len(file.columns))]
    schema = StructType([StructField(c, StringType()) for c in [*positional, _CORRUPT]])
    lines = spark.read.text(file.path)
    value = F.regexp_replace(F.col("value"), "^\ufeff", "")
    lines = lines.where((value != F.lit(file.header)) & (F.trim(F.col("value")) != ""))
    parsed = F.from_csv(
        F.col("value"),
        schema.simpleString().replace("struct<", "").rstrip(">").replace(":", " "),
        {"sep": delimiter, "mode": "PERMISSIVE", "columnNameOfCorruptRecord": _CORRUPT},
    )
    return lines.select(F.col("value").alias(S.RAW), parsed.alias("p")).select(
        *[
            F.col(f"p.{pos}").alias(name)
            for pos, name in zip(positional, file.columns, strict=True)
        ],
        F.col(S.RAW),
        F.col(f"p.{_CORRUPT}").alias(_CORRUPT),
        F.lit(file.path).alias(S.SOURCE_FILE),
    )


def to_canonical(
    df: DataFrame, layout: Layout, *, timestamp_formats: Sequence[str], expected_fields: int
) -> DataFrame:
    """Parse and validate source rows into the canonical columns plus ``reason``.

    ``reason`` is null for a valid row and otherwise names the first check it failed, with the
    source column and value: ``Quantity: not an integer ('12O')``. Pure: no I/O.

    Args:
        df: Rows from :func:`read_source`.
        layout: The file's layout (canonical → source column).
        timestamp_formats: Spark datetime patterns, tried in order.
        expected_fields: Number of fields a CSV line must have, for the reason text.
    """

    def src(canonical: str) -> Column:
        if canonical in layout.columns:
            return F.col(f"`{layout.columns[canonical]}`")
        return F.lit(layout.constants.get(canonical))

    def text(canonical: str) -> Column:
        value = F.trim(src(canonical).cast("string"))
        return F.when(value != "", value)

    def name(canonical: str) -> str:
        return layout.columns.get(canonical, canonical)

    time_col = src(S.EVENT_TIME)
    time_type = df.schema[layout.columns[S.EVENT_TIME]].dataType
    if isinstance(time_type, TimestampType):
        event_time = time_col
    else:
        event_time = F.coalesce(
            *[F.try_to_timestamp(text(S.EVENT_TIME), F.lit(fmt)) for fmt in timestamp_formats]
        )
    # UCI Online Retail II writes customer ids as floats ("13085.0").
    customer = F.regexp_replace(text(S.CUSTOMER_ID), r"\.0+$", "")
    quantity_text = F.regexp_replace(text(S.QUANTITY), r"\.0+$", "")
    quantity = quantity_text.try_cast("int")
    price = text(S.UNIT_PRICE).try_cast("double")
    event_type = F.lower(text(S.EVENT_TYPE))

    def shown(canonical: str) -> Column:
        return F.concat(F.lit(" ('"), F.coalesce(text(canonical), F.lit("")), F.lit("')"))

    reason = (
        F.when(
            F.col(_CORRUPT).isNotNull(), F.lit(f"malformed line: expected {expected_fields} fields")
        )
        .when(text(S.PRODUCT_ID).isNull(), F.lit(f"{name(S.PRODUCT_ID)}: missing"))
        .when(text(S.EVENT_TIME).isNull(), F.lit(f"{name(S.EVENT_TIME)}: missing"))
        .when(
            event_time.isNull(),
            F.concat(F.lit(f"{name(S.EVENT_TIME)}: not a date"), shown(S.EVENT_TIME)),
        )
        .when(
            quantity.isNull(),
            F.concat(F.lit(f"{name(S.QUANTITY)}: not an integer"), shown(S.QUANTITY)),
        )
        .when(quantity == 0, F.lit(f"{name(S.QUANTITY)}: zero"))
        .when(
            price.isNull(),
            F.concat(F.lit(f"{name(S.UNIT_PRICE)}: not a number"), shown(S.UNIT_PRICE)),
        )
        .when(price < 0, F.concat(F.lit(f"{name(S.UNIT_PRICE)}: negative"), shown(S.UNIT_PRICE)))
        .when(
            ~event_type.isin(*EVENT_TYPES) | event_type.isNull(),
            F.concat(F.lit(f"{name(S.EVENT_TYPE)}: unknown event type"), shown(S.EVENT_TYPE)),
        )
    )
    return df.select(
        text(S.INVOICE_ID).alias(S.INVOICE_ID),
        customer.alias(S.CUSTOMER_ID),
        text(S.PRODUCT_ID).alias(S.PRODUCT_ID),
        text(S.PRODUCT_NAME).alias(S.PRODUCT_NAME),
        text(S.CATEGORY).alias(S.CATEGORY),
        quantity.alias(S.QUANTITY),
        price.alias(S.UNIT_PRICE),
        event_time.alias(S.EVENT_TIME),
        event_type.alias(S.EVENT_TYPE),
        text(S.COUNTRY).alias(S.COUNTRY),
        F.col(S.RAW),
        F.col(S.SOURCE_FILE),
        F.lit(layout.name).alias(S.SOURCE_LAYOUT),
        reason.alias(S.REASON),
    )


def _sql_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def run(settings: Settings, spark: SparkSession, *, source: str | None = None) -> IngestResult:
    """Ingest a file or folder into bronze; see the module docstring.

    Args:
        settings: ``settings.ingest`` says how to read; the source defaults to the generated data.
        spark: The session.
        source: A file or folder; overrides ``settings.ingest.source``.

    Raises:
        InputError: No files, an empty file, or a file missing a required column. Nothing is
            written in that case.
    """
    cfg = settings.ingest
    location = source or cfg.source or f"{settings.path(settings.data_dir)}/transactions"
    location = settings.path(location)
    paths = list_source_files(spark, location)
    # Check every file before writing anything, so a bad file leaves the tables untouched.
    files = [inspect_file(spark, p, fmt=cfg.format, delimiter=cfg.delimiter) for p in paths]
    layouts = [
        detect_layout(f.columns, source=f.path, mapping=cfg.column_mapping or None) for f in files
    ]

    batch_id = uuid.uuid4().hex
    ingested_at = F.current_timestamp()
    parts = [
        to_canonical(
            read_source(spark, f, delimiter=cfg.delimiter),
            layout,
            timestamp_formats=cfg.timestamp_formats,
            expected_fields=len(f.columns),
        )
        for f, layout in zip(files, layouts, strict=True)
    ]
    rows = parts[0]
    for part in parts[1:]:
        rows = rows.unionByName(part)
    rows = rows.withColumn(S.INGESTED_AT, ingested_at).withColumn(S.BATCH_ID, F.lit(batch_id))
    # Parse once: the counts and both writes below read the same rows.
    rows = rows.persist()
    try:
        reason_head = F.regexp_extract(F.col(S.REASON), r"^([^(]*?)\s*(\(|$)", 1)
        counts = {
            (r["reason"] or ""): int(r["count"])
            for r in rows.groupBy(reason_head.alias("reason")).count().collect()
        }
        input_rows = sum(counts.values())
        if input_rows == 0:
            raise InputError(f"{location}: no data rows (only headers or blank lines)")
        condition = f"{S.SOURCE_FILE} IN ({', '.join(_sql_string(f.path) for f in files)})"
        lake = Lakehouse(settings, spark)
        good = rows.where(F.col(S.REASON).isNull()).drop(S.REASON, S.RAW)
        bad = rows.where(F.col(S.REASON).isNotNull()).select(
            S.RAW, S.REASON, S.SOURCE_FILE, S.SOURCE_LAYOUT, S.INGESTED_AT, S.BATCH_ID
        )
        lake.replace_where("bronze.transactions", good, condition)
        lake.replace_where("bronze.quarantine", bad, condition)
    finally:
        rows.unpersist()
    quarantined = {k: v for k, v in counts.items() if k}
    return IngestResult(
        files=len(files),
        input_rows=input_rows,
        bronze_rows=counts.get("", 0),
        quarantine_rows=sum(quarantined.values()),
        reasons=dict(sorted(quarantined.items(), key=lambda kv: -kv[1])),
        batch_id=batch_id,
    )
