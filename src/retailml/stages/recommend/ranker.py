"""The second stage: a learned ranker over the generators' candidates.

Per customer, the union of every generator's top candidates (:func:`top_candidates`) gets
features (:func:`candidate_features`: the generators' scores and ranks, joined with the
customers' and products' facts at the cutoff, :func:`cutoff_facts`, computed once for both
lists), and a gradient-boosted classifier (xgboost.spark)
predicts whether the customer buys the product in the next window; the candidates are ranked
by that probability. The standard two-stage design of large recommenders (Covington et al.,
"Deep Neural Networks for YouTube Recommendations", RecSys 2016): cheap generators for recall,
a learned model for the order.

The ranker is trained on windows before the evaluation window (features at a window's start,
label: bought in the window; see :mod:`.twostage`), measured on the evaluation window like
every generator; the measured ranker is the one that serves. Two rankers with the
same features: ``for_you`` over all candidates (rebuys allowed) and ``discover`` over the
products the customer never bought (the repeat generator proposes none of those).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.feature import SQLTransformer
from pyspark.ml.functions import vector_to_array
from pyspark.ml.recommendation import ALSModel
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from scipy.special import expit

from retailml import schemas as S
from retailml.settings import RecommendSettings
from retailml.stages.recommend.data import (
    POSITION,
    Indexers,
    persist,
    popularity,
    without_lineage,
)
from retailml.stages.recommend.generators import (
    ALS,
    GENERATORS,
    ITEM_KNN,
    MASKED_COLUMN,
    POPULAR,
    REPEAT,
    als_candidates,
    item_knn,
    item_neighbours,
    popular_candidates,
    purchase_days,
    rank_column,
    repeat,
    score_column,
    top_candidates,
)

if TYPE_CHECKING:
    from xgboost.spark import SparkXGBClassifierModel

FOR_YOU, DISCOVER = S.FOR_YOU, S.DISCOVER
LISTS = (FOR_YOU, DISCOVER)

LABEL = "label"
# Days a season lies back: the same window a year before.
YEAR = 364  # 52 weeks, so weekdays line up

# The features, besides each generator's score, relative score and rank.
PURCHASE_DAYS = "purchase_days"  # distinct days the customer bought the product
MEAN_GAP = "mean_gap"  # mean days between those days (0: bought on one day)
DAYS_SINCE = "days_since"  # days since the customer last bought it (-1: never)
DUE = "due"  # days_since / mean_gap (0 when bought on fewer than two days)
CUSTOMER_PRODUCTS = "customer_products"  # distinct products the customer bought
CUSTOMER_RECENCY = "customer_recency"  # days since the customer's last purchase
CUSTOMER_RECENT_DAYS = "customer_recent_days"  # purchase days in the last 90 days
RECENT_SHARE = "recent_share"  # share of the last window's buyers who bought the product
SEASON_SHARE = "season_share"  # the same share in the same window a year before
POPULARITY_RANK = "popularity_rank"  # position in the global popularity ranking
CATEGORY_SHARE = "category_share"  # the customer's share of purchase days in its category

FACTS = (
    PURCHASE_DAYS,
    MEAN_GAP,
    DAYS_SINCE,
    DUE,
    CUSTOMER_PRODUCTS,
    CUSTOMER_RECENCY,
    CUSTOMER_RECENT_DAYS,
    RECENT_SHARE,
    SEASON_SHARE,
    POPULARITY_RANK,
    CATEGORY_SHARE,
)


def relative_column(generator: str) -> str:
    return f"relative_{generator}"


FEATURES = (
    tuple(
        column
        for g in GENERATORS
        for column in (score_column(g), relative_column(g), rank_column(g))
    )
    + FACTS
)

_RECENT_DAYS = 90


@dataclass(frozen=True)
class CutoffFacts:
    """What the ranker's features know at a cutoff besides the generators' scores: per customer
    and product, per customer, per product, per customer and category (see
    :func:`cutoff_facts`). Computed once per cutoff and joined to both lists' candidates."""

    pairs: DataFrame  # customer_id, product_id, purchase_days, mean_gap, days_since, due
    customers: DataFrame  # customer_id, customer_products, customer_recency, …_recent_days
    products: DataFrame  # product_id, recent_share, season_share, popularity_rank (small)
    categories: DataFrame  # product_id, category
    category_shares: DataFrame  # customer_id, category, category_share


