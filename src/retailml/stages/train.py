"""Train: tune LogisticRegression, RandomForest and gradient-boosted trees on the stacked training
cutoffs, compare them on the later held-out cutoff, log everything to MLflow, and let the best
one challenge the registry's champion.

Tuning uses cross-validation with folds grouped by customer (a customer's rows from different
cutoffs never sit on both sides of a fold), or a train-validation split above a size setting.
Classes are balanced with instance weights. The held-out cutoff is never seen in tuning.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from multiprocessing.pool import ThreadPool
from pathlib import Path
from typing import Any

import mlflow
import mlflow.spark
from pyspark import inheritable_thread_target
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.classification import GBTClassifier, LogisticRegression, RandomForestClassifier
from pyspark.ml.evaluation import BinaryClassificationEvaluator
from pyspark.ml.feature import StandardScaler, VectorAssembler
from pyspark.ml.functions import vector_to_array
from pyspark.ml.tuning import (
    CrossValidator,
    ParamGridBuilder,
    TrainValidationSplit,
    TrainValidationSplitModel,
    _parallelFitTasks,
)
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from retailml import schemas as S
from retailml.errors import RetailmlError
from retailml.lakehouse import Lakehouse
from retailml.ml import registry, tracking
from retailml.ml.metrics import BinaryMetrics, Curves, binary_metrics, curves
from retailml.ml.sample import customer_share
from retailml.settings import Settings

WEIGHT = "class_weight"
FOLD = "fold"
SCORE = "score"


@dataclass(frozen=True)
class FamilyResult:
    """One tuned model family, measured on the held-out cutoff."""

    family: str
    implementation: str
    holdout: BinaryMetrics
    tuning_roc_auc: float
    best_params: dict[str, Any]
    train_seconds: float
    run_id: str
    model_uri: str
    curves: Curves = field(repr=False)


@dataclass(frozen=True)
class TrainResult:
    """All families, the challenger, and what the champion gate decided."""

    families: list[FamilyResult]
    challenger: str
    decision: registry.GateDecision
    parent_run_id: str
    holdout_cutoff: str
    train_rows: int
    holdout_rows: int

    def headline(self) -> str:
        best = max(self.families, key=lambda r: r.holdout.roc_auc)
        verdict = "promoted" if self.decision.promoted else "champion kept"
        return f"best {best.family} ROC-AUC {best.holdout.roc_auc:.4f}, {verdict}"

    def summary(self) -> list[str]:
        lines = [
            f"{self.train_rows:,} training rows; held-out cutoff {self.holdout_cutoff} "
            f"({self.holdout_rows:,} customers)",
            f"{'model':<22} {'ROC-AUC':>8} {'PR-AUC':>8} {'lift@10%':>9} {'Brier':>7} "
            f"{'train s':>8}",
        ]
        for r in self.families:
            name = r.family if r.family != "gbt" else f"gbt ({r.implementation})"
            m = r.holdout
            lines.append(
                f"{name:<22} {m.roc_auc:>8.4f} {m.pr_auc:>8.4f} {m.lift_at_10:>9.2f} "
                f"{m.brier:>7.4f} {r.train_seconds:>8.1f}"
            )
        d = self.decision
        verdict = "promoted to champion" if d.promoted else "champion kept"
        lines.append(
            f"challenger: {self.challenger} (version {d.challenger_version}), {verdict}: {d.reason}"
        )
        return lines


def with_class_weights(df: DataFrame, *, positive_rate: float) -> DataFrame:
    """Balanced instance weights: each class carries half of the total weight."""
    w_pos, w_neg = 0.5 / positive_rate, 0.5 / (1 - positive_rate)
    return df.withColumn(WEIGHT, F.when(F.col(S.LABEL) == 1, F.lit(w_pos)).otherwise(F.lit(w_neg)))


def with_customer_folds(df: DataFrame, *, folds: int, seed: int) -> DataFrame:
    """A fold number per customer, so one customer's cutoffs stay in the same fold."""
    return df.withColumn(
        FOLD, F.pmod(F.xxhash64(F.col(S.CUSTOMER_ID), F.lit(seed)), F.lit(folds)).cast("int")
    )


