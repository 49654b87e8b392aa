"""Report: one self-contained HTML page per workflow run, also logged to MLflow.

Two halves. GATHER (this module, and :mod:`retailml.report.from_mlflow` for MLflow) reads the
lake and MLflow into one plain-Python :class:`~retailml.report.data.ReportData`: every table is
aggregated in Spark first, and only bounded summaries come to the driver (a count per table, a
row per week, a histogram, top-N lists). RENDER (:mod:`retailml.report.render`) turns it into
HTML without Spark.

A section whose source does not exist yet (a table not written, no MLflow run) becomes a short
"not available: run `retailml task X`" note; the report itself never fails for it. The page goes
to ``<report.dir>/<run_id>/index.html`` and, as an artifact, to an MLflow run named after the
workflow run in ``report.experiment`` (the same run again when the task is retried).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from retailml import lineage
from retailml import schemas as S
from retailml.errors import RetailmlError
from retailml.lakehouse import TABLES, Lakehouse
from retailml.ml import names as N
from retailml.ml import registry, tracking
from retailml.report import data as D
from retailml.report.from_mlflow import (
    Unavailable,
    champions,
    ranking_summary,
    training_summary,
)
from retailml.report.render import render_html
from retailml.runlog import History, new_run_id, timeline, utcnow
from retailml.settings import MonitorSettings, RecommendSettings, Settings, TrainSettings

SCORE_BINS = 20
MAX_WEEKS = 520  # ten years of weekly sales
MAX_REASONS = 12  # quarantine reasons shown; the rest are summed into one row
TOP_BUYERS_SHOWN = 20


@dataclass(frozen=True)
class ReportResult:
    """Where the report went and what is on it."""

    run_id: str
    path: Path  # the index.html
    mlflow_run_id: str | None
    images: int
    sections: tuple[str, ...]  # sections with content
    missing: tuple[str, ...]  # sections shown as "not available"
    size_bytes: int
    gather_seconds: float
    render_seconds: float

    def headline(self) -> str:
        shown = Path(*self.path.parts[-3:])  # <report.dir>/<run_id>/index.html
        gaps = f", {len(self.missing)} sections not available" if self.missing else ""
        return f"{shown}, {self.images} plots{gaps}"

    def summary(self) -> list[str]:
        lines = [
            f"report: {self.path}",
            f"{len(self.sections)} sections, {self.images} plots, "
            f"{self.size_bytes / 1024:,.0f} KiB; gathered in {self.gather_seconds:.1f} s, "
            f"rendered in {self.render_seconds:.1f} s",
        ]
        if self.missing:
            lines.append(
                "not available yet: " + ", ".join(D.TITLES[s].lower() for s in self.missing)
            )
        if self.mlflow_run_id:
            lines.append(f"logged to MLflow run {self.mlflow_run_id}")
        return lines


# --- GATHER: the lake -----------------------------------------------------------------------


def _table(lake: Lakehouse, name: str) -> DataFrame:
    if not lake.exists(name):
        raise Unavailable(
            f"{name} does not exist yet; run `retailml task {lake.spec(name).producer}`"
        )
    return lake.read(name)


def table_counts(lake: Lakehouse) -> list[D.TableCount]:
    """Rows of every table of the lake (None for one not written yet).

    Delta answers a plain count from its transaction log's statistics, without a scan.
    """
    return [
        D.TableCount(
            spec.name,
            spec.producer,
            spec.description,
            lake.read(name).count() if lake.exists(name) else None,
        )
        for name, spec in TABLES.items()
    ]


def quarantine_reasons(quarantine: DataFrame, *, top: int = MAX_REASONS) -> dict[str, int]:
    """Quarantined rows per reason, largest first; past ``top`` reasons, one "other" row.

    A reason's detail in parentheses (the offending value) is dropped, as ingest's summary does,
    so the number of groups stays the number of checks.
    """
    head = F.regexp_extract(F.col(S.REASON), r"^([^(]*?)\s*(\(|$)", 1)
    counts = quarantine.groupBy(head.alias("reason")).agg(F.count(F.lit(1)).alias("n"))
    rows = counts.orderBy(F.col("n").desc(), "reason").limit(top + 1).collect()
    reasons = {(r["reason"] or "unknown"): int(r["n"]) for r in rows[:top]}
    if len(rows) > top:
        total = counts.agg(F.sum("n")).first()
        rest = int(total[0] if total and total[0] else 0) - sum(reasons.values())
        reasons["other reasons"] = rest
    return reasons


def line_kinds(transactions: DataFrame) -> list[D.LineKind]:
    """Lines, revenue and customers per line kind (one row per kind), products first."""
    rows = (
        transactions.where(F.col(S.EVENT_TYPE).isin(S.PURCHASE, S.RETURN))
        .groupBy(S.LINE_KIND)
        .agg(
            F.count(F.lit(1)).alias("lines"),
            F.sum(S.AMOUNT).alias("revenue"),
            F.countDistinct(S.CUSTOMER_ID).alias("customers"),
        )
        .collect()
    )
    kinds = [
        D.LineKind(
            str(r[S.LINE_KIND]),
            int(r["lines"]),
            round(float(r["revenue"] or 0.0), 2),
            int(r["customers"]),
        )
        for r in rows
    ]
    return sorted(kinds, key=lambda k: (k.kind != S.PRODUCT_LINE, -k.lines, k.kind))


def weekly_sales(transactions: DataFrame, *, max_weeks: int = MAX_WEEKS) -> list[D.Week]:
    """Revenue and orders of purchases, and returns apart, per week (the latest ``max_weeks``).

    Weeks without any line are filled with zeros, so a gap in the data shows as one.
    """
    purchase = F.col(S.EVENT_TYPE) == S.PURCHASE
    is_return = F.col(S.EVENT_TYPE) == S.RETURN
    order = F.coalesce(F.col(S.INVOICE_ID), F.col(S.TRANSACTION_ID))
    rows = (
        transactions.where(purchase | is_return)
        .groupBy(F.date_trunc("week", F.col(S.EVENT_DATE)).cast("date").alias("week"))
        .agg(
            F.sum(F.when(purchase, F.col(S.AMOUNT))).alias("revenue"),
            F.countDistinct(F.when(purchase, order)).alias("orders"),
            F.sum(F.when(is_return, -F.col(S.AMOUNT))).alias("returned"),
            F.count(F.when(is_return, F.lit(1))).alias("return_lines"),
        )
        .orderBy(F.col("week").desc())
        .limit(max_weeks)
        .collect()
    )
    found = {
        r["week"]: D.Week(
            r["week"],
            float(r["revenue"] or 0.0),
            int(r["orders"]),
            float(r["returned"] or 0.0),
            int(r["return_lines"]),
        )
        for r in rows
    }
    if not found:
        return []
    weeks, week = [], min(found)
    while week <= max(found):
        weeks.append(found.get(week, D.Week(week, 0.0, 0, 0.0, 0)))
        week += timedelta(days=7)
    return weeks


def score_histogram(propensity: DataFrame, *, bins: int = SCORE_BINS) -> D.ScoreHistogram:
    """The latest as-of date's probabilities, counted per bin in Spark."""
    latest = propensity.agg(F.max(S.AS_OF_DATE)).first()
    if latest is None or latest[0] is None:
        raise Unavailable("gold.purchase_propensity is empty; run `retailml task score`")
    as_of: date = latest[0]
    scored = propensity.where(F.col(S.AS_OF_DATE) == F.lit(as_of))
    stats = scored.agg(
        F.count(F.lit(1)).alias("n"),
        F.avg(S.PROBABILITY).alias("mean"),
        F.max(S.MODEL_VERSION).alias("version"),
    ).first()
    assert stats is not None  # an aggregation without grouping always has one row
    bucket = F.least(F.floor(F.col(S.PROBABILITY) * bins), F.lit(bins - 1)).cast("int")
    counts = {
        int(r["b"]): int(r["n"])
        for r in scored.groupBy(bucket.alias("b")).agg(F.count(F.lit(1)).alias("n")).collect()
    }
    return D.ScoreHistogram(
        as_of=as_of,
        customers=int(stats["n"]),
        edges=[i / bins for i in range(bins + 1)],
        counts=[counts.get(i, 0) for i in range(bins)],
        mean=float(stats["mean"] or 0.0),
        model_version=stats["version"],
    )