def cutoff_facts(
    days: DataFrame,
    customers: DataFrame,
    *,
    end: date,
    window_days: int,
    popular: DataFrame,
    categories: DataFrame,
    keep: list[DataFrame] | None = None,
) -> CutoffFacts:
    """The customers' and the products' facts at the cutoff ``end``.

    Args:
        days: :func:`purchase_days` before ``end``: all of ``customers``' and every
            customer's in the share windows (the products' shares count every buyer), as
            :func:`facts_days` keeps them.
        customers: ``customer_id`` of the customers whose candidates get features.
        window_days: The label window's length (the recent and seasonal shares use it too).
        popular: :func:`popularity` at ``end``.
        categories: ``product_id, category`` (null categories give a share of 0).
        keep: When given, the customer-sized facts are persisted into it (both lists read
            them).
    """
    theirs = days.join(customers.select(S.CUSTOMER_ID), S.CUSTOMER_ID, "left_semi")
    recent_start = end - timedelta(days=_RECENT_DAYS)
    per_customer = theirs.groupBy(S.CUSTOMER_ID).agg(
        F.countDistinct(S.PRODUCT_ID).alias(CUSTOMER_PRODUCTS),
        F.datediff(F.lit(end), F.max(S.EVENT_DATE)).alias(CUSTOMER_RECENCY),
        F.countDistinct(
            F.when(F.col(S.EVENT_DATE) >= F.lit(recent_start), F.col(S.EVENT_DATE))
        ).alias(CUSTOMER_RECENT_DAYS),
    )
    recent, season = (
        _buyer_share(days, start=start, end=stop, name=name)
        for name, (start, stop) in zip(
            (RECENT_SHARE, SEASON_SHARE), share_windows(end, window_days), strict=True
        )
    )
    per_product = recent.join(season, S.PRODUCT_ID, "full").join(
        popular.where(F.col(S.COUNTRY).isNull()).select(
            S.PRODUCT_ID, F.col(POSITION).alias(POPULARITY_RANK)
        ),
        S.PRODUCT_ID,
        "full",
    )
    facts = [_pair_facts(theirs, end=end), per_customer, per_product]
    facts.append(_category_share(theirs, categories))
    if keep is not None:
        facts = [persist(df, keep) for df in facts]
    pairs, per_customer, per_product, shares = facts
    return CutoffFacts(
        pairs=pairs,
        customers=per_customer,
        products=per_product,
        categories=categories,
        category_shares=shares,
    )


def candidate_features(
    candidates: DataFrame, facts: CutoffFacts, *, depth: int, never_bought: bool = False
) -> DataFrame:
    """The ranker's features of each candidate.

    Args:
        candidates: :func:`top_candidates`' output (generators missing from it get score 0
            and rank ``depth + 1``).
        facts: :func:`cutoff_facts` at the candidates' cutoff, for (at least) their customers.
        depth: Candidates per generator (the rank of a product a generator did not propose
            is ``depth + 1``).
        never_bought: The customers bought none of the candidates before the cutoff
            (discover's): their customer × product facts are those of a product never
            bought, without the join that would find none (a shuffle of every candidate).

    Returns:
        ``customer_id, product_id``, the generators' ranks (as :func:`top_candidates` names
        them) and every column of :data:`FEATURES`, without nulls.
    """
    for g in GENERATORS:
        if score_column(g) not in candidates.columns:
            candidates = candidates.withColumn(score_column(g), F.lit(0.0)).withColumn(
                rank_column(g), F.lit(depth + 1)
            )
    per_customer = Window.partitionBy(S.CUSTOMER_ID)
    for g in GENERATORS:
        best = F.max(score_column(g)).over(per_customer)
        candidates = candidates.withColumn(
            relative_column(g),
            F.when(best > 0, F.col(score_column(g)) / best).otherwise(F.lit(0.0)),
        )
    never: dict[str, bool | float | int | str]
    never = {PURCHASE_DAYS: 0, MEAN_GAP: 0.0, DAYS_SINCE: -1, DUE: 0.0}
    if never_bought:
        out = candidates.withColumns({name: F.lit(value) for name, value in never.items()})
    else:
        out = candidates.join(facts.pairs, [S.CUSTOMER_ID, S.PRODUCT_ID], "left")
    out = (
        out.join(facts.customers, S.CUSTOMER_ID, "left")
        .join(F.broadcast(facts.products), S.PRODUCT_ID, "left")
        .join(F.broadcast(facts.categories), S.PRODUCT_ID, "left")
        .join(facts.category_shares, [S.CUSTOMER_ID, S.CATEGORY], "left")
    )
    fill = {**never, CUSTOMER_PRODUCTS: 0, CUSTOMER_RECENCY: -1, CUSTOMER_RECENT_DAYS: 0}
    fill |= {RECENT_SHARE: 0.0, SEASON_SHARE: 0.0, CATEGORY_SHARE: 0.0}
    # A product nobody bought before the cutoff ranks after every product in the ranking.
    fill |= {POPULARITY_RANK: 1_000_000}
    columns: list[str | Column] = [S.CUSTOMER_ID, S.PRODUCT_ID]
    columns += [F.col(c).cast("double").alias(c) for c in FEATURES]
    return out.fillna(fill).select(*columns)


