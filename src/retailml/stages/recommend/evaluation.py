"""Evaluation on time and tuning: ALS's grid and the popularity baseline, measured against what
customers bought in the window after the evaluation cutoff.

The evaluation frames (:class:`EvaluationSet`) do not depend on the model, so they are computed
and persisted once; every grid point is fitted on the interactions before the cutoff and
measured against them in both modes (``all``: against everything bought in the window, repeat
purchases included; ``new``: against products new to the customer, with everything bought
before excluded). Grid points run ``parallelism`` at a time in threads that inherit the task's
Spark job tags, and are logged to MLflow in grid order afterwards.
"""

from __future__ import annotations

import functools
import itertools
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date
from typing import TypeVar

import mlflow
from pyspark import inheritable_thread_target
from pyspark.ml.recommendation import ALSModel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from retailml import schemas as S
from retailml.errors import RetailmlError
from retailml.ml import names as N
from retailml.ml.names import ALL, ALS_MODEL, MODES, NEW, POPULAR_MODEL
from retailml.ml.ranking import RankingMetrics, ranking_metrics_by
from retailml.ml.sample import customer_share
from retailml.settings import RecommendSettings
from retailml.stages.recommend.als import (
    TIE_MARGIN,
    als_estimator,
    audience,
    scored_candidates,
    top_k_from_candidates,
)
from retailml.stages.recommend.data import (
    Indexers,
    fit_indexers,
    interactions,
    persist,
    popularity,
    products_only,
    purchased,
    ratings,
    without_lineage,
)
from retailml.stages.recommend.serving import recommend_customers

MODE_COLUMN = "_mode"  # the mode of a row of EvaluationSet.relevant
_GROUP = "_group"
T = TypeVar("T")


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
class EvaluationSet:
    """What every grid point and the baseline are measured with (persisted once).

    Attributes:
        cutoff: The evaluation cutoff: models see the interactions before it.
        history: Every interaction (all customers, all time): the final model's input.
        indexers: Customer and product indices from ``history``.
        train: The indexed ratings before the cutoff (of the tuning sample).
        prior: What each customer bought before the cutoff (of the tuning sample).
        relevant: The window's purchases of customers with earlier ones, by mode.
        customers: Those customers, with their country.
        who: Those customers with what they bought before (ALS's audience).
        popular: The popularity ranking at the cutoff.
        repeat_share: Share of the window's customer × product purchases bought before.
        catalog_size: Products bought before the cutoff (for coverage).
        sample: Share of the customers tuned on (1.0: everyone).
        seed: The seed of the sample's hash of the customer id.
    """

    cutoff: date
    history: DataFrame
    indexers: Indexers
    train: DataFrame
    prior: DataFrame
    relevant: DataFrame
    customers: DataFrame
    who: DataFrame
    popular: DataFrame
    repeat_share: float
    catalog_size: int
    sample: float
    seed: int

    @property
    def measured_on(self) -> str:
        """Which customers the figures are measured on: ``all``, or the sample's share and
        seed (figures on different customers are different measurements)."""
        return "all" if self.sample >= 1.0 else f"{self.sample:.6f} seed {self.seed}"


