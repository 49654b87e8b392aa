"""Whether the propensity models need retraining: the champion's age, drift and decay.

A daily run retrains only when one of :func:`retrain_need`'s rules holds; the features' drift it
looks at is measured and recorded by :func:`feature_drift` (``ops.drift``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import mlflow
import mlflow.spark
from mlflow.exceptions import MlflowException
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from retailml import lineage
from retailml import schemas as S
from retailml.lakehouse import Lakehouse
from retailml.ml import drift, registry, tracking
from retailml.ml import names as N
from retailml.ml.metrics import binary_metrics
from retailml.ml.propensity import SCORE, score_column
from retailml.settings import Settings


@dataclass(frozen=True)
class Need:
    """Whether to retrain (``reason`` None: no) and the figures the decision looked at."""

    reason: str | None
    checks: list[str]


def measure_champion(model_name: str, holdout: DataFrame) -> float:
    """The champion's ROC-AUC on this held-out cutoff, measured now (it was measured on
    another): loaded through its alias, as scoring loads it."""
    model = mlflow.spark.load_model(f"models:/{model_name}@{registry.CHAMPION}")
    scored = score_column(model.transform(holdout))
    return binary_metrics(scored, label_col=S.LABEL, score_col=SCORE).roc_auc


def feature_drift(lake: Lakehouse, features: DataFrame, *, bins: int) -> drift.Drift:
    """The PSI of every feature at the scoring cutoff against the newest training cutoff,
    recorded in ``ops.drift`` (no values without both cutoffs)."""
    row = features.agg(
        F.max(F.when(F.col(S.SPLIT) == S.TRAIN, F.col(S.CUTOFF_DATE))).alias("train"),
        F.max(F.when(F.col(S.SPLIT) == S.SCORE, F.col(S.CUTOFF_DATE))).alias("score"),
    ).first()
    if row is None or row["train"] is None or row["score"] is None:
        return drift.Drift({}, 0, 0)

    def at(split: str, cutoff: Any) -> DataFrame:
        return features.where((F.col(S.SPLIT) == split) & (F.col(S.CUTOFF_DATE) == cutoff))

    found = drift.psi(
        at(S.TRAIN, row["train"]), at(S.SCORE, row["score"]), S.FEATURE_COLUMNS, bins=bins
    )
    drift.record(lake, row["score"], drift.TRAIN_VS_SCORE, row["train"], found)
    return found


def retrain_need(
    lake: Lakehouse,
    settings: Settings,
    now: lineage.Inputs,
    features: DataFrame,
    feature_psi: drift.Drift,
) -> Need:
    """Whether the propensity models must be retrained, checked in this order: asked
    (``workflow.retrain``); no champion; the training settings changed; the champion is older
    than ``workflow.max_champion_age_days``; a feature's PSI (this run; ``monitor.ignore_features``
    and sides under ``monitor.min_rows`` rows aside) or the score's (the newest scoring under
    this champion against the one before) is above ``monitor.psi_threshold``; the champion's
    ROC-AUC on the newest labelled cutoff is more than ``train.max_auc_drop`` below the one it
    was promoted with. The first that holds is the reason."""
    cfg, monitor = settings.train, settings.monitor
    limit = monitor.psi_threshold
    if settings.workflow.retrain:
        return Need("asked (--retrain)", [])
    client = tracking.configure(settings)
    try:
        champion = client.get_model_version_by_alias(cfg.model_name, registry.CHAMPION)
    except MlflowException:
        return Need("no champion yet", [])
    last = lineage.last(lake, "train")
    if last is None or last.settings_hash != now.settings_hash:
        return Need("the training settings changed (or were never recorded)", [])
    checks = []
    age = (time.time() * 1000 - int(champion.creation_timestamp)) / 86_400_000
    oldest = settings.workflow.max_champion_age_days
    checks.append(f"champion age {age:.1f} days (limit {oldest})")
    if age > oldest:
        return Need(f"the champion is {age:.0f} days old (limit {oldest})", checks)
    # Only scorings after the champion was registered: a drift it was trained after is not news.
    registered = datetime.fromtimestamp(int(champion.creation_timestamp) / 1000, tz=UTC)
    score_psi = drift.latest(lake, drift.SCORE_VS_PREVIOUS, since=registered.replace(tzinfo=None))
    for what, found in (("feature", feature_psi), ("score", score_psi)):
        worst = found.worst(ignore=monitor.ignore_features, min_rows=monitor.min_rows)
        if worst is not None:
            name, value = worst
            checks.append(f"largest {what} PSI {value:.3f} ({name}; limit {limit:g})")
            if value > limit:
                return Need(f"{what} drift: {name} PSI {value:.3f} > {limit:g}", checks)
    promoted_with = champion.tags.get(N.HOLDOUT_ROC_AUC)
    newest = features.where(F.col(S.SPLIT) == S.HOLDOUT)
    cutoff = newest.agg(F.max(S.CUTOFF_DATE)).first()
    if promoted_with is not None and cutoff is not None and cutoff[0] is not None:
        auc = measure_champion(cfg.model_name, newest.where(F.col(S.CUTOFF_DATE) == cutoff[0]))
        drop = float(promoted_with) - auc
        checks.append(
            f"champion ROC-AUC {auc:.4f} on {cutoff[0]} (promoted with {float(promoted_with):.4f}; "
            f"limit drop {cfg.max_auc_drop:g})"
        )
        if drop > cfg.max_auc_drop:
            return Need(f"the champion's ROC-AUC fell by {drop:.4f} to {auc:.4f}", checks)
    return Need(None, checks)
