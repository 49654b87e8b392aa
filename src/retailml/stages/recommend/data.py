"""The recommender's inputs: interactions, what was bought, the id ↔ index maps, the popularity
ranking, and the caching helpers the other modules share.

Only product lines count (``line_kind = 'product'``): postage, fees, discounts… are never
recommended, never popular and never what a customer is measured against.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

from pyspark import StorageLevel
from pyspark.ml.feature import IndexToString, StringIndexer, StringIndexerModel
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from retailml import schemas as S
from retailml.errors import InputError

REQUIRED_COLUMNS = (
    S.TRANSACTION_ID,
    S.INVOICE_ID,
    S.CUSTOMER_ID,
    S.PRODUCT_ID,
    S.QUANTITY,
    S.EVENT_DATE,
    S.EVENT_TYPE,
    S.LINE_KIND,
    S.IS_GUEST,
    S.COUNTRY,
)

# Interaction and model columns.
USER = "user_idx"
ITEM = "item_idx"
RATING = "rating"
PURCHASES = "purchases"
RETURNS = "returns"
NET_QUANTITY = "net_quantity"
# The popularity ranking.
POSITION = "position"
BUYERS = "buyers"

_BOUGHT_UNITS = "_bought_units"
_TIE = "_tie"


def check_transactions(transactions: DataFrame) -> None:
    """Raises InputError naming the columns ``silver.transactions`` lacks for recommending."""
    missing = [c for c in REQUIRED_COLUMNS if c not in transactions.columns]
    if missing:
        raise InputError(f"silver.transactions lacks column(s) {', '.join(missing)}")


def products_only(transactions: DataFrame) -> DataFrame:
    """Product lines only: postage, fees, discounts… are never recommended, never popular and
    never what a customer is measured against."""
    return transactions.where(F.col(S.LINE_KIND) == S.PRODUCT_LINE)


def _known(transactions: DataFrame) -> DataFrame:
    return products_only(transactions).where(F.col(S.CUSTOMER_ID).isNotNull() & ~F.col(S.IS_GUEST))


def known_purchases(transactions: DataFrame) -> DataFrame:
    """Known customers' purchase lines of products (what repeat and item-kNN learn from)."""
    return _known(transactions).where(F.col(S.EVENT_TYPE) == S.PURCHASE)


def interactions(transactions: DataFrame) -> DataFrame:
    """One row per known customer and product they kept something of, with the implicit rating.

    ``rating = log1p(purchase lines × kept share)``, where the kept share is the net quantity
    (purchases plus the negative return quantities) over the purchased quantity, clipped to
    [0, 1]. Rows with ``rating ≤ 0`` (all returned, or only returns) are dropped; guests and
    events other than purchases and returns are ignored.

    Returns:
        ``customer_id, product_id, purchases, returns, net_quantity, rating``.
    """
    purchase = F.col(S.EVENT_TYPE) == S.PURCHASE
    lines = _known(transactions).where(F.col(S.EVENT_TYPE).isin(S.PURCHASE, S.RETURN))
    per_pair = lines.groupBy(S.CUSTOMER_ID, S.PRODUCT_ID).agg(
        F.count(F.when(purchase, F.lit(1))).alias(PURCHASES),
        F.count(F.when(F.col(S.EVENT_TYPE) == S.RETURN, F.lit(1))).alias(RETURNS),
        F.sum(F.when(purchase, F.col(S.QUANTITY))).alias(_BOUGHT_UNITS),
        F.sum(S.QUANTITY).alias(NET_QUANTITY),
    )
    kept = F.greatest(F.lit(0.0), F.least(F.lit(1.0), F.try_divide(NET_QUANTITY, _BOUGHT_UNITS)))
    rating = F.log1p(F.col(PURCHASES) * kept)
    return (
        per_pair.withColumn(RATING, rating)
        .where(F.col(RATING) > 0)  # null (nothing bought) is dropped too
        .select(S.CUSTOMER_ID, S.PRODUCT_ID, PURCHASES, RETURNS, NET_QUANTITY, RATING)
    )


def purchased(transactions: DataFrame) -> DataFrame:
    """Distinct (customer_id, product_id) a known customer has a purchase line of (returned or
    not: what was sent back is no better a recommendation)."""
    return known_purchases(transactions).select(S.CUSTOMER_ID, S.PRODUCT_ID).distinct()


@dataclass(frozen=True)
class Indexers:
    """The fitted id ↔ index maps of customers and products (unseen ids are skipped)."""

    user: StringIndexerModel
    item: StringIndexerModel

    def index(self, df: DataFrame) -> DataFrame:
        """Adds ``user_idx`` and ``item_idx``; rows with an id the maps do not know are dropped."""
        return self.item.transform(self.user.transform(df))

    def index_users(self, df: DataFrame) -> DataFrame:
        """Adds ``user_idx``; customers the map does not know are dropped."""
        return self.user.transform(df)

    def item_ids(self, df: DataFrame) -> DataFrame:
        """Replaces ``item_idx`` by ``product_id``.

        Only for products: ``IndexToString`` sends its labels from Python to the JVM one call
        per label, which is fine for a catalogue but not for a million customers (customer ids
        are carried along instead; see :func:`scored_candidates`).
        """
        items = IndexToString(inputCol=ITEM, outputCol=S.PRODUCT_ID, labels=self.item.labels)
        return items.transform(df).drop(ITEM)