def top_buyers(buyers: DataFrame, *, n: int = TOP_BUYERS_SHOWN) -> list[D.Buyer]:
    """The first ``n`` rows of gold.top_buyers by rank."""
    return [
        D.Buyer(
            int(r[S.RANK]),
            str(r[S.CUSTOMER_ID]),
            float(r[S.PROBABILITY]),
            float(r["recency_days"]),
            float(r["frequency_all"]),
            float(r["monetary_all"]),
            r[S.COUNTRY],
        )
        for r in buyers.orderBy(S.RANK).limit(n).collect()
    ]


def sample_recommendations(
    recommendations: DataFrame, buyers: DataFrame | None, *, customers: int
) -> list[D.CustomerRecommendations]:
    """The latest lists of the ``customers`` best-ranked buyers (or, without gold.top_buyers,
    of the first customers by id)."""
    latest = recommendations.agg(F.max(S.AS_OF_DATE)).first()
    if latest is None or latest[0] is None:
        raise Unavailable("gold.recommendations is empty; run `retailml task recommend`")
    current = recommendations.where(F.col(S.AS_OF_DATE) == F.lit(latest[0]))
    first = (
        buyers.select(S.CUSTOMER_ID, S.RANK).orderBy(S.RANK)
        if buyers is not None
        else current.select(S.CUSTOMER_ID, F.lit(None).alias(S.RANK))
        .distinct()
        .orderBy(S.CUSTOMER_ID)
    )
    picked = [(str(r[0]), r[1]) for r in first.limit(customers).collect()]
    ids = [c for c, _ in picked]
    mine = current.where(F.col(S.CUSTOMER_ID).isin(ids))
    rows = mine.orderBy(S.CUSTOMER_ID, F.col(S.LIST).desc(), S.RANK).collect()
    items: dict[str, list[D.Recommendation]] = {c: [] for c in ids}
    for r in rows:
        items[str(r[S.CUSTOMER_ID])].append(
            D.Recommendation(
                str(r[S.LIST] or ""),
                int(r[S.RANK]),
                str(r[S.PRODUCT_ID]),
                r[S.PRODUCT_NAME],
                str(r[S.SOURCE]),
                float(r[S.SCORE_VALUE]),
            )
        )
    return [D.CustomerRecommendations(c, rank, items[c]) for c, rank in picked]


