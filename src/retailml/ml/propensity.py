"""The purchase-propensity estimators and their output: shared by training (which fits them) and
scoring (which reads what they output), so neither stage imports the other."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pyspark.ml import Pipeline
from pyspark.ml.classification import GBTClassifier, LogisticRegression, RandomForestClassifier
from pyspark.ml.feature import StandardScaler, VectorAssembler
from pyspark.ml.functions import vector_to_array
from pyspark.ml.tuning import ParamGridBuilder
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from retailml import schemas as S

WEIGHT = "class_weight"  # balanced instance weights
FOLD = "fold"  # a customer's cross-validation fold
SCORE = "score"  # the predicted probability of a purchase

LOGISTIC_REGRESSION, RANDOM_FOREST, GBT = "logistic_regression", "random_forest", "gbt"


@dataclass(frozen=True)
class Grids:
    """The tuning grid of each family (the ``train`` settings of the same names)."""

    logistic_reg_params: Sequence[float] = (0.001, 0.01, 0.1)
    logistic_elastic_net_params: Sequence[float] = (0.0, 0.5)
    forest_num_trees: Sequence[int] = (60, 150)
    forest_max_depths: Sequence[int] = (5, 9)
    gbt_max_depths: Sequence[int] = (3, 5)


def with_class_weights(df: DataFrame, *, positive_rate: float) -> DataFrame:
    """Balanced instance weights (:data:`WEIGHT`): each class carries half of the total."""
    w_pos, w_neg = 0.5 / positive_rate, 0.5 / (1 - positive_rate)
    return df.withColumn(WEIGHT, F.when(F.col(S.LABEL) == 1, F.lit(w_pos)).otherwise(F.lit(w_neg)))


def with_customer_folds(df: DataFrame, *, folds: int, seed: int) -> DataFrame:
    """A fold number per customer (:data:`FOLD`), so a customer's cutoffs share a fold."""
    return df.withColumn(
        FOLD, F.pmod(F.xxhash64(F.col(S.CUSTOMER_ID), F.lit(seed)), F.lit(folds)).cast("int")
    )


def estimator(
    family: str, *, implementation: str, seed: int, grids: Grids = Grids()
) -> tuple[Pipeline, list[dict]]:
    """The family's pipeline (features → model, weighted by :data:`WEIGHT`) and its grid.

    Args:
        family: ``logistic_regression``, ``random_forest`` or ``gbt``.
        implementation: For ``gbt``: ``xgboost`` (xgboost.spark) or ``mllib`` (GBTClassifier).
        seed: The models' random seed.
        grids: The values to tune over.

    Raises:
        ValueError: An unknown family.
    """
    assembler = VectorAssembler(inputCols=list(S.FEATURE_COLUMNS), outputCol="features")
    label, weight = S.LABEL, WEIGHT
    grid = ParamGridBuilder()
    if family == LOGISTIC_REGRESSION:
        scaler = StandardScaler(
            inputCol="features", outputCol="scaled", withMean=True, withStd=True
        )
        model: Any = LogisticRegression(
            featuresCol="scaled", labelCol=label, weightCol=weight, maxIter=100
        )
        grid.addGrid(model.regParam, list(grids.logistic_reg_params)).addGrid(
            model.elasticNetParam, list(grids.logistic_elastic_net_params)
        )
        return Pipeline(stages=[assembler, scaler, model]), grid.build()
    if family == RANDOM_FOREST:
        model = RandomForestClassifier(
            labelCol=label,
            weightCol=weight,
            seed=seed,
            featureSubsetStrategy="sqrt",
            subsamplingRate=0.8,
        )
        grid.addGrid(model.numTrees, list(grids.forest_num_trees)).addGrid(
            model.maxDepth, list(grids.forest_max_depths)
        )
    elif family == GBT and implementation == "mllib":
        model = GBTClassifier(labelCol=label, weightCol=weight, seed=seed, maxIter=60, stepSize=0.1)
        grid.addGrid(model.maxDepth, list(grids.gbt_max_depths))
    elif family == GBT:
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
        grid.addGrid(model.max_depth, list(grids.gbt_max_depths))
    else:
        raise ValueError(f"unknown model family {family!r}")
    return Pipeline(stages=[assembler, model]), grid.build()


def score_column(model_output: DataFrame) -> DataFrame:
    """Adds :data:`SCORE`, the predicted probability of a purchase, to a model's output."""
    return model_output.withColumn(SCORE, vector_to_array(F.col("probability"))[1])