def fit_indexers(interactions_df: DataFrame) -> Indexers:
    """Customer and product indices from all interactions (alphabetical, so reproducible)."""

    def fit(column: str, output: str) -> StringIndexerModel:
        return StringIndexer(
            inputCol=column, outputCol=output, handleInvalid="skip", stringOrderType="alphabetAsc"
        ).fit(interactions_df)

    return Indexers(fit(S.CUSTOMER_ID, USER), fit(S.PRODUCT_ID, ITEM))


def ratings(indexers: Indexers, interactions_df: DataFrame) -> DataFrame:
    """What ALS reads of the interactions: ``user_idx, item_idx, rating``."""
    return indexers.index(interactions_df).select(USER, ITEM, RATING)


def popularity(
    transactions: DataFrame, *, end: date, days: int, min_country_products: int
) -> DataFrame:
    """Recent best sellers before ``end``, globally and per country.

    A buyer is a known customer, or a guest invoice. The global ranking (``country`` null)
    holds every product bought before ``end``, by distinct buyers in ``[end - days, end)``
    descending, then all-time buyers, then product id, so it can always fill a list. A
    country's ranking (by the country on the purchase lines) holds the products its buyers
    bought in the recent window, by buyers then product id; only countries with at least
    ``min_country_products`` such products get one.

    Returns:
        ``country, product_id, position (1 = best), buyers (recent), score`` where ``score``
        is the share of the recent buyers (of the country, or of all) who bought the product.
    """
    start = end - timedelta(days=days)
    bought = products_only(transactions).where(
        (F.col(S.EVENT_TYPE) == S.PURCHASE) & (F.col(S.EVENT_DATE) < F.lit(end))
    )
    buyer = F.coalesce(
        F.col(S.CUSTOMER_ID),
        F.concat(F.lit("guest:"), F.coalesce(F.col(S.INVOICE_ID), F.col(S.TRANSACTION_ID))),
    )
    is_recent = F.col(S.EVENT_DATE) >= F.lit(start)
    recent = bought.where(is_recent)

    total = recent.agg(F.countDistinct(buyer).alias("_total"))
    # Each product's buyers once, with whether any of their purchases was recent, then
    # counted: two distinct counts in one aggregation would copy every line once per count
    # (an Expand) before shuffling them.
    pairs = bought.groupBy(S.PRODUCT_ID, buyer.alias("_buyer")).agg(
        F.max(is_recent).alias("_recent")
    )
    global_rows = (
        pairs.groupBy(S.PRODUCT_ID)
        .agg(
            F.count_if(F.col("_recent")).alias(BUYERS),
            F.count(F.lit(1)).alias(_TIE),
        )
        .crossJoin(total)
        .select(
            F.lit(None).cast("string").alias(S.COUNTRY),
            S.PRODUCT_ID,
            BUYERS,
            _TIE,
            # No recent buyer at all (a seasonal gap): every share is 0. Spark's ANSI mode (on
            # by default) raises on a division by zero where it used to give null.
            F.coalesce(F.try_divide(BUYERS, "_total"), F.lit(0.0)).alias(S.SCORE_VALUE),
        )
    )
    in_country = recent.where(F.col(S.COUNTRY).isNotNull())
    totals = in_country.groupBy(S.COUNTRY).agg(F.countDistinct(buyer).alias("_total"))
    per_country = Window.partitionBy(S.COUNTRY)
    country_rows = (
        in_country.groupBy(S.COUNTRY, S.PRODUCT_ID)
        .agg(F.countDistinct(buyer).alias(BUYERS))
        .withColumn("_products", F.count(F.lit(1)).over(per_country))
        .where(F.col("_products") >= min_country_products)
        .join(totals, S.COUNTRY)
        .select(
            S.COUNTRY,
            S.PRODUCT_ID,
            BUYERS,
            F.lit(0).cast("long").alias(_TIE),
            (F.col(BUYERS) / F.col("_total")).alias(S.SCORE_VALUE),
        )
    )
    # The global ranking is one window partition (country null): one row per product.
    order = Window.partitionBy(S.COUNTRY).orderBy(
        F.col(BUYERS).desc(), F.col(_TIE).desc(), S.PRODUCT_ID
    )
    return (
        global_rows.unionByName(country_rows)
        .withColumn(POSITION, F.row_number().over(order))
        .select(S.COUNTRY, S.PRODUCT_ID, POSITION, BUYERS, S.SCORE_VALUE)
    )


def persist(df: DataFrame, keep: list[DataFrame]) -> DataFrame:
    """``df`` persisted and computed now, and added to ``keep`` for the caller to unpersist
    after its actions.

    Computed now (one ``count``), because a frame cached lazily is computed by the first query
    that reads it, and a query that reads it in several branches — the generators and the
    ranker's facts all read the purchase days — has adaptive execution run those branches'
    stages at once, each computing the frame again: at M, the purchase days were computed
    six to twelve times over in the repeat half-life's measurement alone.
    """
    keep.append(df.persist(StorageLevel.MEMORY_AND_DISK))
    df.count()
    return df


def without_lineage(df: DataFrame) -> DataFrame:
    """``df`` computed now and kept in the executors' storage without its lineage.

    For what carries the customer indexer: its label map (an entry per customer) is part of
    the lineage, and Spark deserializes the lineage in every task of every stage that reads
    the frame, ALS's iterations included. At 735k customers that was 0.6 s per task, and a
    rank-10 fit on 3.4M interactions took 95 s with the frame persisted, 52 s checkpointed.
    A local checkpoint is not recomputed when an executor is lost: the task fails and the
    workflow's retry starts it again from the tables. Its blocks are freed when the frame is
    garbage-collected (Spark's context cleaner), not by ``unpersist``.
    """
    return df.localCheckpoint(eager=True)