def _pair_facts(days: DataFrame, *, end: date) -> DataFrame:
    """Per customer and product: purchase days, mean gap, days since the last, and ``due``."""
    order = Window.partitionBy(S.CUSTOMER_ID, S.PRODUCT_ID).orderBy(S.EVENT_DATE)
    gap = F.datediff(F.col(S.EVENT_DATE), F.lag(S.EVENT_DATE).over(order))
    facts = (
        days.withColumn("_gap", gap)
        .groupBy(S.CUSTOMER_ID, S.PRODUCT_ID)
        .agg(
            F.count(F.lit(1)).alias(PURCHASE_DAYS),
            F.coalesce(F.avg("_gap"), F.lit(0.0)).alias(MEAN_GAP),
            F.datediff(F.lit(end), F.max(S.EVENT_DATE)).alias(DAYS_SINCE),
        )
    )
    due = F.when(F.col(MEAN_GAP) > 0, F.col(DAYS_SINCE) / F.col(MEAN_GAP)).otherwise(F.lit(0.0))
    return facts.withColumn(DUE, due)


def _within(start: date, end: date) -> Column:
    """The event date lies in ``[start, end)``."""
    return (F.col(S.EVENT_DATE) >= F.lit(start)) & (F.col(S.EVENT_DATE) < F.lit(end))


def share_windows(end: date, window_days: int) -> tuple[tuple[date, date], tuple[date, date]]:
    """The ``[start, end)`` windows of the products' buyer shares at the cutoff ``end``: the
    last ``window_days`` (recent) and the same days a year earlier (season)."""
    return (
        (end - timedelta(days=window_days), end),
        (end - timedelta(days=YEAR), end - timedelta(days=YEAR - window_days)),
    )


def facts_days(days: DataFrame, customers: DataFrame, *, end: date, window_days: int) -> DataFrame:
    """The rows :func:`cutoff_facts` and the repeat generator read for ``customers``: all of
    theirs, and every customer's in the share windows (:func:`share_windows`). Serving a few
    customers need not keep everyone's history.

    Args:
        days: :func:`purchase_days`, or the transactions they are made of (filtered before
            their distinct, so it shuffles only these rows).
        customers: ``customer_id``, one row each (a repeated id would repeat its rows);
            broadcast.
    """
    mine = customers.select(S.CUSTOMER_ID, F.lit(True).alias("_theirs"))
    in_window = F.lit(False)
    for start, stop in share_windows(end, window_days):
        in_window = in_window | _within(start, stop)
    return (
        days.join(F.broadcast(mine), S.CUSTOMER_ID, "left")
        .where(F.col("_theirs").isNotNull() | in_window)
        .drop("_theirs")
    )


