"""Serving: every customer's ``k`` recommendations — the ALS rows first, then the popularity
fill — and the ``gold.recommendations`` rows."""

from __future__ import annotations

from datetime import date

from pyspark.ml import PipelineModel
from pyspark.ml.feature import StringIndexerModel
from pyspark.ml.recommendation import ALSModel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from retailml import schemas as S
from retailml.errors import RetailmlError
from retailml.stages.recommend.als import als_top_k
from retailml.stages.recommend.data import POSITION, Indexers, persist

# At most this many candidates beyond k per customer, to survive excluding bought products.
MAX_EXTRA_CANDIDATES = 200

_TAKEN = "_taken"
_SEEN = "_seen"
_NATIONAL = "_national"
_WORLD = "_world"


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
        best, popular = persist(best, keep), persist(popular, keep)
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
