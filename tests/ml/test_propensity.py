"""The propensity estimators' shared pieces: weights, folds, grids from settings, the score."""

from __future__ import annotations

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from retailml.ml import propensity
from retailml.settings import load_settings
from retailml.stages.train import grids


def test_class_weights_balance_the_classes(spark: SparkSession) -> None:
    df = spark.createDataFrame([(1,), (0,), (0,), (0,)], "label int")
    weighted = propensity.with_class_weights(df, positive_rate=0.25).collect()
    total = {lbl: sum(r.class_weight for r in weighted if r.label == lbl) for lbl in (0, 1)}
    assert total[0] == pytest.approx(total[1]) == pytest.approx(2.0)


def test_folds_keep_a_customer_together(spark: SparkSession) -> None:
    rows = [(f"c{i % 7}", i) for i in range(70)]
    df = propensity.with_customer_folds(
        spark.createDataFrame(rows, "customer_id string, i int"), folds=3, seed=1
    )
    per_customer = df.groupBy("customer_id").agg(F.countDistinct("fold").alias("n")).collect()
    assert all(r.n == 1 for r in per_customer)
    assert {r.fold for r in df.collect()} <= {0, 1, 2}


def test_the_grids_are_settings() -> None:
    cfg = load_settings(
        environ={}, overrides={"train.forest_num_trees": [10], "train.gbt_max_depths": [2, 4, 6]}
    ).train
    _, grid = propensity.estimator(
        "random_forest", implementation="mllib", seed=1, grids=grids(cfg)
    )
    assert [{p.name: v for p, v in point.items()} for point in grid] == [
        {"numTrees": 10, "maxDepth": 5},
        {"numTrees": 10, "maxDepth": 9},
    ]
    _, grid = propensity.estimator("gbt", implementation="mllib", seed=1, grids=grids(cfg))
    assert [next(iter(point.values())) for point in grid] == [2, 4, 6]
    with pytest.raises(ValueError, match="unknown model family 'svm'"):
        propensity.estimator("svm", implementation="mllib", seed=1)
