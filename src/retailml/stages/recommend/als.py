"""Implicit-feedback ALS: the estimator, and exact top-k scoring of customers against the whole
catalogue in Python workers (see :func:`scored_candidates`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark.ml.recommendation import ALS, ALSModel
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from retailml import schemas as S
from retailml.spark import spark_context
from retailml.stages.recommend.data import ITEM, RATING, USER, Indexers

# Candidates beyond the k-th that are ranked too, in case they tie with it.
TIE_MARGIN = 5
# Customers scored per matrix product (× 5,000 products × 8 bytes = 40 MB of scores).
SCORE_CHUNK_ROWS = 1024

SEEN = "_seen"  # the item indices never to recommend to a customer
MASKED = "_masked"  # whether a candidate was scored with the exclusion


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
        return users.select(USER, S.CUSTOMER_ID, F.array().cast("array<int>").alias(SEEN))
    # Only products the model knows can be recommended, so only they need excluding.
    seen = (
        indexers.index(exclude.select(S.CUSTOMER_ID, S.PRODUCT_ID).distinct())
        .groupBy(USER)
        .agg(F.collect_list(F.col(ITEM).cast("int")).alias(SEEN))
    )
    return users.join(seen, USER, "left").select(
        USER, S.CUSTOMER_ID, F.coalesce(F.col(SEEN), F.array().cast("array<int>")).alias(SEEN)
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
                        seen = part[SEEN].to_numpy()
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
                            MASKED: mask,
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
            T.StructField(MASKED, T.BooleanType()),
            T.StructField(ITEM, T.IntegerType()),
            T.StructField(S.SCORE_VALUE, T.FloatType()),
        ]
    )
    scorer = _scorer(items, depth=depth, masked=tuple(sorted(masked)))
    return (
        who.join(factors, USER)
        .select(S.CUSTOMER_ID, SEEN, "features")
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
    rows = candidates.where(F.col(MASKED) == F.lit(masked)).select(
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
