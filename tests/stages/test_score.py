from __future__ import annotations

import itertools
import random
from datetime import date
from pathlib import Path

import mlflow
import mlflow.spark
import pytest
from pyspark.ml import Pipeline
from pyspark.ml.classification import LogisticRegression
from pyspark.ml.feature import VectorAssembler
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from retailml import schemas as S
from retailml.errors import RetailmlError
from retailml.lakehouse import Lakehouse
from retailml.lookup import customer_card
from retailml.ml import registry, tracking
from retailml.settings import Settings
from retailml.stages import score
from tests.conftest import make_settings

AS_OF = date(2011, 12, 10)


def features(spark: SparkSession, *, split: str, cutoff: date, customers: int = 40) -> DataFrame:
    rng = random.Random(7)
    rows = []
    for i in range(customers):
        values = [rng.random() * 10 for _ in S.FEATURE_COLUMNS]
        label = None if split == S.SCORE else int(values[0] > 5)
        rows.append((f"c{i:03d}", cutoff, split, *values, label))
    return spark.createDataFrame(rows, S.CUSTOMER_FEATURES)


def register_champion(settings: Settings, spark: SparkSession) -> str:
    """A small real model, registered and aliased the way train does it."""
    train = features(spark, split=S.TRAIN, cutoff=date(2011, 11, 1))
    pipe = Pipeline(
        stages=[
            VectorAssembler(inputCols=list(S.FEATURE_COLUMNS), outputCol="features"),
            LogisticRegression(labelCol=S.LABEL),
        ]
    )
    model = pipe.fit(train)
    client = tracking.configure(settings)
    mlflow.set_experiment(experiment_id=tracking.experiment(settings, "score-test"))
    with mlflow.start_run():
        info = mlflow.spark.log_model(model, artifact_path="model", pip_requirements=["pyspark"])
    version = str(mlflow.register_model(info.model_uri, settings.train.model_name).version)
    client.set_registered_model_alias(settings.train.model_name, registry.CHAMPION, version)
    return version


@pytest.fixture
def lake_with_features(settings: Settings, spark: SparkSession) -> Lakehouse:
    lake = Lakehouse(settings, spark)
    lake.overwrite("silver.customer_features", features(spark, split=S.SCORE, cutoff=AS_OF))
    customers = spark.createDataFrame(
        [(f"c{i:03d}", "UK") for i in range(40)], "customer_id string, country string"
    ).select(
        S.CUSTOMER_ID,
        S.COUNTRY,
        *[F.lit(None).cast("timestamp").alias(c) for c in ("first_purchase", "last_purchase")],
        *[
            F.lit(1).cast("long").alias(c)
            for c in ("invoices", "purchase_lines", "return_lines", "distinct_products")
        ],
        F.lit(1.0).alias("total_spent"),
    )
    lake.overwrite("silver.customers", customers)
    return lake


def test_no_champion_is_a_clear_error(tmp_path: Path, spark: SparkSession) -> None:
    settings = make_settings(tmp_path)
    Lakehouse(settings, spark).overwrite(
        "silver.customer_features", features(spark, split=S.SCORE, cutoff=AS_OF)
    )
    with pytest.raises(RetailmlError, match="run `retailml task train` first"):
        score.run(settings, spark)


def test_scores_through_the_alias_idempotently(
    settings: Settings, spark: SparkSession, lake_with_features: Lakehouse
) -> None:
    lake = lake_with_features
    version = register_champion(settings, spark)
    first = score.run(settings, spark)
    assert first.as_of == AS_OF and first.model_version == version and first.customers == 40

    gold = lake.read("gold.purchase_propensity").collect()
    assert sorted(r.rank for r in gold) == list(range(1, 41))
    assert {r.model_version for r in gold} == {version}  # loaded through the alias
    by_rank = sorted(gold, key=lambda r: r.rank)
    assert all(a.probability >= b.probability for a, b in itertools.pairwise(by_rank))
    assert [r.decile for r in by_rank] == [d for d in range(1, 11) for _ in range(4)]

    # Re-scoring the same as-of date replaces its rows; other dates stay as history.
    older = lake.read("gold.purchase_propensity").withColumn(
        S.AS_OF_DATE, F.lit(date(2011, 11, 10))
    )
    lake.append("gold.purchase_propensity", older)
    score.run(settings.with_overrides({"workflow.full": True}), spark)
    counts = {
        r[0]: r[1]
        for r in lake.read("gold.purchase_propensity").groupBy(S.AS_OF_DATE).count().collect()
    }
    assert counts == {AS_OF: 40, date(2011, 11, 10): 40}

    top = lake.read("gold.top_buyers").orderBy(S.RANK).collect()
    assert [r.rank for r in top] == list(range(1, 41))  # top_n (100) > customers
    assert top[0].customer_id == by_rank[0].customer_id and top[0].country == "UK"

    card = customer_card(settings, spark, by_rank[0].customer_id)
    assert card[0].startswith(f"customer {by_rank[0].customer_id} as of {AS_OF}")
    assert "rank 1 " in card[0] and "decile 1" in card[0]
    with pytest.raises(RetailmlError, match=r"not in gold\.purchase_propensity"):
        customer_card(settings, spark, "nobody")
