"""The champion gate: a new model takes the registry's ``champion`` alias only if it is better."""

from __future__ import annotations

import time
from dataclasses import dataclass

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from retailml.ml import names as N

CHAMPION = "champion"


@dataclass(frozen=True)
class GateDecision:
    """Whether the challenger was promoted, and why (also written to tags and the log)."""

    promoted: bool
    reason: str
    challenger_version: str
    champion_version: str | None
    challenger_metric: float
    champion_metric: float | None


def decide(
    challenger: float,
    champion: float | None,
    *,
    metric: str,
    margin: float,
    larger_is_better: bool = True,
) -> tuple[bool, str]:
    """Promote when there is no champion, or the challenger beats it by more than ``margin``.

    Equal scores never promote, so re-running with nothing changed keeps the champion.
    """
    if champion is None:
        return True, f"no champion yet; challenger {metric} {challenger:.4f}"
    gain = challenger - champion if larger_is_better else champion - challenger
    verdict = "beats" if gain > margin else "does not beat"
    return gain > margin, (
        f"challenger {metric} {challenger:.4f} {verdict} champion {champion:.4f} "
        f"by more than {margin:g}"
    )


def champion_version(client: MlflowClient, model_name: str) -> str | None:
    """The version the ``champion`` alias points at, or None."""
    try:
        return str(client.get_model_version_by_alias(model_name, CHAMPION).version)
    except MlflowException:
        return None


def age_days(version: ModelVersion) -> float:
    """Days since the model version was registered."""
    return (time.time() * 1000 - int(version.creation_timestamp)) / 86_400_000


def apply_gate(
    client: MlflowClient,
    model_name: str,
    *,
    challenger_version: str,
    challenger_metric: float,
    champion_metric: float | None,
    metric: str,
    margin: float,
    larger_is_better: bool = True,
    refusal: str | None = None,
) -> GateDecision:
    """Decide, move the alias if promoted, and tag the challenger version with the decision.

    A ``refusal`` (a reason the challenger is unfit whatever its metric) keeps the champion, or
    leaves the alias unset when there is none.
    """
    current = champion_version(client, model_name)
    promoted, reason = decide(
        challenger_metric,
        champion_metric if current else None,
        metric=metric,
        margin=margin,
        larger_is_better=larger_is_better,
    )
    if refusal:
        promoted, reason = False, refusal
    if promoted:
        client.set_registered_model_alias(model_name, CHAMPION, challenger_version)
    client.set_model_version_tag(
        model_name, challenger_version, N.GATE_DECISION, N.PROMOTED if promoted else N.KEPT
    )
    client.set_model_version_tag(model_name, challenger_version, N.GATE_REASON, reason)
    return GateDecision(
        promoted,
        reason,
        challenger_version,
        current,
        challenger_metric,
        champion_metric if current else None,
    )
