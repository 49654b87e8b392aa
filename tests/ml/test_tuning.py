from __future__ import annotations

import pytest
from pyspark.ml import Pipeline
from pyspark.ml.classification import LogisticRegression
from pyspark.ml.evaluation import BinaryClassificationEvaluator
from pyspark.ml.feature import VectorAssembler
from pyspark.ml.tuning import ParamGridBuilder
from pyspark.sql import DataFrame, SparkSession

from retailml.ml.propensity import with_customer_folds
from retailml.ml.sample import customer_share
from retailml.ml.tuning import CustomerValidationSplit, SuccessiveHalvingCV


def _folded(spark: SparkSession) -> tuple[DataFrame, Pipeline, LogisticRegression]:
    """400 rows of 40 customers in 3 customer folds, and a one-feature logistic regression."""
    rows = [(f"c{i % 40}", float(i % 13), int(i % 13 > 5 if i % 4 else i % 2)) for i in range(400)]
    df = with_customer_folds(
        spark.createDataFrame(rows, "customer_id string, x double, label int"), folds=3, seed=7
    )
    lr = LogisticRegression(featuresCol="v", labelCol="label")
    return df, Pipeline(stages=[VectorAssembler(inputCols=["x"], outputCol="v"), lr]), lr


def test_successive_halving_keeps_the_better_half_fold_by_fold(spark: SparkSession) -> None:
    """Every grid point is measured on fold 0, the better half on fold 1, and so on; the best
    of the last round is refitted on every row, and it is the argmax of avgMetrics (what
    MLflow's autologging reports)."""
    df, pipe, lr = _folded(spark)
    evaluator = BinaryClassificationEvaluator(labelCol="label")
    grid = (
        ParamGridBuilder()
        .addGrid(lr.regParam, [0.0, 0.3, 3.0, 30.0])
        .addGrid(lr.elasticNetParam, [0.0, 1.0])
        .build()
    )

    def metric(point: int, fold: int) -> float:
        fitted = pipe.fit(df.where(f"fold != {fold}"), grid[point])
        return evaluator.evaluate(fitted.transform(df.where(f"fold = {fold}")))

    # The race by hand: 8 points on fold 0, 4 on fold 1, 2 on fold 2 (the earlier point on ties).
    measured = {i: [metric(i, 0)] for i in range(8)}
    alive = sorted(range(8), key=lambda i: (-measured[i][0], i))[:4]
    for i in alive:
        measured[i].append(metric(i, 1))
    mean = {i: sum(v) / len(v) for i, v in measured.items()}
    alive = sorted(alive, key=lambda i: (-mean[i], i))[:2]
    for i in alive:
        measured[i].append(metric(i, 2))
    mean = {i: sum(v) / len(v) for i, v in measured.items()}
    best = min(alive, key=lambda i: (-mean[i], i))

    tuned = SuccessiveHalvingCV(
        estimator=pipe, estimatorParamMaps=grid, evaluator=evaluator, numFolds=3, foldCol="fold"
    ).fit(df)

    assert (
        tuned.bestModel.stages[-1].coefficients == pipe.fit(df, grid[best]).stages[-1].coefficients
    )
    winner = measured[best]
    for i, values in measured.items():
        # Left out after r folds: its mean there, shifted by the winner's all-folds − r-folds.
        shift = sum(winner) / 3 - sum(winner[: len(values)]) / len(values)
        assert tuned.avgMetrics[i] == pytest.approx(mean[i] + shift)
    assert max(range(8), key=lambda i: (tuned.avgMetrics[i], -i)) == best
    assert sorted(len(v) for v in measured.values()) == [1, 1, 1, 1, 2, 2, 3, 3]


def test_customer_validation_split_validates_on_fold_zero(spark: SparkSession) -> None:
    """Above the size setting, tuning fits each grid point on folds 1.. and measures it on the
    customers of fold 0, then refits the best on every row."""
    df, pipe, lr = _folded(spark)
    evaluator = BinaryClassificationEvaluator(labelCol="label")
    grid = ParamGridBuilder().addGrid(lr.regParam, [0.0, 5.0]).build()
    tuned = CustomerValidationSplit(
        estimator=pipe, estimatorParamMaps=grid, evaluator=evaluator
    ).fit(df)

    fitted_on = df.where("fold != 0")
    measured_on = df.where("fold = 0")
    expected = [evaluator.evaluate(pipe.fit(fitted_on, p).transform(measured_on)) for p in grid]
    assert tuned.validationMetrics == pytest.approx(expected)
    assert 0 < measured_on.count() < df.count()
    best = max(range(2), key=lambda i: expected[i])
    refit = pipe.fit(df, grid[best]).stages[-1]
    assert tuned.bestModel.stages[-1].coefficients == refit.coefficients

    # Tuned on a share of the customers (all their rows), refitted on every row.
    split = CustomerValidationSplit(
        estimator=pipe, estimatorParamMaps=grid, evaluator=evaluator, seed=3
    )
    split.sample = 0.5
    sampled = split.fit(df)
    kept = df.where(customer_share(3) < 0.5)
    customers = {r.customer_id for r in kept.select("customer_id").distinct().collect()}
    assert 10 < len(customers) < 30
    assert kept.count() == 10 * len(customers)  # every row of a kept customer
    expected = [
        evaluator.evaluate(pipe.fit(kept.where("fold != 0"), p).transform(kept.where("fold = 0")))
        for p in grid
    ]
    assert sampled.validationMetrics == pytest.approx(expected)
    best = max(range(2), key=lambda i: expected[i])
    assert (
        sampled.bestModel.stages[-1].coefficients
        == pipe.fit(df, grid[best]).stages[-1].coefficients
    )
