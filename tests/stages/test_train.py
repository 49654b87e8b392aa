from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import mlflow
import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from retailml import lineage
from retailml import schemas as S
from retailml.generate import generate_data
from retailml.lakehouse import Lakehouse
from retailml.ml import registry, tracking
from retailml.ml.propensity import with_customer_folds
from retailml.ml.sample import customer_share
from retailml.stages import train
from retailml.workflow import run_task
from tests.conftest import assert_delta_inputs, make_settings


def test_customer_validation_split_validates_on_fold_zero(spark: SparkSession) -> None:
    """Above the size setting, tuning fits each grid point on folds 1.. and measures it on the
    customers of fold 0, then refits the best on every row."""
    from pyspark.ml import Pipeline
    from pyspark.ml.classification import LogisticRegression
    from pyspark.ml.evaluation import BinaryClassificationEvaluator
    from pyspark.ml.feature import VectorAssembler
    from pyspark.ml.tuning import ParamGridBuilder

    rows = [(f"c{i % 40}", float(i % 13), int(i % 13 > 5 if i % 4 else i % 2)) for i in range(400)]
    df = with_customer_folds(
        spark.createDataFrame(rows, "customer_id string, x double, label int"), folds=3, seed=7
    )
    lr = LogisticRegression(featuresCol="v", labelCol="label")
    pipe = Pipeline(stages=[VectorAssembler(inputCols=["x"], outputCol="v"), lr])
    grid = ParamGridBuilder().addGrid(lr.regParam, [0.0, 5.0]).build()
    evaluator = BinaryClassificationEvaluator(labelCol="label")
    tuned = train.CustomerValidationSplit(
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
    split = train.CustomerValidationSplit(
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


@pytest.mark.slow
def test_train_end_to_end_logs_to_mlflow_and_gates(tmp_path: Path, spark: SparkSession) -> None:
    settings = make_settings(
        tmp_path,
        **{
            "generate.customers": 250,
            "generate.products": 60,
            "generate.days": 300,
            "features.train_cutoffs": 3,
            "train.folds": 2,
        },
    )
    generate_data(settings)
    for task in ("ingest", "clean", "features"):
        run_task(task, settings, spark, run_id="train-test", echo=lambda _: None)

    # The split: no training cutoff's label window reaches into the held-out period.
    features = Lakehouse(settings, spark).read("silver.customer_features")
    cutoffs = {
        r.split: sorted(r.c)
        for r in features.groupBy("split").agg(F.collect_set("cutoff_date").alias("c")).collect()
    }
    holdout = cutoffs[S.HOLDOUT][0]
    horizon = timedelta(days=settings.features.horizon_days)
    assert all(c + horizon <= holdout for c in cutoffs[S.TRAIN])
    assert len(cutoffs[S.TRAIN]) == 3 and cutoffs[S.SCORE][0] > holdout

    first = train.run(settings, spark)
    assert [r.family for r in first.families] == ["logistic_regression", "random_forest", "gbt"]
    for r in first.families:
        assert r.holdout.roc_auc > 0.7, (r.family, r.holdout)
        assert r.holdout.rows == features.where("split = 'holdout'").count()
    assert first.decision.promoted and first.holdout_cutoff == holdout.isoformat()

    client = tracking.configure(settings)
    name = settings.train.model_name
    champion = client.get_model_version_by_alias(name, registry.CHAMPION)
    assert str(champion.version) == first.decision.challenger_version
    assert champion.tags["holdout_cutoff"] == holdout.isoformat()
    parent = client.get_run(first.parent_run_id)
    assert parent.data.tags["gate_decision"] == "promoted"
    # Version 1: clean's write, then its CHECK constraint (the same rows).
    assert parent.data.tags["data.silver_transactions_version"] == "1"
    assert_delta_inputs(
        parent, Lakehouse(settings, spark), ["silver.customer_features", "silver.transactions"]
    )
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{first.parent_run_id}' and attributes.run_name != ''",
    )
    families = {c.data.params.get("family") for c in children}
    assert {"logistic_regression", "random_forest", "gbt"} <= families
    for child in children:
        if child.data.params.get("family"):
            assert "holdout_roc_auc" in child.data.metrics and "best_" in "".join(child.data.params)
            artifacts = {a.path for a in client.list_artifacts(child.info.run_id, "evaluation")}
            # The figures are the report's own plots.
            assert {f"evaluation/{f}" for f in ("roc_pr.png", "gain.png", "curves.json")} <= (
                artifacts
            )
    # The registered model loads through the alias and scores.
    model = mlflow.spark.load_model(f"models:/{name}@{registry.CHAMPION}")
    assert model.transform(features.where("split = 'score'")).count() > 0

    # Nothing changed: nothing is done; asked to retrain, it registers a version but the
    # alias stays.
    assert isinstance(train.run(settings, spark), lineage.UpToDate)
    second = train.run(settings.with_overrides({"workflow.retrain": True}), spark)
    assert isinstance(second, train.TrainResult) and second.retrain_reason == "asked (--retrain)"
    assert not second.decision.promoted
    assert str(client.get_model_version_by_alias(name, registry.CHAMPION).version) == str(
        champion.version
    )
    assert "does not beat" in second.decision.reason


def test_too_little_labelled_data_is_a_clear_error(tmp_path: Path, spark: SparkSession) -> None:
    settings = make_settings(tmp_path)
    rows = [("c1", date(2011, 1, 1), S.TRAIN, *[0.0] * len(S.FEATURE_COLUMNS), 0)]
    Lakehouse(settings, spark).overwrite(
        "silver.customer_features", spark.createDataFrame(rows, S.CUSTOMER_FEATURES)
    )
    with pytest.raises(train.RetailmlError, match="not enough labelled data to train"):
        train.run(settings, spark)


def test_labels_of_one_class_say_exactly_that() -> None:
    with pytest.raises(
        train.RetailmlError,
        match=r"^all 1,200 training labels are 1: every customer bought within "
        r"features\.horizon_days = 30 days .* shorten features\.horizon_days$",
    ):
        train.check_labels(1200, 1.0, 300, 0.4, horizon_days=30)
    with pytest.raises(train.RetailmlError, match=r"^all 300 held-out labels are 0: .* lengthen"):
        train.check_labels(1200, 0.3, 300, 0.0, horizon_days=30)
    train.check_labels(1200, 0.3, 300, 0.2, horizon_days=30)  # both classes: fine
