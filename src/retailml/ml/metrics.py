"""Classification metrics computed with Spark, so only bounded summaries reach the driver."""

from __future__ import annotations

from dataclasses import dataclass, field

from pyspark.ml.evaluation import BinaryClassificationEvaluator
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

CURVE_BINS = 200
# Equal-width probability bins of the expected calibration error and the reliability diagram.
CALIBRATION_BINS = 10


@dataclass(frozen=True)
class BinaryMetrics:
    """Held-out quality of a probability score; larger is better except ``brier`` and ``ece``.

    Attributes:
        roc_auc: Area under the ROC curve (ranking).
        pr_auc: Area under the precision-recall curve.
        lift_at_10: Positive rate of the top 10% of scores over the overall rate.
        brier: Mean squared error of the probability (Brier 1950).
        base_rate: The positive rate.
        rows: Rows scored.
        ece: Expected calibration error: over :data:`CALIBRATION_BINS` equal-width probability
            bins, the row-weighted mean of |mean probability − positive rate| (Naeini et al.
            2015; Guo et al. 2017). 0 for perfectly calibrated probabilities.
        brier_base_rate: The Brier score of predicting the base rate for everyone,
            ``base_rate × (1 − base_rate)``: a model whose Brier is not below it adds nothing
            to the probabilities.
    """

    roc_auc: float
    pr_auc: float
    lift_at_10: float
    brier: float
    base_rate: float
    rows: int
    ece: float = 0.0
    brier_base_rate: float = 0.0

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}{k}": float(v) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class Curves:
    """ROC, precision-recall and cumulative gain points, from a binned score histogram."""

    fpr: list[float]
    tpr: list[float]
    recall: list[float]
    precision: list[float]
    population: list[float]  # share of customers targeted, by decreasing score
    gain: list[float]  # share of all positives captured
    decile_rate: list[float]  # positive rate in each score decile, top decile first
    # The reliability diagram: per probability bin (of CALIBRATION_BINS), its rows, mean
    # probability and positive rate; empty bins left out.
    bin_rows: list[int] = field(default_factory=list)
    bin_probability: list[float] = field(default_factory=list)
    bin_rate: list[float] = field(default_factory=list)
    # Per score decile, top first: buyers expected (sum of probabilities) and actual.
    decile_expected: list[float] = field(default_factory=list)
    decile_actual: list[float] = field(default_factory=list)


def binary_metrics(
    scored: DataFrame, *, label_col: str = "label", score_col: str = "score"
) -> BinaryMetrics:
    """ROC-AUC, PR-AUC, lift in the top decile and Brier score of ``score_col`` for ``label_col``.

    Lift at 10% is the positive rate among the 10% highest scores divided by the overall rate.

    Raises:
        ValueError: The labels are all one class, so AUC is undefined.
    """
    y, p = F.col(label_col).cast("double"), F.col(score_col).cast("double")
    stats = scored.agg(
        F.count(F.lit(1)).alias("n"),
        F.avg(y).alias("rate"),
        F.avg((p - y) * (p - y)).alias("brier"),
        F.percentile_approx(p, 0.9, 10_000).alias("p90"),
    ).first()
    assert stats is not None
    n, rate = int(stats["n"]), float(stats["rate"] or 0.0)
    if n == 0 or rate in (0.0, 1.0):
        raise ValueError(
            f"cannot evaluate: {n} rows with positive rate {rate:.3f} (need both classes)"
        )
    evaluator = BinaryClassificationEvaluator(rawPredictionCol=score_col, labelCol=label_col)
    data = scored.select(p.alias(score_col), y.alias(label_col))
    roc = evaluator.setMetricName("areaUnderROC").evaluate(data)
    pr = evaluator.setMetricName("areaUnderPR").evaluate(data)
    # Strictly above the 90th percentile is the top 10%; with heavy ties at the top, fall back
    # to "at or above" so the top group is never empty.
    top = scored.agg(
        F.avg(F.when(p > F.lit(stats["p90"]), y)).alias("above"),
        F.avg(F.when(p >= F.lit(stats["p90"]), y)).alias("at_or_above"),
    ).first()
    assert top is not None
    top_rate = float(top["above"] if top["above"] is not None else top["at_or_above"])
    bins = reliability(scored, label_col=label_col, score_col=score_col)
    return BinaryMetrics(
        roc_auc=roc,
        pr_auc=pr,
        lift_at_10=top_rate / rate,
        brier=float(stats["brier"]),
        base_rate=rate,
        rows=n,
        ece=sum(r * abs(p - y) for r, p, y in zip(*bins, strict=True)) / n,
        brier_base_rate=rate * (1 - rate),
    )


