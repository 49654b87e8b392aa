"""The recommend task: tune ALS and the repeat half-life, train and measure the two-stage
recommender against every generator, fit the final model, register it behind the champion gate,
and write both lists of ``gold.recommendations`` from whichever version is the champion
afterwards."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import date, timedelta

import mlflow
import mlflow.spark
from mlflow.models.model import ModelInfo
from mlflow.tracking import MlflowClient
from pyspark.ml import PipelineModel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from retailml import lineage
from retailml import schemas as S
from retailml.lakehouse import Lakehouse
from retailml.ml import names as N
from retailml.ml import tracking
from retailml.ml.models import log_spark_model, register_and_gate
from retailml.ml.names import (
    ALL,
    ALS_MODEL,
    DISCOVER_MODEL,
    FOR_YOU_MODEL,
    MODES,
    NEW,
    POPULAR_MODEL,
    RANKING_MODEL_PREFIX,
)
from retailml.ml.ranking import RankingMetrics
from retailml.ml.registry import GateDecision
from retailml.settings import RecommendSettings, Settings
from retailml.stages.recommend.als import als_blocks, als_estimator
from retailml.stages.recommend.data import (
    persist,
    popularity,
    purchased,
    ratings,
    without_lineage,
)
from retailml.stages.recommend.evaluation import (
    EvaluationSet,
    GridPoint,
    Tuning,
    evaluation_set,
    tune,
)
from retailml.stages.recommend.generators import purchase_days
from retailml.stages.recommend.publish import (
    Inputs,
    ServedResult,
    champion_model,
    read_inputs,
    retrain_reason,
    serve_champion,
    write_lists,
)
from retailml.stages.recommend.serving import (
    MAX_EXTRA_CANDIDATES,
    gold_rows,
    pack,
    recommend_customers,
)
from retailml.stages.recommend.twostage import TwoStage, train_two_stage


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
    two_stage: TwoStage
    decision: GateDecision
    model_version: str  # the version that produced the rows
    rows_written: int
    rows_by_source: dict[tuple[str, str], int]  # (list, source) → rows
    customers: int
    seconds: float
    parent_run_id: str

    @property
    def judged(self) -> str:
        """The list the champion gate judged (the ranker of the tuned mode)."""
        return judged_list(self.tuned_mode)

    def headline(self) -> str:
        mode, m = self.tuned_mode, self.metrics
        judged = m[(self.judged, mode)].ndcg_at_k
        als, popular = m[(ALS_MODEL, mode)].ndcg_at_k, m[(POPULAR_MODEL, mode)].ndcg_at_k
        return (
            f"{self.rows_written:,} rows; NDCG@{self.k} ({mode}) {self.judged} {judged:.4f} vs "
            f"ALS {als:.4f} vs popular {popular:.4f}"
        )

    def summary(self) -> list[str]:
        k, two = self.k, self.two_stage
        lines = [
            f"evaluated on {self.eval_cutoff} .. {self.as_of - timedelta(days=1)} "
            f"({self.eval_customers:,} customers with earlier purchases bought in the window)",
            f"{'model':<9} {'mode':<4} {f'P@{k}':>7} {f'R@{k}':>7} {f'NDCG@{k}':>8} "
            f"{f'MAP@{k}':>7} {'hit rate':>8} {'coverage':>8}",
        ]
        for mode in MODES:
            for model in RANKING_MODEL_PREFIX:
                m = self.metrics.get((model, mode))
                if m is None:
                    continue
                lines.append(
                    f"{model:<9} {mode:<4} {m.precision_at_k:>7.4f} {m.recall_at_k:>7.4f} "
                    f"{m.ndcg_at_k:>8.4f} {m.map_at_k:>7.4f} {m.hit_rate:>8.3f} "
                    f"{m.coverage:>8.3f}"
                )
        params = ", ".join(f"{name}={value:g}" for name, value in self.best_params.items())
        tuned = self.metrics[(ALS_MODEL, self.tuned_mode)].ndcg_at_k
        half_lives = ", ".join(f"{h:g} d {v:.4f}" for h, v in two.half_lives.items())
        rankers = "; ".join(
            f"{name}: {two.rows[name]:,} candidates, {two.positives[name]:,} bought"
            + ("" if two.positives[name] else " (nothing to learn from: ranked by ALS's score)")
            + f", candidate recall {two.candidate_recall[name]:.1%}"
            for name in two.rows
        )
        d = self.decision
        verdict = "promoted to champion" if d.promoted else "champion kept"
        by_source = ", ".join(
            f"{n:,} {name}/{source}" for (name, source), n in sorted(self.rows_by_source.items())
        )
        return [
            *lines,
            f"repeat share: {self.repeat_share:.1%} of the window's customer × product "
            f"purchases were bought before",
            f"ALS: best of {len(self.grid)} grid points: {params} (NDCG@{k} {self.tuned_mode} "
            f"{tuned:.4f})",
            f"repeat half-life: {two.half_life:g} days (NDCG@{k} all: {half_lives})",
            f"rankers trained on {two.windows} window(s) before, {two.learners:,} customers: "
            f"{rankers}",
            f"version {d.challenger_version} (judged on {self.judged}), {verdict}: {d.reason}",
            f"gold.recommendations as of {self.as_of}: {self.rows_written:,} rows for "
            f"{self.customers:,} customers ({by_source}) from version {self.model_version}",
        ]


def judged_list(mode: str) -> str:
    """The list whose NDCG@k in ``mode`` the champion gate compares."""
    return DISCOVER_MODEL if mode == NEW else FOR_YOU_MODEL


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
            f"{self.k}: nothing was tuned; every customer gets the popularity ranking on both "
            f"lists",
            f"gold.recommendations as of {self.as_of}: {self.rows_written:,} rows for "
            f"{self.customers:,} customers, both lists (fewer than k each: the catalogue is "
            f"that small)",
        ]


def run(
    settings: Settings, spark: SparkSession
) -> RecommendResult | PopularOnlyResult | ServedResult | lineage.UpToDate:
    """:func:`recommend`, unless neither its input tables nor the settings changed since the
    last run."""
    lake = Lakehouse(settings, spark)
    return lineage.unless_up_to_date(
        lake,
        "recommend",
        lambda now: recommend(settings, spark, now),
        tables=["silver.transactions", "silver.customers", "silver.products"],
        outputs=["gold.recommendations"],
        # refresh_days only says which lists a serve keeps: changing it retrains nothing.
        config=[
            settings.recommend.model_dump(mode="json", exclude={"refresh_days"}),
            settings.seed,
        ],
        force=settings.workflow.retrain,
    )


def recommend(
    settings: Settings, spark: SparkSession, now: lineage.Inputs
) -> RecommendResult | PopularOnlyResult | ServedResult:
    """Tune ALS and the repeat half-life, train and measure the rankers against every generator,
    register the two-stage recommender, write both lists of ``gold.recommendations``.

    With fewer products ever bought than ``k`` (or one), there is nothing to learn: nothing is
    tuned and every customer gets the popularity ranking on both lists (the summary says so).

    Raises:
        RetailmlError: No purchases by known customers, or none before the evaluation cutoff.
    """
    started, cfg, seed = time.monotonic(), settings.recommend, settings.seed
    lake = Lakehouse(settings, spark)
    inputs = read_inputs(lake)
    if inputs.bought_products < max(cfg.k, 2):
        return _popular_only(lake, inputs, cfg=cfg, started=started)
    client = tracking.configure(settings)
    reason, champion = retrain_reason(settings, client, now)
    if reason is None and champion is not None:
        return serve_champion(
            lake, inputs, champion, cfg=cfg, started=started, previous=now.previous
        )
    tuned_mode, blocks = NEW if cfg.exclude_purchased else ALL, als_blocks(spark)
    # xgboost.spark logs every boosting round at INFO.
    logging.getLogger("XGBoost-PySpark").setLevel(logging.WARNING)
    kept: list[DataFrame] = []
    try:
        # Every purchase day before as_of, once: the evaluation cutoff's are a filter of them,
        # and serving reads them all.
        days = persist(purchase_days(inputs.transactions, end=inputs.as_of), kept)
        data = evaluation_set(
            inputs.transactions,
            inputs.customers,
            cutoff=inputs.as_of - timedelta(days=cfg.eval_days),
            k=cfg.k,
            popular_days=cfg.popular_days,
            tune_max_customers=cfg.tune_max_customers,
            seed=seed,
            keep=kept,
        )
        mlflow.set_experiment(experiment_id=tracking.experiment(settings, cfg.experiment))
        tags = _data_tags(lake, inputs, data)
        with mlflow.start_run(run_name=f"recommend {inputs.as_of}", tags=tags) as parent:
            _log_params(cfg, data, seed=seed, tuned_mode=tuned_mode)
            mlflow.set_tag(N.RETRAIN_REASON, reason)
            tracking.log_table_inputs(
                lake,
                ["silver.transactions", "silver.customers", "silver.products"],
                context="training",
            )
            tuning = tune(data, spark, cfg=cfg, tuned_mode=tuned_mode, seed=seed, blocks=blocks)
            two = train_two_stage(
                inputs.transactions,
                data,
                als_params=tuning.best.params,
                eval_als=tuning.best_model,
                cfg=cfg,
                seed=seed,
                blocks=blocks,
                categories=inputs.categories,
                keep=kept,
                later_days=days,
            )
            metrics = tuning.metrics | two.metrics
            model, info = _final_model(
                data, tuning, two, metrics, cfg=cfg, seed=seed, blocks=blocks
            )
            tags[N.RUN_ID] = parent.info.run_id
            params = {**tuning.best.params, N.HALF_LIFE_PARAM: two.half_life}
            decision = _register(client, info, metrics, params, data, cfg=cfg, tags=tags)
            served, by_source = _serve(
                lake, client, model, decision, inputs, two, cfg=cfg, keep=kept, days=days
            )
            customers = inputs.customers.count()
            _log_outcome(decision, served, by_source, started=started, customers=customers)
    finally:
        for df in kept:
            df.unpersist()
    return RecommendResult(
        as_of=inputs.as_of,
        eval_cutoff=data.cutoff,
        eval_customers=tuning.best.metrics[ALL].users,
        repeat_share=data.repeat_share,
        metrics=metrics,
        k=cfg.k,
        tuned_mode=tuned_mode,
        best_params=tuning.best.params,
        grid=tuning.grid,
        two_stage=two,
        decision=decision,
        model_version=served,
        rows_written=sum(by_source.values()),
        rows_by_source=by_source,
        customers=customers,
        seconds=time.monotonic() - started,
        parent_run_id=parent.info.run_id,
    )


def _data_tags(lake: Lakehouse, inputs: Inputs, data: EvaluationSet) -> dict[str, str]:
    """What the run was computed from: the input's Delta version and the dates."""
    return {
        N.DATA_TRANSACTIONS_VERSION: str(lake.version("silver.transactions")),
        N.AS_OF_DATE: inputs.as_of.isoformat(),
        N.EVAL_CUTOFF: data.cutoff.isoformat(),
    }


