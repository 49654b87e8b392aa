"""Clean: ``bronze.transactions`` → ``silver.transactions``, ``silver.products`` and
``silver.customers``.

Rules, in the order they apply:

- exact duplicates (same invoice, customer, product, quantity, price, time and event type, from
  any file) collapse into one row; the earliest ``source_file`` is kept;
- a purchase row with a negative quantity, or from an invoice whose id starts with ``C`` (the UCI
  convention for cancellations), is a **return**: ``event_type = 'return'``, ``is_return``, and a
  negative quantity and amount. Returns are flagged, not netted away, so both the gross sales
  and the return behaviour stay visible; a customer's ``total_spent`` is net of returns;
- rows without a customer id are **guest** purchases: kept (they count for product popularity)
  and marked ``is_guest``.

Every table is overwritten as a whole, so re-running gives identical tables.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from retailml import schemas as S
from retailml.lakehouse import Lakehouse
from retailml.settings import Settings

_BUSINESS_COLUMNS = (
    S.INVOICE_ID,
    S.CUSTOMER_ID,
    S.PRODUCT_ID,
    S.PRODUCT_NAME,
    S.CATEGORY,
    S.QUANTITY,
    S.UNIT_PRICE,
    S.EVENT_TIME,
    S.EVENT_TYPE,
    S.COUNTRY,
)


@dataclass(frozen=True)
class CleanResult:
    """Row counts of the silver tables and how many bronze duplicates were dropped."""

    bronze_rows: int
    transactions: int
    duplicates_dropped: int
    returns: int
    guest_rows: int
    products: int
    customers: int

    def headline(self) -> str:
        return (
            f"{self.transactions:,} transactions, {self.products:,} products, "
            f"{self.customers:,} customers"
        )

    def summary(self) -> list[str]:
        return [
            f"silver.transactions {self.transactions:,} (dropped {self.duplicates_dropped:,} "
            f"duplicates; {self.returns:,} returns, {self.guest_rows:,} guest rows), "
            f"silver.products {self.products:,}, silver.customers {self.customers:,}"
        ]


def clean_transactions(bronze: DataFrame) -> DataFrame:
    """Typed, de-duplicated transactions with returns and guests flagged (see module docstring)."""
    deduped = bronze.groupBy(*_BUSINESS_COLUMNS).agg(F.min(S.SOURCE_FILE).alias(S.SOURCE_FILE))
    is_return = (F.col(S.EVENT_TYPE) == S.PURCHASE) & (
        (F.col(S.QUANTITY) < 0) | F.coalesce(F.col(S.INVOICE_ID).startswith("C"), F.lit(False))
    )
    quantity = F.when(is_return, -F.abs(F.col(S.QUANTITY))).otherwise(F.col(S.QUANTITY))
    key = F.concat_ws(
        "\u0001", *[F.coalesce(F.col(c).cast("string"), F.lit("\u0000")) for c in _BUSINESS_COLUMNS]
    )
    return deduped.select(
        F.sha2(key, 256).substr(1, 32).alias(S.TRANSACTION_ID),
        S.INVOICE_ID,
        S.CUSTOMER_ID,
        S.PRODUCT_ID,
        S.PRODUCT_NAME,
        S.CATEGORY,
        quantity.alias(S.QUANTITY),
        S.UNIT_PRICE,
        F.round(quantity * F.col(S.UNIT_PRICE), 2).alias(S.AMOUNT),
        S.EVENT_TIME,
        F.to_date(S.EVENT_TIME).alias(S.EVENT_DATE),
        F.when(is_return, F.lit(S.RETURN)).otherwise(F.col(S.EVENT_TYPE)).alias(S.EVENT_TYPE),
        is_return.alias(S.IS_RETURN),
        F.col(S.CUSTOMER_ID).isNull().alias(S.IS_GUEST),
        S.COUNTRY,
        S.SOURCE_FILE,
    )


def most_frequent(df: DataFrame, key: str, column: str) -> DataFrame:
    """Each ``key``'s most frequent non-null ``column`` value, the smallest on ties.

    ``F.mode`` would do it in one aggregate, but it keeps a map of counts per group in an
    object buffer (ObjectHashAggregate, falling back to sorting when the maps grow): it was
    most of clean's time at M and L. Counting ``(key, value)`` pairs is a plain hash
    aggregate, and ranking the few values per key is a small window.

    Returns:
        ``key, column`` (keys without a non-null value are absent).
    """
    counted = (
        df.where(F.col(column).isNotNull()).groupBy(key, column).agg(F.count(F.lit(1)).alias("_n"))
    )
    order = Window.partitionBy(key).orderBy(F.col("_n").desc(), F.col(column))
    return (
        counted.withColumn("_r", F.row_number().over(order))
        .where(F.col("_r") == 1)
        .select(key, column)
    )


def build_products(transactions: DataFrame) -> DataFrame:
    """One row per product seen in any event: most frequent name and category, price stats."""
    purchase = F.col(S.EVENT_TYPE) == S.PURCHASE

    def when_purchase(column: str) -> F.Column:
        return F.when(purchase, F.col(column))

    stats = transactions.groupBy(S.PRODUCT_ID).agg(
        F.min(when_purchase(S.UNIT_PRICE)).alias("min_price"),
        F.round(F.avg(when_purchase(S.UNIT_PRICE)), 4).alias("avg_price"),
        F.max(when_purchase(S.UNIT_PRICE)).alias("max_price"),
        F.count(when_purchase(S.QUANTITY)).alias("purchase_lines"),
        F.coalesce(F.sum(when_purchase(S.QUANTITY)), F.lit(0)).alias("units_sold"),
        F.countDistinct(when_purchase(S.CUSTOMER_ID)).alias("customers"),
        F.min(when_purchase(S.EVENT_DATE)).alias("first_sold"),
        F.max(when_purchase(S.EVENT_DATE)).alias("last_sold"),
    )
    return (
        stats.join(most_frequent(transactions, S.PRODUCT_ID, S.PRODUCT_NAME), S.PRODUCT_ID, "left")
        .join(most_frequent(transactions, S.PRODUCT_ID, S.CATEGORY), S.PRODUCT_ID, "left")
        .select(S.PRODUCT_ID, S.PRODUCT_NAME, S.CATEGORY, *stats.columns[1:])
    )


def build_customers(transactions: DataFrame) -> DataFrame:
    """One row per known customer: country, first/last purchase, counts, net spend."""
    purchase = F.col(S.EVENT_TYPE) == S.PURCHASE
    bought = F.col(S.EVENT_TYPE).isin(S.PURCHASE, S.RETURN)
    known = transactions.where(F.col(S.CUSTOMER_ID).isNotNull())
    stats = known.groupBy(S.CUSTOMER_ID).agg(
        F.min(F.when(purchase, F.col(S.EVENT_TIME))).alias("first_purchase"),
        F.max(F.when(purchase, F.col(S.EVENT_TIME))).alias("last_purchase"),
        F.countDistinct(F.when(purchase, F.col(S.INVOICE_ID))).alias("invoices"),
        F.count(F.when(purchase, F.lit(1))).alias("purchase_lines"),
        F.count(F.when(F.col(S.IS_RETURN), F.lit(1))).alias("return_lines"),
        F.countDistinct(F.when(purchase, F.col(S.PRODUCT_ID))).alias("distinct_products"),
        F.round(F.coalesce(F.sum(F.when(bought, F.col(S.AMOUNT))), F.lit(0.0)), 2).alias(
            "total_spent"
        ),
    )
    return stats.join(most_frequent(known, S.CUSTOMER_ID, S.COUNTRY), S.CUSTOMER_ID, "left").select(
        S.CUSTOMER_ID, S.COUNTRY, *stats.columns[1:]
    )


def run(settings: Settings, spark: SparkSession) -> CleanResult:
    """Rebuild the three silver tables from bronze (overwrite; idempotent)."""
    lake = Lakehouse(settings, spark)
    bronze = lake.read("bronze.transactions")
    lake.overwrite("silver.transactions", clean_transactions(bronze))
    # Build the dimensions from the table just written rather than re-running the de-duplication.
    silver = lake.read("silver.transactions")
    lake.overwrite("silver.products", build_products(silver))
    lake.overwrite("silver.customers", build_customers(silver))

    stats = silver.agg(
        F.count(F.lit(1)).alias("rows"),
        F.count(F.when(F.col(S.IS_RETURN), 1)).alias("returns"),
        F.count(F.when(F.col(S.IS_GUEST), 1)).alias("guests"),
    ).first()
    bronze_rows = bronze.count()
    assert stats is not None
    return CleanResult(
        bronze_rows=bronze_rows,
        transactions=int(stats["rows"]),
        duplicates_dropped=bronze_rows - int(stats["rows"]),
        returns=int(stats["returns"]),
        guest_rows=int(stats["guests"]),
        products=lake.read("silver.products").count(),
        customers=lake.read("silver.customers").count(),
    )