def estimator(family: str, *, implementation: str, seed: int) -> tuple[Pipeline, list[dict]]:
    """The family's pipeline (features → model) and its small tuning grid."""
    assembler = VectorAssembler(inputCols=list(S.FEATURE_COLUMNS), outputCol="features")
    label, weight = S.LABEL, WEIGHT
    grid = ParamGridBuilder()
    if family == "logistic_regression":
        scaler = StandardScaler(
            inputCol="features", outputCol="scaled", withMean=True, withStd=True
        )
        model: Any = LogisticRegression(
            featuresCol="scaled", labelCol=label, weightCol=weight, maxIter=100
        )
        grid.addGrid(model.regParam, [0.001, 0.01, 0.1]).addGrid(model.elasticNetParam, [0.0, 0.5])
        return Pipeline(stages=[assembler, scaler, model]), grid.build()
    if family == "random_forest":
        model = RandomForestClassifier(
            labelCol=label,
            weightCol=weight,
            seed=seed,
            featureSubsetStrategy="sqrt",
            subsamplingRate=0.8,
        )
        grid.addGrid(model.numTrees, [60, 150]).addGrid(model.maxDepth, [5, 9])
    elif family == "gbt" and implementation == "mllib":
        model = GBTClassifier(labelCol=label, weightCol=weight, seed=seed, maxIter=60, stepSize=0.1)
        grid.addGrid(model.maxDepth, [3, 5])
    elif family == "gbt":
        from xgboost.spark import SparkXGBClassifier

        model = SparkXGBClassifier(
            features_col="features",
            label_col=label,
            weight_col=weight,
            num_workers=1,
            n_estimators=200,
            learning_rate=0.05,
            subsample=0.8,
            random_state=seed,
            verbose=False,
        )
        grid.addGrid(model.max_depth, [3, 5])
    else:
        raise ValueError(f"unknown model family {family!r}")
    return Pipeline(stages=[assembler, model]), grid.build()


def score_column(model_output: DataFrame) -> DataFrame:
    """Adds ``score``: the predicted probability of a purchase."""
    return model_output.withColumn(SCORE, vector_to_array(F.col("probability"))[1])


class CustomerValidationSplit(TrainValidationSplit):
    """A train-validation split whose validation rows are the customers of fold 0.

    Like :class:`CrossValidator` with ``foldCol``, and unlike :class:`TrainValidationSplit`'s
    random share of rows, a customer's rows from different cutoffs stay on one side, and the
    split does not depend on how the rows are partitioned (``rand`` does), so a cluster and a
    local run tune alike. ``trainRatio`` is ignored: the validation share is ``1 / folds``.
    Each grid point is fitted once on the other folds; the best is refitted on all rows.

    With ``sample`` below 1, the grid is tuned on that share of the customers (a hash of the
    id, so the same customers every time) and only the refit sees every row: above a few
    hundred thousand rows, more rows change which grid point wins little, but cost in
    proportion.
    """

    sample: float = 1.0

    def _fit(self, dataset: DataFrame) -> TrainValidationSplitModel:
        est = self.getOrDefault(self.estimator)
        grid = self.getOrDefault(self.estimatorParamMaps)
        evaluator = self.getOrDefault(self.evaluator)
        tuning = dataset
        if self.sample < 1.0:
            tuning = dataset.where(customer_share(self.getSeed()) < self.sample)
        in_validation = F.col(FOLD) == 0
        validation = tuning.where(in_validation).persist()
        train = tuning.where(~in_validation).persist()
        try:
            tasks = map(
                inheritable_thread_target(dataset.sparkSession),
                _parallelFitTasks(est, train, evaluator, validation, grid, False),
            )
            metrics = [0.0] * len(grid)
            with ThreadPool(processes=min(self.getParallelism(), len(grid))) as pool:
                for index, metric, _ in pool.imap_unordered(lambda task: task(), tasks):
                    metrics[index] = metric
        finally:
            train.unpersist()
            validation.unpersist()
        best = max(range(len(grid)), key=lambda i: metrics[i])
        model = est.fit(dataset, grid[best])
        return self._copyValues(TrainValidationSplitModel(model, metrics))


