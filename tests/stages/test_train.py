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
from retailml.stages import train
from retailml.workflow import run_task
from tests.conftest import assert_delta_inputs, make_settings


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
