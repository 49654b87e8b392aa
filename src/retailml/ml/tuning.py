"""Tuning a pipeline's grid by customer folds: cross-validation with successive halving over
the folds, and one validation fold of customers for large data. Both are pyspark.ml tuners
(``fit`` returns the standard model with the best grid point refitted on every row), so
MLflow's pyspark.ml autologging logs them like the built-in ones.
"""

from __future__ import annotations

import math
from multiprocessing.pool import ThreadPool
from statistics import fmean, pstdev

from pyspark import inheritable_thread_target
from pyspark.ml.tuning import (
    CrossValidator,
    CrossValidatorModel,
    TrainValidationSplit,
    TrainValidationSplitModel,
    _parallelFitTasks,
)
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from retailml.ml.propensity import FOLD
from retailml.ml.sample import customer_share


def _measure(
    tuner: CrossValidator | TrainValidationSplit,
    train: DataFrame,
    validation: DataFrame,
    points: list[int],
) -> dict[int, float]:
    """The evaluator's metric of each grid point in ``points`` (indexes), fitted on ``train``
    and measured on ``validation``, up to ``parallelism`` at once (threads that inherit the
    session's job tags, as pyspark.ml's own tuners do)."""
    est = tuner.getOrDefault(tuner.estimator)
    grid = tuner.getOrDefault(tuner.estimatorParamMaps)
    evaluator = tuner.getOrDefault(tuner.evaluator)
    chosen = [grid[i] for i in points]
    train, validation = train.persist(), validation.persist()
    try:
        tasks = map(
            inheritable_thread_target(train.sparkSession),
            _parallelFitTasks(est, train, evaluator, validation, chosen, False),
        )
        metrics: dict[int, float] = {}
        with ThreadPool(processes=min(tuner.getParallelism(), len(chosen))) as pool:
            for index, metric, _ in pool.imap_unordered(lambda task: task(), tasks):
                metrics[points[index]] = metric
        return metrics
    finally:
        train.unpersist()
        validation.unpersist()


class SuccessiveHalvingCV(CrossValidator):
    """Cross-validation over folds of customers (``foldCol``) with successive halving over the
    folds (Jamieson & Talwalkar, "Non-stochastic Best Arm Identification and Hyperparameter
    Optimization", AISTATS 2016; the budget here is folds, not rows).

    Every grid point is fitted on the other folds and measured on fold 0; the better half
    (rounded up, by mean metric over the folds measured so far; the earlier grid point on ties)
    goes on to fold 1, and so on, until one point is left or the folds run out. The best of
    the last round is refitted on every row. With 6 points and 3 folds that is 11 fits
    instead of 18, with 4 points 6 instead of 12, with 2 points 2 instead of 6: on a small
    data set each fit costs Spark's per-job overhead more than its rows.

    ``avgMetrics`` holds, for each point measured on every fold of the last round, its mean
    over those folds; for a point left out after ``r`` folds, its estimated mean over the
    last round's folds: its mean over its ``r`` folds plus the winner's difference between
    the last round's folds and those ``r`` (the folds' difficulty, paired on the winner). It
    is below the winner's, as the point lost to the winner on the same folds, so the argmax
    of ``avgMetrics`` (what MLflow's autologging reports as best) is the refitted point.
    ``stdMetrics`` is 0 for points measured on one fold.
    """

    def _fit(self, dataset: DataFrame) -> CrossValidatorModel:
        est = self.getOrDefault(self.estimator)
        grid = self.getOrDefault(self.estimatorParamMaps)
        evaluator = self.getOrDefault(self.evaluator)
        sign = 1.0 if evaluator.isLargerBetter() else -1.0
        measured: dict[int, list[float]] = {i: [] for i in range(len(grid))}
        alive = list(range(len(grid)))
        for train, validation in self._kFold(dataset):
            for i, metric in _measure(self, train, validation, alive).items():
                measured[i].append(metric)
            alive = sorted(alive, key=lambda i: (-sign * fmean(measured[i]), i))
            alive = alive[: math.ceil(len(alive) / 2)]
            if len(alive) == 1:
                break
        best = alive[0]  # the best of the last round
        winner = measured[best]
        # A point measured on the first r folds, shifted by the winner's all-folds − r-folds
        # (0 for the points of the last round). The shift is computed first: a point tied with
        # the winner on its folds then gets exactly the winner's metric (the difference of two
        # metrics within a factor of 2 is exact), and argmax keeps the earlier, the winner.
        metrics = [
            fmean(values) + (fmean(winner) - fmean(winner[: len(values)]))
            for values in measured.values()
        ]
        spread = [pstdev(values) for values in measured.values()]
        model = est.fit(dataset, grid[best])
        return self._copyValues(CrossValidatorModel(model, metrics, None, spread))


class CustomerValidationSplit(TrainValidationSplit):
    """A train-validation split whose validation rows are the customers of fold 0.

    Like :class:`CrossValidator` with ``foldCol``, and unlike :class:`TrainValidationSplit`'s
    random share of rows, a customer's rows from different cutoffs stay on one side, and the
    split does not depend on how the rows are partitioned (``rand`` does), so a cluster and a
    local run tune alike. ``trainRatio`` is ignored: the validation share is ``1 / folds``.
    Each grid point is fitted once on the other folds; the best is refitted on all rows.

    With ``sample`` below 1, the grid is tuned on that share of the customers (a hash of the
    id, so the same customers every time) and only the refit sees every row: above a few
    hundred thousand rows, more rows change which grid point wins little, but cost in
    proportion.
    """

    sample: float = 1.0

    def _fit(self, dataset: DataFrame) -> TrainValidationSplitModel:
        est = self.getOrDefault(self.estimator)
        grid = self.getOrDefault(self.estimatorParamMaps)
        tuning = dataset
        if self.sample < 1.0:
            tuning = dataset.where(customer_share(self.getSeed()) < self.sample)
        in_validation = F.col(FOLD) == 0
        by_point = _measure(self, tuning.where(~in_validation), tuning.where(in_validation),
                            list(range(len(grid))))  # fmt: skip
        metrics = [by_point[i] for i in range(len(grid))]
        best = max(range(len(grid)), key=lambda i: metrics[i])
        model = est.fit(dataset, grid[best])
        return self._copyValues(TrainValidationSplitModel(model, metrics))