def task_timings(history: History, run_id: str) -> tuple[list[D.TaskTiming], str | None]:
    """Each task of the run with its last attempt (:func:`retailml.runlog.timeline`, the
    account ``retailml runs RUN_ID`` shows too), and the run status.

    Raises:
        Unavailable: Nothing of the run is recorded.
    """
    try:
        entries, status = timeline(history, run_id, current="report")
    except RetailmlError as exc:
        raise Unavailable(str(exc)) from None
    return [
        D.TaskTiming(
            e.task,
            e.status,
            e.attempts,
            e.last.seconds if e.last else None,
            e.last.error if e.last else None,
            e.run_id if e.run_id != run_id else None,
        )
        for e in entries
    ], status


def monitoring(
    lake: Lakehouse, history: History, run_id: str, *, monitor: MonitorSettings
) -> D.Monitoring:
    """The newest gates of each stage (``ops.quality``), the newest PSI of the features and of
    the score (``ops.drift``), and the run's retraining decisions (a handful of rows each).

    Raises:
        Unavailable: No batch was checked and no drift measured yet.
    """
    if not lake.exists("ops.quality") and not lake.exists("ops.drift"):
        raise Unavailable("no batch checked and no drift measured yet; run `retailml run`")
    gates: list[D.GateCheck] = []
    if lake.exists("ops.quality"):
        checks = lake.read("ops.quality")
        newest = checks.groupBy("stage").agg(F.max(S.RECORDED_AT).alias(S.RECORDED_AT))
        rows = checks.join(newest, ["stage", S.RECORDED_AT]).orderBy("stage", S.GATE).collect()
        gates = [
            D.GateCheck(
                r["stage"], r[S.GATE], r[S.VALUE], r[S.THRESHOLD], r[S.ACTION], r[S.PASSED],
                r["detail"],
            )
            for r in sorted(rows, key=lambda r: r["stage"] != "ingest")
        ]  # fmt: skip
    features: dict[str, float] = {}
    dates: tuple[date, date] | None = None
    score: float | None = None
    if lake.exists("ops.drift"):
        drift = lake.read("ops.drift")
        latest = drift.groupBy(S.COMPARISON).agg(F.max(S.AS_OF_DATE).alias(S.AS_OF_DATE))
        for r in drift.join(latest, [S.COMPARISON, S.AS_OF_DATE]).collect():
            if r[S.COMPARISON] == "score_vs_previous":
                score = float(r[S.PSI])
            else:
                features[r[S.FEATURE]] = float(r[S.PSI])
                dates = (r["expected_date"], r[S.AS_OF_DATE])
    decisions = []
    try:
        entries, _ = timeline(history, run_id, current="report")
    except RetailmlError:
        entries = []
    for e in entries:
        if e.task in ("train", "recommend") and e.last is not None:
            decisions += [
                f"{e.task}: {line.strip()}"
                for line in e.last.outputs
                if line.strip().startswith(("retrained:", "no retraining needed", "up to date"))
                or ": up to date" in line
            ]
    return D.Monitoring(
        gates=gates,
        feature_psi=dict(sorted(features.items(), key=lambda kv: -kv[1])),
        feature_psi_dates=dates,
        score_psi=score,
        psi_threshold=monitor.psi_threshold,
        ignored=list(monitor.ignore_features),
        decisions=decisions,
    )


