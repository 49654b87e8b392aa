"""Serving: every customer's two lists of ``k`` recommendations — the ranker's rows first, then
the popularity fill — and the ``gold.recommendations`` rows."""

from __future__ import annotations

from datetime import date
from typing import cast

from pyspark.ml import PipelineModel
from pyspark.ml.feature import StringIndexerModel
from pyspark.ml.recommendation import ALSModel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from retailml import schemas as S
from retailml.errors import RetailmlError
from retailml.settings import RecommendSettings
from retailml.stages.recommend.data import POSITION, Indexers, persist
from retailml.stages.recommend.ranker import DISCOVER, FOR_YOU, candidates_at, rank_candidates

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
    ranked: DataFrame | None = None,
    bought: DataFrame | None = None,
    max_extra: int = MAX_EXTRA_CANDIDATES,
) -> DataFrame:
    """Exactly ``k`` recommendations for each customer: a model's first, then the popularity
    fill.

    Works for any list of customers, including ones never seen before (they get ``k`` popular
    products, their country's first when it has a ranking).

    Args:
        customers: ``customer_id`` and optionally ``country`` (one row per customer).
        popular: The output of :func:`popularity`.
        k: Recommendations per customer.
        ranked: A model's recommendations ``customer_id, product_id, score, rank`` and
            optionally ``source`` (``als`` when absent), ranked 1..n without gaps per
            customer and already without excluded products, as :func:`top_k` and
            :func:`ranked` return them; ranks beyond ``k`` and customers not in
            ``customers`` are ignored.
        bought: (customer_id, product_id) pairs the fill must skip, or None to allow them.
        max_extra: Cap on how deep into the rankings a customer who bought many of the
            popular products is filled from.

    Returns:
        ``customer_id, rank, product_id, score, source``: the model's rows first (by their
        rank), then popular rows (country ranking before global), ranked 1..k without gaps.
    """
    people = customers.select(
        S.CUSTOMER_ID,
        F.col(S.COUNTRY) if S.COUNTRY in customers.columns else F.lit(None).cast("string"),
    ).toDF(S.CUSTOMER_ID, S.COUNTRY)

    # Per customer: how many model rows they have and which products those are, and what they
    # bought — as arrays, so the fill is a walk down one list per customer, with no row per
    # candidate and no shuffle beyond these two groupings.
    need = people
    model_rows = None
    if ranked is not None:
        source = F.col(S.SOURCE) if S.SOURCE in ranked.columns else F.lit(S.SOURCE_ALS)
        model_rows = (
            ranked.where(F.col(S.RANK) <= k)
            .join(people.select(S.CUSTOMER_ID), S.CUSTOMER_ID, "left_semi")
            .select(S.CUSTOMER_ID, S.RANK, S.PRODUCT_ID, S.SCORE_VALUE, source.alias(S.SOURCE))
        )
        taken = model_rows.groupBy(S.CUSTOMER_ID).agg(F.collect_list(S.PRODUCT_ID).alias(_TAKEN))
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
    # Model rows hold ranks 1..taken, so the fill continues at taken + 1: no second ranking.
    fill = picks.select(
        S.CUSTOMER_ID,
        (F.col("_n") + F.col("_pos") + 1).cast("int").alias(S.RANK),
        F.col(f"_e.{S.PRODUCT_ID}").alias(S.PRODUCT_ID),
        F.col(f"_e.{S.SCORE_VALUE}").alias(S.SCORE_VALUE),
        F.lit(S.SOURCE_POPULAR).alias(S.SOURCE),
    )
    if model_rows is None:
        return fill
    return model_rows.select(
        S.CUSTOMER_ID,
        F.col(S.RANK).cast("int").alias(S.RANK),
        S.PRODUCT_ID,
        S.SCORE_VALUE,
        S.SOURCE,
    ).unionByName(fill)


def gold_rows(
    recommendations: DataFrame, products: DataFrame, *, as_of: date, model_version: str | None
) -> DataFrame:
    """``recommendations`` in the ``gold.recommendations`` schema, with product names."""
    names = products.select(S.PRODUCT_ID, S.PRODUCT_NAME)
    return recommendations.join(F.broadcast(names), S.PRODUCT_ID, "left").select(
        S.CUSTOMER_ID,
        S.LIST,
        S.RANK,
        S.PRODUCT_ID,
        S.PRODUCT_NAME,
        S.SCORE_VALUE,
        S.SOURCE,
        F.lit(model_version).cast("string").alias(S.MODEL_VERSION),
        F.lit(as_of).cast("date").alias(S.AS_OF_DATE),
        F.lit(as_of).cast("date").alias(S.COMPUTED_AS_OF),
    )