def _buyer_share(days: DataFrame, *, start: date, end: date, name: str) -> DataFrame:
    """``product_id, name``: the share of the customers buying in ``[start, end)`` who bought
    the product (no rows when nobody bought then)."""
    window = days.where(_within(start, end))
    total = window.agg(F.countDistinct(S.CUSTOMER_ID).alias("_total"))
    return (
        window.groupBy(S.PRODUCT_ID)
        .agg(F.countDistinct(S.CUSTOMER_ID).alias("_buyers"))
        .crossJoin(total)
        .select(S.PRODUCT_ID, (F.col("_buyers") / F.col("_total")).alias(name))
    )


def _category_share(days: DataFrame, categories: DataFrame) -> DataFrame:
    """``customer_id, category, category_share``: the share of the customer's purchase days
    (of products with a category) that were in the category."""
    bought = days.join(F.broadcast(categories), S.PRODUCT_ID).where(F.col(S.CATEGORY).isNotNull())
    per = bought.groupBy(S.CUSTOMER_ID, S.CATEGORY).agg(F.count(F.lit(1)).alias("_n"))
    total = F.sum("_n").over(Window.partitionBy(S.CUSTOMER_ID))
    return per.select(S.CUSTOMER_ID, S.CATEGORY, (F.col("_n") / total).alias(CATEGORY_SHARE))


def labelled(features: DataFrame, window_purchases: DataFrame) -> DataFrame:
    """``features`` with :data:`LABEL` 1.0 where the customer bought the product in the window.

    Args:
        window_purchases: (customer_id, product_id) bought in the label window.
    """
    bought = window_purchases.select(S.CUSTOMER_ID, S.PRODUCT_ID).distinct()
    return features.join(
        bought.withColumn(LABEL, F.lit(1.0)), [S.CUSTOMER_ID, S.PRODUCT_ID], "left"
    ).fillna({LABEL: 0.0})


def ranker_estimator(*, max_depth: int, trees: int, learning_rate: float, seed: int) -> Pipeline:
    """xgboost.spark's classifier on the feature columns (binary logistic loss; one worker and
    no row subsampling, so the result depends neither on the partitioning nor on the seed).

    The columns go to xgboost as they are (its ``features_col`` as a list of names), not
    assembled into a vector: a vector column reaches the Python workers as one array per row,
    stacked row by row into a matrix (scoring 4M rows of 27 features: 42 s that way, 33 s
    from the columns, the same probabilities)."""
    from xgboost.spark import SparkXGBClassifier

    return Pipeline(
        stages=[
            SparkXGBClassifier(
                features_col=list(FEATURES),
                label_col=LABEL,
                num_workers=1,
                n_estimators=trees,
                max_depth=max_depth,
                learning_rate=learning_rate,
                # Leaves need this much weight: a month of a small shop has few purchases of
                # a product, and deeper splits on them did not generalise to the next month.
                min_child_weight=20.0,
                random_state=seed,
                verbose=False,
            ),
        ]
    )


FALLBACK_SCORE = "fallback_score"


def fallback_ranker() -> PipelineModel:
    """The ranker of a list without a single purchase to learn from (every label 0): ALS's
    relative score, then item-kNN's, then popularity's, as one fixed SQL expression (a
    ``SQLTransformer``, so it is saved and loaded like a fitted ranker)."""
    score = " + ".join(
        f"{weight} * {relative_column(g)}"
        for weight, g in ((1.0, ALS), (0.01, ITEM_KNN), (0.0001, POPULAR))
    )
    return PipelineModel(
        stages=[SQLTransformer(statement=f"SELECT *, {score} AS {FALLBACK_SCORE} FROM __THIS__")]
    )


def score_candidates(model: PipelineModel, features: DataFrame) -> DataFrame:
    """``features`` with the ranker's ``score``: its probability of a purchase, or the
    :func:`fallback_ranker`'s score.

    An xgboost ranker's probability is computed here from its booster, as its ``transform``
    computes it (the margin of the float32 features, then ``scipy.special.expit``), and only
    it: the ``transform`` also returns each row's raw prediction and both classes'
    probabilities as Python arrays that Spark turns into vectors, and reading one number out of
    them took scoring both lists' 5.6M candidates at M (two rounds, one session) from 41.6 and
    37.1 s to 13.3 and 11.1 s, every probability the same.
    """
    from xgboost.spark import SparkXGBClassifierModel

    stages = model.stages
    if len(stages) == 1 and isinstance(stages[0], SparkXGBClassifierModel):
        score = _probability(stages[0])
    else:
        features = model.transform(features)
        score = (
            vector_to_array(F.col("probability"))[1]
            if "probability" in features.columns
            else F.col(FALLBACK_SCORE)
        )
    keep = [S.CUSTOMER_ID, S.PRODUCT_ID, *(rank_column(g) for g in GENERATORS)]
    return features.select(*keep, score.alias(S.SCORE_VALUE))


