"""Candidate generators: the first stage of the two-stage recommender.

Each generator is a DataFrame function of the purchase history before a cutoff and returns
``customer_id, product_id, score`` (higher is better; scores of different generators are not
comparable). :func:`top_candidates` keeps each generator's ``depth`` best per customer with
their rank; the ranker (:mod:`.ranker`) learns how to combine them.

- **repeat** (:func:`repeat`): the customer's own products, by purchase days with exponential
  time decay, ``Σ 2^(-age / half_life)`` over the distinct days the customer bought the product
  (age in days at the cutoff). How due the next purchase is (days since the last purchase
  against the customer's mean gap for the product) is a ranker feature
  (:func:`repeat_facts`), since it only means something for products bought at least twice.
- **item-kNN** (:func:`item_neighbours`, :func:`item_knn`): item-to-item similarity of
  co-purchases in a lookback window, cosine of the distinct buyers ``|B(i) ∩ B(j)| /
  sqrt(|B(i)| |B(j)|)`` (Sarwar et al., "Item-based collaborative filtering recommendation
  algorithms", WWW 2001) or BM25-weighted purchase days (the ``implicit`` library's
  ``BM25Recommender``). Only each product's ``neighbours`` most similar products are kept,
  and the co-purchases come from each customer's ``recent_products`` most recent products
  (sparse matrix products in the Python workers, their memory bounded), so the work grows with
  customers × recent_products², not with the largest basket history. A
  customer's score for ``j`` is ``Σ_i repeat(i) × sim(i, j)`` over the products ``i`` they bought.
- **popular** (:func:`popular_candidates`): the global recent best sellers (:func:`popularity`).
- **ALS** (:func:`als_candidates`): the ALS model's exactly scored top products
  (:func:`scored_candidates`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Mapping
from datetime import date, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.ml.recommendation import ALSModel
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from scipy import sparse

from retailml import schemas as S
from retailml.stages.recommend.als import MASKED, audience, scored_candidates
from retailml.stages.recommend.data import ITEM as ITEM_IDX
from retailml.stages.recommend.data import POSITION, Indexers, known_purchases, persist

REPEAT = "repeat"
ITEM_KNN = "item_knn"
ALS = S.SOURCE_ALS
POPULAR = S.SOURCE_POPULAR
# In the order a tie between generators names the row's source.
GENERATORS = (REPEAT, ITEM_KNN, ALS, POPULAR)

# als_candidates: whether a row is of the list without the excluded pairs.
MASKED_COLUMN = "masked"
# Item-kNN's similarity table.
ITEM = "item"
NEIGHBOUR = "neighbour"
SIMILARITY = S.SIMILARITY
# Item-kNN's co-purchase weightings, and BM25's parameters (the implicit library's
# BM25Recommender defaults).
BM25 = "bm25"
COSINE = "cosine"
WEIGHTINGS = (BM25, COSINE)
_BM25_K1 = 1.2
_BM25_B = 0.75


def purchase_days(transactions: DataFrame, *, end: date) -> DataFrame:
    """The distinct days each known customer bought each product before ``end``.

    Returns:
        ``customer_id, product_id, event_date`` (one row per purchase day).
    """
    return (
        known_purchases(transactions)
        .where(F.col(S.EVENT_DATE) < F.lit(end))
        .select(S.CUSTOMER_ID, S.PRODUCT_ID, S.EVENT_DATE)
        .distinct()
    )


def _decayed(days: DataFrame, *, end: date, half_life: float) -> F.Column:
    age = F.datediff(F.lit(end), F.col(S.EVENT_DATE))
    return F.sum(F.exp(F.lit(-math.log(2) / half_life) * age))


def repeat(days: DataFrame, *, end: date, half_life: float) -> DataFrame:
    """The customer's own products scored by time-decayed purchase days.

    Args:
        days: :func:`purchase_days` before ``end``.
        half_life: Days after which a purchase day counts half.

    Returns:
        ``customer_id, product_id, score``: ``Σ 2^(-age/half_life)`` over the purchase days.
    """
    return days.groupBy(S.CUSTOMER_ID, S.PRODUCT_ID).agg(
        _decayed(days, end=end, half_life=half_life).alias(S.SCORE_VALUE)
    )


def item_neighbours(
    days: DataFrame,
    *,
    end: date,
    lookback_days: int,
    neighbours: int,
    recent_products: int,
    weighting: str = BM25,
    items: DataFrame | None = None,
    keep: list[DataFrame] | None = None,
) -> DataFrame:
    """Each product's most similar products by co-purchase, BM25-weighted or cosine.

    The co-purchase matrix ``X`` holds, per customer and product, the purchase days ``x`` in
    the lookback, over each customer's ``recent_products`` most recent products; each entry
    is weighted, ``w(c, i)``, and ``sim(i, j) = Σ_c w(c, i) w(c, j)``:

    - ``bm25``: the Okapi BM25 weight of the product as a document and the customer as a
      term, ``w = x (K1 + 1) / (K1 L_i + x) × idf_c``, ``L_i = 1 - B + B len_i / mean len``
      (``len_i = Σ_c x``), ``idf_c = ln N - ln(1 + n_c)`` (``N`` the products in the baskets,
      ``n_c`` the customer's products in theirs, at most ``recent_products``), ``K1 = 1.2``,
      ``B = 0.75``: the weighting of the ``implicit`` library's ``BM25Recommender``
      (Frederickson, implicit.readthedocs.io), which weighs down products everyone buys and,
      a little, customers with many products. Unlike implicit, the idf is kept at zero or
      above (a customer whose basket holds nearly every product says nothing about which go
      together; it only matters in catalogues of at most ``recent_products`` + 1 products).
    - ``cosine``: ``w = 1 / sqrt(|B(i)|)``, so that ``sim(i, j) = |B(i) ∩ B(j)| /
      sqrt(|B(i)| |B(j)|)`` over the distinct buyers ``B`` (Sarwar et al., "Item-based
      collaborative filtering recommendation algorithms", WWW 2001).

    The sums are sparse matrix products (``X_pᵀ X_p`` of each partition's customers, SciPy in
    the Python workers over Arrow batches), added up across partitions by Spark: making one
    row per co-purchased pair in Spark (about 29M at M) and summing those took 15.8 s
    against 11.3 s on M's purchase days (every product's neighbours, three alternating warm
    rounds each, one session), the same neighbours. A worker hands its sums on once it holds
    ``_FLUSH_AT`` (about 16 bytes each), so its memory stays bounded whatever the catalogue and
    the number of customers; Spark adds up what the workers hand on.

    Args:
        days: :func:`purchase_days` before ``end``.
        lookback_days: Only purchases in ``[end - lookback_days, end)`` count.
        neighbours: Neighbours kept per product (the most similar; product id on ties).
        recent_products: Each customer contributes their this many most recently bought
            products (bounds the co-purchase pairs at ``customers × recent_products²``).
        weighting: ``bm25`` or ``cosine``.
        items: ``product_id`` of the products whose neighbours are wanted (None: every
            product). A product's neighbours do not depend on which others are asked for; the
            buyer counts and weights still come from every customer.
        keep: When given, the customers' baskets (read more than once) are persisted into it.

    Returns:
        ``item, neighbour, similarity, rank`` with similarity > 0 (at most 1 for cosine) and
        ``rank`` 1.. per item, the most similar first (neighbour id on ties).

    Raises:
        ValueError: ``weighting`` is neither ``bm25`` nor ``cosine``.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"item-kNN weighting {weighting!r} is not one of {', '.join(WEIGHTINGS)}")
    spark = days.sparkSession
    recent = days.where(F.col(S.EVENT_DATE) >= F.lit(end - timedelta(days=lookback_days)))
    last = recent.groupBy(S.CUSTOMER_ID, S.PRODUCT_ID).agg(
        F.max(S.EVENT_DATE).alias("_last"), F.count(F.lit(1)).alias("_x")
    )
    # One array per customer, newest product first (product id on ties).
    newest_first = F.struct(
        F.datediff(F.lit(end), F.col("_last")).alias("_age"),
        F.col(S.PRODUCT_ID).alias("_p"),
        F.col("_x").cast("double").alias("_x"),
    )
    baskets = last.groupBy(S.CUSTOMER_ID).agg(
        F.slice(F.sort_array(F.collect_list(newest_first)), 1, recent_products).alias("_in")
    )
    baskets = baskets.select(F.col("_in._p").alias("_p"), F.col("_in._x").alias("_x"))
    if keep is not None:
        baskets = persist(baskets, keep)
    # One row per product in the baskets (the catalogue, at most: it does not grow with the
    # customers or the lines), with whether its neighbours are asked for, in one action;
    # numbered in id order, so that ties between neighbours' codes break by product id.
    per_product = (
        baskets.select(F.explode(F.arrays_zip("_p", "_x")).alias("_e"))
        .groupBy(F.col("_e._p").alias(S.PRODUCT_ID))
        .agg(F.count(F.lit(1)).alias("_buyers"), F.sum("_e._x").alias("_len"))
    )
    if items is None:
        per_product = per_product.withColumn("_asked", F.lit(True))
    else:
        asked = items.select(S.PRODUCT_ID).distinct().withColumn("_asked", F.lit(True))
        per_product = per_product.join(F.broadcast(asked), S.PRODUCT_ID, "left")
    products = per_product.orderBy(S.PRODUCT_ID).collect()
    found = "item string, neighbour string, similarity double, rank int"
    if not products:
        return spark.createDataFrame([], found)
    ids = [row[S.PRODUCT_ID] for row in products]
    wanted = None
    if items is not None:
        wanted = np.flatnonzero([bool(row["_asked"]) for row in products]).astype(np.int32)
    co_purchases = _co_purchases(
        ids,
        buyers=np.array([row["_buyers"] for row in products], dtype=np.float64),
        lengths=np.array([row["_len"] for row in products], dtype=np.float64),
        weighting=weighting,
        wanted=wanted,
    )
    sums = (
        baskets.mapInArrow(co_purchases, "_i int, _j int, _s double")
        .groupBy("_i", "_j")
        .agg(F.sum("_s").alias(SIMILARITY))
    )
    best = Window.partitionBy("_i").orderBy(F.col(SIMILARITY).desc(), "_j")
    top = (
        sums.where(F.col(SIMILARITY) > 0)
        .withColumn(S.RANK, F.row_number().over(best).cast("int"))
        .where(F.col(S.RANK) <= neighbours)
    )
    names = spark.createDataFrame(list(enumerate(ids)), "_k int, _id string")
    return (
        top.join(F.broadcast(names.toDF("_i", ITEM)), "_i")
        .join(F.broadcast(names.toDF("_j", NEIGHBOUR)), "_j")
        .select(ITEM, NEIGHBOUR, SIMILARITY, S.RANK)
    )