def gather(
    lake: Lakehouse,
    history: History,
    client: MlflowClient,
    *,
    run_id: str,
    train: TrainSettings,
    recommend: RecommendSettings,
    sample_customers: int,
    monitor: MonitorSettings | None = None,
) -> D.ReportData:
    """Everything the report shows, as bounded plain-Python summaries.

    A section whose source is missing is None, with the reason in ``missing``.

    Args:
        lake: The tables.
        history: The run history.
        client: The MLflow client.
        run_id: The workflow run the page is about.
        train: Where the propensity models are (experiment, registered name).
        recommend: Where the recommender is.
        sample_customers: Customers shown with their recommendations.
    """
    missing: dict[str, str] = {}

    def section(name: str, fetch: Callable[[], Any]) -> Any:
        try:
            return fetch()
        except Unavailable as exc:
            missing[name] = str(exc)
            return None

    def buyers_table() -> DataFrame | None:
        return lake.read("gold.top_buyers") if lake.exists("gold.top_buyers") else None

    timings = section(D.TASKS, lambda: task_timings(history, run_id))
    scores = section(D.SCORES, lambda: score_histogram(_table(lake, "gold.purchase_propensity")))
    as_of = scores.as_of if scores else None
    if as_of is None and lake.exists("silver.transactions"):
        row = lake.read("silver.transactions").agg(F.max(S.EVENT_DATE)).first()
        as_of = row[0] if row else None
    return D.ReportData(
        run_id=run_id,
        generated_at=utcnow(),
        as_of=as_of,
        champions=champions(client, propensity=train.model_name, recommender=recommend.model_name),
        tables=section(D.TABLES, lambda: table_counts(lake)),
        quarantine=section(
            D.QUARANTINE, lambda: quarantine_reasons(_table(lake, "bronze.quarantine"))
        ),
        line_kinds=section(D.LINE_KINDS, lambda: line_kinds(_table(lake, "silver.transactions"))),
        sales=section(D.SALES, lambda: weekly_sales(_table(lake, "silver.transactions"))),
        models=section(
            D.MODELS,
            lambda: training_summary(
                client, experiment=train.experiment, model_name=train.model_name
            ),
        ),
        scores=scores,
        top_buyers=section(D.TOP_BUYERS, lambda: top_buyers(_table(lake, "gold.top_buyers"))),
        monitoring=section(
            D.MONITORING,
            lambda: monitoring(lake, history, run_id, monitor=monitor or MonitorSettings()),
        ),
        ranking=section(
            D.RANKING, lambda: ranking_summary(client, experiment=recommend.experiment)
        ),
        recommendations=section(
            D.RECOMMENDATIONS,
            lambda: sample_recommendations(
                _table(lake, "gold.recommendations"),
                buyers_table(),
                customers=sample_customers,
            ),
        ),
        tasks=timings[0] if timings else None,
        run_status=timings[1] if timings else None,
        missing=missing,
    )