def serve(
    model: PipelineModel,
    transactions: DataFrame,
    customers: DataFrame,
    *,
    as_of: date,
    half_life: float,
    cfg: RecommendSettings,
    categories: DataFrame,
    keep: list[DataFrame],
    neighbours: DataFrame | None = None,
    days: DataFrame | None = None,
) -> DataFrame:
    """Both lists for every customer from a registered two-stage recommender, each filled from
    the popularity ranking to exactly ``k`` rows.

    The generators run at ``as_of`` on all history (ALS from the model; item-kNN from
    ``neighbours`` when given, which may be of an earlier date), each list's ranker orders its
    candidates, and :func:`recommend_customers` fills: ``for_you`` may hold products
    the customer bought, ``discover`` never does.

    Args:
        model: The registered ``PipelineModel`` (see :func:`unpack`).
        transactions: silver.transactions.
        customers: ``customer_id, country`` (one row each).
        as_of: The day after the last event.
        half_life: The repeat generator's half-life the model was tuned with (days).
        categories: ``product_id, category``.
        keep: Persisted frames are added to it; the caller unpersists them after its action.
        neighbours: Item-kNN's neighbours the version serves with (see
            :func:`~retailml.stages.recommend.ranker.neighbours_at`); None: those of the
            customers' products at ``as_of``.
        days: :func:`~retailml.stages.recommend.generators.purchase_days` before ``as_of``
            when the caller has them.

    Returns:
        ``customer_id, list, rank, product_id, score, source``: ``k`` rows per customer and
        list (fewer only from a catalogue that small).
    """
    indexers, als_model, rankers = unpack(model)
    k = cfg.k
    found = candidates_at(
        transactions,
        customers,
        end=as_of,
        als_model=als_model,
        indexers=indexers,
        half_life=half_life,
        cfg=cfg,
        categories=categories,
        keep=keep,
        neighbours=neighbours,
        days=days,
        materialize=False,
    )
    lists = []
    # The generators' popularity ranking and bought pairs (everything before as_of) serve the
    # fill too.
    for name, frame, exclude in (
        (FOR_YOU, found.for_you, None),
        (DISCOVER, found.discover, found.bought),
    ):
        best = persist(rank_candidates(rankers[name], frame, k=k), keep)
        rows = recommend_customers(customers, found.popular, k=k, ranked=best, bought=exclude)
        lists.append(rows.withColumn(S.LIST, F.lit(name)))
    return lists[0].unionByName(lists[1])


def unpack(model: PipelineModel) -> tuple[Indexers, ALSModel, dict[str, PipelineModel]]:
    """The indexers, the ALS model and the rankers (by list) of a registered recommender:
    ``PipelineModel(customer StringIndexerModel, product StringIndexerModel, ALSModel,
    for_you ranker PipelineModel, discover ranker PipelineModel)``.

    Raises:
        RetailmlError: The model is not one this stage registered (a champion registered by
            an earlier version of retailml is never kept; see the task's gate).
    """
    stages = list(model.stages)
    kinds = (StringIndexerModel, StringIndexerModel, ALSModel, PipelineModel, PipelineModel)
    if len(stages) != len(kinds) or not all(
        isinstance(stage, kind) for stage, kind in zip(stages, kinds, strict=True)
    ):
        found = ", ".join(type(s).__name__ for s in stages)
        raise RetailmlError(
            "the registered recommender is not StringIndexer, StringIndexer, ALS, for_you "
            f"ranker, discover ranker ({found})"
        )
    indexers = Indexers(cast(StringIndexerModel, stages[0]), cast(StringIndexerModel, stages[1]))
    rankers = {FOR_YOU: cast(PipelineModel, stages[3]), DISCOVER: cast(PipelineModel, stages[4])}
    return indexers, cast(ALSModel, stages[2]), rankers


def pack(
    indexers: Indexers, als_model: ALSModel, rankers: dict[str, PipelineModel]
) -> PipelineModel:
    """The registered recommender (the inverse of :func:`unpack`)."""
    return PipelineModel(
        stages=[indexers.user, indexers.item, als_model, rankers[FOR_YOU], rankers[DISCOVER]]
    )
