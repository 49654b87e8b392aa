r"""Training and measuring the two-stage recommender on time: the generators at a cutoff, the
repeat half-life, the rankers fitted on the window before the evaluation window and measured on
it; the measured rankers are the ones that serve.

Windows (``W = eval_days``; ``E`` the evaluation cutoff, ``as_of`` the day after the last event;
``n = ranker_windows``)::

    history | E - nW ... | ... | E - 2W ... | E - W ... | E ... evaluation window | as_of
              \_________ the rankers' training windows ______/

The generators are computed at each training window's start for the customers who bought in
it (and before it), and at ``E`` for the evaluated customers; ALS is refitted at each
window's start with the tuned grid point (at ``E`` the tuning's own model serves). Windows are
added, up to ``ranker_windows``, while the rankers have fewer than half of
``ranker_max_customers`` customers to learn from, and at most that many are kept (a fixed hash
sample of the last window's when it has more): one month of a small shop is a small sample —
on the default data the xgboost seed alone moved one window's NDCG@5 by ±0.005 — while each
window costs a cutoff's generators, ALS refit and features whatever its customers (about 70 s
at M). At M one month brings 18,276 of the tuning sample's customers: topping them up to
20,000 took a second window, 70 s for 1,724 customers.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta

from pyspark.ml import PipelineModel
from pyspark.ml.recommendation import ALSModel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from retailml import schemas as S
from retailml.errors import RetailmlError
from retailml.ml.names import ALL, NEW
from retailml.ml.ranking import RankingMetrics
from retailml.ml.sample import customer_share
from retailml.settings import RecommendSettings
from retailml.stages.recommend.als import als_estimator, top_k
from retailml.stages.recommend.data import (
    Indexers,
    interactions,
    persist,
    ratings,
    without_lineage,
)
from retailml.stages.recommend.evaluation import MODE_COLUMN, EvaluationSet, metrics_of
from retailml.stages.recommend.generators import ITEM_KNN, REPEAT, repeat
from retailml.stages.recommend.ranker import (
    DISCOVER,
    FOR_YOU,
    LABEL,
    Candidates,
    candidates_at,
    fallback_ranker,
    labelled,
    ranker_estimator,
    score_candidates,
    top_scored,
)


def fit_als_before(
    transactions: DataFrame,
    indexers: Indexers,
    *,
    end: date,
    params: dict[str, float],
    cfg: RecommendSettings,
    seed: int,
    blocks: int,
    sample: float,
) -> ALSModel:
    """ALS with the tuned parameters, fitted on the interactions before ``end`` (of the tuning
    sample, as the grid was)."""
    before = interactions(transactions.where(F.col(S.EVENT_DATE) < F.lit(end)))
    if sample < 1.0:
        before = before.where(customer_share(seed) < sample)
    estimator = als_estimator(
        rank=int(params["rank"]),
        reg_param=params["reg_param"],
        alpha=params["alpha"],
        max_iter=cfg.max_iter,
        seed=seed,
        blocks=blocks,
    )
    return estimator.fit(without_lineage(ratings(indexers, before)))


@dataclass(frozen=True)
class TwoStage:
    """The two-stage recommender's evaluation and its serving rankers.

    Attributes:
        half_life: The tuned repeat half-life (days).
        half_lives: NDCG@k (all products) of each half-life tried.
        metrics: ``(model, mode) → metrics`` of ``repeat``, ``item_knn``, ``for_you``,
            ``discover`` on the evaluation window.
        rankers: The rankers, by list (measured on the evaluation window; they serve).
        windows: Training windows the rankers learned from.
        learners: Customers in them (a customer of two windows counts twice).
        positives: Labelled purchases among the training candidates, by list.
        rows: Training rows, by list.
        candidate_recall: Share of the window's purchases among the evaluation candidates
            (``all`` for for_you, ``new`` for discover).
        seconds: Wall time of the whole.
    """

    half_life: float
    half_lives: dict[float, float]
    metrics: dict[tuple[str, str], RankingMetrics]
    rankers: dict[str, PipelineModel]
    windows: int
    learners: int
    positives: dict[str, int]
    rows: dict[str, int]
    candidate_recall: dict[str, float]
    seconds: float


def train_two_stage(
    transactions: DataFrame,
    data: EvaluationSet,
    *,
    als_params: dict[str, float],
    eval_als: ALSModel,
    cfg: RecommendSettings,
    seed: int,
    blocks: int,
    categories: DataFrame,
    keep: list[DataFrame],
    later_days: DataFrame,
) -> TwoStage:
    """Tune the repeat half-life, fit both rankers on the window before the evaluation window,
    and measure every generator and both rankers on the evaluation window.

    Args:
        transactions: silver.transactions.
        data: The evaluation set (its customers, what they bought before, the window's truth).
        als_params: The tuned ALS grid point (refitted before each training window).
        eval_als: The tuned grid point's model, fitted before the evaluation cutoff (the
            tuning's own, on the same rows a refit would read: the ALS figures reported are
            this model's).
        categories: ``product_id, category``.
        keep: Persisted frames are added to it; the caller unpersists them.
        later_days: :func:`purchase_days` before the evaluation cutoff or later (as_of, which
            serving reads too): the evaluation cutoff's are a filter of them, not another pass
            over the transactions.
    """
    started = time.monotonic()
    k, eval_cutoff, prior = cfg.k, data.cutoff, data.prior
    window = timedelta(days=cfg.eval_days)

    def measure(
        recommended: dict[tuple[str, str], DataFrame],
    ) -> dict[tuple[str, str], RankingMetrics]:
        return metrics_of(recommended, data.relevant, k=k, catalog_size=data.catalog_size)

    def at(
        end: date,
        who: DataFrame,
        half_life: float,
        popular: DataFrame | None = None,
        als_model: ALSModel | None = None,
        days: DataFrame | None = None,
    ) -> Candidates:
        if als_model is None:
            als_model = fit_als_before(
                transactions, data.indexers, end=end, params=als_params, cfg=cfg, seed=seed,
                blocks=blocks, sample=data.sample,
            )  # fmt: skip
        return candidates_at(
            transactions, who, end=end, als_model=als_model, indexers=data.indexers,
            half_life=half_life, cfg=cfg, categories=categories, keep=keep, popular=popular,
            days=days,
        )  # fmt: skip

    # The half-life, on the evaluation window and all products (cheap: no model). Without
    # what was bought, the repeat list is empty whatever the half-life: its new-products
    # figures are measured once, with the rankers'.
    days = persist(later_days.where(F.col(S.EVENT_DATE) < F.lit(eval_cutoff)), keep)
    mine = persist(
        days.join(data.customers.select(S.CUSTOMER_ID), S.CUSTOMER_ID, "left_semi"), keep
    )
    by_half_life = measure(
        {
            (f"{REPEAT}@{h:g}", ALL): top_k(repeat(mine, end=eval_cutoff, half_life=h), k=k)
            for h in cfg.repeat_half_lives
        }
    )
    half_life = max(
        cfg.repeat_half_lives, key=lambda h: by_half_life[(f"{REPEAT}@{h:g}", ALL)].ndcg_at_k
    )

    # The rankers learn from the windows before the evaluation window.
    earliest = days.agg(F.min(S.EVENT_DATE)).first()
    first = earliest[0] if earliest else None
    windows, learners = [], 0
    for n in range(1, cfg.ranker_windows + 1):
        start = eval_cutoff - n * window
        if first is None or first >= start or enough_learners(learners, cfg.ranker_max_customers):
            break  # no history before this window (nor before any earlier one), or enough
        # The evaluation cutoff's purchase days hold every earlier cutoff's and the window's:
        # no second pass over the transactions.
        before = days.where(F.col(S.EVENT_DATE) < F.lit(start))
        buys = _window_buyers(days, start=start, end=start + window)
        if data.sample < 1.0:
            buys = buys.where(customer_share(seed) < data.sample)
        # Persisted: every generator, the facts and both lists' labels read them (unpersisted,
        # each read computed them again from the purchase days).
        buys = persist(buys, keep)
        who, count = at_most(
            persist(_with_history(buys, before), keep),
            cfg.ranker_max_customers - learners,
            seed,
            sampled=data.sample,
        )
        learners += count
        windows.append((at(start, who, half_life, days=before), buys))
    if not windows:
        raise RetailmlError(
            f"no purchases before {eval_cutoff - window}: the ranker has no window before the "
            f"evaluation window to learn from; ingest more history or shorten recommend.eval_days"
        )
    test = at(eval_cutoff, data.customers, half_life, data.popular, eval_als, days)

    truth = {
        mode: data.relevant.where(F.col(MODE_COLUMN) == mode).select(S.CUSTOMER_ID, S.PRODUCT_ID)
        for mode in (ALL, NEW)
    }
    lists = {
        (ITEM_KNN, mode): df
        for mode, df in _both_modes(test.generated[ITEM_KNN], prior, k=k).items()
    }
    lists[(REPEAT, NEW)] = top_k(test.generated[REPEAT], k=k, exclude=prior)
    rankers, rows, positives, recall = {}, {}, {}, {}
    for name in (FOR_YOU, DISCOVER):
        test_frame = test.lists[name]
        training = without_lineage(_union(labelled(c.lists[name], buys) for c, buys in windows))
        rows[name], positives[name] = _counts(training)
        model = _fit(training, positives[name], cfg=cfg, seed=seed)
        # Scored once for both modes.
        scored = persist(score_candidates(model, test_frame), keep)
        unbought = scored.join(prior, [S.CUSTOMER_ID, S.PRODUCT_ID], "left_anti")
        lists[(name, ALL)] = top_scored(scored, k=k)
        lists[(name, NEW)] = top_scored(unbought, k=k)
        recall[name] = _recall(truth[ALL if name == FOR_YOU else NEW], test_frame)
        # The ranker measured is the one that serves (refitting it on the windows moved on by
        # one took half of the recommend task's time at M).
        rankers[name] = model
    metrics = measure(lists)
    metrics[(REPEAT, ALL)] = by_half_life[(f"{REPEAT}@{half_life:g}", ALL)]
    return TwoStage(
        half_life=half_life,
        half_lives={
            h: by_half_life[(f"{REPEAT}@{h:g}", ALL)].ndcg_at_k for h in cfg.repeat_half_lives
        },
        metrics=metrics,
        rankers=rankers,
        windows=len(windows),
        learners=learners,
        positives=positives,
        rows=rows,
        candidate_recall=recall,
        seconds=time.monotonic() - started,
    )


def _recall(wanted: DataFrame, candidates: DataFrame) -> float:
    """The share of ``wanted`` (customer_id, product_id) among ``candidates``."""
    found = candidates.select(S.CUSTOMER_ID, S.PRODUCT_ID).withColumn("_hit", F.lit(1))
    row = (
        wanted.join(found, [S.CUSTOMER_ID, S.PRODUCT_ID], "left")
        .agg(F.count(F.lit(1)).alias("n"), F.count("_hit").alias("hits"))
        .first()
    )
    return row["hits"] / row["n"] if row and row["n"] else 0.0


def _union(frames: Iterable[DataFrame]) -> DataFrame:
    return functools.reduce(DataFrame.unionByName, frames)


def enough_learners(learners: int, limit: int) -> bool:
    """Whether the rankers have enough customers to learn from without another window: at
    least half of ``limit`` (``recommend.ranker_max_customers``). Below that, a window adds at
    least half of ``limit`` when it has that many customers, which is worth its fixed cost;
    above it, the few it could add are not (see the module's docstring)."""
    return learners >= limit / 2


def _window_buyers(days: DataFrame, *, start: date, end: date) -> DataFrame:
    """(customer_id, product_id) bought in ``[start, end)`` (``days``: :func:`purchase_days`
    before ``end`` or later)."""
    when = (F.col(S.EVENT_DATE) >= F.lit(start)) & (F.col(S.EVENT_DATE) < F.lit(end))
    return days.where(when).select(S.CUSTOMER_ID, S.PRODUCT_ID).distinct()


def _with_history(window_buys: DataFrame, before: DataFrame) -> DataFrame:
    """The customers of ``window_buys`` who bought something before the window (``before``:
    :func:`purchase_days` before its start)."""
    # A semi-join keeps each window buyer once however many rows they have before: no distinct
    # of everyone's purchase days.
    return window_buys.select(S.CUSTOMER_ID).distinct().join(before, S.CUSTOMER_ID, "left_semi")


def _counts(training: DataFrame) -> tuple[int, int]:
    """Rows and positive labels of a training frame."""
    row = training.agg(F.count(F.lit(1)), F.sum(LABEL)).first()
    return (int(row[0]), int(row[1] or 0)) if row else (0, 0)


def at_most(
    customers: DataFrame, limit: int, seed: int, *, sampled: float = 1.0
) -> tuple[DataFrame, int]:
    """About ``limit`` of ``customers`` (a fixed hash sample), or all when there are fewer;
    and how many that is.

    Args:
        customers: ``customer_id``, one row each.
        sampled: The share the customers were already sampled at with the same hash
            (``customer_share(seed) < sampled``, as the tuning sample is). Their hash values
            then lie in ``[0, sampled)``, so the cut is scaled to it: cutting at ``limit /
            count`` would keep about ``limit / sampled`` of them (all, if fewer).
    """
    count = customers.count()
    if count <= limit:
        return customers, count
    return customers.where(customer_share(seed) < sampled * limit / count), limit


def _fit(
    training: DataFrame, positives: int, *, cfg: RecommendSettings, seed: int
) -> PipelineModel:
    """The ranker fitted on ``training``, or the fixed :func:`fallback_ranker` when it holds no
    purchase (a shop where nobody bought anything new in the windows, say)."""
    if not positives:
        return fallback_ranker()
    estimator = ranker_estimator(
        max_depth=cfg.ranker_max_depth,
        trees=cfg.ranker_trees,
        learning_rate=cfg.ranker_learning_rate,
        seed=seed,
    )
    return estimator.fit(training)


def _both_modes(scores: DataFrame, prior: DataFrame, *, k: int) -> dict[str, DataFrame]:
    """A generator's top-k in both modes: as it is, and without what was bought."""
    return {ALL: top_k(scores, k=k), NEW: top_k(scores, k=k, exclude=prior)}