def reliability(
    scored: DataFrame,
    *,
    label_col: str = "label",
    score_col: str = "score",
    bins: int = CALIBRATION_BINS,
) -> tuple[list[int], list[float], list[float]]:
    """Rows, mean probability and positive rate per equal-width probability bin (non-empty
    bins, lowest first): the reliability diagram, and what the expected calibration error sums.
    """
    y, p = F.col(label_col).cast("double"), F.col(score_col).cast("double")
    b = F.least(F.floor(p * bins), F.lit(bins - 1)).cast("int")
    rows = (
        scored.groupBy(b.alias("b"))
        .agg(F.count(F.lit(1)).alias("n"), F.avg(p).alias("p"), F.avg(y).alias("y"))
        .orderBy("b")
        .collect()
    )
    return (
        [int(r["n"]) for r in rows],
        [float(r["p"]) for r in rows],
        [float(r["y"]) for r in rows],
    )


def curves(
    scored: DataFrame, *, label_col: str = "label", score_col: str = "score", bins: int = CURVE_BINS
) -> Curves:
    """Curve points from a histogram of scores in ``bins`` equal-width bins (bounded size)."""
    y, p = F.col(label_col).cast("double"), F.col(score_col).cast("double")
    b = F.least(F.floor(p * bins), F.lit(bins - 1)).cast("int")
    hist = {
        int(r["b"]): (float(r["pos"]), float(r["neg"]))
        for r in scored.groupBy(b.alias("b"))
        .agg(F.sum(y).alias("pos"), F.sum(1 - y).alias("neg"))
        .collect()
    }
    total_pos = sum(v[0] for v in hist.values()) or 1.0
    total_neg = sum(v[1] for v in hist.values()) or 1.0
    fpr, tpr, recall, precision, population, gain = [0.0], [0.0], [], [], [0.0], [0.0]
    tp = fp = 0.0
    for k in range(bins - 1, -1, -1):  # from the highest scores down
        pos, neg = hist.get(k, (0.0, 0.0))
        if pos + neg == 0:
            continue
        tp, fp = tp + pos, fp + neg
        fpr.append(fp / total_neg)
        tpr.append(tp / total_pos)
        recall.append(tp / total_pos)
        precision.append(tp / (tp + fp))
        population.append((tp + fp) / (total_pos + total_neg))
        gain.append(tp / total_pos)
    thresholds = score_deciles(scored, score_col=score_col)
    deciles = {
        int(r["decile"]): r
        for r in scored.groupBy(decile_of(p, thresholds).alias("decile"))
        .agg(F.avg(y).alias("rate"), F.sum(p).alias("expected"), F.sum(y).alias("actual"))
        .collect()
    }
    bin_rows, bin_probability, bin_rate = reliability(
        scored, label_col=label_col, score_col=score_col
    )

    def per_decile(column: str) -> list[float]:
        return [float(deciles[d][column]) if d in deciles else 0.0 for d in range(1, 11)]

    return Curves(
        fpr,
        tpr,
        recall,
        precision,
        population,
        gain,
        per_decile("rate"),
        bin_rows,
        bin_probability,
        bin_rate,
        per_decile("expected"),
        per_decile("actual"),
    )


def decile_of(score: Column, thresholds: list[float]) -> Column:
    """Decile 1 (highest scores) … 10 (lowest) of ``score``, given its 10%…90% quantiles."""
    decile = F.lit(10)
    for k, q in enumerate(thresholds):  # q10 … q90: scores above q(10k) are in decile ≤ 9-k
        decile = F.when(score > F.lit(q), F.lit(9 - k)).otherwise(decile)
    return decile


def score_deciles(scored: DataFrame, *, score_col: str = "score") -> list[float]:
    """The 10%, 20%, …, 90% quantiles of the score (approximate, one pass, no global sort)."""
    row = scored.agg(
        F.percentile_approx(F.col(score_col), [i / 10 for i in range(1, 10)], 10_000)
    ).first()
    return [float(q) for q in row[0]] if row and row[0] else [0.0] * 9


def decile_rates(
    scored: DataFrame, *, label_col: str = "label", score_col: str = "score"
) -> list[float]:
    """Positive rate per score decile, top decile first."""
    thresholds = score_deciles(scored, score_col=score_col)
    rows = (
        scored.groupBy(decile_of(F.col(score_col), thresholds).alias("decile"))
        .agg(F.avg(F.col(label_col).cast("double")).alias("rate"))
        .collect()
    )
    rates = {int(r["decile"]): float(r["rate"]) for r in rows}
    return [rates.get(d, 0.0) for d in range(1, 11)]
