"""Score: the registry's champion scores every customer at the latest cutoff.

The model is always loaded through the alias (``models:/retailml-propensity@champion``), never
from a training run, so what runs here is exactly what the gate promoted. Its probabilities are
calibrated for the window they are about: Platt-scaled on the score cutoff's calibration cutoff
(52 weeks before it, the same season, or the holdout when the data are shorter), as training
calibrated them for the holdout. Summed, they are the expected number of buyers in the next
``features.horizon_days``. Writes ``gold.purchase_propensity`` (history: re-scoring an as-of
date replaces that date's rows) and ``gold.top_buyers`` (the top N of the latest as-of date,
with their key facts).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta

import mlflow
import mlflow.spark
from mlflow.tracking import MlflowClient
from pyspark.ml import PipelineModel
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from retailml import lineage
from retailml import schemas as S
from retailml.errors import RetailmlError
from retailml.lakehouse import Lakehouse
from retailml.ml import drift, registry, tracking
from retailml.ml.propensity import SCORE, Platt, calibrated, fit_platt, score_column
from retailml.settings import Settings


@dataclass(frozen=True)
class ScoreResult:
    """What the scoring run wrote."""

    as_of: date
    model_version: str
    customers: int
    top: list[tuple[int, str, float]]  # (rank, customer, probability) of the first rows
    expected_buyers: float = 0.0  # the sum of the probabilities
    horizon_days: int = 0
    platt: Platt = field(default_factory=Platt)
    calibration_cutoff: date | None = None
    score_psi: tuple[date, float] | None = None  # (previous as-of date, PSI against it)
    psi_threshold: float = 0.2

    def headline(self) -> str:
        return (
            f"{self.customers:,} customers scored by version {self.model_version}; "
            f"{self.expected_buyers:,.0f} expected buyers"
        )

    def summary(self) -> list[str]:
        end = self.as_of + timedelta(days=self.horizon_days - 1)
        on = f"on {self.calibration_cutoff}" if self.calibration_cutoff else "(no usable cutoff)"
        lines = [
            f"scored {self.customers:,} customers as of {self.as_of} with "
            f"champion version {self.model_version}",
            f"expected buyers {self.as_of} .. {end}: {self.expected_buyers:,.0f} "
            f"({self.expected_buyers / max(self.customers, 1):.1%} of the customers); "
            f"calibrated {on}: slope {self.platt.slope:.3f}, intercept {self.platt.intercept:.3f}",
        ]
        if self.score_psi is not None:
            previous, value = self.score_psi
            shifted = "DRIFT: the next run retrains" if value > self.psi_threshold else "stable"
            lines.append(f"score PSI against {previous}: {value:.3f} ({shifted})")
        lines += [
            "top predicted buyers:",
            f"  {'rank':>4}  {'customer':<12} {'probability':>11}",
        ]
        return lines + [f"  {r:>4}  {c:<12} {p:>11.3f}" for r, c, p in self.top]


def score_customers(
    model: PipelineModel,
    features: DataFrame,
    *,
    model_name: str,
    model_version: str,
    platt: Platt | None = None,
) -> DataFrame:
    """Probability (Platt-scaled with ``platt``), rank (1 = most likely to buy) and decile
    (1 = top 10%) for every row.

    Ties in probability are broken by customer id, so ranks are reproducible.
    """
    scored = calibrated(score_column(model.transform(features)), platt or Platt()).select(
        S.CUSTOMER_ID, F.col(S.CUTOFF_DATE).alias(S.AS_OF_DATE), F.col(SCORE).alias(S.PROBABILITY)
    )
    # One ordering over all customers of one as-of date: a single-partition sort of two
    # columns, which stays cheap up to millions of customers.
    order = Window.partitionBy(S.AS_OF_DATE).orderBy(F.col(S.PROBABILITY).desc(), S.CUSTOMER_ID)
    total = Window.partitionBy(S.AS_OF_DATE)
    ranked = scored.withColumn(S.RANK, F.row_number().over(order)).withColumn(
        "n", F.count(F.lit(1)).over(total)
    )
    return ranked.select(
        S.CUSTOMER_ID,
        S.AS_OF_DATE,
        S.PROBABILITY,
        (F.floor((F.col(S.RANK) - 1) * 10 / F.col("n")) + 1).cast("int").alias(S.DECILE),
        S.RANK,
        F.lit(model_name).alias(S.MODEL_NAME),
        F.lit(model_version).alias(S.MODEL_VERSION),
        F.current_timestamp().alias(S.SCORED_AT),
    )


def top_buyers(
    propensity: DataFrame, features: DataFrame, customers: DataFrame, *, n: int
) -> DataFrame:
    """The ``n`` best-ranked customers with recency, frequency, monetary value and country."""
    facts = features.select(
        S.CUSTOMER_ID,
        F.col(S.CUTOFF_DATE).alias(S.AS_OF_DATE),
        "recency_days",
        "frequency_all",
        "monetary_all",
    )
    return (
        propensity.where(F.col(S.RANK) <= n)
        .join(facts, [S.CUSTOMER_ID, S.AS_OF_DATE])
        .join(customers.select(S.CUSTOMER_ID, S.COUNTRY), S.CUSTOMER_ID, "left")
        .select(
            S.RANK,
            S.CUSTOMER_ID,
            S.PROBABILITY,
            "recency_days",
            "frequency_all",
            "monetary_all",
            S.COUNTRY,
            S.AS_OF_DATE,
            S.MODEL_VERSION,
        )
    )


# Every writer of gold.purchase_propensity is held to these (Delta CHECK constraints).
CONSTRAINTS = {
    "probability_in_unit_interval": f"{S.PROBABILITY} BETWEEN 0 AND 1",
    "decile_1_to_10": f"{S.DECILE} BETWEEN 1 AND 10",
    "rank_from_1": f"{S.RANK} >= 1",
}


def load_champion(client: MlflowClient, name: str) -> tuple[PipelineModel, str]:
    """The champion model ``name`` and its version, loaded through the registry alias.

    Raises:
        RetailmlError: There is no champion yet.
    """
    version = registry.champion_version(client, name)
    if version is None:
        raise RetailmlError(
            f"no '{registry.CHAMPION}' model '{name}' in the registry at "
            f"{client.tracking_uri}; run `retailml task train` first"
        )
    return mlflow.spark.load_model(f"models:/{name}@{registry.CHAMPION}"), version


def run(settings: Settings, spark: SparkSession) -> ScoreResult | lineage.UpToDate:
    """Score the latest cutoff with the champion and write the gold tables, unless neither the
    features, the customers, the champion nor the settings changed since the last scoring."""
    lake = Lakehouse(settings, spark)
    client = tracking.configure(settings)
    champion = registry.champion_version(client, settings.train.model_name)
    return lineage.unless_up_to_date(
        lake,
        "score",
        lambda _: _score(lake, settings, client),
        tables=["silver.customer_features", "silver.customers"],
        outputs=["gold.purchase_propensity", "gold.top_buyers"],
        config=[settings.score, settings.train.model_name, settings.features.horizon_days],
        models={f"{settings.train.model_name}@champion": int(champion or -1)},
    )


def _score(lake: Lakehouse, settings: Settings, client: MlflowClient) -> ScoreResult:
    table = lake.read("silver.customer_features")
    features = table.where(F.col(S.SPLIT) == S.SCORE)
    model, version = load_champion(client, settings.train.model_name)
    # The score's calibration cutoff is the later of the two (the other is the holdout's).
    in_calibration = F.col(S.SPLIT) == S.CALIBRATION
    latest = table.where(in_calibration).agg(F.max(S.CUTOFF_DATE)).first()
    calibration_cutoff = latest[0] if latest else None
    try:
        calibration = table.where(in_calibration & (F.col(S.CUTOFF_DATE) == calibration_cutoff))
        platt = fit_platt(score_column(model.transform(calibration)))
    except ValueError:  # no usable calibration rows (tiny data): the model's probabilities
        platt, calibration_cutoff = Platt(), None
    row = features.agg(F.max(S.CUTOFF_DATE)).first()
    if row is None or row[0] is None:
        raise RetailmlError(
            "silver.customer_features has no scoring rows; run `retailml task features`"
        )
    as_of: date = row[0]
    features = features.where(F.col(S.CUTOFF_DATE) == F.lit(as_of))
    propensity = score_customers(
        model, features, model_name=settings.train.model_name, model_version=version, platt=platt
    )
    lake.replace_where("gold.purchase_propensity", propensity, f"{S.AS_OF_DATE} = '{as_of}'")
    lake.add_constraints("gold.purchase_propensity", CONSTRAINTS)

    gold = lake.read("gold.purchase_propensity")
    written = gold.where(F.col(S.AS_OF_DATE) == F.lit(as_of))
    score_psi = _score_drift(
        lake, gold, written, as_of, version=version, bins=settings.monitor.psi_bins
    )
    lake.overwrite(
        "gold.top_buyers",
        top_buyers(written, features, lake.read("silver.customers"), n=settings.score.top_n),
    )
    top = [
        (int(r[S.RANK]), str(r[S.CUSTOMER_ID]), float(r[S.PROBABILITY]))
        for r in lake.read("gold.top_buyers").orderBy(S.RANK).limit(10).collect()
    ]
    totals = written.agg(F.count(F.lit(1)).alias("n"), F.sum(S.PROBABILITY).alias("p")).first()
    return ScoreResult(
        as_of=as_of,
        model_version=version,
        customers=int(totals["n"]) if totals else 0,
        top=top,
        expected_buyers=float(totals["p"] or 0.0) if totals else 0.0,
        horizon_days=settings.features.horizon_days,
        platt=platt,
        calibration_cutoff=calibration_cutoff,
        score_psi=score_psi,
        psi_threshold=settings.monitor.psi_threshold,
    )


def _score_drift(
    lake: Lakehouse,
    gold: DataFrame,
    written: DataFrame,
    as_of: date,
    *,
    version: str,
    bins: int,
) -> tuple[date, float] | None:
    """The PSI of this scoring's probabilities against the previous as-of date's, recorded in
    ``ops.drift``; None for the first scoring, and when the previous one was by another model
    version (a new champion shifts the scores by design)."""
    row = gold.where(F.col(S.AS_OF_DATE) < F.lit(as_of)).agg(F.max(S.AS_OF_DATE)).first()
    if row is None or row[0] is None:
        return None
    previous = gold.where(F.col(S.AS_OF_DATE) == F.lit(row[0]))
    # At most a few versions: one per scoring that wrote this date.
    if {r[0] for r in previous.select(S.MODEL_VERSION).distinct().collect()} != {version}:
        return None
    found = drift.psi(previous, written, [S.PROBABILITY], bins=bins)
    drift.record(lake, as_of, drift.SCORE_VS_PREVIOUS, row[0], found)
    return row[0], found.values[S.PROBABILITY]
