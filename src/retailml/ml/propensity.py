"""The purchase-propensity estimators, their output and its calibration: shared by training
(which fits and measures them) and scoring (which writes what they output), so neither stage
imports the other.

The models are fitted without class weights (balanced weights moved every probability up, to
the training base rate's complement), and their probabilities are then calibrated for the
window they are about by Platt scaling on a labelled cutoff they were not fitted on — the
same season a year before (:func:`fit_platt`), cross-fitted when that cutoff is a training
cutoff (:func:`calibration_for`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.classification import GBTClassifier, LogisticRegression, RandomForestClassifier
from pyspark.ml.feature import StandardScaler, VectorAssembler
from pyspark.ml.functions import vector_to_array
from pyspark.ml.tuning import ParamGridBuilder
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from retailml import schemas as S

_log = logging.getLogger(__name__)

FOLD = "fold"  # a customer's cross-validation fold
SCORE = "score"  # the predicted probability of a purchase

LOGISTIC_REGRESSION, RANDOM_FOREST, GBT = "logistic_regression", "random_forest", "gbt"
LOGISTIC_TOLERANCE = 1e-4  # L-BFGS's convergence tolerance (see :func:`estimator`)


@dataclass(frozen=True)
class Grids:
    """The tuning grid of each family (the ``train`` settings of the same names)."""

    logistic_reg_params: Sequence[float] = (0.001, 0.01, 0.1)
    logistic_elastic_net_params: Sequence[float] = (0.0, 0.5)
    forest_num_trees: Sequence[int] = (60, 150)
    forest_max_depths: Sequence[int] = (5, 9)
    gbt_max_depths: Sequence[int] = (3, 5)


def with_customer_folds(df: DataFrame, *, folds: int, seed: int) -> DataFrame:
    """A fold number per customer (:data:`FOLD`), so a customer's cutoffs share a fold."""
    return df.withColumn(
        FOLD, F.pmod(F.xxhash64(F.col(S.CUSTOMER_ID), F.lit(seed)), F.lit(folds)).cast("int")
    )


def estimator(
    family: str, *, implementation: str, seed: int, grids: Grids = Grids()
) -> tuple[Pipeline, list[dict]]:
    """The family's pipeline (features → model) and its grid.

    Args:
        family: ``logistic_regression``, ``random_forest`` or ``gbt``.
        implementation: For ``gbt``: ``xgboost`` (xgboost.spark) or ``mllib`` (GBTClassifier).
        seed: The models' random seed.
        grids: The values to tune over.

    Raises:
        ValueError: An unknown family.
    """
    assembler = VectorAssembler(inputCols=list(S.FEATURE_COLUMNS), outputCol="features")
    label = S.LABEL
    grid = ParamGridBuilder()
    if family == LOGISTIC_REGRESSION:
        scaler = StandardScaler(
            inputCol="features", outputCol="scaled", withMean=True, withStd=True
        )
        # L-BFGS stops at a relative change of 1e-4 rather than MLlib's 1e-6: on S's six grid
        # points that took 14-49 iterations to 11-34 and moved no held-out ROC-AUC by more
        # than 0.00003 (each iteration is a Spark job).
        model: Any = LogisticRegression(
            featuresCol="scaled", labelCol=label, maxIter=100, tol=LOGISTIC_TOLERANCE
        )
        grid.addGrid(model.regParam, list(grids.logistic_reg_params)).addGrid(
            model.elasticNetParam, list(grids.logistic_elastic_net_params)
        )
        return Pipeline(stages=[assembler, scaler, model]), grid.build()
    if family == RANDOM_FOREST:
        model = RandomForestClassifier(
            labelCol=label,
            seed=seed,
            featureSubsetStrategy="sqrt",
            subsamplingRate=0.8,
        )
        grid.addGrid(model.numTrees, list(grids.forest_num_trees)).addGrid(
            model.maxDepth, list(grids.forest_max_depths)
        )
    elif family == GBT and implementation == "mllib":
        model = GBTClassifier(labelCol=label, seed=seed, maxIter=60, stepSize=0.1)
        grid.addGrid(model.maxDepth, list(grids.gbt_max_depths))
    elif family == GBT:
        from xgboost.spark import SparkXGBClassifier

        model = SparkXGBClassifier(
            features_col="features",
            label_col=label,
            num_workers=1,
            n_estimators=200,
            learning_rate=0.05,
            subsample=0.8,
            random_state=seed,
            verbose=False,
        )
        grid.addGrid(model.max_depth, list(grids.gbt_max_depths))
    else:
        raise ValueError(f"unknown model family {family!r}")
    return Pipeline(stages=[assembler, model]), grid.build()