def _tuner(pipe: Pipeline, grid: list[dict], *, rows: int, settings: Settings) -> Any:
    evaluator = BinaryClassificationEvaluator(labelCol=S.LABEL, metricName="areaUnderROC")
    cfg = settings.train
    if rows > cfg.validation_split_above_rows:
        split = CustomerValidationSplit(
            estimator=pipe,
            estimatorParamMaps=grid,
            evaluator=evaluator,
            parallelism=cfg.parallelism,
            seed=settings.seed,
        )
        split.sample = min(1.0, cfg.tune_max_rows / rows)
        return split
    return CrossValidator(
        estimator=pipe,
        estimatorParamMaps=grid,
        evaluator=evaluator,
        numFolds=cfg.folds,
        foldCol=FOLD,
        parallelism=cfg.parallelism,
        seed=settings.seed,
    )


def _importances(model: PipelineModel) -> dict[str, float]:
    last = model.stages[-1]
    names = list(S.FEATURE_COLUMNS)
    if hasattr(last, "featureImportances"):
        values = last.featureImportances.toArray().tolist()
    elif hasattr(last, "coefficients"):
        values = last.coefficients.toArray().tolist()
    elif hasattr(last, "get_feature_importances"):
        raw = last.get_feature_importances(importance_type="gain")
        values = [float(raw.get(f"f{i}", raw.get(n, 0.0))) for i, n in enumerate(names)]
    else:
        return {}
    return dict(zip(names, [float(v) for v in values], strict=True))


def _best_params(tuned: Any, grid: list[dict]) -> tuple[dict[str, Any], float]:
    metrics: list[float] = getattr(tuned, "avgMetrics", None) or tuned.validationMetrics
    best = max(range(len(metrics)), key=lambda i: metrics[i])
    return {p.name: v for p, v in grid[best].items()}, float(metrics[best])


