"""One register-and-gate for both models, against a real MLflow store: the champion's recorded
metric counts only when it was measured on the same thing; otherwise the champion is measured
again (the propensity model) or is not comparable and replaced (the recommender)."""

from __future__ import annotations

from pathlib import Path

import mlflow

from retailml.ml import names as N
from retailml.ml import registry, tracking
from retailml.ml.models import pip_requirements, register_and_gate
from tests.conftest import make_settings


def _logged() -> str:
    with mlflow.start_run():
        mlflow.log_text("x", "model/MLmodel")
        run_id = mlflow.active_run().info.run_id  # type: ignore[union-attr]
    return f"runs:/{run_id}/model"


def test_register_and_gate_compares_only_like_with_like(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    client = tracking.configure(settings)
    mlflow.set_experiment(experiment_id=tracking.experiment(settings, "gate-test"))

    def gate(value: float, cutoff: str, **kw: object) -> registry.GateDecision:
        return register_and_gate(
            client,
            _logged(),
            model_name="m",
            metric_tag=N.EVAL_NDCG,
            metric_label="NDCG@5",
            value=value,
            margin=0.001,
            evaluated_on={N.EVAL_CUTOFF: cutoff, N.EVAL_K: "5"},
            tags={"extra": "yes"},
            **kw,  # type: ignore[arg-type]
        )

    first = gate(0.30, "2011-03-18")
    assert first.promoted and first.reason.startswith("no champion yet")
    tags = client.get_model_version("m", first.challenger_version).tags
    assert tags[N.EVAL_NDCG] == "0.300000" and tags[N.EVAL_CUTOFF] == "2011-03-18"
    assert tags["extra"] == "yes" and tags[N.GATE_DECISION] == N.PROMOTED

    # Same cutoff: the recorded 0.30 is the number to beat.
    same = gate(0.2995, "2011-03-18")
    assert not same.promoted and same.champion_metric == 0.30
    # Another cutoff, no way to measure the champion: not comparable, replaced.
    newer = gate(0.20, "2011-04-01")
    assert newer.promoted and "not comparable" in newer.reason
    assert "eval_cutoff=2011-03-18" in newer.reason and "eval_cutoff=2011-04-01" in newer.reason
    assert client.get_model_version("m", newer.challenger_version).tags[N.GATE_REASON] == (
        newer.reason
    )
    # Another cutoff with a way to measure the champion: it is measured, and kept if better.
    measured = gate(0.25, "2011-05-01", measure_champion=lambda: 0.40)
    assert not measured.promoted and measured.champion_metric == 0.40
    assert registry.champion_version(client, "m") == newer.challenger_version


def test_pip_requirements_are_pinned() -> None:
    reqs = pip_requirements("numpy")
    assert [r.split("==")[0] for r in reqs] == ["pyspark", "mlflow", "numpy"]
    assert all("==" in r for r in reqs)
