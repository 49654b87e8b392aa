from __future__ import annotations

import pytest
from pyspark.sql import SparkSession
from sklearn.metrics import average_precision_score, roc_auc_score

from retailml.ml.metrics import binary_metrics, curves, decile_rates

# 20 customers: score and whether they bought.
SCORES = [
    0.95,
    0.9,
    0.85,
    0.8,
    0.7,
    0.65,
    0.6,
    0.55,
    0.5,
    0.45,
    0.4,
    0.35,
    0.3,
    0.25,
    0.2,
    0.15,
    0.1,
    0.08,
    0.05,
    0.01,
]
LABELS = [1, 1, 0, 1, 0, 1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]


def scored(spark: SparkSession):  # type: ignore[no-untyped-def]
    return spark.createDataFrame(list(zip(LABELS, SCORES, strict=True)), "label int, score double")


def test_metrics_match_a_plain_python_reference(spark: SparkSession) -> None:
    m = binary_metrics(scored(spark))
    assert m.roc_auc == pytest.approx(roc_auc_score(LABELS, SCORES))
    # Spark's PR-AUC interpolates linearly; average precision is the step version: close.
    assert m.pr_auc == pytest.approx(average_precision_score(LABELS, SCORES), abs=0.06)
    assert m.brier == pytest.approx(
        sum((s - y) ** 2 for s, y in zip(SCORES, LABELS, strict=True)) / 20
    )
    assert m.base_rate == pytest.approx(6 / 20)
    # Top 10% = the two highest scores, both buyers: rate 1.0 against a base rate of 0.3.
    assert m.lift_at_10 == pytest.approx(1.0 / 0.3)
    assert m.rows == 20
    assert m.brier_base_rate == pytest.approx(0.3 * 0.7)
    # Expected calibration error: ten equal-width bins, |mean score - buyers' share| weighted.
    bins: dict[int, list[tuple[float, int]]] = {}
    for s, y in zip(SCORES, LABELS, strict=True):
        bins.setdefault(min(int(s * 10), 9), []).append((s, y))
    ece = (
        sum(
            len(b) * abs(sum(s for s, _ in b) / len(b) - sum(y for _, y in b) / len(b))
            for b in bins.values()
        )
        / 20
    )
    assert m.ece == pytest.approx(ece)


def test_single_class_cannot_be_evaluated(spark: SparkSession) -> None:
    df = spark.createDataFrame([(0, 0.2), (0, 0.4)], "label int, score double")
    with pytest.raises(ValueError, match="need both classes"):
        binary_metrics(df)


def test_curves_and_deciles(spark: SparkSession) -> None:
    c = curves(scored(spark))
    assert (
        c.fpr[0] == 0
        and c.tpr[0] == 0
        and c.fpr[-1] == pytest.approx(1)
        and c.tpr[-1] == pytest.approx(1)
    )
    assert c.gain[-1] == pytest.approx(1) and c.population[-1] == pytest.approx(1)
    assert all(b >= a for a, b in zip(c.tpr, c.tpr[1:], strict=False))
    rates = decile_rates(scored(spark))
    assert len(rates) == 10
    # Two customers per decile, in score order: (1,1), (0,1), (0,1), (0,0), (1,0), (0,0), (1,0)…
    assert rates == [1.0, 0.5, 0.5, 0.0, 0.5, 0.0, 0.5, 0.0, 0.0, 0.0]
    assert c.decile_rate == rates
    assert c.decile_actual == [2.0 * r for r in rates]  # two customers per decile
    assert c.decile_expected[0] == pytest.approx(0.95 + 0.9)
    assert sum(c.bin_rows) == 20 and c.bin_probability == sorted(c.bin_probability)
