"""GATHER: bounded summaries from tiny literal tables and hand-made MLflow runs; the report task
on an empty lake (every section but the table list is a "run this task" note)."""

from __future__ import annotations

import json
from datetime import date, datetime
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from pyspark.sql import DataFrame, SparkSession

from retailml import lineage
from retailml import schemas as S
from retailml.lakehouse import TABLES, Lakehouse
from retailml.ml import names as N
from retailml.ml import registry, tracking
from retailml.report import data as D
from retailml.runlog import AttemptRecord, History, RunRecord
from retailml.settings import Settings
from retailml.stages import report
from tests.conftest import make_settings

T0 = datetime(2011, 1, 1)


def transactions(
    spark: SparkSession,
    rows: list[tuple[str, str | None, str, float, date]],
    line_kinds: dict[str, str] | None = None,
) -> DataFrame:
    """silver.transactions rows from (id, invoice, event type, amount, date); every line a
    product unless ``line_kinds`` (id → kind) says otherwise."""
    full = [
        (
            tid,
            inv,
            "c1",
            "p1",
            "mug",
            "kitchen",
            1 if amount >= 0 else -1,
            abs(amount),
            amount,
            datetime.combine(day, datetime.min.time()),
            day,
            kind,
            (line_kinds or {}).get(tid, S.PRODUCT_LINE),
            kind == S.RETURN,
            False,
            "UK",
            "f.csv",
        )
        for tid, inv, kind, amount, day in rows
    ]
    return spark.createDataFrame(full, S.SILVER_TRANSACTIONS)


def test_weekly_sales_split_purchases_and_returns_and_fill_empty_weeks(spark: SparkSession) -> None:
    df = transactions(
        spark,
        [
            ("t1", "A", S.PURCHASE, 10.0, date(2011, 1, 3)),  # Monday
            ("t2", "A", S.PURCHASE, 5.0, date(2011, 1, 9)),  # Sunday, same week and invoice
            ("t3", "R", S.RETURN, -3.0, date(2011, 1, 5)),
            ("t4", None, S.PURCHASE, 2.0, date(2011, 1, 4)),  # no invoice: its own order
            ("t5", "V", S.VIEW, 0.0, date(2011, 1, 12)),  # not a sale
            ("t6", "B", S.PURCHASE, 7.0, date(2011, 1, 19)),
        ],
    )
    assert report.weekly_sales(df) == [
        D.Week(date(2011, 1, 3), 17.0, 2, 3.0, 1),
        D.Week(date(2011, 1, 10), 0.0, 0, 0.0, 0),
        D.Week(date(2011, 1, 17), 7.0, 1, 0.0, 0),
    ]
    assert report.weekly_sales(df, max_weeks=1) == [D.Week(date(2011, 1, 17), 7.0, 1, 0.0, 0)]


def test_line_kinds_products_first_with_revenue(spark: SparkSession) -> None:
    df = transactions(
        spark,
        [
            ("t1", "A", S.PURCHASE, 10.0, date(2011, 1, 3)),
            ("t2", "A", S.PURCHASE, 18.0, date(2011, 1, 3)),
            ("t3", "B", S.PURCHASE, 18.0, date(2011, 1, 4)),
            ("t4", "C", S.PURCHASE, -5.0, date(2011, 1, 4)),
            ("t5", "V", S.VIEW, 0.0, date(2011, 1, 12)),  # not a line of a sale
        ],
        line_kinds={"t2": "postage", "t3": "postage", "t4": "discount"},
    )
    assert report.line_kinds(df) == [
        D.LineKind("product", 1, 10.0, 1),
        D.LineKind("postage", 2, 36.0, 1),
        D.LineKind("discount", 1, -5.0, 1),
    ]


def test_score_histogram_of_the_latest_as_of_date(spark: SparkSession) -> None:
    rows = [
        (f"c{i}", date(2011, 12, 10), p, 1, i, "m", "3", T0)
        for i, p in enumerate([0.0, 0.049, 0.05, 0.5, 1.0])
    ] + [("old", date(2011, 11, 10), 0.7, 1, 1, "m", "2", T0)]
    hist = report.score_histogram(spark.createDataFrame(rows, S.PURCHASE_PROPENSITY), bins=20)
    assert hist.as_of == date(2011, 12, 10) and hist.customers == 5
    assert hist.model_version == "3"
    assert hist.mean == pytest.approx((0.049 + 0.05 + 0.5 + 1.0) / 5)
    expected = [0] * 20
    expected[0], expected[1], expected[10], expected[19] = 2, 1, 1, 1  # 1.0 is in the last bin
    assert hist.counts == expected
    assert hist.edges[0] == 0.0 and hist.edges[-1] == 1.0 and len(hist.edges) == 21


def test_quarantine_reasons_drop_the_detail_and_sum_the_tail(spark: SparkSession) -> None:
    reasons = ["Price: negative (-3.0)", "Price: negative (-1)", "StockCode: missing", "odd"]
    df = spark.createDataFrame(
        [("raw", r, "f.csv", "uci", T0, "b1") for r in reasons], S.BRONZE_QUARANTINE
    )
    assert report.quarantine_reasons(df) == {
        "Price: negative": 2,
        "StockCode: missing": 1,
        "odd": 1,
    }
    assert report.quarantine_reasons(df, top=1) == {"Price: negative": 2, "other reasons": 2}


