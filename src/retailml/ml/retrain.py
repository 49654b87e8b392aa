"""Whether a model needs retraining: the rules both models share (:func:`champion_rules`),
and the propensity model's drift and decay on top (:func:`retrain_need`).

A daily run retrains only when one of the rules holds; the features' drift they look at is
measured and recorded by :func:`feature_drift` (``ops.drift``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import mlflow
import mlflow.spark
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
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


def champion_rules(
    settings: Settings, client: MlflowClient, model_name: str, now: lineage.Inputs
) -> tuple[str | None, ModelVersion | None, list[str]]:
    """The retraining rules of every model, in order: asked (``workflow.retrain``); no
    champion; the task's settings changed since it last ran (``now.previous``); the champion is
    older than ``workflow.max_champion_age_days``.

    Returns:
        The first rule that holds (None: none), the champion when none holds, and the figures
        looked at.
    """
    if settings.workflow.retrain:
        return "asked (--retrain)", None, []
    try:
        champion = client.get_model_version_by_alias(model_name, registry.CHAMPION)
    except MlflowException:
        return "no champion yet", None, []
    if now.previous is None or now.previous.settings_hash != now.settings_hash:
        return "the settings changed (or were never recorded)", None, []
    age, oldest = registry.age_days(champion), settings.workflow.max_champion_age_days
    checks = [f"champion age {age:.1f} days (limit {oldest})"]
    if age > oldest:
        return f"the champion is {age:.0f} days old (limit {oldest})", None, checks
    return None, champion, checks


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
    client = tracking.configure(settings)
    reason, champion, checks = champion_rules(settings, client, cfg.model_name, now)
    if champion is None:  # a rule holds
        return Need(reason, checks)
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