def _register(
    client: MlflowClient,
    info: ModelInfo,
    metrics: dict[tuple[str, str], RankingMetrics],
    params: dict[str, float],
    data: EvaluationSet,
    *,
    cfg: RecommendSettings,
    tags: dict[str, str],
) -> GateDecision:
    """Register the final model, judged on NDCG@k of the list ``exclude_purchased`` chooses
    (discover against new products, or for_you against everything bought). A champion measured
    on another cutoff, mode, k, list or sample of customers, or of another kind, is not
    comparable (its final model has seen this evaluation window), and the challenger, fitted
    on newer data, replaces it."""
    mode = NEW if cfg.exclude_purchased else ALL
    judged = judged_list(mode)
    return register_and_gate(
        client,
        info.model_uri,
        model_name=cfg.model_name,
        metric_tag=N.EVAL_NDCG,
        metric_label=f"NDCG@{cfg.k} ({judged}, {mode})",
        value=metrics[(judged, mode)].ndcg_at_k,
        margin=cfg.promotion_margin,
        evaluated_on={
            N.EVAL_CUTOFF: data.cutoff.isoformat(),
            N.EVAL_MODE: mode,
            N.EVAL_K: str(cfg.k),
            N.EVAL_LIST: judged,
            N.EVAL_KIND: N.RECOMMENDER_KIND,
            N.EVAL_CUSTOMERS: data.measured_on,
        },
        tags={**tags, **{f"{N.VERSION_PARAM_PREFIX}{n}": f"{v:g}" for n, v in params.items()}},
    )