def test_task_timings_follow_the_run_and_count_attempts(
    settings: Settings, spark: SparkSession
) -> None:
    history = History(settings, spark)
    history.record_run(RunRecord("r1", S.RUNNING, ("ingest", "clean", "report"), "run", T0))
    history.record_attempt(AttemptRecord("r1", "ingest", 1, S.FAILED, T0, T0, 1.5, "OSError: x"))
    history.record_attempt(AttemptRecord("r1", "ingest", 2, S.SUCCEEDED, T0, T0, 2.5))
    history.record_attempt(AttemptRecord("r1", "clean", 1, S.SUCCEEDED, T0, T0, 4.0))
    timings, status = report.task_timings(history, "r1")
    assert status == S.RUNNING
    assert timings == [
        D.TaskTiming("ingest", S.SUCCEEDED, 2, 2.5, None),
        D.TaskTiming("clean", S.SUCCEEDED, 1, 4.0, None),
        D.TaskTiming("report", "running", 0, None, None),
    ]
    with pytest.raises(report.Unavailable, match="no task of run other"):
        report.task_timings(history, "other")


def test_a_resumed_run_shows_the_tasks_it_did_not_rerun(
    settings: Settings, spark: SparkSession
) -> None:
    history = History(settings, spark)
    tasks = ("ingest", "clean", "features", "report")
    history.record_run(RunRecord("r1", S.FAILED, tasks, "run", T0))
    history.record_attempt(AttemptRecord("r1", "ingest", 1, S.SUCCEEDED, T0, T0, 2.0))
    history.record_attempt(AttemptRecord("r1", "clean", 1, S.FAILED, T0, T0, 1.0, "boom"))
    history.record_attempt(AttemptRecord("r1", "features", 1, S.UPSTREAM_FAILED, None, None, None))
    history.record_attempt(AttemptRecord("r1", "report", 1, S.UPSTREAM_FAILED, None, None, None))
    resumed = ("clean", "features", "report")
    history.record_run(RunRecord("r2", S.RUNNING, resumed, "resume r1", T0, resumed_from="r1"))
    history.record_attempt(AttemptRecord("r2", "clean", 1, S.SUCCEEDED, T0, T0, 3.0))
    history.record_attempt(AttemptRecord("r2", "features", 1, S.SUCCEEDED, T0, T0, 5.0))
    timings, status = report.task_timings(history, "r2")
    assert status == S.RUNNING
    assert timings == [
        D.TaskTiming("ingest", S.SUCCEEDED, 1, 2.0, None, run_id="r1"),
        D.TaskTiming("clean", S.SUCCEEDED, 1, 3.0, None),
        D.TaskTiming("features", S.SUCCEEDED, 1, 5.0, None),
        D.TaskTiming("report", "running", 0, None, None),
    ]


def _run(
    client: MlflowClient,
    experiment: str,
    name: str,
    *,
    parent: str | None = None,
    params: dict[str, str] | None = None,
    metrics: dict[str, float] | None = None,
    tags: dict[str, str] | None = None,
) -> str:
    run = client.create_run(
        experiment,
        run_name=name,
        tags={**(tags or {}), **({"mlflow.parentRunId": parent} if parent else {})},
    )
    rid = run.info.run_id
    for key, text in (params or {}).items():
        client.log_param(rid, key, text)
    for key, value in (metrics or {}).items():
        client.log_metric(rid, key, value)
    client.set_terminated(rid)
    return rid


