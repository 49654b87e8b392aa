"""Logging a Spark model to MLflow and registering it behind the champion gate: written once for
the propensity model and the recommender."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from importlib.metadata import version as installed

import mlflow
import mlflow.spark
from mlflow.models.model import ModelInfo
from mlflow.tracking import MlflowClient
from pyspark.ml import Transformer
from pyspark.sql import DataFrame

from retailml.ml import names as N
from retailml.ml import registry

EXAMPLE_ROWS = 5  # rows of input the signature is inferred from


def pip_requirements(*extra: str) -> list[str]:
    """The packages a logged Spark model needs, pinned to the installed versions: pyspark,
    mlflow, and ``extra`` distributions (``xgboost-cpu`` for an xgboost model)."""
    return [f"{package}=={installed(package)}" for package in ("pyspark", "mlflow", *extra)]


def log_spark_model(
    model: Transformer,
    example: DataFrame,
    *,
    output_col: str = "prediction",
    extra_requirements: Sequence[str] = (),
    signature_model: Transformer | None = None,
) -> ModelInfo:
    """Log ``model`` to the active MLflow run as :data:`~retailml.ml.names.MODEL`, with a
    signature and pinned pip requirements (Unity Catalog's registry refuses a model without a
    signature).

    Args:
        model: A fitted Spark ML model or pipeline.
        example: Input rows, of which the first :data:`EXAMPLE_ROWS` are used to infer the
            signature (a bounded collect).
        output_col: The model's output column the signature describes.
        extra_requirements: More distributions to pin (see :func:`pip_requirements`).
        signature_model: The part of ``model`` the signature describes, when ``model`` as a
            whole cannot transform ``example`` (the recommender's rankers read features the
            task builds); ``model`` itself by default.

    Returns:
        MLflow's ``ModelInfo`` (``model_uri`` is what :func:`register_and_gate` takes).
    """
    rows = example.limit(EXAMPLE_ROWS)
    signature = mlflow.models.infer_signature(
        rows.toPandas(), (signature_model or model).transform(rows).select(output_col).toPandas()
    )
    # MLflow 3's other flavors take `name` and deprecate `artifact_path`; the Spark flavor's
    # log_model (3.17) still requires `artifact_path`, and does not warn for it.
    return mlflow.spark.log_model(
        model,
        artifact_path=N.MODEL,
        signature=signature,
        pip_requirements=pip_requirements(*extra_requirements),
    )


def register_and_gate(
    client: MlflowClient,
    model_uri: str,
    *,
    model_name: str,
    metric_tag: str,
    metric_label: str,
    value: float,
    margin: float,
    evaluated_on: Mapping[str, str],
    tags: Mapping[str, str] | None = None,
    measure_champion: Callable[[], float] | None = None,
    refusal: str | None = None,
) -> registry.GateDecision:
    """Register a logged model and let it challenge the ``champion`` alias.

    The new version is tagged with ``tags``, what it was measured on (``evaluated_on``) and its
    metric (``metric_tag``). The champion's number to beat is its own recorded metric when it
    was measured on the same thing (every ``evaluated_on`` tag equal). Otherwise:

    - with ``measure_champion``, the champion is measured now on the challenger's data (the
      propensity model: load the champion, score the held-out cutoff);
    - without, the champion is **not comparable** and the challenger replaces it (the
      recommender: a champion's final model has seen the newer evaluation window, so no
      honest number can be taken for it now). The reason says so.

    Args:
        client: The registry's client.
        model_uri: The logged model (``ModelInfo.model_uri``).
        model_name: The registered model.
        metric_tag: The model-version tag holding the metric (``holdout_roc_auc``…).
        metric_label: The metric as the decision's reason names it (``holdout ROC-AUC``).
        value: The challenger's metric (larger is better).
        margin: What it must gain over the champion to be promoted.
        evaluated_on: Tags saying what the metric was measured on (cutoff, mode, k…).
        tags: More tags for the new version.
        measure_champion: Measures the champion on the challenger's data, or None (above).
        refusal: Why the challenger may not be promoted whatever its metric (it is still
            registered, and tagged with the reason), or None.

    Returns:
        The gate's decision (also tagged on the new version).
    """
    current = registry.champion_version(client, model_name)
    champion_value: float | None = None
    not_comparable = None
    if current is not None:
        recorded = client.get_model_version(model_name, current).tags
        if all(recorded.get(k) == v for k, v in evaluated_on.items()) and metric_tag in recorded:
            champion_value = float(recorded[metric_tag])
        elif measure_champion is not None:
            champion_value = measure_champion()
        else:
            was = ", ".join(f"{k}={recorded.get(k)}" for k in evaluated_on)
            now = ", ".join(f"{k}={v}" for k, v in evaluated_on.items())
            not_comparable = (
                f"champion version {current} was evaluated on {was}, not comparable with {now}"
            )
    version = mlflow.register_model(
        model_uri,
        model_name,
        tags={**(tags or {}), **evaluated_on, metric_tag: f"{value:.6f}"},
    )
    challenger = str(version.version)
    decision = registry.apply_gate(
        client,
        model_name,
        challenger_version=challenger,
        challenger_metric=value,
        champion_metric=champion_value,
        metric=metric_label,
        margin=margin,
        refusal=refusal,
    )
    if not_comparable and not refusal:
        # apply_gate reads a missing champion metric as "no champion"; say what it was.
        reason = f"{not_comparable}; the challenger ({metric_label} {value:.4f}) replaces it"
        decision = dataclasses.replace(decision, reason=reason)
        client.set_model_version_tag(model_name, challenger, N.GATE_REASON, reason)
    return decision
