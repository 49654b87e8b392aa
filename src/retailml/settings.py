"""The one settings object, read from defaults, ``retailml.toml``, ``RETAILML_*`` and the CLI.

Precedence, lowest to highest: built-in defaults, the TOML file, environment variables, CLI
options. This is the only module that reads the environment; every task receives the resulting
:class:`Settings`.

Environment variables map onto settings by name: ``RETAILML_SEED=7`` sets ``seed``,
``RETAILML_SPARK_MASTER=spark://host:7077`` sets ``spark.master`` (a section name followed by
a field name). Values that look like JSON objects or lists (``{"a": "b"}``) are parsed as JSON,
so dict settings such as ``spark.conf`` can come from the environment too.
"""

from __future__ import annotations

import codecs
import json
import os
import tomllib
from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from retailml.errors import SettingsError
from retailml.line_kinds import DEFAULT_LINE_KINDS, LineKindRule

ENV_PREFIX = "RETAILML_"
# What pandas, databases and spreadsheets write for a missing value.
DEFAULT_NULL_VALUES = ("nan", "NaN", "NAN", "None", "none", "NULL", "null", "N/A", "n/a", "#N/A")
CONFIG_FILE_NAME = "retailml.toml"
# The Delta Lake artifact that matches Spark 4.2. The Python package is delta-spark 4.4.1, but
# 4.4.1 of the Spark jar was never published, and 4.4.0 is the newest jar built for Spark 4.2;
# the Python API is a thin wrapper and works unchanged with it.
DELTA_PACKAGE = "io.delta:delta-spark_4.2_2.13:4.4.0"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=True)


class SparkSettings(_Section):
    """How to build the SparkSession."""

    master: str = Field(
        "local[*]",
        description="local[N], spark://host:port, yarn, sc://host (Spark Connect), "
        "or 'existing' to use the session the platform provides (Databricks).",
    )
    app_name: str = "retailml"
    shuffle_partitions: int | None = Field(
        None, ge=1, description="Default: 2 × cores in local mode, Spark's default elsewhere."
    )
    driver_memory: str | None = Field("4g", pattern=r"^\d+[kmgtKMGT]?$")
    ui: bool = True
    log_level: Literal["ALL", "DEBUG", "INFO", "WARN", "ERROR", "FATAL", "OFF"] = "ERROR"
    delta_package: str = Field(
        DELTA_PACKAGE,
        description="Maven coordinate of Delta Lake; empty when Delta is already on the "
        "classpath (Databricks).",
    )
    ivy_dir: Path | None = Field(None, description="Ivy cache (spark.jars.ivy); Spark's default.")
    conf: dict[str, str] = Field(default_factory=dict, description="Extra Spark configuration.")

    @field_validator("master")
    @classmethod
    def _known_master(cls, value: str) -> str:
        prefixes = ("local", "spark://", "yarn", "k8s://", "sc://", "mesos://")
        if value != "existing" and not value.startswith(prefixes):
            raise ValueError(f"not a Spark master URL: {value!r}")
        return value


class MlflowSettings(_Section):
    """Where MLflow keeps runs and models."""

    tracking_uri: str | None = Field(
        None, description="Default: sqlite database under <project>/mlflow; MLFLOW_TRACKING_URI."
    )
    registry_uri: str | None = None
    artifact_root: str | None = Field(
        None,
        description="Where new experiments store artifacts; default <project>/mlflow/artifacts.",
    )


class GenerateSettings(_Section):
    """The built-in synthetic retail world."""

    customers: int = Field(2000, ge=1)
    products: int = Field(400, ge=2)
    days: int = Field(730, ge=1)
    start_date: date = date(2010, 1, 1)
    malformed_fraction: float = Field(0.002, ge=0, lt=1)
    guest_fraction: float = Field(0.05, ge=0, lt=1)
    return_fraction: float = Field(0.02, ge=0, lt=1)
    profile: Literal["gift", "grocery"] = Field(
        "gift",
        description="The kind of shop: gift (like the UCI data, a third of lines rebuys) or "
        "grocery (most lines rebuys of a customer's staples).",
    )