def test_training_summary_reads_the_newest_training(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    client = tracking.configure(settings)
    exp = tracking.experiment(settings, settings.train.experiment)
    _run(client, exp, "older training", tags={"challenger": "random_forest"})
    parent = _run(
        client,
        exp,
        "propensity 2011-11-10",
        tags={
            "challenger": "logistic_regression",
            "gate_decision": "promoted",
            "holdout_cutoff": "2011-11-10",
        },
    )
    holdout = {
        "holdout_roc_auc": 0.8,
        "holdout_pr_auc": 0.6,
        "holdout_lift_at_10": 2.0,
        "holdout_brier": 0.2,
        "tuning_roc_auc": 0.79,
    }
    lr = _run(
        client,
        exp,
        "logistic_regression",
        parent=parent,
        params={"family": "logistic_regression", "implementation": "mllib"},
        metrics=holdout,
    )
    # An autologged grid point under the family run, and one directly under the parent.
    _run(client, exp, "grid point", parent=lr, metrics={"avg_areaUnderROC": 0.7})
    _run(client, exp, "grid point", parent=parent, metrics={"avg_areaUnderROC": 0.7})
    rf = _run(
        client,
        exp,
        "random_forest",
        parent=parent,
        params={"family": "random_forest", "implementation": "mllib"},
        metrics={**holdout, "holdout_roc_auc": 0.7},
    )
    points = {
        "fpr": [0, 1],
        "tpr": [0, 1],
        "recall": [1],
        "precision": [0.3],
        "population": [0, 1],
        "gain": [0, 1],
        "decile_rate": [0.3] * 10,
    }
    client.log_text(lr, json.dumps(points), "evaluation/curves.json")
    client.log_text(lr, json.dumps({"recency_days": -1.0}), "evaluation/feature_importance.json")
    client.log_text(lr, "x", "model/MLmodel")
    version = mlflow.register_model(f"runs:/{lr}/model", settings.train.model_name).version
    client.set_registered_model_alias(settings.train.model_name, registry.CHAMPION, str(version))

    models = report.training_summary(
        client, experiment=settings.train.experiment, model_name=settings.train.model_name
    )
    assert models.run_id == parent and models.holdout_cutoff == "2011-11-10"
    assert [f.family for f in models.families] == ["logistic_regression", "random_forest"]
    first, second = models.families
    assert first.metrics == {"roc_auc": 0.8, "pr_auc": 0.6, "lift_at_10": 2.0, "brier": 0.2}
    assert first.is_champion and first.is_challenger and not second.is_champion
    assert first.curves == points and first.importances == {"recency_days": -1.0}
    assert second.run_id == rf and second.curves is None and second.importances is None
    assert models.champion_note is None and models.featured == first
    assert report.champions(
        client,
        propensity=settings.train.model_name,
        recommender=settings.recommend.model_name,
    ) == {"propensity model": f"{settings.train.model_name} version {version}"}


def test_ranking_summary_by_model_and_mode(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    client = tracking.configure(settings)
    exp = tracking.experiment(settings, settings.recommend.experiment)
    metrics = {
        f"{prefix}_{mode}_{name}": value
        for prefix, value in (("als", 0.4), ("pop", 0.3))
        for mode in ("all", "new")
        for name in ("precision_at_k", "ndcg_at_k", "users")
    }
    _run(
        client,
        exp,
        "recommend",
        params={"k": "5", "tuned_mode": "new"},
        metrics={**metrics, "repeat_share": 0.45},
        tags={"as_of_date": "2011-12-10"},
    )
    ranking = report.ranking_summary(client, experiment=settings.recommend.experiment)
    assert ranking.k == 5 and ranking.tuned_mode == "new" and ranking.repeat_share == 0.45
    assert list(ranking.metrics) == [
        ("als", "all"),
        ("popular", "all"),
        ("als", "new"),
        ("popular", "new"),
    ]
    assert ranking.metrics[("popular", "new")] == {
        "precision_at_k": 0.3,
        "ndcg_at_k": 0.3,
        "users": 0.3,
    }


def test_report_on_an_empty_lake_notes_every_missing_source(
    tmp_path: Path, spark: SparkSession
) -> None:
    settings = make_settings(tmp_path, **{"report.dir": "out"})
    result = report.run(settings, spark, run_id="r-empty")
    assert result.path == tmp_path / "out" / "r-empty" / "index.html"
    assert result.sections == (D.TABLES,) and result.images == 0
    assert set(result.missing) == set(D.SECTIONS) - {D.TABLES}
    html = result.path.read_text(encoding="utf-8")
    for task in ("ingest", "clean", "train", "score", "recommend"):
        assert f"run <code>retailml task {task}</code>" in html
    assert html.count("not written") == len(TABLES)
    assert result.headline() == "out/r-empty/index.html, 0 plots, 10 sections not available"
    assert result.summary()[0] == f"report: {result.path}"

    # Logged to MLflow, and a retried attempt logs to the same run.
    client = MlflowClient()
    run = client.get_run(result.mlflow_run_id)  # type: ignore[arg-type]
    assert run.info.run_name == "r-empty" and run.data.tags[N.WORKFLOW_RUN] == "r-empty"
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["index.html"]
    retried = report.run(settings.with_overrides({"workflow.full": True}), spark, run_id="r-empty")
    assert isinstance(retried, report.ReportResult)
    assert retried.mlflow_run_id == result.mlflow_run_id


def test_report_of_the_newest_run_in_the_history(settings: Settings, spark: SparkSession) -> None:
    Lakehouse(settings, spark)  # nothing written: no history, so a fresh run id
    first = report.run(settings, spark)
    assert first.run_id and first.path.is_file()
    History(settings, spark).record_run(
        RunRecord("20991231-000000-abcd", S.SUCCEEDED, ("ingest",), "run", T0)
    )
    History(settings, spark).record_attempt(
        AttemptRecord("20991231-000000-abcd", "ingest", 1, S.SUCCEEDED, T0, T0, 3.0)
    )
    # Nothing the report shows changed and the run succeeded: no new page unless asked.
    assert isinstance(report.run(settings, spark), lineage.UpToDate)
    result = report.run(settings.with_overrides({"workflow.full": True}), spark)
    assert isinstance(result, report.ReportResult)
    assert result.run_id == "20991231-000000-abcd"
    assert result.images == 2  # rows of the two ops tables, and the task durations
    run = MlflowClient().get_run(result.mlflow_run_id)  # type: ignore[arg-type]
    assert run.data.metrics == {"task_seconds_ingest": 3.0}
