"""The report's MLflow half of GATHER: the newest training and recommend runs, their metrics
and artifacts, and the champions — plain Python, no Spark."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from retailml.errors import RetailmlError
from retailml.ml import names as N
from retailml.ml import registry
from retailml.report import data as D


class Unavailable(RetailmlError):
    """A section's source does not exist yet; the message says which task makes it."""


# --- GATHER: MLflow -------------------------------------------------------------------------


def newest_parent(client: MlflowClient, experiment: str, *, task: str) -> Run:
    """The newest finished top-level run of an MLflow experiment.

    Raises:
        Unavailable: The experiment or a finished run in it does not exist.
    """
    found = client.get_experiment_by_name(experiment)
    runs: list[Run] = []
    if found is not None:
        newest = ["attributes.start_time DESC"]
        finished = "attributes.status = 'FINISHED'"
        try:
            runs = client.search_runs(
                [found.experiment_id],
                filter_string=f"tags.`{N.PARENT_RUN}` IS NULL AND {finished}",
                order_by=newest,
                max_results=1,
            )
        except MlflowException:
            # A tracking server without IS NULL in its search syntax: filter here instead.
            runs = [
                r
                for r in client.search_runs(
                    [found.experiment_id], filter_string=finished, order_by=newest, max_results=1000
                )
                if N.PARENT_RUN not in r.data.tags
            ][:1]
    if not runs:
        raise Unavailable(
            f"no finished run in MLflow experiment '{experiment}'; run `retailml task {task}`"
        )
    return runs[0]


def _artifact_json(client: MlflowClient, run_id: str, path: str) -> Any:
    """A run's JSON artifact, or None when it is missing or unreadable."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = client.download_artifacts(run_id, path, tmp)
            return json.loads(Path(local).read_text(encoding="utf-8"))
        except (MlflowException, OSError, ValueError):
            return None


def _champion(client: MlflowClient, model_name: str) -> tuple[str, str | None, str | None] | None:
    """The champion's version, the run that logged it and its family tag, or None."""
    version = registry.champion_version(client, model_name)
    if version is None:
        return None
    mv = client.get_model_version(model_name, version)
    return version, mv.tags.get(N.RUN_ID) or mv.run_id, mv.tags.get(N.FAMILY)


def training_summary(client: MlflowClient, *, experiment: str, model_name: str) -> D.ModelsSummary:
    """The newest training in ``experiment``: held-out metrics, curves and importances of every
    family, and which is the champion of ``model_name``."""
    parent = newest_parent(client, experiment, task="train")
    parent_id = parent.info.run_id
    # Autologging adds a nested run per grid point under each family's run: the family runs
    # are the parent's children that have the ``family`` param.
    children = [
        r
        for r in client.search_runs(
            [parent.info.experiment_id],
            filter_string=f"tags.`{N.PARENT_RUN}` = '{parent_id}'",
            order_by=["attributes.start_time ASC"],
            max_results=1000,
        )
        if N.FAMILY in r.data.params
    ]
    champion = _champion(client, model_name)
    challenger = parent.data.tags.get(N.CHALLENGER)
    families = []
    for r in children:
        params, metrics = r.data.params, r.data.metrics
        families.append(
            D.FamilyEvaluation(
                family=params[N.FAMILY],
                implementation=params.get(N.IMPLEMENTATION, ""),
                run_id=r.info.run_id,
                metrics={
                    k.removeprefix(N.HOLDOUT_PREFIX): float(v)
                    for k, v in metrics.items()
                    if k.startswith(N.HOLDOUT_PREFIX)
                },
                curves=_artifact_json(client, r.info.run_id, f"{N.EVALUATION}/{N.CURVES}"),
                importances=_artifact_json(
                    client, r.info.run_id, f"{N.EVALUATION}/{N.IMPORTANCES}"
                ),
                is_champion=champion is not None and champion[1] == r.info.run_id,
                is_challenger=params[N.FAMILY] == challenger,
            )
        )
    note = None
    if champion is None:
        note = "There is no champion yet."
    elif not any(f.is_champion for f in families):
        family = f" ({champion[2]})" if champion[2] else ""
        note = f"The champion, version {champion[0]}{family}, was trained in an earlier run."
    tags = parent.data.tags
    return D.ModelsSummary(
        run_id=parent_id,
        holdout_cutoff=tags.get(N.HOLDOUT_CUTOFF),
        challenger=challenger,
        gate_decision=tags.get(N.GATE_DECISION),
        gate_reason=tags.get(N.GATE_REASON),
        families=families,
        champion_note=note,
    )


def ranking_summary(client: MlflowClient, *, experiment: str) -> D.RankingSummary:
    """The newest recommend run's metrics per model and mode."""
    parent = newest_parent(client, experiment, task="recommend")
    logged, params, tags = parent.data.metrics, parent.data.params, parent.data.tags
    metrics: dict[tuple[str, str], dict[str, float]] = {}
    for mode in N.MODES:
        for model in N.RANKING_MODEL_PREFIX:
            start = N.ranking_prefix(model, mode)
            values = {
                k.removeprefix(start): float(v) for k, v in logged.items() if k.startswith(start)
            }
            if values:
                metrics[(model, mode)] = values
    return D.RankingSummary(
        run_id=parent.info.run_id,
        k=int(params[N.K]) if N.K in params else None,
        tuned_mode=params.get(N.TUNED_MODE),
        repeat_share=logged.get(N.REPEAT_SHARE),
        as_of=tags.get(N.AS_OF_DATE),
        eval_cutoff=tags.get(N.EVAL_CUTOFF),
        metrics=metrics,
    )


def champions(client: MlflowClient, *, propensity: str, recommender: str) -> dict[str, str]:
    """The registry's champions of the two models, for the header: "name version N (family)"."""
    out = {}
    found = _champion(client, propensity)
    if found is not None:
        family = f" ({found[2]})" if found[2] else ""
        out["propensity model"] = f"{propensity} version {found[0]}{family}"
    version = registry.champion_version(client, recommender)
    if version is not None:
        out["recommender"] = f"{recommender} version {version}"
    return out


# --- GATHER: everything -----------------------------------------------------------------------