def score_column(model_output: DataFrame) -> DataFrame:
    """Adds :data:`SCORE`, the predicted probability of a purchase, to a model's output."""
    return model_output.withColumn(SCORE, vector_to_array(F.col("probability"))[1])


# Probabilities are kept this far from 0 and 1 before taking their logit.
_EPSILON = 1e-6


@dataclass(frozen=True)
class Platt:
    """Platt scaling in logit space: ``p' = σ(slope · logit(p) + intercept)`` (Platt 1999, on
    a probability's logit as in Niculescu-Mizil & Caruana 2005). Slope 1 and intercept 0 leave
    ``p`` as it is; the intercept alone is a prior shift (Saerens et al. 2002)."""

    slope: float = 1.0
    intercept: float = 0.0


def _logit(p: Column) -> Column:
    q = F.least(F.greatest(p, F.lit(_EPSILON)), F.lit(1 - _EPSILON))
    return F.log(q / (1 - q))


def fit_platt(
    scored: DataFrame,
    *,
    label_col: str = S.LABEL,
    score_col: str = SCORE,
    max_iter: int = 50,
    tolerance: float = 1e-9,
) -> Platt:
    """The Platt scaling that fits ``score_col`` to ``label_col`` best (log loss).

    Newton's method on the two parameters, each step one aggregation in Spark (gradient,
    Hessian and loss summed over the rows; nothing per row reaches the driver), halving a step
    that would raise the loss. Not MLlib's LogisticRegression: inside a training run, MLflow's
    autologging would log its params into the model's run.

    Raises:
        ValueError: ``scored`` has no rows, or its labels are all of one class.
    """
    rows = scored.select(
        _logit(F.col(score_col).cast("double")).alias("_z"),
        F.col(label_col).cast("double").alias("_y"),
    ).persist()
    try:
        stats = rows.agg(F.count(F.lit(1)).alias("n"), F.avg("_y").alias("rate")).first()
        if stats is None or not stats["n"] or stats["rate"] in (0.0, 1.0):
            raise ValueError("cannot calibrate: no rows, or labels of one class only")

        def sums(a: float, b: float) -> tuple[float, list[float], list[list[float]]]:
            z, y = F.col("_z"), F.col("_y")
            m = F.lit(a) * z + F.lit(b)
            q = 1 / (1 + F.exp(-m))
            w = q * (1 - q)
            # log(1 + e^m) - y·m, written to stay finite for large |m|.
            loss = F.greatest(m, F.lit(0.0)) + F.log1p(F.exp(-F.abs(m))) - y * m
            r = rows.agg(
                F.sum(loss), F.sum((q - y) * z), F.sum(q - y),
                F.sum(w * z * z), F.sum(w * z), F.sum(w),
            ).first()  # fmt: skip
            assert r is not None
            return r[0], [r[1], r[2]], [[r[3] + 1e-9, r[4]], [r[4], r[5] + 1e-9]]

        a, b = 1.0, 0.0
        loss, g, h = sums(a, b)
        for _ in range(max_iter):
            det = h[0][0] * h[1][1] - h[0][1] * h[1][0]
            da = (h[1][1] * g[0] - h[0][1] * g[1]) / det
            db = (h[0][0] * g[1] - h[1][0] * g[0]) / det
            step = 1.0
            while True:
                candidate = sums(a - step * da, b - step * db)
                if candidate[0] <= loss or step < 1e-4:
                    break
                step /= 2
            a, b = a - step * da, b - step * db
            improved = loss - candidate[0]
            loss, g, h = candidate
            if abs(improved) < tolerance * max(1.0, abs(loss)):
                break
        return Platt(a, b)
    finally:
        rows.unpersist()


