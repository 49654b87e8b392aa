"""Column names and StructTypes of every table. A column's name is written once, here."""

from __future__ import annotations

from pyspark.sql.types import (
    ArrayType,
    BooleanType,
    DateType,
    DoubleType,
    IntegerType,
    LongType,
    MapType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

# The canonical transaction columns every source layout is mapped onto.
INVOICE_ID = "invoice_id"
CUSTOMER_ID = "customer_id"
PRODUCT_ID = "product_id"
PRODUCT_NAME = "product_name"
CATEGORY = "category"
QUANTITY = "quantity"
UNIT_PRICE = "unit_price"
EVENT_TIME = "event_time"
EVENT_TYPE = "event_type"
COUNTRY = "country"

# Lineage: where a row came from and which ingest run brought it.
SOURCE_FILE = "source_file"
SOURCE_LAYOUT = "source_layout"
INGESTED_AT = "ingested_at"
BATCH_ID = "batch_id"

# Quarantine.
RAW = "raw"
REASON = "reason"

# Silver.
TRANSACTION_ID = "transaction_id"
AMOUNT = "amount"
EVENT_DATE = "event_date"
IS_RETURN = "is_return"
IS_GUEST = "is_guest"
# What a line is: merchandise ("product"), or postage, a fee, a discount, an adjustment… Only
# product lines are products; every kind counts in revenue and a customer's spend.
LINE_KIND = "line_kind"
PRODUCT_LINE = "product"

# Event types in silver.transactions. Retail sources have purchases and returns; e-commerce
# event logs add views and cart events, which features may use.
PURCHASE = "purchase"
RETURN = "return"
VIEW = "view"
CART = "cart"
REMOVE_FROM_CART = "remove_from_cart"

CANONICAL_COLUMNS = (
    INVOICE_ID,
    CUSTOMER_ID,
    PRODUCT_ID,
    PRODUCT_NAME,
    CATEGORY,
    QUANTITY,
    UNIT_PRICE,
    EVENT_TIME,
    EVENT_TYPE,
    COUNTRY,
)
REQUIRED_COLUMNS = (INVOICE_ID, PRODUCT_ID, QUANTITY, UNIT_PRICE, EVENT_TIME)


def _fields(*fields: tuple[str, object, bool]) -> StructType:
    return StructType([StructField(name, dtype, nullable) for name, dtype, nullable in fields])  # type: ignore[arg-type]


LINEAGE = (
    (SOURCE_FILE, StringType(), False),
    (SOURCE_LAYOUT, StringType(), False),
    (INGESTED_AT, TimestampType(), False),
    (BATCH_ID, StringType(), False),
)

BRONZE_TRANSACTIONS = _fields(
    (INVOICE_ID, StringType(), True),
    (CUSTOMER_ID, StringType(), True),
    (PRODUCT_ID, StringType(), False),
    (PRODUCT_NAME, StringType(), True),
    (CATEGORY, StringType(), True),
    (QUANTITY, IntegerType(), False),
    (UNIT_PRICE, DoubleType(), False),
    (EVENT_TIME, TimestampType(), False),
    (EVENT_TYPE, StringType(), False),
    (COUNTRY, StringType(), True),
    *LINEAGE,
)

BRONZE_QUARANTINE = _fields(
    (RAW, StringType(), True),
    (REASON, StringType(), False),
    *LINEAGE,
)

SILVER_TRANSACTIONS = _fields(
    (TRANSACTION_ID, StringType(), False),
    (INVOICE_ID, StringType(), True),
    (CUSTOMER_ID, StringType(), True),
    (PRODUCT_ID, StringType(), False),
    (PRODUCT_NAME, StringType(), True),
    (CATEGORY, StringType(), True),
    (QUANTITY, IntegerType(), False),
    (UNIT_PRICE, DoubleType(), False),
    (AMOUNT, DoubleType(), False),
    (EVENT_TIME, TimestampType(), False),
    (EVENT_DATE, DateType(), False),
    (EVENT_TYPE, StringType(), False),
    (LINE_KIND, StringType(), False),
    (IS_RETURN, BooleanType(), False),
    (IS_GUEST, BooleanType(), False),
    (COUNTRY, StringType(), True),
    (SOURCE_FILE, StringType(), False),
)

SILVER_PRODUCTS = _fields(
    (PRODUCT_ID, StringType(), False),
    (PRODUCT_NAME, StringType(), True),
    (CATEGORY, StringType(), True),
    ("min_price", DoubleType(), True),
    ("avg_price", DoubleType(), True),
    ("max_price", DoubleType(), True),
    ("purchase_lines", LongType(), False),
    ("units_sold", LongType(), False),
    ("customers", LongType(), False),
    ("first_sold", DateType(), True),
    ("last_sold", DateType(), True),
)

SILVER_CUSTOMERS = _fields(
    (CUSTOMER_ID, StringType(), False),
    (COUNTRY, StringType(), True),
    ("first_purchase", TimestampType(), True),
    ("last_purchase", TimestampType(), True),
    ("invoices", LongType(), False),
    ("purchase_lines", LongType(), False),
    ("return_lines", LongType(), False),
    ("distinct_products", LongType(), False),
    ("total_spent", DoubleType(), False),
)


# Customer features (silver.customer_features): one row per customer and cutoff date.
CUTOFF_DATE = "cutoff_date"
SPLIT = "split"
LABEL = "label"
# Splits: stacked earlier cutoffs to train and tune on, the latest complete cutoff held out for
# the final comparison, the last date of the data (no label yet) to score, and the labelled
# cutoffs the probabilities of the holdout and of the score cutoff are calibrated on (the same
# season a year before each, 52 weeks back; or, with less history, the window before each).
TRAIN = "train"
HOLDOUT = "holdout"
SCORE = "score"
CALIBRATION = "calibration"

FEATURE_WINDOWS = (30, 90, 365)
FEATURE_COLUMNS = (
    "recency_days",
    "tenure_days",
    *[f"frequency_{w}" for w in FEATURE_WINDOWS],
    "frequency_all",
    *[f"monetary_{w}" for w in FEATURE_WINDOWS],
    "monetary_all",
    "avg_basket_value",
    "avg_basket_size",
    "distinct_products",
    "distinct_categories",
    "mean_days_between",
    "std_days_between",
    "trend_90",
    "return_rate",
    "views_30",
    "carts_30",
)

CUSTOMER_FEATURES = _fields(
    (CUSTOMER_ID, StringType(), False),
    (CUTOFF_DATE, DateType(), False),
    (SPLIT, StringType(), False),
    *[(name, DoubleType(), False) for name in FEATURE_COLUMNS],
    (LABEL, IntegerType(), True),
)


# Gold: scores and recommendations a business reads.
AS_OF_DATE = "as_of_date"
PROBABILITY = "probability"
DECILE = "decile"
RANK = "rank"
MODEL_NAME = "model_name"
MODEL_VERSION = "model_version"
SCORED_AT = "scored_at"
SCORE_VALUE = "score"
# The as-of date a recommendation list was computed at: as_of_date itself, or an earlier one
# for a list carried forward unchanged (recommend.refresh_days).
COMPUTED_AS_OF = "computed_as_of"
SOURCE = "source"
# Where a recommendation came from: the generator that proposed it (the ranker's candidates:
# repeat, item_knn, als, popular), or the popularity fill ("popular").
SOURCE_ALS = "als"
SOURCE_POPULAR = "popular"
# Which list a recommendation is on: rebuys allowed, or never-bought products only.
LIST = "list"
FOR_YOU = "for_you"
DISCOVER = "discover"

PURCHASE_PROPENSITY = _fields(
    (CUSTOMER_ID, StringType(), False),
    (AS_OF_DATE, DateType(), False),
    (PROBABILITY, DoubleType(), False),
    (DECILE, IntegerType(), False),
    (RANK, IntegerType(), False),
    (MODEL_NAME, StringType(), False),
    (MODEL_VERSION, StringType(), False),
    (SCORED_AT, TimestampType(), False),
)

TOP_BUYERS = _fields(
    (RANK, IntegerType(), False),
    (CUSTOMER_ID, StringType(), False),
    (PROBABILITY, DoubleType(), False),
    ("recency_days", DoubleType(), False),
    ("frequency_all", DoubleType(), False),
    ("monetary_all", DoubleType(), False),
    (COUNTRY, StringType(), True),
    (AS_OF_DATE, DateType(), False),
    (MODEL_VERSION, StringType(), False),
)

RECOMMENDATIONS = _fields(
    (CUSTOMER_ID, StringType(), False),
    (LIST, StringType(), False),
    (RANK, IntegerType(), False),
    (PRODUCT_ID, StringType(), False),
    (PRODUCT_NAME, StringType(), True),
    (SCORE_VALUE, DoubleType(), False),
    (SOURCE, StringType(), False),
    (MODEL_VERSION, StringType(), True),
    (AS_OF_DATE, DateType(), False),
    (COMPUTED_AS_OF, DateType(), True),
)

# Item-kNN's neighbours of every product, as a served recommender version computed them
# (``model_run``: the MLflow run that logged the version, which names it uniquely: version
# numbers start again at 1 for another model name or a new registry).
SIMILAR_PRODUCT_ID = "similar_product_id"
SIMILARITY = "similarity"
MODEL_RUN = "model_run"

SIMILAR_PRODUCTS = _fields(
    (PRODUCT_ID, StringType(), False),
    (RANK, IntegerType(), False),
    (SIMILAR_PRODUCT_ID, StringType(), False),
    (SIMILARITY, DoubleType(), False),
    (MODEL_VERSION, StringType(), False),
    (MODEL_RUN, StringType(), False),
    (AS_OF_DATE, DateType(), False),
)


# Ops: the workflow's run history (append-only; the latest row of a run or attempt wins).
RUN_ID = "run_id"
TASK = "task"
ATTEMPT = "attempt"
STATUS = "status"
STARTED_AT = "started_at"
ENDED_AT = "ended_at"
SECONDS = "seconds"
ERROR = "error"
RECORDED_AT = "recorded_at"
# A run's or a task attempt's status.
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
TIMED_OUT = "timed_out"
UPSTREAM_FAILED = "upstream_failed"  # never started: a task it depends on failed
INTERRUPTED = "interrupted"  # shown for a run left "running" by a process that died
EXTERNAL = "external"  # a run orchestrated elsewhere (a Databricks job): see its tasks

WORKFLOW_RUNS = _fields(
    (RUN_ID, StringType(), False),
    (STATUS, StringType(), False),
    ("tasks", ArrayType(StringType(), False), False),  # the tasks the run covers, in order
    ("trigger", StringType(), False),  # run | from TASK | only TASKS | resume RUN_ID
    ("resumed_from", StringType(), True),
    (STARTED_AT, TimestampType(), False),
    (ENDED_AT, TimestampType(), True),
    (ERROR, StringType(), True),
    ("user", StringType(), True),
    ("host", StringType(), True),
    (RECORDED_AT, TimestampType(), False),
)

TASK_RUNS = _fields(
    (RUN_ID, StringType(), False),
    (TASK, StringType(), False),
    (ATTEMPT, IntegerType(), False),
    (STATUS, StringType(), False),
    (STARTED_AT, TimestampType(), True),
    (ENDED_AT, TimestampType(), True),
    (SECONDS, DoubleType(), True),
    (ERROR, StringType(), True),
    ("outputs", ArrayType(StringType(), False), False),  # the task's summary lines
    (RECORDED_AT, TimestampType(), False),
)

# Ops: what the daily run needs to do only new work.
PATH = "path"
SIZE_BYTES = "size_bytes"
MODIFIED_AT = "modified_at"
SHA256 = "sha256"
SETTINGS_HASH = "settings_hash"
BRONZE_VERSION = "bronze_version"
INPUTS = "inputs"

# One row per source file ever ingested (MERGE on path): a file is read again only when its
# size and content hash, or the ingest settings, differ from this row.
INGESTED_FILES = _fields(
    (PATH, StringType(), False),
    (SIZE_BYTES, LongType(), False),
    (MODIFIED_AT, TimestampType(), False),
    (SHA256, StringType(), True),  # None for a file not on the local file system
    ("input_rows", LongType(), False),
    ("bronze_rows", LongType(), False),
    ("quarantine_rows", LongType(), False),
    (BATCH_ID, StringType(), False),
    (BRONZE_VERSION, LongType(), False),  # bronze.transactions' version after the batch
    (SETTINGS_HASH, StringType(), False),
    (INGESTED_AT, TimestampType(), False),
)

# One row per task (MERGE on task): the table and model versions it last built from.
LINEAGE_TABLE = _fields(
    (TASK, StringType(), False),
    (INPUTS, MapType(StringType(), LongType()), False),
    (SETTINGS_HASH, StringType(), False),
    (RECORDED_AT, TimestampType(), False),
)

# Data-quality gates, one row per gate per check (append-only).
GATE = "gate"
VALUE = "value"
THRESHOLD = "threshold"
ACTION = "action"  # fail | warn
PASSED = "passed"
QUALITY_CHECKS = _fields(
    (BATCH_ID, StringType(), False),
    ("stage", StringType(), False),  # ingest | clean
    (GATE, StringType(), False),
    (VALUE, DoubleType(), True),  # None: not measurable on this batch (no earlier batch)
    (THRESHOLD, StringType(), False),
    (ACTION, StringType(), False),
    (PASSED, BooleanType(), False),
    ("detail", StringType(), True),
    (RECORDED_AT, TimestampType(), False),
)

# Population stability index per feature and of the score, per comparison (append-only).
COMPARISON = "comparison"  # train_vs_score | score_vs_previous
FEATURE = "feature"
PSI = "psi"
DRIFT = _fields(
    (AS_OF_DATE, DateType(), False),
    (COMPARISON, StringType(), False),
    ("expected_date", DateType(), False),  # the reference cutoff or as-of date
    (FEATURE, StringType(), False),
    (PSI, DoubleType(), False),
    ("expected_rows", LongType(), False),
    ("actual_rows", LongType(), False),
    (RECORDED_AT, TimestampType(), False),
)
