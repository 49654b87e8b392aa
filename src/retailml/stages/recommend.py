"""Recommend: implicit-feedback ALS on purchase history → ``gold.recommendations``.

**Products only.** Lines that are not merchandise (``line_kind`` other than ``product``:
postage, fees, discounts…) never enter the interactions, the popularity ranking, the
evaluation truth or the catalogue size, so they are never recommended.

**Interactions** (:func:`interactions`). Known customers' purchase and return lines (guests
have no id to recommend to) become one row per customer and product with the rating
``log1p(purchase lines × share of the bought units that were kept)``: how often a customer
bought a product, discounted by what they sent back (bought 10 units, returned 1 → 0.9 of the
lines count; everything returned → 0, and the row is dropped). Lines rather than units, so a
wholesale order of 500 pieces does not outweigh a product bought every month.

**Evaluation** is on time, never on a random split. The as-of date is the day after the last
event; the evaluation cutoff lies ``eval_days`` before it. ALS is fitted on the interactions
before the cutoff and measured against what customers bought in ``[cutoff, as_of)``, for the
customers who had bought something before the cutoff (a customer without history is the
fallback's job, whichever model is evaluated). Two modes:

- ``all``: against everything bought in the window, repeat purchases included, with
  recommendations that may contain products bought before;
- ``new``: against the products new to the customer, with recommendations that exclude
  everything bought before the cutoff.

The repeat share (window customer × product pairs the customer had bought before) says which
mode describes the business. The popularity baseline is measured the same way. The grid
(``ranks × reg_params × alphas``) is tuned on NDCG@k of the mode that matches
``exclude_purchased``; ``recommend.parallelism`` grid points (and the baseline) are measured at
once, in threads that inherit the task's Spark job tags, and logged to MLflow in grid order.

**Candidates** (:func:`scored_candidates`, :func:`top_k_from_candidates`). Each customer's
factors are scored against the whole catalogue in a Python worker (NumPy matrix products on
chunks of customers; the product factors, one row per product, travel with the function), the
excluded products are set to ``-inf`` and the ``k`` best (and a few more for ties) are kept
with ``argpartition``: exact, without a shuffle, and as cheap for a customer who bought 300
products as for one who bought 1. Only those rows are ranked with ``row_number`` over a window
per customer (score descending, product id on ties). No per-customer data reaches the driver.

**Fallback** (:func:`recommend_customers`). Every customer gets exactly ``k`` rows: first the
customer's ALS recommendations, then the popularity ranking (distinct buyers in the last
``popular_days``; the customer's country first when that country had at least ``k`` products
bought, then the global ranking), skipping products already recommended and, when excluding,
already bought. ``source`` says which; ranks run 1..k without gaps (the ALS rows keep their
ranks 1..a, the fill continues at a + 1). ``score`` is the ALS score, or for a popular row the
share of recent buyers (of the country, or of all) who bought the product. A customer can get
fewer than ``k`` rows only by having bought more than :data:`MAX_EXTRA_CANDIDATES` products,
or from a catalogue too small to fill the list.

**Registry.** The final model (the two ``StringIndexer`` models and ``ALSModel`` in one
``PipelineModel``, so it maps indices back to ids by itself) is fitted on all history, logged
and registered; the champion gate compares the tuned NDCG@k with the champion's recorded
``eval_ndcg_at_k`` when the champion was evaluated on the same cutoff, mode and k. A champion
measured on another cutoff is not comparable (its final model has seen the current evaluation
window), so the challenger, fitted on newer data, replaces it. The rows are written by the
champion after the gate: the new model when promoted, else the champion loaded through its
alias — so re-running with nothing changed writes the same rows. ``model_version`` on every
row, popular ones included, is the version that produced the list.

The write replaces the as-of date's rows of ``gold.recommendations`` (idempotent per date).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, timedelta

import mlflow
import mlflow.spark
import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient
from pyspark import StorageLevel, inheritable_thread_target
from pyspark.ml import PipelineModel
from pyspark.ml.feature import IndexToString, StringIndexer, StringIndexerModel
from pyspark.ml.recommendation import ALS, ALSModel
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from retailml import schemas as S
from retailml.errors import InputError, RetailmlError
from retailml.lakehouse import Lakehouse
from retailml.ml import registry, tracking
from retailml.ml.ranking import RankingMetrics, ranking_metrics_by
from retailml.ml.sample import customer_share
from retailml.settings import Settings
from retailml.spark import spark_context

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

ALL, NEW = "all", "new"
MODES = (ALL, NEW)
ALS_MODEL, POPULAR_MODEL = "als", "popular"
METRIC_PREFIX = {ALS_MODEL: "als", POPULAR_MODEL: "pop"}

# At most this many candidates beyond k per customer, to survive excluding bought products.
MAX_EXTRA_CANDIDATES = 200
# Candidates beyond the k-th that are ranked too, in case they tie with it.
TIE_MARGIN = 5
# Customers scored per matrix product (× 5,000 products × 8 bytes = 40 MB of scores).
SCORE_CHUNK_ROWS = 1024

_BOUGHT_UNITS = "_bought_units"
_TAKEN = "_taken"
_TIE = "_tie"
_MODE = "_mode"
_SEEN = "_seen"
_MASKED = "_masked"
_NATIONAL = "_national"
_WORLD = "_world"


# --- pure transformations ------------------------------------------------------------------


def check_transactions(transactions: DataFrame) -> None:
    """Raises InputError naming the columns ``silver.transactions`` lacks for recommending."""
    missing = [c for c in REQUIRED_COLUMNS if c not in transactions.columns]
    if missing:
        raise InputError(f"silver.transactions lacks column(s) {', '.join(missing)}")


def _products(transactions: DataFrame) -> DataFrame:
    """Product lines only: postage, fees, discounts… are never recommended, never popular and
    never what a customer is measured against."""
    return transactions.where(F.col(S.LINE_KIND) == S.PRODUCT_LINE)


def _known(transactions: DataFrame) -> DataFrame:
    return _products(transactions).where(F.col(S.CUSTOMER_ID).isNotNull() & ~F.col(S.IS_GUEST))


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
    kept = F.greatest(F.lit(0.0), F.least(F.lit(1.0), F.col(NET_QUANTITY) / F.col(_BOUGHT_UNITS)))
    rating = F.log1p(F.col(PURCHASES) * kept)
    return (
        per_pair.withColumn(RATING, rating)
        .where(F.col(RATING) > 0)  # null (nothing bought) is dropped too
        .select(S.CUSTOMER_ID, S.PRODUCT_ID, PURCHASES, RETURNS, NET_QUANTITY, RATING)
    )


def purchased(transactions: DataFrame) -> DataFrame:
    """Distinct (customer_id, product_id) a known customer has a purchase line of (returned or
    not: what was sent back is no better a recommendation)."""
    return (
        _known(transactions)
        .where(F.col(S.EVENT_TYPE) == S.PURCHASE)
        .select(S.CUSTOMER_ID, S.PRODUCT_ID)
        .distinct()
    )


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


def als_estimator(
    *,
    rank: int = 10,
    reg_param: float = 0.1,
    alpha: float = 1.0,
    max_iter: int = 10,
    seed: int,
    blocks: int | None = None,
) -> ALS:
    """Implicit-feedback ALS on the indexed interactions (non-negative factors).

    Args:
        blocks: User and item blocks (ALS's own default, 10, when None); about the number of
            cores, as more blocks than tasks only add scheduling and shuffle overhead.
    """
    als = ALS(
        rank=rank,
        regParam=reg_param,
        alpha=alpha,
        maxIter=max_iter,
        implicitPrefs=True,
        userCol=USER,
        itemCol=ITEM,
        ratingCol=RATING,
        coldStartStrategy="drop",
        nonnegative=True,
        seed=seed,
    )
    if blocks is not None:
        als.setNumUserBlocks(blocks).setNumItemBlocks(blocks)
    return als


def ratings(indexers: Indexers, interactions_df: DataFrame) -> DataFrame:
    """What ALS reads of the interactions: ``user_idx, item_idx, rating``."""
    return indexers.index(interactions_df).select(USER, ITEM, RATING)


def als_blocks(spark: SparkSession) -> int:
    """ALS's user and item blocks: two per core (``defaultParallelism``).

    ALS runs the same stages per iteration whatever the data, so blocks beyond the cores only
    add tasks: at L, one fit took 296 s with 16 blocks (the shuffle partitions there) and 95 s
    with 2. Two per core rather than one, because the block count also seeds ALS's initial
    factors (one random stream per block): on M, one per core lowered the tuned NDCG@5 from
    0.1757 to 0.1705, and two per core is what M was tuned with. On Spark Connect, which has
    no SparkContext, the session's shuffle partitions.
    """
    sc = spark_context(spark)
    if sc is not None:
        return max(1, 2 * sc.defaultParallelism)
    return max(1, int(spark.conf.get("spark.sql.shuffle.partitions") or 10))


@dataclass(frozen=True)
class ItemFactors:
    """The ALS model's product factors on the driver, for scoring customers in Python workers.

    The catalogue's factors (products × rank floats: 5,000 × 30 is 1.2 MB in float64) travel
    with the scoring function to every task; the customers' factors stay distributed.

    Attributes:
        ids: The products' ``item_idx`` values, in the order of ``matrix``'s rows.
        matrix: ``len(ids) × rank`` float64 factors.
    """

    ids: np.ndarray
    matrix: np.ndarray

    @classmethod
    def of(cls, model: ALSModel) -> ItemFactors:
        # Bounded by the catalogue, not by the customers.
        rows = model.itemFactors.orderBy("id").collect()
        ids = np.fromiter((r["id"] for r in rows), dtype=np.int64, count=len(rows))
        matrix = np.array([r["features"] for r in rows], dtype=np.float64).reshape(
            len(rows), model.rank
        )
        return cls(ids, matrix)


def audience(
    indexers: Indexers, customers: DataFrame, *, exclude: DataFrame | None = None
) -> DataFrame:
    """The customers to score, each with the products never to recommend to them.

    Does not depend on the ALS model, so a grid computes (and persists) it once and scores
    every grid point's model against it.

    Args:
        indexers: Map customers and products to the model's indices.
        customers: Whom to score (a ``customer_id`` column). Customers the indexer does not
            know get no rows.
        exclude: (customer_id, product_id) pairs never to recommend, e.g. what was bought.

    Returns:
        ``user_idx, customer_id, _seen`` (the excluded ``item_idx`` values; empty when nothing
        is excluded).
    """
    users = indexers.index_users(customers.select(S.CUSTOMER_ID).distinct())
    if exclude is None:
        return users.select(USER, S.CUSTOMER_ID, F.array().cast("array<int>").alias(_SEEN))
    # Only products the model knows can be recommended, so only they need excluding.
    seen = (
        indexers.index(exclude.select(S.CUSTOMER_ID, S.PRODUCT_ID).distinct())
        .groupBy(USER)
        .agg(F.collect_list(F.col(ITEM).cast("int")).alias(_SEEN))
    )
    return users.join(seen, USER, "left").select(
        USER, S.CUSTOMER_ID, F.coalesce(F.col(_SEEN), F.array().cast("array<int>")).alias(_SEEN)
    )


def _top_positions(scores: np.ndarray, depth: int) -> np.ndarray:
    """Column positions of each row's ``depth`` highest scores (in no particular order)."""
    if depth >= scores.shape[1]:
        return np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    return np.argpartition(-scores, depth - 1, axis=1)[:, :depth]


def _scorer(
    items: ItemFactors, *, depth: int, masked: tuple[bool, ...]
) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """The ``mapInPandas`` function behind :func:`scored_candidates`."""
    position = np.full(int(items.ids.max(initial=-1)) + 1, -1, dtype=np.int64)
    position[items.ids] = np.arange(len(items.ids))
    item_t = np.ascontiguousarray(items.matrix.T)

    def score(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            for start in range(0, len(batch), SCORE_CHUNK_ROWS):  # no rows: no chunk
                part = batch.iloc[start : start + SCORE_CHUNK_ROWS]
                users = np.stack(part["features"].to_numpy()).astype(np.float64)
                scores = users @ item_t  # customers × products
                for mask in masked:
                    if mask:
                        # In place: the unmasked rows, if asked for, were taken already.
                        seen = part[_SEEN].to_numpy()
                        lengths = np.fromiter(map(len, seen), dtype=np.int64, count=len(seen))
                        if lengths.sum():
                            rows = np.repeat(np.arange(len(seen)), lengths)
                            flat = np.concatenate(seen).astype(np.int64)
                            known = flat < len(position)
                            cols = np.full(len(flat), -1, dtype=np.int64)
                            cols[known] = position[flat[known]]
                            hit = cols >= 0  # products the model has factors for
                            scores[rows[hit], cols[hit]] = -np.inf
                    top = _top_positions(scores, depth)
                    best = np.take_along_axis(scores, top, axis=1)
                    keep = np.isfinite(best).ravel()
                    yield pd.DataFrame(
                        {
                            S.CUSTOMER_ID: np.repeat(part[S.CUSTOMER_ID].to_numpy(), top.shape[1])[
                                keep
                            ],
                            _MASKED: mask,
                            ITEM: items.ids[top.ravel()[keep]].astype(np.int32),
                            # ALS's own precision (float32), so equal scores tie as in ALS.
                            S.SCORE_VALUE: best.ravel()[keep].astype(np.float32),
                        }
                    )

    return score


def scored_candidates(
    model: ALSModel, who: DataFrame, *, depth: int, masked: tuple[bool, ...] = (True,)
) -> DataFrame:
    """Each customer's ``depth`` best-scored products, by exact scoring against the whole
    catalogue.

    Every customer's factors are multiplied with all product factors in a Python worker
    (NumPy: one matrix product per chunk of customers, so BLAS does the work), the excluded
    products get ``-inf``, and ``argpartition`` keeps the ``depth`` best — without a shuffle,
    whatever a customer bought. ALS's own ``recommendForUserSubset`` is a blocked cross join
    that emits every customer's top ``n`` per block of products and shuffles them into a top-n
    aggregator, and it cannot exclude, so it must be asked for ``k`` plus everything a
    customer bought.

    Args:
        model: The fitted ALS model.
        who: :func:`audience`'s frame; customers the model has no factors for get no rows.
        depth: Candidates per customer (``k`` and a margin for ties with the ``k``-th).
        masked: One output per entry: without exclusion (False) and/or with (True). The
            scores are computed once for both.

    Returns:
        ``customer_id, _masked, item_idx, score`` (unordered; ``score`` as float32).
    """
    items = ItemFactors.of(model)
    factors = model.userFactors.select(F.col("id").alias(USER), "features")
    schema = T.StructType(
        [
            T.StructField(S.CUSTOMER_ID, T.StringType()),
            T.StructField(_MASKED, T.BooleanType()),
            T.StructField(ITEM, T.IntegerType()),
            T.StructField(S.SCORE_VALUE, T.FloatType()),
        ]
    )
    scorer = _scorer(items, depth=depth, masked=tuple(sorted(masked)))
    return (
        who.join(factors, USER)
        .select(S.CUSTOMER_ID, _SEEN, "features")
        .mapInPandas(scorer, schema)
        .withColumn(S.SCORE_VALUE, F.col(S.SCORE_VALUE).cast("double"))
    )


def top_k_from_candidates(
    candidates: DataFrame, indexers: Indexers, *, k: int, masked: bool = True
) -> DataFrame:
    """The ``k`` best of :func:`scored_candidates`' rows, ranked 1..k with :func:`top_k`'s
    window (score descending, product id on ties).

    Args:
        masked: Rank the candidates scored with the exclusion (False: without it).

    Returns:
        ``customer_id, product_id, score, rank``.
    """
    rows = candidates.where(F.col(_MASKED) == F.lit(masked)).select(
        S.CUSTOMER_ID, ITEM, S.SCORE_VALUE
    )
    return top_k(indexers.item_ids(rows).select(S.CUSTOMER_ID, S.PRODUCT_ID, S.SCORE_VALUE), k=k)


def als_top_k(
    model: ALSModel,
    indexers: Indexers,
    *,
    k: int,
    customers: DataFrame,
    exclude: DataFrame | None = None,
) -> DataFrame:
    """Each customer's ``k`` best-scored products, without the ``exclude``d ones, ranked 1..k:
    :func:`audience`, :func:`scored_candidates`, then :func:`top_k_from_candidates`
    (arguments as for :func:`audience`).

    Returns:
        ``customer_id, product_id, score, rank``.
    """
    who = audience(indexers, customers, exclude=exclude)
    candidates = scored_candidates(model, who, depth=k + TIE_MARGIN)
    return top_k_from_candidates(candidates, indexers, k=k)


def top_k(candidates: DataFrame, *, k: int, exclude: DataFrame | None = None) -> DataFrame:
    """The first ``k`` candidates per customer by score (product id on ties), ranked 1..k.

    Args:
        candidates: ``customer_id, product_id, score``.
        k: How many to keep per customer.
        exclude: (customer_id, product_id) pairs to drop before ranking, e.g. what was bought.

    Returns:
        ``candidates`` columns plus ``rank``.
    """
    if exclude is not None:
        candidates = candidates.join(
            exclude.select(S.CUSTOMER_ID, S.PRODUCT_ID), [S.CUSTOMER_ID, S.PRODUCT_ID], "left_anti"
        )
    order = Window.partitionBy(S.CUSTOMER_ID).orderBy(F.col(S.SCORE_VALUE).desc(), S.PRODUCT_ID)
    return candidates.withColumn(S.RANK, F.row_number().over(order)).where(F.col(S.RANK) <= k)


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
    bought = _products(transactions).where(
        (F.col(S.EVENT_TYPE) == S.PURCHASE) & (F.col(S.EVENT_DATE) < F.lit(end))
    )
    buyer = F.coalesce(
        F.col(S.CUSTOMER_ID),
        F.concat(F.lit("guest:"), F.coalesce(F.col(S.INVOICE_ID), F.col(S.TRANSACTION_ID))),
    )
    is_recent = F.col(S.EVENT_DATE) >= F.lit(start)
    recent = bought.where(is_recent)

    total = recent.agg(F.countDistinct(buyer).alias("_total"))
    global_rows = (
        bought.groupBy(S.PRODUCT_ID)
        .agg(
            F.countDistinct(F.when(is_recent, buyer)).alias(BUYERS),
            F.countDistinct(buyer).alias(_TIE),
        )
        .crossJoin(total)
        .select(
            F.lit(None).cast("string").alias(S.COUNTRY),
            S.PRODUCT_ID,
            BUYERS,
            _TIE,
            F.coalesce(F.col(BUYERS) / F.col("_total"), F.lit(0.0)).alias(S.SCORE_VALUE),
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


def _fill_lists(popular: DataFrame, *, depth: int) -> tuple[DataFrame, DataFrame]:
    """The popularity fill's lists, ``depth`` deep per ranking: ``country, _national`` (the
    country's ranking, then the global one without the country's products, so a product in both
    keeps its place in the country's) and the one-row ``_world`` (the global ranking). Entries
    are ``struct<product_id, score>`` in fill order."""
    top = popular.where(F.col(POSITION) <= depth)

    def in_order() -> F.Column:
        entries = F.sort_array(F.collect_list(F.struct(POSITION, S.PRODUCT_ID, S.SCORE_VALUE)))
        return F.transform(
            entries,
            lambda e: F.struct(
                e[S.PRODUCT_ID].alias(S.PRODUCT_ID), e[S.SCORE_VALUE].alias(S.SCORE_VALUE)
            ),
        )

    world = top.where(F.col(S.COUNTRY).isNull()).agg(in_order().alias(_WORLD))
    countries = (
        top.where(F.col(S.COUNTRY).isNotNull()).groupBy(S.COUNTRY).agg(in_order().alias("_country"))
    )
    # Tiny (countries × depth): the per-element lookup in the lambda costs nothing here.
    national = countries.crossJoin(world).select(
        S.COUNTRY,
        F.concat(
            F.col("_country"),
            F.filter(
                _WORLD,
                lambda w: ~F.array_contains(F.col(f"_country.{S.PRODUCT_ID}"), w[S.PRODUCT_ID]),
            ),
        ).alias(_NATIONAL),
    )
    return national, world


def recommend_customers(
    customers: DataFrame,
    popular: DataFrame,
    *,
    k: int,
    als: DataFrame | None = None,
    bought: DataFrame | None = None,
    max_extra: int = MAX_EXTRA_CANDIDATES,
) -> DataFrame:
    """Exactly ``k`` recommendations for each customer: ALS first, then the popularity fill.

    Works for any list of customers, including ones never seen before (they get ``k`` popular
    products, their country's first when it has a ranking).

    Args:
        customers: ``customer_id`` and optionally ``country`` (one row per customer).
        popular: The output of :func:`popularity`.
        k: Recommendations per customer.
        als: ALS recommendations ``customer_id, product_id, score, rank``, ranked 1..n
            without gaps per customer and already without excluded products, as
            :func:`top_k` returns them; ranks beyond ``k`` and customers not in
            ``customers`` are ignored.
        bought: (customer_id, product_id) pairs the fill must skip, or None to allow them.
        max_extra: Cap on how deep into the rankings a customer who bought many of the
            popular products is filled from.

    Returns:
        ``customer_id, rank, product_id, score, source``: ALS rows first (by their rank), then
        popular rows (country ranking before global), ranked 1..k without gaps.
    """
    people = customers.select(
        S.CUSTOMER_ID,
        F.col(S.COUNTRY) if S.COUNTRY in customers.columns else F.lit(None).cast("string"),
    ).toDF(S.CUSTOMER_ID, S.COUNTRY)

    # Per customer: how many ALS rows they have and which products those are, and what they
    # bought — as arrays, so the fill is a walk down one list per customer, with no row per
    # candidate and no shuffle beyond these two groupings.
    need = people
    als_rows = None
    if als is not None:
        als_rows = (
            als.where(F.col(S.RANK) <= k)
            .join(people.select(S.CUSTOMER_ID), S.CUSTOMER_ID, "left_semi")
            .select(S.CUSTOMER_ID, S.RANK, S.PRODUCT_ID, S.SCORE_VALUE)
        )
        taken = als_rows.groupBy(S.CUSTOMER_ID).agg(F.collect_list(S.PRODUCT_ID).alias(_TAKEN))
        need = need.join(taken, S.CUSTOMER_ID, "left")
    else:
        need = need.withColumn(_TAKEN, F.lit(None).cast("array<string>"))
    if bought is not None:
        seen = bought.groupBy(S.CUSTOMER_ID).agg(F.collect_set(S.PRODUCT_ID).alias(_SEEN))
        need = need.join(seen, S.CUSTOMER_ID, "left")
    else:
        need = need.withColumn(_SEEN, F.lit(None).cast("array<string>"))
    empty = F.array().cast("array<string>")
    need = need.select(
        S.CUSTOMER_ID,
        S.COUNTRY,
        F.coalesce(F.col(_TAKEN), empty).alias(_TAKEN),
        F.coalesce(F.col(_SEEN), empty).alias(_SEEN),
    ).where(F.size(_TAKEN) < k)

    # Each country's list (its ranking, then the global one without the country's products)
    # and the global list, both small and broadcast.
    national, world = _fill_lists(popular, depth=k + max_extra)
    listed = need.crossJoin(F.broadcast(world)).join(F.broadcast(national), S.COUNTRY, "left")
    skipped = F.size(_TAKEN) + F.size(_SEEN)
    # At most `skipped` entries are dropped, so the first k + skipped always suffice.
    walk = F.slice(F.coalesce(F.col(_NATIONAL), F.col(_WORLD)), 1, F.lit(k) + skipped)
    kept = F.filter(
        walk,
        lambda e: (
            ~F.array_contains(F.col(_TAKEN), e[S.PRODUCT_ID])
            & ~F.array_contains(F.col(_SEEN), e[S.PRODUCT_ID])
        ),
    )
    picks = listed.select(
        S.CUSTOMER_ID,
        F.size(_TAKEN).alias("_n"),
        F.posexplode(F.slice(kept, 1, F.lit(k) - F.size(_TAKEN))).alias("_pos", "_e"),
    )
    # ALS rows hold ranks 1..taken, so the fill continues at taken + 1: no second ranking.
    fill = picks.select(
        S.CUSTOMER_ID,
        (F.col("_n") + F.col("_pos") + 1).cast("int").alias(S.RANK),
        F.col(f"_e.{S.PRODUCT_ID}").alias(S.PRODUCT_ID),
        F.col(f"_e.{S.SCORE_VALUE}").alias(S.SCORE_VALUE),
        F.lit(S.SOURCE_POPULAR).alias(S.SOURCE),
    )
    if als_rows is None:
        return fill
    return als_rows.select(
        S.CUSTOMER_ID,
        F.col(S.RANK).cast("int").alias(S.RANK),
        S.PRODUCT_ID,
        S.SCORE_VALUE,
        F.lit(S.SOURCE_ALS).alias(S.SOURCE),
    ).unionByName(fill)


def gold_rows(
    recommendations: DataFrame, products: DataFrame, *, as_of: date, model_version: str | None
) -> DataFrame:
    """``recommendations`` in the ``gold.recommendations`` schema, with product names."""
    names = products.select(S.PRODUCT_ID, S.PRODUCT_NAME)
    return recommendations.join(F.broadcast(names), S.PRODUCT_ID, "left").select(
        S.CUSTOMER_ID,
        S.RANK,
        S.PRODUCT_ID,
        S.PRODUCT_NAME,
        S.SCORE_VALUE,
        S.SOURCE,
        F.lit(model_version).cast("string").alias(S.MODEL_VERSION),
        F.lit(as_of).cast("date").alias(S.AS_OF_DATE),
    )


def serve(
    model: PipelineModel,
    customers: DataFrame,
    popular: DataFrame,
    *,
    k: int,
    bought: DataFrame | None,
    max_extra: int = MAX_EXTRA_CANDIDATES,
    keep: list[DataFrame] | None = None,
) -> DataFrame:
    """Top-k per customer from a registered model (indexers + ALS) with the popularity fill.

    Args:
        model: ``PipelineModel`` of the customer and product ``StringIndexerModel`` and the
            ``ALSModel``, as this stage registers it.
        customers: ``customer_id`` (and ``country``) to recommend to.
        popular: The output of :func:`popularity` at the as-of date.
        k: Recommendations per customer.
        bought: Pairs to exclude, or None to allow recommending what was bought.
        max_extra: Cap on the extra ALS candidates asked for to survive the exclusion.
        keep: When given, the ALS rows and ``popular`` are persisted and added to it (the fill
            reads each several times; without it, each read recomputes them); the caller
            unpersists them after its action.

    Returns:
        ``customer_id, rank, product_id, score, source``, exactly k rows per customer.
    """
    indexers, als_model = unpack(model)
    best = als_top_k(als_model, indexers, k=k, customers=customers, exclude=bought)
    if keep is not None:
        best, popular = _persist(best, keep), _persist(popular, keep)
    return recommend_customers(
        customers, popular, k=k, als=best, bought=bought, max_extra=max_extra
    )


def unpack(model: PipelineModel) -> tuple[Indexers, ALSModel]:
    """The indexers and ALS model of a registered recommender.

    Raises:
        RetailmlError: The model is not one this stage registered.
    """
    stages = list(model.stages)
    if (
        len(stages) != 3
        or not isinstance(stages[0], StringIndexerModel)
        or not isinstance(stages[1], StringIndexerModel)
        or not isinstance(stages[2], ALSModel)
    ):
        kinds = ", ".join(type(s).__name__ for s in stages)
        raise RetailmlError(
            f"the registered recommender is not StringIndexer, StringIndexer, ALS ({kinds})"
        )
    return Indexers(stages[0], stages[1]), stages[2]


# --- results ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class GridPoint:
    """One ALS configuration, evaluated in both modes."""

    rank: int
    reg_param: float
    alpha: float
    metrics: dict[str, RankingMetrics]  # by mode
    fit_seconds: float
    run_id: str

    @property
    def params(self) -> dict[str, float]:
        return {"rank": self.rank, "reg_param": self.reg_param, "alpha": self.alpha}


@dataclass(frozen=True)
class RecommendResult:
    """The evaluation, the gate decision and what was written."""

    as_of: date
    eval_cutoff: date
    eval_customers: int
    repeat_share: float
    metrics: dict[tuple[str, str], RankingMetrics]  # (model, mode) → metrics
    k: int
    tuned_mode: str
    best_params: dict[str, float]
    grid: list[GridPoint]
    decision: registry.GateDecision
    model_version: str  # the version that produced the rows
    rows_written: int
    rows_by_source: dict[str, int]
    customers: int
    seconds: float
    parent_run_id: str

    def headline(self) -> str:
        mode = self.tuned_mode
        als = self.metrics[(ALS_MODEL, mode)].ndcg_at_k
        popular = self.metrics[(POPULAR_MODEL, mode)].ndcg_at_k
        return (
            f"{self.rows_written:,} rows; NDCG@{self.k} ({mode}) ALS {als:.4f} vs "
            f"popular {popular:.4f}"
        )

    def summary(self) -> list[str]:
        k = self.k
        lines = [
            f"evaluated on {self.eval_cutoff} .. {self.as_of - timedelta(days=1)} "
            f"({self.eval_customers:,} customers with earlier purchases bought in the window)",
            f"{'model':<8} {'mode':<4} {f'P@{k}':>7} {f'R@{k}':>7} {f'NDCG@{k}':>8} "
            f"{f'MAP@{k}':>7} {'hit rate':>8} {'coverage':>8}",
        ]
        for mode in MODES:
            for model in (ALS_MODEL, POPULAR_MODEL):
                m = self.metrics[(model, mode)]
                lines.append(
                    f"{model:<8} {mode:<4} {m.precision_at_k:>7.4f} {m.recall_at_k:>7.4f} "
                    f"{m.ndcg_at_k:>8.4f} {m.map_at_k:>7.4f} {m.hit_rate:>8.3f} "
                    f"{m.coverage:>8.3f}"
                )
        params = ", ".join(f"{name}={value:g}" for name, value in self.best_params.items())
        tuned = self.metrics[(ALS_MODEL, self.tuned_mode)].ndcg_at_k
        d = self.decision
        verdict = "promoted to champion" if d.promoted else "champion kept"
        by_source = ", ".join(f"{n:,} {s}" for s, n in sorted(self.rows_by_source.items()))
        return [
            *lines,
            f"repeat share: {self.repeat_share:.1%} of the window's customer × product "
            f"purchases were bought before",
            f"best of {len(self.grid)} grid points: {params} (NDCG@{k} {self.tuned_mode} "
            f"{tuned:.4f})",
            f"version {d.challenger_version}, {verdict}: {d.reason}",
            f"gold.recommendations as of {self.as_of}: {self.rows_written:,} rows for "
            f"{self.customers:,} customers ({by_source}) from version {self.model_version}",
        ]


@dataclass(frozen=True)
class PopularOnlyResult:
    """What was written when the catalogue is too small for collaborative filtering."""

    as_of: date
    k: int
    products: int  # products ever bought
    rows_written: int
    customers: int
    seconds: float

    def headline(self) -> str:
        return (
            f"{self.rows_written:,} rows, popularity only: {self.products} product(s) bought, "
            f"fewer than k = {self.k}"
        )

    def summary(self) -> list[str]:
        return [
            f"only {self.products} product(s) were ever bought, fewer than recommend.k = "
            f"{self.k}: ALS was not tuned; every customer gets the popularity ranking",
            f"gold.recommendations as of {self.as_of}: {self.rows_written:,} rows for "
            f"{self.customers:,} customers (fewer than k each: the catalogue is that small)",
        ]


# --- the task --------------------------------------------------------------------------------


def _popular_only(
    lake: Lakehouse,
    transactions: DataFrame,
    customers: DataFrame,
    products: DataFrame,
    *,
    as_of: date,
    bought_products: int,
    k: int,
    popular_days: int,
    exclude_purchased: bool,
    started: float,
) -> PopularOnlyResult:
    """Recommendations from the popularity ranking alone (nothing for ALS to learn)."""
    popular = popularity(transactions, end=as_of, days=popular_days, min_country_products=k)
    bought = purchased(transactions) if exclude_purchased else None
    recommendations = recommend_customers(customers, popular, k=k, bought=bought)
    lake.replace_where(
        "gold.recommendations",
        gold_rows(recommendations, products, as_of=as_of, model_version=None),
        f"{S.AS_OF_DATE} = '{as_of.isoformat()}'",
    )
    written = lake.read("gold.recommendations").where(F.col(S.AS_OF_DATE) == F.lit(as_of)).count()
    return PopularOnlyResult(
        as_of=as_of,
        k=k,
        products=bought_products,
        rows_written=written,
        customers=customers.count(),
        seconds=time.monotonic() - started,
    )


def _pip_requirements() -> list[str]:
    from importlib.metadata import version

    return [f"pyspark=={version('pyspark')}", f"mlflow=={version('mlflow')}"]


def champion_metric(
    client: MlflowClient, model_name: str, *, cutoff: date, mode: str, k: int
) -> tuple[str | None, float | None, str | None]:
    """The champion's version, its recorded tuned NDCG@k if comparable, and why not if not.

    Comparable means measured on the same cutoff, in the same mode and at the same k.
    """
    version = registry.champion_version(client, model_name)
    if version is None:
        return None, None, None
    tags = client.get_model_version(model_name, version).tags
    recorded = (tags.get("eval_cutoff"), tags.get("eval_mode"), tags.get("eval_k"))
    if recorded == (cutoff.isoformat(), mode, str(k)) and "eval_ndcg_at_k" in tags:
        return version, float(tags["eval_ndcg_at_k"]), None
    why = (
        f"champion version {version} was evaluated on cutoff {recorded[0]} ({recorded[1]}, "
        f"k={recorded[2]}), not comparable with {cutoff.isoformat()} ({mode}, k={k})"
    )
    return version, None, why


def _persist(df: DataFrame, keep: list[DataFrame]) -> DataFrame:
    keep.append(df.persist(StorageLevel.MEMORY_AND_DISK))
    return df


def _without_lineage(df: DataFrame) -> DataFrame:
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


def _with_mode(frames: dict[str, DataFrame]) -> DataFrame:
    """One frame with a mode column, so both modes are measured in one pass."""
    tagged = [df.withColumn(_MODE, F.lit(mode)) for mode, df in frames.items()]
    out = tagged[0]
    for df in tagged[1:]:
        out = out.unionByName(df)
    return out


def _metrics_by_mode(
    recommended: dict[str, DataFrame], relevant: DataFrame, *, k: int, catalog_size: int
) -> dict[str, RankingMetrics]:
    found = ranking_metrics_by(
        _with_mode(recommended), relevant, group_col=_MODE, k=k, catalog_size=catalog_size
    )
    empty = RankingMetrics(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0)
    return {mode: found.get(mode, empty) for mode in MODES}


@dataclass(frozen=True)
class _Measured:
    metrics: dict[str, RankingMetrics]  # by mode
    fit_seconds: float
    eval_seconds: float


def _measure_point(
    params: tuple[int, float, float],
    train: DataFrame,
    *,
    indexers: Indexers,
    who: DataFrame,
    relevant: DataFrame,
    k: int,
    catalog_size: int,
    blocks: int,
    settings: Settings,
) -> _Measured:
    """Fit one grid point and measure it in both modes (no MLflow: may run in a thread)."""
    rank, reg_param, alpha = params
    started = time.monotonic()
    model = als_estimator(
        rank=rank,
        reg_param=reg_param,
        alpha=alpha,
        max_iter=settings.recommend.max_iter,
        seed=settings.seed,
        blocks=blocks,
    ).fit(train)
    fit_seconds = time.monotonic() - started
    # Both modes from one scoring pass, persisted: each is read by the metrics.
    candidates = scored_candidates(model, who, depth=k + TIE_MARGIN, masked=(False, True)).persist(
        StorageLevel.MEMORY_AND_DISK
    )
    try:
        recommended = {
            ALL: top_k_from_candidates(candidates, indexers, k=k, masked=False),
            NEW: top_k_from_candidates(candidates, indexers, k=k),
        }
        metrics = _metrics_by_mode(recommended, relevant, k=k, catalog_size=catalog_size)
    finally:
        candidates.unpersist()
    return _Measured(metrics, fit_seconds, time.monotonic() - started - fit_seconds)


def _in_parallel(
    jobs: Sequence[Callable[[], _Measured]], spark: SparkSession, *, parallelism: int
) -> list[_Measured]:
    """Every job's result, in order, ``parallelism`` jobs at a time. The threads inherit the
    session's job tags (the workflow's per-task tag, by which a task's jobs are found and
    cancelled)."""
    if parallelism <= 1 or len(jobs) <= 1:
        return [job() for job in jobs]

    def call(job: Callable[[], _Measured]) -> _Measured:
        return job()

    with ThreadPoolExecutor(max_workers=min(parallelism, len(jobs))) as pool:
        return list(pool.map(inheritable_thread_target(spark)(call), jobs))


def _log_point(params: tuple[int, float, float], measured: _Measured, *, k: int) -> GridPoint:
    """A nested MLflow run for the grid point, under the active run."""
    rank, reg_param, alpha = params
    name = f"rank={rank} reg={reg_param:g} alpha={alpha:g}"
    with mlflow.start_run(run_name=name, nested=True) as run:
        mlflow.log_params({"rank": rank, "reg_param": reg_param, "alpha": alpha, "k": k})
        mlflow.log_metrics(
            {
                **measured.metrics[ALL].as_dict("als_all_"),
                **measured.metrics[NEW].as_dict("als_new_"),
                "fit_seconds": measured.fit_seconds,
                "eval_seconds": measured.eval_seconds,
            }
        )
    return GridPoint(
        rank, reg_param, alpha, measured.metrics, measured.fit_seconds, run.info.run_id
    )


def _register_and_gate(
    client: MlflowClient,
    model_uri: str,
    *,
    settings: Settings,
    tuned_ndcg: float,
    cutoff: date,
    mode: str,
    tags: dict[str, str],
    run_id: str,
) -> registry.GateDecision:
    """Register the logged model, tagged with what it was measured on, and apply the gate."""
    cfg = settings.recommend
    k = cfg.k
    current_version, current, not_comparable = champion_metric(
        client, cfg.model_name, cutoff=cutoff, mode=mode, k=k
    )
    version = mlflow.register_model(
        model_uri,
        cfg.model_name,
        tags={
            **tags,
            "eval_mode": mode,
            "eval_k": str(k),
            "eval_ndcg_at_k": f"{tuned_ndcg:.6f}",
            "run_id": run_id,
        },
    )
    challenger = str(version.version)
    decision = registry.apply_gate(
        client,
        cfg.model_name,
        challenger_version=challenger,
        challenger_metric=tuned_ndcg,
        champion_metric=current,
        metric=f"NDCG@{k} ({mode})",
        margin=cfg.promotion_margin,
    )
    if current_version is not None and not_comparable:
        # apply_gate reads a missing champion metric as "no champion"; say what it was.
        reason = f"{not_comparable}; the challenger (NDCG@{k} {tuned_ndcg:.4f}) replaces it"
        decision = dataclasses.replace(decision, reason=reason)
        client.set_model_version_tag(cfg.model_name, challenger, "gate_reason", reason)
    return decision


def run(settings: Settings, spark: SparkSession) -> RecommendResult | PopularOnlyResult:
    """Tune and evaluate ALS against popularity, register it, write ``gold.recommendations``.

    With fewer products ever bought than ``k`` (or just one), there is nothing for ALS to
    learn: the grid is skipped and every customer gets the popularity ranking (one line in the
    summary says so).

    Raises:
        RetailmlError: No purchases by known customers, or none before the evaluation cutoff.
    """
    started = time.monotonic()
    cfg = settings.recommend
    k = cfg.k
    lake = Lakehouse(settings, spark)
    transactions = lake.read("silver.transactions")
    check_transactions(transactions)
    customers = lake.read("silver.customers").select(S.CUSTOMER_ID, S.COUNTRY)
    products = lake.read("silver.products").select(S.PRODUCT_ID, S.PRODUCT_NAME)

    last_row = transactions.agg(F.max(S.EVENT_DATE).alias("last")).first()
    if last_row is None or last_row["last"] is None:
        raise RetailmlError("silver.transactions is empty; run `retailml task clean` first")
    as_of: date = last_row["last"] + timedelta(days=1)
    cutoff = as_of - timedelta(days=cfg.eval_days)
    # silver.products holds products only, one row each: a count of a small table.
    bought_products = lake.read("silver.products").where(F.col("purchase_lines") > 0).count()
    if bought_products < max(k, 2):
        return _popular_only(
            lake,
            transactions,
            customers,
            products,
            as_of=as_of,
            bought_products=bought_products,
            k=k,
            popular_days=cfg.popular_days,
            exclude_purchased=cfg.exclude_purchased,
            started=started,
        )
    tuned_mode = NEW if cfg.exclude_purchased else ALL
    blocks = als_blocks(spark)

    kept: list[DataFrame] = []
    try:
        history = _persist(interactions(transactions), kept)
        before = transactions.where(F.col(S.EVENT_DATE) < F.lit(cutoff))
        # Before the indexers, so an empty history is a clear error, not StringIndexer's.
        if interactions(before).isEmpty():
            raise RetailmlError(
                f"no purchases by known customers before the evaluation cutoff {cutoff} "
                f"(eval_days = {cfg.eval_days}); ingest more history or shorten the window"
            )
        indexers = fit_indexers(history)
        # Above tune_max_customers, the grid is tuned and evaluated on a fixed sample of the
        # customers (all their rows); the final model below is fitted on everyone.
        # A count in Spark: the indexer's labels would bring every customer id to the driver.
        buyers = history.select(S.CUSTOMER_ID).distinct().count()
        sample = min(1.0, cfg.tune_max_customers / max(buyers, 1))

        def tuning(df: DataFrame) -> DataFrame:
            return df if sample >= 1.0 else df.where(customer_share(settings.seed) < sample)

        train = _without_lineage(ratings(indexers, tuning(interactions(before))))
        prior = _persist(purchased(before), kept)
        prior_tuned = prior if sample >= 1.0 else _persist(tuning(prior), kept)
        window = purchased(transactions.where(F.col(S.EVENT_DATE) >= F.lit(cutoff)))
        # Evaluate the customers with history: a customer without any is the fallback's job.
        relevant_all = _persist(
            tuning(window).join(
                prior_tuned.select(S.CUSTOMER_ID).distinct(), S.CUSTOMER_ID, "left_semi"
            ),
            kept,
        )
        # Persisted once: every grid point is measured against them.
        relevant = _persist(
            _with_mode(
                {
                    ALL: relevant_all,
                    NEW: relevant_all.join(prior_tuned, [S.CUSTOMER_ID, S.PRODUCT_ID], "left_anti"),
                }
            ),
            kept,
        )
        eval_customers = _persist(
            relevant_all.select(S.CUSTOMER_ID).distinct().join(customers, S.CUSTOMER_ID, "left"),
            kept,
        )
        who = _without_lineage(audience(indexers, eval_customers, exclude=prior_tuned))
        # One pass for the bounded facts of the evaluation.
        repeat = (
            window.join(prior.withColumn("_seen", F.lit(1)), [S.CUSTOMER_ID, S.PRODUCT_ID], "left")
            .agg(F.count(F.lit(1)).alias("pairs"), F.count("_seen").alias("repeats"))
            .first()
        )
        assert repeat is not None
        repeat_share = int(repeat["repeats"]) / int(repeat["pairs"]) if repeat["pairs"] else 0.0
        catalog_size = max(
            _products(before)
            .where(F.col(S.EVENT_TYPE) == S.PURCHASE)
            .select(S.PRODUCT_ID)
            .distinct()
            .count(),
            1,
        )
        popular_then = _persist(
            popularity(before, end=cutoff, days=cfg.popular_days, min_country_products=k), kept
        )

        client = tracking.configure(settings)
        mlflow.set_experiment(experiment_id=tracking.experiment(settings, cfg.experiment))
        data_tags = {
            "data.silver_transactions_version": str(lake.version("silver.transactions")),
            "as_of_date": as_of.isoformat(),
            "eval_cutoff": cutoff.isoformat(),
        }
        with mlflow.start_run(run_name=f"recommend {as_of}", tags=data_tags) as parent:
            mlflow.log_params(
                {
                    "k": k,
                    "exclude_purchased": cfg.exclude_purchased,
                    "eval_days": cfg.eval_days,
                    "popular_days": cfg.popular_days,
                    "max_iter": cfg.max_iter,
                    "seed": settings.seed,
                    "tuned_mode": tuned_mode,
                    "max_extra_candidates": MAX_EXTRA_CANDIDATES,
                    "catalog_size": catalog_size,
                    "tuning_sample": round(sample, 4),
                    "parallelism": cfg.parallelism,
                }
            )
            tune_started = time.monotonic()
            points = list(itertools.product(cfg.ranks, cfg.reg_params, cfg.alphas))

            def popular_baseline() -> _Measured:
                recommended = {
                    ALL: recommend_customers(eval_customers, popular_then, k=k),
                    NEW: recommend_customers(eval_customers, popular_then, k=k, bought=prior_tuned),
                }
                found = _metrics_by_mode(recommended, relevant, k=k, catalog_size=catalog_size)
                return _Measured(found, 0.0, 0.0)

            measure = functools.partial(
                _measure_point,
                train=train,
                indexers=indexers,
                who=who,
                relevant=relevant,
                k=k,
                catalog_size=catalog_size,
                blocks=blocks,
                settings=settings,
            )
            # The baseline first: it needs no ALS model, so it runs beside the first fit.
            done = _in_parallel(
                [popular_baseline, *(functools.partial(measure, p) for p in points)],
                spark,
                parallelism=cfg.parallelism,
            )
            baseline, measured = done[0].metrics, done[1:]
            grid = [_log_point(p, m, k=k) for p, m in zip(points, measured, strict=True)]
            tune_seconds = time.monotonic() - tune_started
            # max keeps the first of equal points, so the choice is reproducible.
            best = max(grid, key=lambda g: g.metrics[tuned_mode].ndcg_at_k)
            metrics: dict[tuple[str, str], RankingMetrics] = {}
            for mode in MODES:
                metrics[(ALS_MODEL, mode)] = best.metrics[mode]
                metrics[(POPULAR_MODEL, mode)] = baseline[mode]
            tuned_ndcg = best.metrics[tuned_mode].ndcg_at_k

            # The final model: the best configuration on all history.
            final_started = time.monotonic()
            als_model = als_estimator(
                rank=best.rank,
                reg_param=best.reg_param,
                alpha=best.alpha,
                max_iter=cfg.max_iter,
                seed=settings.seed,
                blocks=blocks,
            ).fit(_without_lineage(ratings(indexers, history)))
            final_seconds = time.monotonic() - final_started
            model = PipelineModel(stages=[indexers.user, indexers.item, als_model])
            mlflow.log_params({f"best_{name}": v for name, v in best.params.items()})
            mlflow.log_metrics(
                {
                    **{
                        name: value
                        for (model_name, mode), m in metrics.items()
                        for name, value in m.as_dict(f"{METRIC_PREFIX[model_name]}_{mode}_").items()
                    },
                    "repeat_share": repeat_share,
                    "tuned_ndcg_at_k": tuned_ndcg,
                    "tune_seconds": tune_seconds,
                    "final_fit_seconds": final_seconds,
                }
            )
            # A signature (customer, product → score): Unity Catalog's registry requires one.
            example = history.select(S.CUSTOMER_ID, S.PRODUCT_ID).limit(5)
            signature = mlflow.models.infer_signature(
                example.toPandas(), model.transform(example).select("prediction").toPandas()
            )
            info = mlflow.spark.log_model(
                model,
                artifact_path="model",
                signature=signature,
                pip_requirements=_pip_requirements(),
            )

            decision = _register_and_gate(
                client,
                info.model_uri,
                settings=settings,
                tuned_ndcg=tuned_ndcg,
                cutoff=cutoff,
                mode=tuned_mode,
                tags={**data_tags, **{f"param_{n}": f"{v:g}" for n, v in best.params.items()}},
                run_id=parent.info.run_id,
            )
            challenger = decision.challenger_version

            # The rows come from whichever version is the champion now.
            if decision.promoted:
                serving, served_version = model, challenger
            else:
                serving = mlflow.spark.load_model(f"models:/{cfg.model_name}@{registry.CHAMPION}")
                served_version = str(decision.champion_version)
            write_started = time.monotonic()
            bought_all = _persist(purchased(transactions), kept) if cfg.exclude_purchased else None
            popular_now = popularity(
                transactions, end=as_of, days=cfg.popular_days, min_country_products=k
            )
            recommendations = serve(
                serving, customers, popular_now, k=k, bought=bought_all, keep=kept
            )
            lake.replace_where(
                "gold.recommendations",
                gold_rows(recommendations, products, as_of=as_of, model_version=served_version),
                f"{S.AS_OF_DATE} = '{as_of.isoformat()}'",
            )
            write_seconds = time.monotonic() - write_started
            by_source = {
                str(r[S.SOURCE]): int(r["n"])
                for r in lake.read("gold.recommendations")
                .where(F.col(S.AS_OF_DATE) == F.lit(as_of))
                .groupBy(S.SOURCE)
                .agg(F.count(F.lit(1)).alias("n"))
                .collect()
            }
            customer_count = customers.count()
            seconds = time.monotonic() - started
            mlflow.log_metrics(
                {
                    "write_seconds": write_seconds,
                    "seconds": seconds,
                    "rows_written": sum(by_source.values()),
                    "customers": customer_count,
                }
            )
            mlflow.set_tags(
                {
                    "challenger_version": challenger,
                    "served_version": served_version,
                    "gate_decision": "promoted" if decision.promoted else "kept champion",
                    "gate_reason": decision.reason,
                }
            )
    finally:
        for df in kept:
            df.unpersist()
    return RecommendResult(
        as_of=as_of,
        eval_cutoff=cutoff,
        eval_customers=best.metrics[ALL].users,
        repeat_share=repeat_share,
        metrics=metrics,
        k=k,
        tuned_mode=tuned_mode,
        best_params=best.params,
        grid=grid,
        decision=decision,
        model_version=served_version,
        rows_written=sum(by_source.values()),
        rows_by_source=by_source,
        customers=customer_count,
        seconds=seconds,
        parent_run_id=parent.info.run_id,
    )