def _log_params(cfg: RecommendSettings, data: EvaluationSet, *, seed: int, tuned_mode: str) -> None:
    mlflow.log_params(
        {
            N.K: cfg.k,
            "exclude_purchased": cfg.exclude_purchased,
            "eval_days": cfg.eval_days,
            "popular_days": cfg.popular_days,
            "max_iter": cfg.max_iter,
            "seed": seed,
            N.TUNED_MODE: tuned_mode,
            "max_extra_candidates": MAX_EXTRA_CANDIDATES,
            "catalog_size": data.catalog_size,
            "tuning_sample": round(data.sample, 4),
            "parallelism": cfg.parallelism,
        }
    )


def _final_model(
    data: EvaluationSet,
    tuning: Tuning,
    two: TwoStage,
    metrics: dict[tuple[str, str], RankingMetrics],
    *,
    cfg: RecommendSettings,
    seed: int,
    blocks: int,
) -> tuple[PipelineModel, ModelInfo]:
    """The registered recommender: the indexers, ALS with the best grid point fitted on all
    history, and both rankers (as measured) in one ``PipelineModel``,
    logged with every model's metrics."""
    started = time.monotonic()
    best = tuning.best
    estimator = als_estimator(
        rank=best.rank,
        reg_param=best.reg_param,
        alpha=best.alpha,
        max_iter=cfg.max_iter,
        seed=seed,
        blocks=blocks,
    )
    als_model = estimator.fit(without_lineage(ratings(data.indexers, data.history)))
    model = pack(data.indexers, als_model, two.rankers)
    mlflow.log_params({f"best_{name}": v for name, v in best.params.items()})
    mlflow.log_param(f"best_{N.HALF_LIFE_PARAM}", two.half_life)
    tuned_mode = NEW if cfg.exclude_purchased else ALL
    mlflow.log_metrics(
        {
            **{
                name: value
                for (model_name, mode), m in metrics.items()
                for name, value in m.as_dict(N.ranking_prefix(model_name, mode)).items()
            },
            **{f"repeat_half_life_{h:g}_ndcg_at_k": v for h, v in two.half_lives.items()},
            **{f"{name}_candidate_recall": v for name, v in two.candidate_recall.items()},
            **{f"{name}_training_rows": v for name, v in two.rows.items()},
            "ranker_windows": two.windows,
            "ranker_customers": two.learners,
            N.REPEAT_SHARE: data.repeat_share,
            N.TUNED_NDCG: metrics[(judged_list(tuned_mode), tuned_mode)].ndcg_at_k,
            "tune_seconds": tuning.seconds,
            "two_stage_seconds": two.seconds,
            "final_fit_seconds": time.monotonic() - started,
        }
    )
    # A signature (customer, product → ALS score) from the ALS part: Unity Catalog's registry
    # requires one, and the rankers' input is built by the task, not given.
    info = log_spark_model(
        model,
        data.history.select(S.CUSTOMER_ID, S.PRODUCT_ID),
        signature_model=PipelineModel(stages=model.stages[:3]),
        extra_requirements=("xgboost-cpu",),
    )
    return model, info