# --- the task -----------------------------------------------------------------------------


def log_to_mlflow(client: MlflowClient, experiment_id: str, data: D.ReportData, page: Path) -> str:
    """Log the page to the MLflow run of this workflow run in the experiment (created on the
    first attempt)."""
    existing = client.search_runs(
        [experiment_id], filter_string=f"tags.{N.WORKFLOW_RUN} = '{data.run_id}'", max_results=1
    )
    run = (
        existing[0]
        if existing
        else client.create_run(
            experiment_id, run_name=data.run_id, tags={N.WORKFLOW_RUN: data.run_id}
        )
    )
    run_id = run.info.run_id
    for t in data.tasks or []:
        if t.seconds is not None:
            client.log_metric(run_id, f"{N.TASK_SECONDS_PREFIX}{t.task}", t.seconds)
    if data.as_of is not None:
        client.set_tag(run_id, N.AS_OF_DATE, data.as_of.isoformat())
    client.log_artifact(run_id, str(page))
    client.set_terminated(run_id)
    return run_id


# What a report shows; when none of it changed and every task of the run succeeded, a new
# page would repeat the last one.
REPORTED = (
    "silver.transactions",
    "silver.customer_features",
    "gold.purchase_propensity",
    "gold.recommendations",
    "ops.quality",
    "ops.drift",
)


def run(
    settings: Settings, spark: SparkSession, *, run_id: str | None = None
) -> ReportResult | lineage.UpToDate:
    """Gather, render and write the report of a workflow run, and log it to MLflow — unless
    every task of the run succeeded and nothing the report shows changed since the last one.

    Args:
        run_id: The workflow run the page is about; the newest run in the history when None
            (a fresh id if there is none).
    """
    history = History(settings, spark)
    if run_id is None:
        newest = history.runs(1)
        run_id = newest[0].run_id if newest else new_run_id()
    client = tracking.configure(settings)
    lake = Lakehouse(settings, spark)
    models = {
        name: int(registry.champion_version(client, name) or -1)
        for name in (settings.train.model_name, settings.recommend.model_name)
    }
    try:
        entries, _ = timeline(history, run_id, current="report")
        clean_run = all(e.status == S.SUCCEEDED for e in entries if e.task != "report")
    except RetailmlError:  # a report of no recorded run
        clean_run = True
    return lineage.unless_up_to_date(
        lake,
        "report",
        lambda _: _report(settings, lake, history, client, run_id),
        tables=REPORTED,
        outputs=[],
        config=[settings.report],
        models=models,
        force=not clean_run,  # a failed task: always a page that shows it
    )


def _report(
    settings: Settings,
    lake: Lakehouse,
    history: History,
    client: MlflowClient,
    run_id: str,
) -> ReportResult:
    started = time.monotonic()
    data = gather(
        lake,
        history,
        client,
        run_id=run_id,
        train=settings.train,
        recommend=settings.recommend,
        sample_customers=settings.report.sample_customers,
        monitor=settings.monitor,
    )
    gathered = time.monotonic()
    page = render_html(data)
    rendered = time.monotonic()
    path = Path(settings.path(settings.report.dir)) / run_id / "index.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page.html, encoding="utf-8")
    experiment_id = tracking.experiment(settings, settings.report.experiment)
    mlflow_run_id = log_to_mlflow(client, experiment_id, data, path)
    return ReportResult(
        run_id=run_id,
        path=path,
        mlflow_run_id=mlflow_run_id,
        images=page.images,
        sections=page.sections,
        missing=page.missing,
        size_bytes=path.stat().st_size,
        gather_seconds=gathered - started,
        render_seconds=rendered - gathered,
    )