def _probability(stage: SparkXGBClassifierModel) -> Column:
    """The xgboost classifier's probability of the positive class, as a column of its
    features (a pandas UDF over Arrow batches)."""
    booster = stage.get_booster()
    columns = list(stage.getOrDefault("features_cols"))
    missing = float(stage.getOrDefault("missing"))

    @F.pandas_udf("double")  # type: ignore[call-overload]
    def probability(batches: Iterator[pd.DataFrame]) -> Iterator[pd.Series]:
        for batch in batches:
            margins = booster.inplace_predict(
                batch, predict_type="margin", missing=missing, validate_features=False
            )
            yield pd.Series(expit(margins).astype(np.float64))

    return probability(F.struct(*(F.col(c).cast("float").alias(c) for c in columns)))


def top_scored(scored: DataFrame, *, k: int) -> DataFrame:
    """The ``k`` best of :func:`score_candidates`' rows per customer, ranked 1..k (product id
    on ties), with the generator that proposed each (the one that ranked it highest; the order
    of :data:`GENERATORS` on ties).

    Returns:
        ``customer_id, product_id, score, rank, source``.
    """
    order = Window.partitionBy(S.CUSTOMER_ID).orderBy(F.col(S.SCORE_VALUE).desc(), S.PRODUCT_ID)
    top = scored.withColumn(S.RANK, F.row_number().over(order)).where(F.col(S.RANK) <= k)
    best = F.least(*(F.col(rank_column(g)) for g in GENERATORS))
    source = F.coalesce(*(F.when(F.col(rank_column(g)) == best, F.lit(g)) for g in GENERATORS))
    return top.select(
        S.CUSTOMER_ID,
        S.PRODUCT_ID,
        S.SCORE_VALUE,
        F.col(S.RANK).cast("int"),
        source.alias(S.SOURCE),
    )


def rank_candidates(model: PipelineModel, features: DataFrame, *, k: int) -> DataFrame:
    """The ``k`` most likely purchases per customer (:func:`score_candidates`, then
    :func:`top_scored`).

    Returns:
        ``customer_id, product_id, score, rank, source``.
    """
    return top_scored(score_candidates(model, features), k=k)


@dataclass(frozen=True)
class Candidates:
    """Both lists' candidates with their features, at one cutoff, for some customers."""

    cutoff: date
    for_you: DataFrame
    discover: DataFrame
    # generator → customer_id, product_id, score (for_you); item-kNN's holds only each
    # customer's max(candidates, k) best and best never bought (see item_knn)
    generated: dict[str, DataFrame]
    bought: DataFrame  # (customer_id, product_id) the customers bought before the cutoff
    popular: DataFrame  # the popularity ranking at the cutoff

    @property
    def lists(self) -> dict[str, DataFrame]:
        return {FOR_YOU: self.for_you, DISCOVER: self.discover}


def neighbours_at(
    days: DataFrame,
    *,
    end: date,
    cfg: RecommendSettings,
    keep: list[DataFrame],
    items: DataFrame | None = None,
) -> DataFrame:
    """:func:`item_neighbours` at the cutoff ``end`` with the ``recommend.knn_*`` settings,
    persisted into ``keep``.

    Args:
        days: :func:`purchase_days` before ``end``.
        items: ``product_id`` of the products whose neighbours are wanted (None: every
            product).

    Returns:
        ``item, neighbour, similarity``.
    """
    found = item_neighbours(
        days,
        end=end,
        lookback_days=cfg.knn_lookback_days,
        neighbours=cfg.knn_neighbours,
        recent_products=cfg.knn_recent_products,
        weighting=cfg.knn_weighting,
        items=items,
        keep=keep,
    )
    return persist(found, keep)