class IngestSettings(_Section):
    """How source files are read."""

    source: str | None = Field(
        None,
        description="A file or folder of CSV / Parquet / .xlsx; default: the generated data.",
    )
    format: Literal["auto", "csv", "parquet", "xlsx"] = "auto"
    column_mapping: dict[str, str] = Field(
        default_factory=dict,
        description="Canonical column → source column, for layouts not recognised "
        "automatically, e.g. {event_time = 'order_ts', product_id = 'sku'}.",
    )
    delimiter: str = Field(
        "auto",
        description="CSV delimiter, or 'auto': the one of , ; tab | that splits the "
        "header into the most columns.",
    )
    encoding: str = Field(
        "auto",
        description="A Python codec name, or 'auto': UTF-8 (with or without BOM), else the "
        "single-byte code page detected per file.",
    )
    decimal: Literal["auto", ".", ","] = Field(
        "auto", description="Decimal mark of numbers; 'auto' decides per file from its prices."
    )
    null_values: list[str] = Field(
        default_factory=lambda: list(DEFAULT_NULL_VALUES),
        description="Texts that mean a missing value, in every column (besides empty).",
    )
    timestamp_formats: list[str] = Field(
        default_factory=list,
        description="Spark datetime patterns tried first; empty: ISO-8601, numeric dates "
        "with the day/month order decided per file, epoch numbers.",
    )
    sheets: list[str] = Field(
        default_factory=list, description="Workbook sheets to read; empty: every sheet."
    )

    @field_validator("delimiter")
    @classmethod
    def _one_character(cls, value: str) -> str:
        value = {"\\t": "\t", "tab": "\t"}.get(value, value)
        if value != "auto" and len(value) != 1:
            raise ValueError("one character, or 'auto'")
        return value

    @field_validator("encoding")
    @classmethod
    def _known_codec(cls, value: str) -> str:
        if value != "auto":
            try:
                codecs.lookup(value)
            except LookupError:
                raise ValueError(f"unknown encoding {value!r}") from None
        return value


class CleanSettings(_Section):
    """How bronze becomes silver."""

    line_kinds: list[LineKindRule] = Field(
        default_factory=lambda: list(DEFAULT_LINE_KINDS),
        description="Rules giving each line its kind; lines no rule matches are 'product'. "
        "Only product lines are products (in silver.products, popularity and the recommender); "
        "every kind counts in revenue and spend.",
    )


class FeatureSettings(_Section):
    """Point-in-time features and the purchase label."""

    horizon_days: int = Field(30, ge=1, description="Label: bought in [cutoff, cutoff + horizon).")
    train_cutoffs: int = Field(4, ge=1, description="Earlier cutoffs stacked for training.")
    cutoff_spacing_days: int = Field(30, ge=1, description="Days between training cutoffs.")


Family = Literal["logistic_regression", "random_forest", "gbt"]
FAMILIES: tuple[Family, ...] = ("logistic_regression", "random_forest", "gbt")