def evaluation_set(
    transactions: DataFrame,
    customers: DataFrame,
    *,
    cutoff: date,
    k: int,
    popular_days: int,
    tune_max_customers: int,
    seed: int,
    keep: list[DataFrame],
) -> EvaluationSet:
    """The frames of :class:`EvaluationSet`, persisted into ``keep``.

    Above ``tune_max_customers`` buyers, the grid is tuned and evaluated on a fixed sample of
    the customers (all their rows; a hash of the id and ``seed``); the final model is fitted
    on everyone.

    Raises:
        RetailmlError: No purchase by a known customer before the cutoff.
    """
    history = persist(interactions(transactions), keep)
    before = transactions.where(F.col(S.EVENT_DATE) < F.lit(cutoff))
    # Before the indexers, so an empty history is a clear error, not StringIndexer's.
    if interactions(before).isEmpty():
        raise RetailmlError(
            f"no purchases by known customers before the evaluation cutoff {cutoff}; ingest "
            f"more history or shorten recommend.eval_days"
        )
    indexers = fit_indexers(history)
    # A count in Spark: the indexer's labels would bring every customer id to the driver.
    buyers = history.select(S.CUSTOMER_ID).distinct().count()
    sample = min(1.0, tune_max_customers / max(buyers, 1))

    def tuning(df: DataFrame) -> DataFrame:
        return df if sample >= 1.0 else df.where(customer_share(seed) < sample)

    train = without_lineage(ratings(indexers, tuning(interactions(before))))
    prior = persist(purchased(before), keep)
    prior_tuned = prior if sample >= 1.0 else persist(tuning(prior), keep)
    window = purchased(transactions.where(F.col(S.EVENT_DATE) >= F.lit(cutoff)))
    # Evaluate the customers with history: a customer without any is the fallback's job.
    relevant_all = persist(
        tuning(window).join(
            prior_tuned.select(S.CUSTOMER_ID).distinct(), S.CUSTOMER_ID, "left_semi"
        ),
        keep,
    )
    relevant = persist(
        _with_mode(
            {
                ALL: relevant_all,
                NEW: relevant_all.join(prior_tuned, [S.CUSTOMER_ID, S.PRODUCT_ID], "left_anti"),
            }
        ),
        keep,
    )
    evaluated = persist(
        relevant_all.select(S.CUSTOMER_ID).distinct().join(customers, S.CUSTOMER_ID, "left"),
        keep,
    )
    # One pass for the bounded facts of the evaluation.
    repeat = (
        window.join(prior.withColumn("_seen", F.lit(1)), [S.CUSTOMER_ID, S.PRODUCT_ID], "left")
        .agg(F.count(F.lit(1)).alias("pairs"), F.count("_seen").alias("repeats"))
        .first()
    )
    pairs, repeats = (int(repeat["pairs"]), int(repeat["repeats"])) if repeat else (0, 0)
    bought_before = products_only(before).where(F.col(S.EVENT_TYPE) == S.PURCHASE)
    return EvaluationSet(
        cutoff=cutoff,
        history=history,
        indexers=indexers,
        train=train,
        prior=prior_tuned,
        relevant=relevant,
        customers=evaluated,
        who=without_lineage(audience(indexers, evaluated, exclude=prior_tuned)),
        popular=persist(
            popularity(before, end=cutoff, days=popular_days, min_country_products=k), keep
        ),
        repeat_share=repeats / pairs if pairs else 0.0,
        catalog_size=max(bought_before.select(S.PRODUCT_ID).distinct().count(), 1),
        sample=sample,
        seed=seed,
    )


@dataclass(frozen=True)
class Tuning:
    """The grid's outcome: every point, the best and its model (fitted on ``train``, before
    the cutoff), and each model's metrics per mode."""

    grid: list[GridPoint]
    best: GridPoint
    best_model: ALSModel
    metrics: dict[tuple[str, str], RankingMetrics]  # (model, mode) → metrics
    seconds: float


def tune(
    data: EvaluationSet,
    spark: SparkSession,
    *,
    cfg: RecommendSettings,
    tuned_mode: str,
    seed: int,
    blocks: int,
) -> Tuning:
    """Measure the popularity baseline and every grid point (logged as nested MLflow runs of
    the active run, in grid order), and pick the best on NDCG@k of ``tuned_mode``."""
    started = time.monotonic()
    k = cfg.k
    points = list(itertools.product(cfg.ranks, cfg.reg_params, cfg.alphas))

    def popular_baseline() -> _Measured:
        recommended = {
            ALL: recommend_customers(data.customers, data.popular, k=k),
            NEW: recommend_customers(data.customers, data.popular, k=k, bought=data.prior),
        }
        found = metrics_by_mode(recommended, data.relevant, k=k, catalog_size=data.catalog_size)
        return _Measured(found, 0.0, 0.0, None)

    measure = functools.partial(
        _measure_point, data=data, k=k, max_iter=cfg.max_iter, seed=seed, blocks=blocks
    )
    # The baseline first: it needs no ALS model, so it runs beside the first fit.
    jobs: list[Callable[[], _Measured]] = [
        popular_baseline,
        *(functools.partial(measure, p) for p in points),
    ]
    done = in_parallel(jobs, spark, parallelism=cfg.parallelism)
    baseline, measured = done[0].metrics, done[1:]
    grid = [_log_point(p, m, k=k) for p, m in zip(points, measured, strict=True)]
    # max keeps the first of equal points, so the choice is reproducible.
    at = max(range(len(grid)), key=lambda i: grid[i].metrics[tuned_mode].ndcg_at_k)
    best, best_model = grid[at], measured[at].model
    assert best_model is not None  # every grid point's job returns its model
    metrics = {(ALS_MODEL, mode): best.metrics[mode] for mode in MODES} | {
        (POPULAR_MODEL, mode): baseline[mode] for mode in MODES
    }
    return Tuning(grid, best, best_model, metrics, time.monotonic() - started)


def _with_mode(frames: dict[str, DataFrame]) -> DataFrame:
    """One frame with a mode column, so both modes are measured in one pass."""
    tagged = [df.withColumn(MODE_COLUMN, F.lit(mode)) for mode, df in frames.items()]
    out = tagged[0]
    for df in tagged[1:]:
        out = out.unionByName(df)
    return out