def candidates_at(
    transactions: DataFrame,
    customers: DataFrame,
    *,
    end: date,
    als_model: ALSModel,
    indexers: Indexers,
    half_life: float,
    cfg: RecommendSettings,
    categories: DataFrame,
    keep: list[DataFrame],
    popular: DataFrame | None = None,
    days: DataFrame | None = None,
    neighbours: DataFrame | None = None,
    materialize: bool = True,
) -> Candidates:
    """Every generator at the cutoff ``end`` for ``customers``, and both lists' candidates with
    the ranker's features (persisted into ``keep``).

    Args:
        transactions: silver.transactions (only lines before ``end`` are read).
        customers: ``customer_id`` of whom to generate for (one row each).
        als_model: ALS fitted on the interactions before ``end``.
        half_life: The repeat generator's half-life (days).
        categories: ``product_id, category``.
        popular: :func:`popularity` at ``end`` when the caller has it already.
        days: :func:`purchase_days` before ``end`` when the caller has them already.
        neighbours: :func:`item_neighbours` (``item, neighbour, similarity``) to use instead
            of those at ``end``: a served version's, computed at its first serve (see
            :func:`neighbours_at`); a product sold only since then has none.
        materialize: Compute the features now, kept without their lineage, for callers that
            read them many times (training, measuring); False: lazy, for one read (serving).
    """
    who = customers.select(S.CUSTOMER_ID)
    if days is None:
        lines = transactions
        if neighbours is not None:
            # No neighbours to count: only the lines the facts and the repeat generator read.
            lines = facts_days(transactions, who, end=end, window_days=cfg.eval_days)
        days = persist(purchase_days(lines, end=end), keep)
    repeats = repeat(days, end=end, half_life=half_life)
    mine = persist(repeats.join(who, S.CUSTOMER_ID, "left_semi"), keep)
    # What they bought: the repeat generator's products are exactly those (no second read of
    # the transactions).
    bought = mine.select(S.CUSTOMER_ID, S.PRODUCT_ID)
    if neighbours is None:
        # Only the neighbours of products these customers bought are counted.
        items = mine.select(S.PRODUCT_ID).distinct()
        neighbours = neighbours_at(days, end=end, cfg=cfg, items=items, keep=keep)
    if popular is None:
        popular = persist(
            popularity(transactions, end=end, days=cfg.popular_days, min_country_products=cfg.k),
            keep,
        )
    depth = cfg.candidates
    # Deep enough for the candidates and for item-kNN's own top k, measured alone.
    knn = persist(item_knn(mine, neighbours, depth=max(depth, cfg.k)), keep)
    als = persist(als_candidates(als_model, indexers, who, depth=depth, exclude=bought), keep)

    def of_als(masked: bool) -> DataFrame:
        return als.where(F.col(MASKED_COLUMN) == F.lit(masked)).drop(MASKED_COLUMN)

    generated = {
        REPEAT: mine,
        ITEM_KNN: knn,
        ALS: of_als(False),
        POPULAR: popular_candidates(who, popular, depth=depth),
    }
    unbought = {
        ITEM_KNN: knn,
        ALS: of_als(True),
        POPULAR: popular_candidates(who, popular, depth=2 * depth),
    }

    # The facts once for both lists.
    facts = cutoff_facts(
        days,
        who,
        end=end,
        window_days=cfg.eval_days,
        popular=popular,
        categories=categories,
        keep=keep,
    )

    # Materialized, computed now and kept without their lineage: the plans of everything read
    # from them (the rankers' training unions, the measured lists) stay small; with the
    # lineage, the plan string of one metrics pass ran a 1 GiB driver out of memory.
    def features(frame: DataFrame, *, never_bought: bool) -> DataFrame:
        found = candidate_features(frame, facts, depth=depth, never_bought=never_bought)
        return without_lineage(found) if materialize else found

    return Candidates(
        cutoff=end,
        for_you=features(top_candidates(generated, depth=depth), never_bought=False),
        discover=features(top_candidates(unbought, depth=depth, exclude=bought), never_bought=True),
        generated=generated,
        bought=bought,
        popular=popular,
    )
