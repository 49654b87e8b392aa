"""Train: tune LogisticRegression, RandomForest and gradient-boosted trees on the stacked training
cutoffs, compare them on the later held-out cutoff, log everything to MLflow, and let the best
one challenge the registry's champion.

Tuning uses cross-validation with folds grouped by customer (a customer's rows from different
cutoffs never sit on both sides of a fold) and successive halving over the folds (only the
better half of the grid goes on to the next fold: :class:`~retailml.ml.tuning.SuccessiveHalvingCV`),
or a train-validation split above a size setting. Grid points are fitted ``train.parallelism``
at a time. The held-out cutoff is never seen in tuning.

Probabilities are calibrated. Models are fitted without class weights, and each family's
probabilities are Platt-scaled on the calibration cutoff of the holdout: 52 weeks before it (the
same season), a cutoff the model was not fitted on — measured on the default data, that took
the held-out expected calibration error of xgboost from 0.084 (0.117 with the balanced weights
used before) to 0.019 and its Brier from 0.129 to 0.117, where isotonic regression on the same
rows gave 0.027 and cost ROC-AUC (ties). With less than a year of data the calibration cutoff
is the newest training cutoff, so its rows are scored by refits on the other customers
(cross-fitted, :func:`~retailml.ml.propensity.calibration_for`). The held-out metrics, figures
and the gate use the calibrated probabilities; the gate refuses a challenger whose Brier is not
below that of predicting the base rate for everyone. Scoring calibrates the champion the same
way for its own window.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import mlflow.spark
from mlflow.utils.autologging_utils import disable_autologging
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.evaluation import BinaryClassificationEvaluator
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from retailml import lineage
from retailml import schemas as S
from retailml.errors import RetailmlError
from retailml.lakehouse import Lakehouse
from retailml.ml import drift, registry, retrain, tracking
from retailml.ml import names as N
from retailml.ml.metrics import BinaryMetrics, Curves, binary_metrics, curves
from retailml.ml.models import log_spark_model, register_and_gate
from retailml.ml.propensity import (
    FOLD,
    LOGISTIC_REGRESSION,
    SCORE,
    Grids,
    Platt,
    calibrated,
    calibration_for,
    estimator,
    score_column,
    with_customer_folds,
)
from retailml.ml.tuning import CustomerValidationSplit, SuccessiveHalvingCV
from retailml.report import plots
from retailml.settings import Settings, TrainSettings


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
    platt: Platt = field(default_factory=Platt)


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
    retrain_reason: str = ""

    def headline(self) -> str:
        best = max(self.families, key=lambda r: r.holdout.roc_auc)
        verdict = "promoted" if self.decision.promoted else "champion kept"
        return f"best {best.family} ROC-AUC {best.holdout.roc_auc:.4f}, {verdict}"

    def summary(self) -> list[str]:
        lines = [f"retrained: {self.retrain_reason}"] if self.retrain_reason else []
        lines += [
            f"{self.train_rows:,} training rows; held-out cutoff {self.holdout_cutoff} "
            f"({self.holdout_rows:,} customers)",
            f"{'model':<22} {'ROC-AUC':>8} {'PR-AUC':>8} {'lift@10%':>9} {'Brier':>7} "
            f"{'ECE':>6} {'train s':>8}",
        ]
        for r in self.families:
            name = r.family if r.family != "gbt" else f"gbt ({r.implementation})"
            m = r.holdout
            lines.append(
                f"{name:<22} {m.roc_auc:>8.4f} {m.pr_auc:>8.4f} {m.lift_at_10:>9.2f} "
                f"{m.brier:>7.4f} {m.ece:>6.3f} {r.train_seconds:>8.1f}"
            )
        base = self.families[0].holdout
        lines.append(
            f"{'base rate (constant)':<22} {'':>8} {'':>8} {'':>9} {base.brier_base_rate:>7.4f} "
            f"{'':>6} {'':>8}   held-out rate {base.base_rate:.1%}"
        )
        d = self.decision
        verdict = "promoted to champion" if d.promoted else "champion kept"
        lines.append(
            f"challenger: {self.challenger} (version {d.challenger_version}), {verdict}: {d.reason}"
        )
        return lines


def grids(cfg: TrainSettings) -> Grids:
    """The tuning grids the settings give."""
    return Grids(
        logistic_reg_params=cfg.logistic_reg_params,
        logistic_elastic_net_params=cfg.logistic_elastic_net_params,
        forest_num_trees=cfg.forest_num_trees,
        forest_max_depths=cfg.forest_max_depths,
        gbt_max_depths=cfg.gbt_max_depths,
    )


def _tuner(pipe: Pipeline, grid: list[dict], *, rows: int, cfg: TrainSettings, seed: int) -> Any:
    evaluator = BinaryClassificationEvaluator(labelCol=S.LABEL, metricName="areaUnderROC")
    if rows > cfg.validation_split_above_rows:
        split = CustomerValidationSplit(
            estimator=pipe,
            estimatorParamMaps=grid,
            evaluator=evaluator,
            parallelism=cfg.parallelism,
            seed=seed,
        )
        split.sample = min(1.0, cfg.tune_max_rows / rows)
        return split
    return SuccessiveHalvingCV(
        estimator=pipe,
        estimatorParamMaps=grid,
        evaluator=evaluator,
        numFolds=cfg.folds,
        foldCol=FOLD,
        parallelism=cfg.parallelism,
        seed=seed,
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


def _best_point(tuned: Any, grid: list[dict]) -> tuple[dict, float]:
    """The grid point the tuner chose (its ParamMap) and its tuning ROC-AUC."""
    metrics: list[float] = getattr(tuned, "avgMetrics", None) or tuned.validationMetrics
    best = max(range(len(metrics)), key=lambda i: metrics[i])
    return grid[best], float(metrics[best])


def _evaluation_figures(
    folder: Path, family: str, c: Curves, importances: dict[str, float], *, base_rate: float
) -> None:
    """The family's held-out evaluation, drawn by the report's own plots (one look for both)."""
    points = {"fpr": c.fpr, "tpr": c.tpr, "recall": c.recall, "precision": c.precision}
    (folder / "roc_pr.png").write_bytes(plots.roc_pr({family: points}, base_rate=base_rate))
    (folder / "gain.png").write_bytes(
        plots.gain_chart(
            {family: (c.population, c.gain)}, c.decile_rate, featured=family, base_rate=base_rate
        )
    )
    if importances:
        signed = family == LOGISTIC_REGRESSION
        title = "Coefficients (scaled)" if signed else "Feature importance"
        (folder / "importance.png").write_bytes(
            plots.feature_importance(importances, title=f"{title} — {family}", signed=signed)
        )


def _quiet_fit(pipe: Pipeline, rows: DataFrame, point: dict) -> PipelineModel:
    """``pipe`` fitted with ``point`` without autologging its params into the active run."""
    with disable_autologging():
        return pipe.fit(rows, point)


def train_family(
    family: str,
    train: DataFrame,
    holdout: DataFrame,
    calibration: DataFrame,
    *,
    cfg: TrainSettings,
    seed: int,
    train_rows: int,
    base_rate: float,
    cross_fit: bool = False,
) -> FamilyResult:
    """Tune one family on ``train``, calibrate it on ``calibration`` (cross-fitted when
    ``cross_fit``: see :func:`calibration_for`), measure it on ``holdout``, log it to an MLflow
    child run."""
    implementation = cfg.gbt_implementation if family == "gbt" else "mllib"
    pipe, grid = estimator(family, implementation=implementation, seed=seed, grids=grids(cfg))
    tuner = _tuner(pipe, grid, rows=train_rows, cfg=cfg, seed=seed)
    with mlflow.start_run(run_name=family, nested=True) as run:
        started = time.monotonic()
        tuned = tuner.fit(train)
        seconds = time.monotonic() - started
        best_model: PipelineModel = tuned.bestModel
        point, tuning_auc = _best_point(tuned, grid)
        params = {p.name: v for p, v in point.items()}
        platt = calibration_for(
            best_model,
            calibration,
            refit=lambda rows: _quiet_fit(pipe, rows, point),
            train=train,
            cross_fit=cross_fit,
            seed=seed,
        )
        scored = calibrated(
            score_column(best_model.transform(holdout)).select(S.LABEL, SCORE), platt
        ).persist()
        try:
            metrics = binary_metrics(scored, label_col=S.LABEL, score_col=SCORE)
            points = curves(scored, label_col=S.LABEL, score_col=SCORE)
        finally:
            scored.unpersist()
        importances = _importances(best_model)
        mlflow.log_params(
            {
                N.FAMILY: family,
                N.IMPLEMENTATION: implementation,
                "tuning": type(tuner).__name__,
                "tuning_sample": round(getattr(tuner, "sample", 1.0), 4),
                "grid_points": len(grid),
                **{f"best_{k}": v for k, v in params.items()},
            }
        )
        mlflow.log_metrics(
            {
                **metrics.as_dict(N.HOLDOUT_PREFIX),
                "tuning_roc_auc": tuning_auc,
                "train_seconds": seconds,
                "platt_slope": platt.slope,
                "platt_intercept": platt.intercept,
            }
        )
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            _evaluation_figures(folder, family, points, importances, base_rate=base_rate)
            (folder / N.CURVES).write_text(json.dumps(points.__dict__))
            (folder / N.IMPORTANCES).write_text(json.dumps(importances, indent=1))
            mlflow.log_artifacts(tmp, N.EVALUATION)
        info = log_spark_model(
            best_model,
            holdout.select(*S.FEATURE_COLUMNS),
            extra_requirements=("xgboost-cpu",) if implementation == "xgboost" else (),
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
        platt,
    )


def _refusal(holdout: BinaryMetrics) -> str | None:
    """Why a challenger may not become champion whatever its ROC-AUC: probabilities no better
    than saying the base rate to everyone."""
    if holdout.brier < holdout.brier_base_rate:
        return None
    return (
        f"challenger Brier {holdout.brier:.4f} is not below the base rate's "
        f"{holdout.brier_base_rate:.4f}: its probabilities add nothing"
    )


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


@dataclass(frozen=True)
class ChampionKept:
    """Training was not needed: what was checked, and the champion that stays."""

    version: str
    checks: list[str]

    def headline(self) -> str:
        return f"no retraining needed; champion version {self.version} kept"

    def summary(self) -> list[str]:
        return [f"no retraining needed; champion version {self.version} kept:"] + [
            f"  {c}" for c in self.checks
        ]


def run(settings: Settings, spark: SparkSession) -> TrainResult | ChampionKept | lineage.UpToDate:
    """Record the features' drift, then train every configured family, pick the challenger and
    apply the champion gate — when retraining is needed
    (:func:`~retailml.ml.retrain.retrain_need`).

    Nothing is done when neither the features nor the settings changed since the last time
    (unless ``workflow.retrain``).
    """
    lake = Lakehouse(settings, spark)
    return lineage.unless_up_to_date(
        lake,
        "train",
        lambda now: _train_on_need(lake, settings, now),
        tables=["silver.customer_features"],
        outputs=[],
        config=[settings.train, settings.features, settings.seed],
        force=settings.workflow.retrain,
    )


def _train_on_need(
    lake: Lakehouse, settings: Settings, now: lineage.Inputs
) -> TrainResult | ChampionKept:
    features = lake.read("silver.customer_features")
    feature_psi = retrain.feature_drift(lake, features, bins=settings.monitor.psi_bins)
    need = retrain.retrain_need(lake, settings, now, features, feature_psi)
    if need.reason is not None:
        return _train(lake, settings, features, need.reason, feature_psi)
    client = tracking.configure(settings)
    version = registry.champion_version(client, settings.train.model_name) or "-"
    return ChampionKept(version, need.checks)


def _train(
    lake: Lakehouse,
    settings: Settings,
    features: DataFrame,
    reason: str,
    feature_psi: drift.Drift,
) -> TrainResult:
    """Train every configured family, pick the challenger, apply the champion gate."""
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
        features.where(F.col(S.SPLIT) == S.TRAIN), folds=cfg.folds, seed=settings.seed
    ).persist()
    holdout = features.where(F.col(S.SPLIT) == S.HOLDOUT).persist()
    # The holdout's calibration cutoff is the earlier of the two (the other is the score's).
    in_calibration = F.col(S.SPLIT) == S.CALIBRATION
    first = features.where(in_calibration).agg(F.min(S.CUTOFF_DATE)).first()
    calibration_cutoff = first[0] if first else None
    calibration = features.where(
        in_calibration & (F.col(S.CUTOFF_DATE) == F.lit(calibration_cutoff))
    ).persist()
    # Less than a year of data: the calibration cutoff is the newest training cutoff.
    cross_fit = str(calibration_cutoff) in train_cutoffs

    client = tracking.configure(settings)
    mlflow.set_experiment(experiment_id=tracking.experiment(settings, cfg.experiment))
    data_tags = {
        N.DATA_TRANSACTIONS_VERSION: str(lake.version("silver.transactions")),
        N.DATA_FEATURES_VERSION: str(lake.version("silver.customer_features")),
        N.TRAIN_CUTOFFS: ",".join(train_cutoffs),
    }
    measured_on = {N.HOLDOUT_CUTOFF: holdout_cutoff}
    # xgboost.spark logs every boosting round at INFO.
    logging.getLogger("XGBoost-PySpark").setLevel(logging.WARNING)
    mlflow.pyspark.ml.autolog(
        log_models=False, log_datasets=False, log_post_training_metrics=False, silent=True
    )
    try:
        with mlflow.start_run(
            run_name=f"propensity {holdout_cutoff}", tags={**data_tags, **measured_on}
        ) as parent:
            mlflow.log_params(
                {
                    "train_rows": train_rows,
                    "holdout_rows": holdout_rows,
                    "train_positive_rate": round(train_rate, 4),
                    "horizon_days": settings.features.horizon_days,
                    "seed": settings.seed,
                }
            )
            tracking.log_table_inputs(
                lake, ["silver.customer_features", "silver.transactions"], context="training"
            )
            mlflow.set_tag(N.RETRAIN_REASON, reason)
            mlflow.log_metrics({f"psi_{name}": v for name, v in feature_psi.values.items()})
            results = [
                train_family(
                    f,
                    train,
                    holdout,
                    calibration,
                    cfg=cfg,
                    seed=settings.seed,
                    train_rows=train_rows,
                    base_rate=holdout_rate,
                    cross_fit=cross_fit,
                )
                for f in cfg.families
            ]
            best = max(results, key=lambda r: r.holdout.roc_auc)
            mlflow.log_metric(N.CHALLENGER_HOLDOUT_ROC_AUC, best.holdout.roc_auc)
            decision = register_and_gate(
                client,
                best.model_uri,
                model_name=cfg.model_name,
                metric_tag=N.HOLDOUT_ROC_AUC,
                metric_label="holdout ROC-AUC",
                value=best.holdout.roc_auc,
                margin=cfg.promotion_margin,
                evaluated_on=measured_on,
                tags={
                    **data_tags,
                    N.FAMILY: best.family,
                    N.IMPLEMENTATION: best.implementation,
                    N.RUN_ID: best.run_id,
                },
                measure_champion=lambda: retrain.measure_champion(cfg.model_name, holdout),
                refusal=_refusal(best.holdout),
            )
            mlflow.set_tags(
                {
                    N.CHALLENGER: best.family,
                    N.CHALLENGER_VERSION: decision.challenger_version,
                    N.GATE_DECISION: N.PROMOTED if decision.promoted else N.KEPT,
                    N.GATE_REASON: decision.reason,
                }
            )
    finally:
        mlflow.pyspark.ml.autolog(disable=True)
        train.unpersist()
        holdout.unpersist()
        calibration.unpersist()
    return TrainResult(
        results,
        best.family,
        decision,
        parent.info.run_id,
        holdout_cutoff,
        train_rows,
        holdout_rows,
        retrain_reason=reason,
    )