class TrainSettings(_Section):
    """Model families, tuning and the champion gate of the propensity model."""

    families: list[Family] = Field(default_factory=lambda: list(FAMILIES), min_length=1)
    gbt_implementation: Literal["xgboost", "mllib"] = Field(
        "xgboost", description="xgboost.spark (faster) or MLlib's GBTClassifier."
    )
    folds: int = Field(3, ge=2, description="Cross-validation folds, grouped by customer.")
    validation_split_above_rows: int = Field(
        100_000,
        ge=1,
        description="Above this many training rows, one validation fold of customers instead "
        "of cross-validation.",
    )
    tune_max_rows: int = Field(
        250_000,
        ge=1,
        description="Above this many training rows, the grid is tuned on a sample of customers "
        "with about this many rows; the chosen point is refitted on all rows.",
    )
    parallelism: int = Field(2, ge=1, description="Grid points fitted at once (threads).")
    # The tuning grids, one list per hyperparameter (like the recommender's).
    logistic_reg_params: list[float] = Field(
        default_factory=lambda: [0.001, 0.01, 0.1], min_length=1
    )
    logistic_elastic_net_params: list[float] = Field(
        default_factory=lambda: [0.0, 0.5], min_length=1
    )
    forest_num_trees: list[int] = Field(default_factory=lambda: [60, 150], min_length=1)
    forest_max_depths: list[int] = Field(default_factory=lambda: [5, 9], min_length=1)
    gbt_max_depths: list[int] = Field(default_factory=lambda: [3, 5], min_length=1)
    promotion_margin: float = Field(
        0.001, ge=0, description="ROC-AUC a challenger must gain over the champion."
    )
    experiment: str = "retailml-propensity"
    model_name: str = "retailml-propensity"
    max_auc_drop: float = Field(
        0.02,
        ge=0,
        description="Retrain when the champion's ROC-AUC on the newest labelled cutoff is this "
        "much below the ROC-AUC it was promoted with.",
    )


class ScoreSettings(_Section):
    """Batch scoring with the champion."""

    top_n: int = Field(100, ge=1, description="Rows of gold.top_buyers.")


class RecommendSettings(_Section):
    """The two-stage recommender: candidate generators (repeat, item-kNN, implicit-feedback
    ALS, popularity) and a learned ranker per list (for_you, discover)."""

    k: int = Field(5, ge=1, description="Recommendations per customer.")
    exclude_purchased: bool = Field(
        True,
        description="The champion gate judges the discover list (never-bought products, NDCG@k "
        "against new products); false: the for_you list (rebuys allowed, against everything "
        "bought). Both lists are always written.",
    )
    eval_days: int = Field(30, ge=1, description="Evaluation window after the cutoff.")
    popular_days: int = Field(90, ge=1, description="Recent window for the popularity fallback.")
    ranks: list[int] = Field(default_factory=lambda: [10, 30], min_length=1)
    reg_params: list[float] = Field(default_factory=lambda: [0.05, 0.2], min_length=1)
    alphas: list[float] = Field(
        default_factory=lambda: [5.0], min_length=1, description="ALS's confidence scale."
    )
    max_iter: int = Field(10, ge=1)
    tune_max_customers: int = Field(
        40_000,
        ge=1,
        description="Above this many customers, the ALS grid is tuned and every model evaluated "
        "on a fixed hash sample of about this many; the final model is fitted on everyone and "
        "the lists cover everyone.",
    )
    parallelism: int = Field(
        2, ge=1, description="Grid points fitted and evaluated at once (threads, one session)."
    )
    promotion_margin: float = Field(0.001, ge=0, description="NDCG@k gain to replace the champion.")
    candidates: int = Field(
        10, ge=1, description="Candidates per generator and customer the ranker sees."
    )
    repeat_half_lives: list[float] = Field(
        default_factory=lambda: [30.0, 90.0, 365.0],
        min_length=1,
        description="Half-lives (days) of the repeat generator's time decay, tuned on NDCG@k "
        "(all products) of the evaluation window.",
    )
    knn_neighbours: int = Field(20, ge=1, description="Item-kNN: neighbours kept per product.")
    knn_weighting: Literal["bm25", "cosine"] = Field("bm25", description="Item-kNN similarity.")
    knn_lookback_days: int = Field(
        365, ge=1, description="Item-kNN: co-purchases in this many days before the cutoff."
    )
    knn_recent_products: int = Field(
        20,
        ge=2,
        description="Item-kNN: each customer's this many most recent products form the "
        "co-purchase pairs (bounds memory at customers × this²).",
    )
    ranker_windows: int = Field(
        3,
        ge=1,
        description="At most this many windows of eval_days before the evaluation window "
        "the rankers learn from: fewer when the history is shorter or when the newer ones "
        "already hold half of ranker_max_customers customers.",
    )
    ranker_max_customers: int = Field(
        20_000,
        ge=1,
        description="Customers the rankers learn from, over all their windows (a fixed "
        "sample of the last window's above it; no further window once half are there); the "
        "evaluation and the lists cover everyone.",
    )
    ranker_max_depth: int = Field(3, ge=1, description="Depth of the ranker's trees.")
    ranker_trees: int = Field(150, ge=1, description="Boosting rounds of the ranker.")
    ranker_learning_rate: float = Field(0.05, gt=0, le=1)
    refresh_days: int = Field(
        7,
        ge=0,
        description="When the champion serves as it is, unchanged customers keep their lists up "
        "to this many days, served again on their own day of the cycle; 0: recompute all.",
    )
    experiment: str = "retailml-recommendations"
    model_name: str = "retailml-recommender"