def _serve(
    lake: Lakehouse,
    client: MlflowClient,
    model: PipelineModel,
    decision: GateDecision,
    inputs: Inputs,
    two: TwoStage,
    *,
    cfg: RecommendSettings,
    keep: list[DataFrame],
    days: DataFrame,
) -> tuple[str, dict[tuple[str, str], int]]:
    """Write the as-of date's rows from whichever version is the champion now (the new model
    when promoted, else the champion loaded through its alias, with the half-life it was tuned
    with, so re-running with nothing changed writes the same rows).

    Returns:
        The version that wrote the rows, and the rows per list and source.
    """
    if decision.promoted:
        served = client.get_model_version(cfg.model_name, decision.challenger_version)
        serving, half_life = model, two.half_life
    else:
        served = client.get_model_version(cfg.model_name, str(decision.champion_version))
        serving, tuned = champion_model(cfg, served)
        half_life = tuned or two.half_life
    started = time.monotonic()
    by_source = write_lists(lake, serving, served, half_life, inputs, cfg=cfg, keep=keep, days=days)
    mlflow.log_metric("write_seconds", time.monotonic() - started)
    return str(served.version), by_source


def _log_outcome(
    decision: GateDecision,
    served: str,
    by_source: dict[tuple[str, str], int],
    *,
    started: float,
    customers: int,
) -> None:
    mlflow.log_metrics(
        {
            "seconds": time.monotonic() - started,
            "rows_written": sum(by_source.values()),
            "customers": customers,
        }
    )
    mlflow.set_tags(
        {
            N.CHALLENGER_VERSION: decision.challenger_version,
            N.SERVED_VERSION: served,
            N.GATE_DECISION: N.PROMOTED if decision.promoted else N.KEPT,
            N.GATE_REASON: decision.reason,
        }
    )


def _popular_only(
    lake: Lakehouse, inputs: Inputs, *, cfg: RecommendSettings, started: float
) -> PopularOnlyResult:
    """Both lists from the popularity ranking alone (nothing to learn)."""
    k, as_of, transactions = cfg.k, inputs.as_of, inputs.transactions
    popular = popularity(transactions, end=as_of, days=cfg.popular_days, min_country_products=k)
    bought = purchased(transactions)
    recommendations = (
        recommend_customers(inputs.customers, popular, k=k)
        .withColumn(S.LIST, F.lit(S.FOR_YOU))
        .unionByName(
            recommend_customers(inputs.customers, popular, k=k, bought=bought).withColumn(
                S.LIST, F.lit(S.DISCOVER)
            )
        )
    )
    lake.replace_where(
        "gold.recommendations",
        gold_rows(recommendations, inputs.products, as_of=as_of, model_version=None),
        f"{S.AS_OF_DATE} = '{as_of.isoformat()}'",
    )
    written = lake.read("gold.recommendations").where(F.col(S.AS_OF_DATE) == F.lit(as_of)).count()
    return PopularOnlyResult(
        as_of=as_of,
        k=k,
        products=inputs.bought_products,
        rows_written=written,
        customers=inputs.customers.count(),
        seconds=time.monotonic() - started,
    )