def _plots(folder: Path, family: str, c: Curves, importances: dict[str, float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(20, 4.5))
    axes[0].plot(c.fpr, c.tpr)
    axes[0].plot([0, 1], [0, 1], "--", color="grey")
    axes[0].set(title=f"ROC — {family}", xlabel="false positive rate", ylabel="true positive rate")
    axes[1].plot(c.recall, c.precision)
    axes[1].set(title="Precision-recall", xlabel="recall", ylabel="precision", ylim=(0, 1.02))
    axes[2].bar(range(1, 11), c.decile_rate)
    axes[2].set(
        title="Purchase rate by score decile",
        xlabel="decile (1 = highest scores)",
        ylabel="share who bought",
    )
    ordered = sorted(importances.items(), key=lambda kv: abs(kv[1]))
    axes[3].barh([k for k, _ in ordered], [v for _, v in ordered])
    axes[3].set(
        title="Feature importance" if family != "logistic_regression" else "Coefficients (scaled)"
    )
    axes[3].tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(folder / "evaluation.png", dpi=90)
    plt.close(fig)


def _pip_requirements(implementation: str) -> list[str]:
    from importlib.metadata import version

    reqs = [f"pyspark=={version('pyspark')}", f"mlflow=={version('mlflow')}"]
    if implementation == "xgboost":
        reqs.append(f"xgboost-cpu=={version('xgboost-cpu')}")
    return reqs


def train_family(
    family: str, train: DataFrame, holdout: DataFrame, *, settings: Settings, train_rows: int
) -> FamilyResult:
    """Tune one family on ``train``, measure it on ``holdout``, log it to an MLflow child run."""
    implementation = settings.train.gbt_implementation if family == "gbt" else "mllib"
    pipe, grid = estimator(family, implementation=implementation, seed=settings.seed)
    tuner = _tuner(pipe, grid, rows=train_rows, settings=settings)
    with mlflow.start_run(run_name=family, nested=True) as run:
        started = time.monotonic()
        tuned = tuner.fit(train)
        seconds = time.monotonic() - started
        best_model: PipelineModel = tuned.bestModel
        params, tuning_auc = _best_params(tuned, grid)
        scored = score_column(best_model.transform(holdout)).select(S.LABEL, SCORE).persist()
        try:
            metrics = binary_metrics(scored, label_col=S.LABEL, score_col=SCORE)
            points = curves(scored, label_col=S.LABEL, score_col=SCORE)
        finally:
            scored.unpersist()
        importances = _importances(best_model)
        mlflow.log_params(
            {
                "family": family,
                "implementation": implementation,
                "tuning": type(tuner).__name__,
                "tuning_sample": round(getattr(tuner, "sample", 1.0), 4),
                "grid_points": len(grid),
                **{f"best_{k}": v for k, v in params.items()},
            }
        )
        mlflow.log_metrics(
            {**metrics.as_dict("holdout_"), "tuning_roc_auc": tuning_auc, "train_seconds": seconds}
        )
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            _plots(folder, family, points, importances)
            (folder / "curves.json").write_text(json.dumps(points.__dict__))
            (folder / "feature_importance.json").write_text(json.dumps(importances, indent=1))
            mlflow.log_artifacts(tmp, "evaluation")
        sample = holdout.select(*S.FEATURE_COLUMNS).limit(5)
        signature = mlflow.models.infer_signature(
            sample.toPandas(), best_model.transform(sample).select("prediction").toPandas()
        )
        info = mlflow.spark.log_model(
            best_model,
            artifact_path="model",
            signature=signature,
            pip_requirements=_pip_requirements(implementation),
        )
    return FamilyResult(
        family,
        implementation,
        metrics,
        tuning_auc,
        params,
        seconds,
        run.info.run_id,
        info.model_uri,
        points,
    )


def champion_metric(
    client: Any, settings: Settings, holdout: DataFrame, *, holdout_cutoff: str
) -> float | None:
    """The champion's ROC-AUC on this held-out cutoff: its recorded value if it was measured on
    the same cutoff, otherwise measured now by loading it through the alias."""
    name = settings.train.model_name
    version = registry.champion_version(client, name)
    if version is None:
        return None
    tags = client.get_model_version(name, version).tags
    if tags.get("holdout_cutoff") == holdout_cutoff and "holdout_roc_auc" in tags:
        return float(tags["holdout_roc_auc"])
    model = mlflow.spark.load_model(f"models:/{name}@{registry.CHAMPION}")
    scored = score_column(model.transform(holdout))
    return binary_metrics(scored, label_col=S.LABEL, score_col=SCORE).roc_auc


def check_labels(
    train_rows: int,
    train_rate: float,
    holdout_rows: int,
    holdout_rate: float,
    *,
    horizon_days: int,
) -> None:
    """Refuse, in one line that says exactly what is wrong, labels no classifier can learn
    from or be measured on: no rows, or one class only.

    Raises:
        RetailmlError: The training or held-out rows are missing or all of one class.
    """
    if train_rows == 0 or holdout_rows == 0:
        raise RetailmlError(
            f"not enough labelled data to train: {train_rows:,} training rows, "
            f"{holdout_rows:,} held-out rows; ingest more history, or lower "
            f"features.train_cutoffs or features.horizon_days"
        )
    for split, rows, rate in (
        ("training", train_rows, train_rate),
        ("held-out", holdout_rows, holdout_rate),
    ):
        if rate in (0.0, 1.0):
            every = "bought" if rate == 1.0 else "did not buy"
            change = "shorten" if rate == 1.0 else "lengthen"
            raise RetailmlError(
                f"all {rows:,} {split} labels are {int(rate)}: every customer {every} within "
                f"features.horizon_days = {horizon_days} days of the cutoff, and a propensity "
                f"model needs buyers and non-buyers; {change} features.horizon_days"
            )


def run(settings: Settings, spark: SparkSession) -> TrainResult:
    """Train every configured family, pick the challenger, apply the champion gate."""
    lake = Lakehouse(settings, spark)
    features = lake.read("silver.customer_features")
    cfg = settings.train
    # One small aggregation: rows, positive rate and cutoff dates per split.
    splits = {
        r[S.SPLIT]: r
        for r in features.where(F.col(S.SPLIT) != S.SCORE)
        .groupBy(S.SPLIT)
        .agg(
            F.count(F.lit(1)).alias("n"),
            F.avg(S.LABEL).alias("rate"),
            F.sort_array(F.collect_set(F.col(S.CUTOFF_DATE).cast("string"))).alias("cutoffs"),
        )
        .collect()
    }
    train_rows = int(splits[S.TRAIN]["n"]) if S.TRAIN in splits else 0
    train_rate = float(splits[S.TRAIN]["rate"] or 0.0) if S.TRAIN in splits else 0.0
    holdout_rows = int(splits[S.HOLDOUT]["n"]) if S.HOLDOUT in splits else 0
    holdout_rate = float(splits[S.HOLDOUT]["rate"] or 0.0) if S.HOLDOUT in splits else 0.0
    check_labels(
        train_rows,
        train_rate,
        holdout_rows,
        holdout_rate,
        horizon_days=settings.features.horizon_days,
    )
    holdout_cutoff = splits[S.HOLDOUT]["cutoffs"][-1]
    train_cutoffs = list(splits[S.TRAIN]["cutoffs"])
    # Persist: every grid point and fold re-reads these rows.
    train = with_customer_folds(
        with_class_weights(features.where(F.col(S.SPLIT) == S.TRAIN), positive_rate=train_rate),
        folds=cfg.folds,
        seed=settings.seed,
    ).persist()
    holdout = features.where(F.col(S.SPLIT) == S.HOLDOUT).persist()

    client = tracking.configure(settings)
    mlflow.set_experiment(experiment_id=tracking.experiment(settings, cfg.experiment))
    data_tags = {
        "data.silver_transactions_version": str(lake.version("silver.transactions")),
        "data.customer_features_version": str(lake.version("silver.customer_features")),
        "holdout_cutoff": holdout_cutoff,
        "train_cutoffs": ",".join(train_cutoffs),
    }
    # xgboost.spark logs every boosting round at INFO.
    logging.getLogger("XGBoost-PySpark").setLevel(logging.WARNING)
    mlflow.pyspark.ml.autolog(
        log_models=False, log_datasets=False, log_post_training_metrics=False, silent=True
    )
    try:
        with mlflow.start_run(run_name=f"propensity {holdout_cutoff}", tags=data_tags) as parent:
            mlflow.log_params(
                {
                    "train_rows": train_rows,
                    "holdout_rows": holdout_rows,
                    "train_positive_rate": round(train_rate, 4),
                    "horizon_days": settings.features.horizon_days,
                    "seed": settings.seed,
                }
            )
            results = [
                train_family(f, train, holdout, settings=settings, train_rows=train_rows)
                for f in cfg.families
            ]
            best = max(results, key=lambda r: r.holdout.roc_auc)
            mlflow.log_metric("challenger_holdout_roc_auc", best.holdout.roc_auc)
            current = champion_metric(client, settings, holdout, holdout_cutoff=holdout_cutoff)
            version = mlflow.register_model(
                best.model_uri,
                cfg.model_name,
                tags={
                    **data_tags,
                    "family": best.family,
                    "implementation": best.implementation,
                    "holdout_roc_auc": f"{best.holdout.roc_auc:.6f}",
                    "run_id": best.run_id,
                },
            )
            decision = registry.apply_gate(
                client,
                cfg.model_name,
                challenger_version=str(version.version),
                challenger_metric=best.holdout.roc_auc,
                champion_metric=current,
                metric="holdout ROC-AUC",
                margin=cfg.promotion_margin,
            )
            mlflow.set_tags(
                {
                    "challenger": best.family,
                    "challenger_version": version.version,
                    "gate_decision": "promoted" if decision.promoted else "kept champion",
                    "gate_reason": decision.reason,
                }
            )
    finally:
        mlflow.pyspark.ml.autolog(disable=True)
        train.unpersist()
        holdout.unpersist()
    return TrainResult(
        results, best.family, decision, parent.info.run_id, holdout_cutoff, train_rows, holdout_rows
    )
