from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from retailml.ml import registry, tracking
from tests.conftest import make_settings


@pytest.mark.parametrize(
    ("challenger", "champion", "promoted"),
    [
        (0.80, None, True),  # no champion yet
        (0.81, 0.80, True),  # better by more than the margin
        (0.8005, 0.80, False),  # better, but within the margin
        (0.80, 0.80, False),  # equal: an unchanged re-run keeps the champion
        (0.79, 0.80, False),  # worse
    ],
)
def test_decide(challenger: float, champion: float | None, promoted: bool) -> None:
    decision, reason = registry.decide(challenger, champion, metric="AUC", margin=0.001)
    assert decision is promoted
    assert ("does not beat" in reason) is (champion is not None and not promoted)


def test_gate_moves_the_alias_only_when_better(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    client = tracking.configure(settings)
    mlflow.set_experiment(experiment_id=tracking.experiment(settings, "gate-test"))
    versions = []
    for _ in range(3):
        with mlflow.start_run():
            mlflow.log_text("x", "model/MLmodel")
            run_id = mlflow.active_run().info.run_id  # type: ignore[union-attr]
        versions.append(str(mlflow.register_model(f"runs:/{run_id}/model", "m").version))

    def gate(version: str, metric: float, champion: float | None) -> registry.GateDecision:
        return registry.apply_gate(
            client,
            "m",
            challenger_version=version,
            challenger_metric=metric,
            champion_metric=champion,
            metric="AUC",
            margin=0.001,
        )

    assert gate(versions[0], 0.70, None).promoted
    assert registry.champion_version(client, "m") == versions[0]
    kept = gate(versions[1], 0.70, 0.70)
    assert not kept.promoted and registry.champion_version(client, "m") == versions[0]
    assert client.get_model_version("m", versions[1]).tags["gate_decision"] == "kept champion"
    assert gate(versions[2], 0.75, 0.70).promoted
    assert registry.champion_version(client, "m") == versions[2]
    assert MlflowClient().get_registered_model("m").aliases == {"champion": int(versions[2])}