class WorkflowSettings(_Section):
    """The DAG runner and its Databricks export (the tasks themselves are in workflow/job.yml)."""

    full: bool = Field(
        False,
        description="Redo every task and re-read every source file even when nothing changed "
        "(`retailml run --full`); otherwise a task whose inputs are unchanged skips.",
    )
    retrain: bool = Field(
        False,
        description="Retrain the models even when no retraining rule asks for it "
        "(`retailml run --retrain`).",
    )
    max_champion_age_days: int = Field(
        30,
        ge=0,
        description="Retrain a model (propensity or recommender) when its champion was "
        "registered more than this many days ago (0: whenever its inputs change).",
    )

    schedule_cron: str = Field(
        "0 0 6 * * ?", description="Quartz cron of the Databricks job's schedule (daily 06:00)."
    )
    schedule_timezone: str = "UTC"
    schedule_paused: bool = Field(True, description="Export the schedule paused.")
    maintenance_cron: str = Field(
        "0 0 3 ? * SUN",
        description="Quartz cron of the Databricks maintenance job (`retailml maintain`; weekly, "
        "Sunday 03:00, same time zone and pause state as the workflow's).",
    )
    job_catalog: str = Field("main", description="Default of the Databricks job's catalog.")
    job_schema: str = Field("retailml", description="Default of the Databricks job's schema.")
    databricks_spark_version: str = Field(
        "17.3.x-cpu-ml-scala2.13", description="Runtime of the job cluster (an ML runtime)."
    )
    databricks_node_type: str = Field("i3.xlarge", description="Node type of the job cluster.")
    databricks_workers: int = Field(2, ge=0, description="Workers of the job cluster.")


Gate = Literal["quarantine_share", "missing_customer_share", "bad_price_share",
               "unknown_product_share", "batch_rows_ratio"]  # fmt: skip
GATES: tuple[Gate, ...] = get_args(Gate)
Share = Annotated[float, Field(ge=0, le=1)]
_WARN_ONLY: tuple[Gate, ...] = ("unknown_product_share", "batch_rows_ratio")


class QualitySettings(_Section):
    """Data-quality gates on each new batch of source files, checked before silver is written.

    A breached gate fails the task (nothing of the batch reaches silver) unless it is listed in
    ``warn``, when it is printed and recorded only. Every figure goes to ``ops.quality``."""

    max_quarantine_share: Share = Field(
        0.10, description="Quarantined rows / input rows of the batch (ingest)."
    )
    max_missing_customer_share: Share = Field(
        0.50,
        description="Purchase lines without a customer id / purchase lines (clean; the UCI "
        "workbook has about 25%).",
    )
    max_bad_price_share: Share = Field(
        0.05,
        description="Product lines with a zero or negative unit price / product lines (clean).",
    )
    max_unknown_product_share: Share = Field(
        0.50,
        description="Product lines of products silver has never seen / product lines (clean; "
        "not checked on the first batch).",
    )
    batch_rows_ratio: tuple[float, float] = Field(
        (0.1, 10.0),
        description="Bounds of the batch's input rows per file against the previous batch's "
        "(ingest; not checked on the first batch).",
    )
    warn: list[Gate] = Field(
        default_factory=lambda: list(_WARN_ONLY),
        description="Gates that only warn.",
    )