def calibrated(scored: DataFrame, platt: Platt, *, score_col: str = SCORE) -> DataFrame:
    """``scored`` with ``score_col`` replaced by its Platt-scaled probability."""
    z = F.lit(platt.slope) * _logit(F.col(score_col)) + F.lit(platt.intercept)
    return scored.withColumn(score_col, 1 / (1 + F.exp(-z)))


# Customer folds of the cross-fitted calibration (see :func:`calibration_for`).
CROSS_FIT_FOLDS = 2


def calibration_for(
    model: PipelineModel,
    calibration: DataFrame,
    *,
    refit: Callable[[DataFrame], PipelineModel],
    train: DataFrame,
    cross_fit: bool,
    seed: int,
) -> Platt:
    """The Platt scaling of ``model``'s probabilities, fitted on the labelled ``calibration``
    rows; no scaling when they cannot be used (no rows, or one class only: tiny data).

    With ``cross_fit`` (the calibration cutoff is one ``model`` was fitted on: less than a year
    of data puts it at the newest training cutoff), each calibration row is scored instead by
    ``refit`` — the tuned estimator — fitted on the ``train`` rows of the other customers, in
    :data:`CROSS_FIT_FOLDS` folds of customers. A model's scores of the rows it was fitted on
    are not the scores it gives new customers, so a scaling fitted on them is off for every
    later cutoff; this is the cross-validated calibration of scikit-learn's
    ``CalibratedClassifierCV(ensemble=False)`` (Platt 1999 fits on held-out folds for the same
    reason). Measured on generated M data
    (xgboost, 66,595 held-out customers): held-out expected calibration error 0.0209 → 0.0181,
    Brier 0.1749 → 0.1747, for two extra fits of half the rows. When a fold's refit would see
    one class only or a fold has no calibration rows (tiny data), there is no scaling (a
    warning says so): a scaling fitted on the model's own training rows is the bias above.
    """
    try:
        if not cross_fit:
            return fit_platt(score_column(model.transform(calibration)))
        if _can_cross_fit(train, calibration, seed):
            return _cross_fitted(calibration, refit=refit, train=train, seed=seed)
        _log.warning(
            "calibration: too few rows for %d folds of customers with both classes; "
            "probabilities left unscaled",
            CROSS_FIT_FOLDS,
        )
        return Platt()
    except ValueError:  # calibration labels of one class
        return Platt()


def _folds(seed: int) -> Column:
    return F.pmod(F.xxhash64(F.col(S.CUSTOMER_ID), F.lit(seed)), F.lit(CROSS_FIT_FOLDS))


def _can_cross_fit(train: DataFrame, calibration: DataFrame, seed: int) -> bool:
    """Whether every fold's refit sees both classes and every fold has calibration rows (two
    bounded collects: at most folds × 2 and folds rows)."""
    fitted = train.select(_folds(seed).alias("f"), F.col(S.LABEL)).distinct().collect()
    scored = {r[0] for r in calibration.select(_folds(seed)).distinct().collect()}
    return all(
        {r[1] for r in fitted if r[0] != fold} >= {0, 1} and fold in scored
        for fold in range(CROSS_FIT_FOLDS)
    )


def _cross_fitted(
    calibration: DataFrame,
    *,
    refit: Callable[[DataFrame], PipelineModel],
    train: DataFrame,
    seed: int,
) -> Platt:
    folds = _folds(seed)
    scored = None
    for fold in range(CROSS_FIT_FOLDS):
        fitted = refit(train.where(folds != fold))
        part = score_column(fitted.transform(calibration.where(folds == fold)))
        part = part.select(S.LABEL, SCORE)
        scored = part if scored is None else scored.unionByName(part)
    assert scored is not None
    return fit_platt(scored)