# Sums a Python worker holds before it hands them to Spark (about 16 bytes each).
_FLUSH_AT = 4_000_000


def _co_purchases(
    ids: list[str],
    *,
    buyers: np.ndarray,
    lengths: np.ndarray,
    weighting: str,
    wanted: np.ndarray | None,
    flush_at: int = _FLUSH_AT,
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The ``mapInArrow`` function of :func:`item_neighbours`: baskets (``_p``: product ids,
    ``_x``: purchase days, one list each per customer) in, the partial sums ``_i, _j, _s`` of
    ``w(c, i) w(c, j)`` (product codes: positions in ``ids``; ``i`` among ``wanted``, the
    positions asked for, or any; ``i ≠ j``; sums > 0) out, handed on whenever ``flush_at``
    sums are held (so the same pair may come more than once)."""
    count = len(ids)
    value_set = pa.array(ids, pa.string())
    # Per product: BM25's length normalisation, or cosine's 1 / sqrt(buyers).
    per_product = (
        _BM25_K1 * (1 - _BM25_B + _BM25_B * lengths / lengths.mean())
        if weighting == BM25
        else 1 / np.sqrt(buyers)
    )

    def sums(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        total = None
        for batch in batches:
            sizes = pc.list_value_length(batch.column("_p")).to_numpy(zero_copy_only=False)
            code = pc.index_in(batch.column("_p").flatten(), value_set=value_set).to_numpy(
                zero_copy_only=False
            )
            if weighting == BM25:
                x = batch.column("_x").flatten().to_numpy(zero_copy_only=False)
                idf = np.maximum(np.log(count) - np.log1p(sizes), 0.0)
                weight = x * (_BM25_K1 + 1) / (per_product[code] + x) * np.repeat(idf, sizes)
            else:
                weight = per_product[code]
            rows = np.repeat(np.arange(len(sizes)), sizes)
            basket = sparse.csr_matrix((weight, (rows, code)), shape=(len(sizes), count))
            left = basket.T.tocsr()
            if wanted is not None:
                left = left[wanted]
            part = left @ basket
            total = part if total is None else total + part
            if total.nnz >= flush_at:
                yield from _handed_on(total, wanted)
                total = None
        if total is not None:
            yield from _handed_on(total, wanted)

    return sums


def _handed_on(total: sparse.csr_matrix, wanted: np.ndarray | None) -> Iterator[pa.RecordBatch]:
    """:func:`_co_purchases`' sums as Arrow batches (without a product's sum with itself)."""
    coo = total.tocoo()
    item = coo.row if wanted is None else wanted[coo.row]
    kept = (item != coo.col) & (coo.data > 0)
    item, neighbour, value = item[kept], coo.col[kept], coo.data[kept]
    step = 1 << 20
    for start in range(0, len(value), step):
        chunk = slice(start, start + step)
        yield pa.RecordBatch.from_arrays(
            [
                pa.array(item[chunk], pa.int32()),
                pa.array(neighbour[chunk], pa.int32()),
                pa.array(value[chunk], pa.float64()),
            ],
            names=["_i", "_j", "_s"],
        )


def item_knn(repeat_scores: DataFrame, neighbours: DataFrame, *, depth: int) -> DataFrame:
    """Products similar to what the customer bought: ``Σ_i repeat(c, i) × sim(i, j)``, each
    customer's ``depth`` best, and their ``depth`` best among the products they did not buy.

    Both tops come from one pass: the customers' products are grouped by customer once, and
    the neighbours' sums, the bought mark and the ranking happen within those partitions (at
    M, 11M scored pairs were shuffled, persisted and ranked twice, once per list).

    Args:
        repeat_scores: :func:`repeat`'s output (the weights of the customer's products; its
            products are what the customer bought).
        neighbours: :func:`item_neighbours`' output (similarity never null). Broadcast: at
            most catalogue × ``recommend.knn_neighbours`` rows (40,000 at M), so the sums stay
            in the customers' partitions.
        depth: Products kept per customer, in each of the two tops.

    Returns:
        ``customer_id, product_id, score``: the union of both tops (products the customer
        bought may be among them, through their neighbours), so that :func:`top_candidates`
        (or ``als.top_k``) at a depth of at most ``depth``, with nothing excluded or with
        exactly ``repeat_scores``' pairs excluded, finds the same best as from every score.
    """
    own = repeat_scores.groupBy(S.CUSTOMER_ID).agg(
        F.collect_list(F.struct(F.col(S.PRODUCT_ID).alias("_i"), S.SCORE_VALUE)).alias("_own")
    )
    # Each product is also its own neighbour with a null similarity: a customer's own products
    # reached through others are marked bought without a join to what was bought.
    reachable = neighbours.select(F.col(NEIGHBOUR).alias(ITEM)).distinct()
    marked = neighbours.select(ITEM, NEIGHBOUR, SIMILARITY).unionByName(
        reachable.select(
            ITEM, F.col(ITEM).alias(NEIGHBOUR), F.lit(None).cast("double").alias(SIMILARITY)
        )
    )
    scored = (
        own.select(S.CUSTOMER_ID, F.explode("_own").alias("_e"))
        .join(F.broadcast(marked), F.col("_e._i") == F.col(ITEM))
        .groupBy(S.CUSTOMER_ID, F.col(NEIGHBOUR).alias(S.PRODUCT_ID))
        .agg(
            F.sum(F.col(f"_e.{S.SCORE_VALUE}") * F.col(SIMILARITY)).alias(S.SCORE_VALUE),
            F.max(F.col(SIMILARITY).isNull()).alias("_bought"),
        )
        .where(F.col(S.SCORE_VALUE).isNotNull())  # reached through a neighbour
    )
    order = (
        Window.partitionBy(S.CUSTOMER_ID)
        .orderBy(F.col(S.SCORE_VALUE).desc(), S.PRODUCT_ID)
        .rowsBetween(Window.unboundedPreceding, Window.currentRow)
    )
    unbought_so_far = F.count(F.when(~F.col("_bought"), F.lit(1))).over(order)
    return (
        scored.withColumn("_r", F.row_number().over(order))
        .withColumn("_new", unbought_so_far)
        .where((F.col("_r") <= depth) | (~F.col("_bought") & (F.col("_new") <= depth)))
        .select(S.CUSTOMER_ID, S.PRODUCT_ID, S.SCORE_VALUE)
    )


def popular_candidates(customers: DataFrame, popular: DataFrame, *, depth: int) -> DataFrame:
    """The global ranking's first ``depth`` products for every customer.

    Args:
        customers: ``customer_id`` (one row each).
        popular: :func:`popularity`'s output.

    Returns:
        ``customer_id, product_id, score`` (the share of recent buyers who bought it).
    """
    top = popular.where(F.col(S.COUNTRY).isNull() & (F.col(POSITION) <= depth)).select(
        S.PRODUCT_ID, S.SCORE_VALUE
    )
    return customers.select(S.CUSTOMER_ID).crossJoin(F.broadcast(top))


def als_candidates(
    model: ALSModel,
    indexers: Indexers,
    customers: DataFrame,
    *,
    depth: int,
    exclude: DataFrame,
) -> DataFrame:
    """ALS's ``depth`` best products per customer, with and without the ``exclude``d pairs,
    from one scoring pass.

    Returns:
        ``customer_id, product_id, score, masked`` (``masked``: without the excluded pairs;
        customers the model does not know get no rows).
    """
    who = audience(indexers, customers, exclude=exclude)
    rows = scored_candidates(model, who, depth=depth, masked=(False, True))
    return indexers.item_ids(rows.select(S.CUSTOMER_ID, ITEM_IDX, MASKED, S.SCORE_VALUE)).select(
        S.CUSTOMER_ID, S.PRODUCT_ID, S.SCORE_VALUE, F.col(MASKED).alias(MASKED_COLUMN)
    )


def top_candidates(
    generated: Mapping[str, DataFrame], *, depth: int, exclude: DataFrame | None = None
) -> DataFrame:
    """The union of every generator's ``depth`` best products per customer, one row per
    customer and product, with each generator's score and rank.

    The generators' rows are unioned, partitioned by customer once, ranked per customer and
    generator, and gathered per product within those partitions: no join per generator (at
    M, three full outer joins of about 1.5M rows each), and the ranker's per-customer
    features that follow read the same partitioning.

    Args:
        generated: Generator name → ``customer_id, product_id, score`` (one row per customer
            and product).
        depth: Candidates kept per generator and customer (product id on ties).
        exclude: (customer_id, product_id) pairs to drop before ranking (the discover list:
            what was bought).

    Returns:
        ``customer_id, product_id`` and per generator ``g``: ``score_g`` (0 when ``g`` did not
        propose the product) and ``rank_g`` (``depth + 1`` then).
    """
    union = functools.reduce(
        DataFrame.unionByName,
        (
            scores.select(
                S.CUSTOMER_ID,
                S.PRODUCT_ID,
                F.lit(name).alias("_g"),
                F.col(S.SCORE_VALUE).cast("double").alias("_s"),
            )
            for name, scores in generated.items()
        ),
    )
    if exclude is not None:
        union = union.join(exclude, [S.CUSTOMER_ID, S.PRODUCT_ID], "left_anti")
    order = Window.partitionBy(S.CUSTOMER_ID, "_g").orderBy(F.col("_s").desc(), S.PRODUCT_ID)
    top = (
        union.repartition(S.CUSTOMER_ID)
        .withColumn("_r", F.row_number().over(order))
        .where(F.col("_r") <= depth)
    )
    columns = []
    for name in generated:
        proposed = F.col("_g") == F.lit(name)
        columns += [
            F.coalesce(F.max(F.when(proposed, F.col("_s"))), F.lit(0.0)).alias(score_column(name)),
            F.coalesce(F.min(F.when(proposed, F.col("_r"))), F.lit(depth + 1))
            .cast("int")
            .alias(rank_column(name)),
        ]
    return top.groupBy(S.CUSTOMER_ID, S.PRODUCT_ID).agg(*columns)


def score_column(generator: str) -> str:
    return f"score_{generator}"


def rank_column(generator: str) -> str:
    return f"rank_{generator}"