class MonitorSettings(_Section):
    """Drift monitoring: the population stability index (PSI) of features and score."""

    psi_threshold: float = Field(
        0.2,
        gt=0,
        description="A feature's (or the score's) PSI above this is drift and triggers "
        "retraining; 0.1-0.2 is usually read as a moderate shift, above 0.2 as a large one.",
    )
    psi_bins: int = Field(10, ge=2, description="Quantile bins of the reference distribution.")
    ignore_features: list[str] = Field(
        default_factory=lambda: ["tenure_days"],
        description="Features whose PSI is recorded but never triggers retraining: those that "
        "shift between cutoffs by construction (a customer's tenure grows with the shop's age; "
        "on generated M data its PSI is 0.71 with nothing else changed).",
    )
    min_rows: int = Field(
        500,
        ge=1,
        description="Fewer rows than this on either side: the PSI is recorded but does not "
        "trigger retraining (on a hundred customers sampling noise alone gives PSI 0.2-0.5).",
    )


class ReportSettings(_Section):
    """The HTML report written at the end of a run."""

    dir: str = Field("reports", description="Reports go to <dir>/<run_id>/index.html.")
    sample_customers: int = Field(5, ge=1, description="Customers shown with recommendations.")
    experiment: str = Field("retailml-workflow", description="MLflow experiment of the reports.")


class MaintainSettings(_Section):
    """``retailml maintain``: Delta table care (OPTIMIZE, then VACUUM)."""

    vacuum_retention_hours: int = Field(
        168,
        ge=0,
        description="VACUUM deletes files no version younger than this needs (Delta's default "
        "is 7 days; shorter breaks time travel and readers of older versions beyond it).",
    )
    zorder_by: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Table → columns OPTIMIZE clusters by (Z-order), e.g. "
        '{"silver.transactions": ["customer_id"]}; other tables are compacted only.',
    )


class Settings(_Section):
    """Everything a task needs to know; see the module docstring for where values come from."""

    project_dir: Path = Field(default_factory=Path.cwd)
    lake_root: str = Field("lakehouse", description="Folder or URI of the Delta tables.")
    catalog: str | None = Field(None, description="Write catalog.schema.table instead of paths.")
    db_schema: str | None = Field(None, alias="schema", description="Schema within the catalog.")
    data_dir: str = Field("data", description="Where `retailml generate` writes by default.")
    log_dir: str = Field("logs", description="Spark driver logs.")
    seed: int = 42
    spark: SparkSettings = Field(default_factory=lambda: SparkSettings())
    mlflow: MlflowSettings = Field(default_factory=lambda: MlflowSettings())
    generate: GenerateSettings = Field(default_factory=lambda: GenerateSettings())
    ingest: IngestSettings = Field(default_factory=lambda: IngestSettings())
    clean: CleanSettings = Field(default_factory=lambda: CleanSettings())
    features: FeatureSettings = Field(default_factory=lambda: FeatureSettings())
    train: TrainSettings = Field(default_factory=lambda: TrainSettings())
    score: ScoreSettings = Field(default_factory=lambda: ScoreSettings())
    recommend: RecommendSettings = Field(default_factory=lambda: RecommendSettings())
    workflow: WorkflowSettings = Field(default_factory=lambda: WorkflowSettings())
    report: ReportSettings = Field(default_factory=lambda: ReportSettings())
    quality: QualitySettings = Field(default_factory=lambda: QualitySettings())
    monitor: MonitorSettings = Field(default_factory=lambda: MonitorSettings())
    maintain: MaintainSettings = Field(default_factory=lambda: MaintainSettings())

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("catalog", "db_schema")
    @classmethod
    def _identifier(cls, value: str | None) -> str | None:
        if value is not None and not value.replace("_", "").isalnum():
            raise ValueError(f"not a plain identifier: {value!r}")
        return value

    def path(self, value: str | Path) -> str:
        """Resolve a setting's path against the project folder; URIs are returned unchanged."""
        text = str(value)
        if "://" in text or text.startswith("dbfs:"):
            return text
        p = Path(text).expanduser()
        return str(p if p.is_absolute() else (self.project_dir / p).resolve())

    @property
    def tracking_uri(self) -> str:
        """The MLflow tracking URI, defaulting to a sqlite store in the project folder."""
        if self.mlflow.tracking_uri:
            return self.mlflow.tracking_uri
        return f"sqlite:///{self.path('mlflow')}/mlflow.db"

    def with_overrides(self, overrides: Mapping[str, Any]) -> Settings:
        """A copy with dotted-name overrides applied (``{"spark.master": "local[2]"}``)."""
        data = self.model_dump(by_alias=True)
        for dotted, value in overrides.items():
            _set_dotted(data, dotted, value, source="override")
        return _validate(data)