def metrics_by_mode(
    recommended: dict[str, DataFrame], relevant: DataFrame, *, k: int, catalog_size: int
) -> dict[str, RankingMetrics]:
    """Ranked lists by mode (``customer_id, product_id, rank``) → their metrics by mode,
    against :attr:`EvaluationSet.relevant` (a mode without rows gets zeros)."""
    found = metrics_of(
        {("", mode): df for mode, df in recommended.items()},
        relevant,
        k=k,
        catalog_size=catalog_size,
    )
    return {mode: m for (_, mode), m in found.items()}


def metrics_of(
    recommended: dict[tuple[str, str], DataFrame],
    relevant: DataFrame,
    *,
    k: int,
    catalog_size: int,
) -> dict[tuple[str, str], RankingMetrics]:
    """Several models' ranked lists, by ``(model, mode)``, measured in one pass against
    :attr:`EvaluationSet.relevant` (each list against its mode's truth; a list without rows
    gets zeros)."""
    group = {key: f"{key[0]}|{key[1]}" for key in recommended}
    lists = [
        df.select(S.CUSTOMER_ID, S.PRODUCT_ID, S.RANK).withColumn(_GROUP, F.lit(group[key]))
        for key, df in recommended.items()
    ]
    models = sorted({model for model, _ in recommended})
    truth = relevant.select(
        S.CUSTOMER_ID,
        S.PRODUCT_ID,
        MODE_COLUMN,
        F.explode(F.array(*(F.lit(m) for m in models))).alias("_model"),
    ).select(
        S.CUSTOMER_ID,
        S.PRODUCT_ID,
        F.concat(F.col("_model"), F.lit("|"), F.col(MODE_COLUMN)).alias(_GROUP),
    )
    found = ranking_metrics_by(
        functools.reduce(DataFrame.unionByName, lists),
        truth,
        group_col=_GROUP,
        k=k,
        catalog_size=catalog_size,
    )
    empty = RankingMetrics(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0)
    return {key: found.get(group[key], empty) for key in recommended}


@dataclass(frozen=True)
class _Measured:
    metrics: dict[str, RankingMetrics]  # by mode
    fit_seconds: float
    eval_seconds: float
    model: ALSModel | None  # None for the popularity baseline


def _measure_point(
    params: tuple[int, float, float],
    *,
    data: EvaluationSet,
    k: int,
    max_iter: int,
    seed: int,
    blocks: int,
) -> _Measured:
    """Fit one grid point and measure it in both modes (no MLflow: may run in a thread)."""
    rank, reg_param, alpha = params
    started = time.monotonic()
    model = als_estimator(
        rank=rank, reg_param=reg_param, alpha=alpha, max_iter=max_iter, seed=seed, blocks=blocks
    ).fit(data.train)
    fit_seconds = time.monotonic() - started
    kept: list[DataFrame] = []
    try:
        # Both modes from one scoring pass, persisted: the metrics read it twice.
        candidates = persist(
            scored_candidates(model, data.who, depth=k + TIE_MARGIN, masked=(False, True)), kept
        )
        recommended = {
            ALL: top_k_from_candidates(candidates, data.indexers, k=k, masked=False),
            NEW: top_k_from_candidates(candidates, data.indexers, k=k),
        }
        metrics = metrics_by_mode(recommended, data.relevant, k=k, catalog_size=data.catalog_size)
    finally:
        for df in kept:
            df.unpersist()
    return _Measured(metrics, fit_seconds, time.monotonic() - started - fit_seconds, model)


def in_parallel(
    jobs: Sequence[Callable[[], T]], spark: SparkSession, *, parallelism: int
) -> list[T]:
    """Every job's result, in order, ``parallelism`` jobs at a time. The threads inherit the
    session's job tags (the workflow's per-task tag, by which a task's jobs are found and
    cancelled)."""
    if parallelism <= 1 or len(jobs) <= 1:
        return [job() for job in jobs]

    def call(job: Callable[[], T]) -> T:
        return job()

    with ThreadPoolExecutor(max_workers=min(parallelism, len(jobs))) as pool:
        return list(pool.map(inheritable_thread_target(spark)(call), jobs))


def _log_point(params: tuple[int, float, float], measured: _Measured, *, k: int) -> GridPoint:
    """A nested MLflow run for the grid point, under the active run."""
    rank, reg_param, alpha = params
    name = f"rank={rank} reg={reg_param:g} alpha={alpha:g}"
    with mlflow.start_run(run_name=name, nested=True) as run:
        mlflow.log_params({"rank": rank, "reg_param": reg_param, "alpha": alpha, N.K: k})
        mlflow.log_metrics(
            {
                **measured.metrics[ALL].as_dict(N.ranking_prefix(ALS_MODEL, ALL)),
                **measured.metrics[NEW].as_dict(N.ranking_prefix(ALS_MODEL, NEW)),
                "fit_seconds": measured.fit_seconds,
                "eval_seconds": measured.eval_seconds,
            }
        )
    return GridPoint(
        rank, reg_param, alpha, measured.metrics, measured.fit_seconds, run.info.run_id
    )
