"""What a report shows: plain-Python summaries, small enough to hold on the driver.

:class:`ReportData` is the boundary between GATHER (Spark and MLflow, in
``retailml.stages.report``) and RENDER (:mod:`retailml.report.render`, no Spark). Every field
is bounded by the configuration, not by the data: one row per table, per week, per model
family, per histogram bin, or a top-N list. A section whose source does not exist yet is None,
and :attr:`ReportData.missing` says which task to run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime

# Section keys, in page order. Each is a field of ReportData (None when not available).
TABLES = "tables"
QUARANTINE = "quarantine"
LINE_KINDS = "line_kinds"
SALES = "sales"
MODELS = "models"
SCORES = "scores"
TOP_BUYERS = "top_buyers"
MONITORING = "monitoring"
RANKING = "ranking"
RECOMMENDATIONS = "recommendations"
TASKS = "tasks"
SECTIONS = (
    TABLES,
    QUARANTINE,
    LINE_KINDS,
    SALES,
    MODELS,
    SCORES,
    TOP_BUYERS,
    MONITORING,
    RANKING,
    RECOMMENDATIONS,
    TASKS,
)
TITLES = {
    TABLES: "Tables",
    QUARANTINE: "Quarantine",
    LINE_KINDS: "Line kinds",
    SALES: "Sales over time",
    MODELS: "Propensity models",
    SCORES: "Scores",
    TOP_BUYERS: "Top buyers",
    MONITORING: "Data quality and drift",
    RANKING: "Recommender: ALS vs popularity",
    RECOMMENDATIONS: "Sample recommendations",
    TASKS: "Workflow tasks",
}


@dataclass(frozen=True)
class TableCount:
    """One table of the lake: its row count, or None when it has not been written."""

    name: str
    producer: str
    description: str
    rows: int | None

    @property
    def layer(self) -> str:
        return self.name.split(".", 1)[0]


@dataclass(frozen=True)
class LineKind:
    """The lines of one kind in silver.transactions (product, postage, fee, discount…)."""

    kind: str
    lines: int
    revenue: float  # purchases and credits of the kind (credits negative), returns included
    customers: int  # distinct known customers with such a line


@dataclass(frozen=True)
class Week:
    """One week of silver.transactions (weeks start on Monday)."""

    start: date
    revenue: float  # purchases only
    orders: int  # distinct invoices with a purchase line
    returned: float  # value of the return lines, positive
    return_lines: int


@dataclass(frozen=True)
class FamilyEvaluation:
    """One model family of the newest training, measured on the held-out cutoff."""

    family: str
    implementation: str
    run_id: str
    metrics: dict[str, float]  # roc_auc, pr_auc, lift_at_10, brier, base_rate, rows
    curves: dict[str, list[float]] | None  # fpr, tpr, recall, precision, population, gain, …
    importances: dict[str, float] | None
    is_champion: bool = False
    is_challenger: bool = False

    @property
    def label(self) -> str:
        return self.family if self.family != "gbt" else f"gbt ({self.implementation})"


@dataclass(frozen=True)
class ModelsSummary:
    """The newest training run: every family, which one challenged, what the gate decided."""

    run_id: str
    holdout_cutoff: str | None
    challenger: str | None
    gate_decision: str | None
    gate_reason: str | None
    families: list[FamilyEvaluation]
    champion_note: str | None = None  # e.g. "the champion, version 1, is from an earlier run"

    @property
    def featured(self) -> FamilyEvaluation | None:
        """The family whose importances and gain chart are shown: the champion if it is in this
        training, else the challenger, else the first family."""
        # A stable sort: the champion first, then the challenger, then the training order.
        ordered = sorted(self.families, key=lambda f: (not f.is_champion, not f.is_challenger))
        return ordered[0] if ordered else None


@dataclass(frozen=True)
class ScoreHistogram:
    """Purchase probabilities of gold.purchase_propensity at one as-of date, in equal bins."""

    as_of: date
    customers: int
    edges: list[float]  # len(counts) + 1 bin edges over [0, 1]
    counts: list[int]
    mean: float
    model_version: str | None


@dataclass(frozen=True)
class Buyer:
    """A row of gold.top_buyers."""

    rank: int
    customer_id: str
    probability: float
    recency_days: float
    frequency: float
    monetary: float
    country: str | None


@dataclass(frozen=True)
class RankingSummary:
    """The newest recommend run's evaluation: metrics per (model, mode)."""

    run_id: str
    k: int | None
    tuned_mode: str | None
    repeat_share: float | None
    as_of: str | None
    eval_cutoff: str | None
    metrics: dict[tuple[str, str], dict[str, float]]  # (als | popular, all | new) → metrics


@dataclass(frozen=True)
class Recommendation:
    list: str  # for_you or discover (empty in rows written before lists existed)
    rank: int
    product_id: str
    product_name: str | None
    source: str
    score: float


@dataclass(frozen=True)
class CustomerRecommendations:
    """One sample customer's lists, with why they were picked (their propensity rank)."""

    customer_id: str
    buyer_rank: int | None
    items: list[Recommendation]


@dataclass(frozen=True)
class TaskTiming:
    """A task of the workflow run: its last attempt."""

    task: str
    status: str
    attempts: int
    seconds: float | None
    error: str | None
    run_id: str | None = None  # the run it ran in, when that is a run this one resumed


@dataclass(frozen=True)
class GateCheck:
    """One data-quality gate of the newest batch a stage checked (``ops.quality``)."""

    stage: str
    gate: str
    value: float | None
    threshold: str
    action: str  # fail | warn
    passed: bool
    detail: str | None


@dataclass(frozen=True)
class Monitoring:
    """The newest gates per stage, the newest drift (PSI) per comparison, and what this run
    decided about retraining (the train and recommend tasks' own lines)."""

    gates: list[GateCheck]
    feature_psi: dict[str, float]  # feature → PSI, scoring cutoff against training cutoff
    feature_psi_dates: tuple[date, date] | None  # (training cutoff, scoring cutoff)
    score_psi: float | None  # the newest scoring against the one before (same champion)
    psi_threshold: float
    ignored: list[str]  # features whose PSI never triggers retraining
    decisions: list[str]


@dataclass(frozen=True)
class ReportData:
    """Everything the report shows; see the module docstring."""

    run_id: str
    generated_at: datetime
    as_of: date | None = None
    champions: dict[str, str] = field(default_factory=dict)  # model name → "version 3 (…)"
    tables: list[TableCount] | None = None
    quarantine: dict[str, int] | None = None  # reason → rows, largest first
    line_kinds: list[LineKind] | None = None  # product first, then by lines
    sales: list[Week] | None = None
    models: ModelsSummary | None = None
    scores: ScoreHistogram | None = None
    top_buyers: list[Buyer] | None = None
    monitoring: Monitoring | None = None
    ranking: RankingSummary | None = None
    recommendations: list[CustomerRecommendations] | None = None
    tasks: list[TaskTiming] | None = None
    run_status: str | None = None
    missing: dict[str, str] = field(default_factory=dict)  # section → why, e.g. "run `…`"

    def available(self, section: str) -> bool:
        """Whether the section has data (its field is set)."""
        return getattr(self, section) is not None