def load_settings(
    *,
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    project_dir: Path | None = None,
) -> Settings:
    """Build the settings from defaults, the TOML file, the environment and CLI overrides.

    Args:
        config_file: A TOML file; default ``$RETAILML_CONFIG`` or ``./retailml.toml`` if present.
        environ: The environment to read (``os.environ`` when None).
        overrides: Dotted setting names → values, from the command line.
        project_dir: Base folder for relative paths (the current folder when None).

    Returns:
        The validated settings.

    Raises:
        SettingsError: A file that cannot be read, an unknown setting, or an invalid value.
    """
    env = os.environ if environ is None else environ
    base = (project_dir or Path.cwd()).resolve()
    data: dict[str, Any] = {"project_dir": str(base)}

    if config_file is None and env.get(f"{ENV_PREFIX}CONFIG"):
        config_file = Path(env[f"{ENV_PREFIX}CONFIG"])
    if config_file is None and (base / CONFIG_FILE_NAME).is_file():
        config_file = base / CONFIG_FILE_NAME
    if config_file is not None:
        try:
            data |= tomllib.loads(Path(config_file).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SettingsError(f"{config_file}: settings file not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"{config_file}: not valid TOML: {exc}") from None

    if env.get("MLFLOW_TRACKING_URI"):
        _set_dotted(data, "mlflow.tracking_uri", env["MLFLOW_TRACKING_URI"], "MLFLOW_TRACKING_URI")
    if env.get("DATABRICKS_RUNTIME_VERSION"):
        # On a Databricks cluster the platform owns the session, Delta and MLflow.
        _set_dotted(data, "spark.master", "existing", "DATABRICKS_RUNTIME_VERSION")
        _set_dotted(data, "spark.delta_package", "", "DATABRICKS_RUNTIME_VERSION")
        _set_dotted(data, "mlflow.tracking_uri", "databricks", "DATABRICKS_RUNTIME_VERSION")
    for name, raw in sorted(env.items()):
        if name.startswith(ENV_PREFIX) and name != f"{ENV_PREFIX}CONFIG":
            _set_dotted(data, _env_key(name), _env_value(raw), name)

    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(data, dotted, value, "command line")
    return _validate(data)


def _validate(data: dict[str, Any]) -> Settings:
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "settings"
        if err["type"] == "extra_forbidden":
            raise SettingsError(f"unknown setting '{where}'") from None
        value = err.get("input")
        shown = f" (got {value!r})" if not isinstance(value, dict) else ""
        msg = err["msg"].removeprefix("Value error, ")
        raise SettingsError(f"invalid setting '{where}': {msg}{shown}") from None


_SECTIONS = {
    name
    for name, field in Settings.model_fields.items()
    if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
}


def _env_key(name: str) -> str:
    key = name.removeprefix(ENV_PREFIX).lower()
    for section in _SECTIONS:
        if key.startswith(section + "_"):
            return f"{section}.{key.removeprefix(section + '_')}"
    return key


def _env_value(raw: str) -> Any:
    if raw[:1] in "{[":
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return raw
    return raw


def _set_dotted(data: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    *parents, leaf = dotted.split(".")
    node = data
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise SettingsError(
                f"invalid setting '{dotted}' from {source}: '{part}' is not a section"
            )
        node = child
    node[leaf] = value
