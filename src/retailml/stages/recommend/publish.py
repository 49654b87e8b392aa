"""What the recommend task reads and writes: its inputs, both lists of
``gold.recommendations`` from a model, and the daily path — serving the champion as it is when
nothing asks for retraining (:func:`retrain_reason`)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import date, timedelta

import mlflow
import mlflow.spark
from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient
from pyspark.ml import PipelineModel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from retailml import lineage
from retailml import schemas as S
from retailml.errors import RetailmlError
from retailml.lakehouse import Lakehouse
from retailml.ml import names as N
from retailml.ml import registry
from retailml.ml.retrain import champion_rules
from retailml.settings import RecommendSettings, Settings
from retailml.stages.recommend.data import check_transactions
from retailml.stages.recommend.serving import gold_rows, serve


@dataclass(frozen=True)
class Inputs:
    """The silver tables the task reads, and the as-of date (the day after the last event)."""

    transactions: DataFrame
    customers: DataFrame
    products: DataFrame  # product_id, product_name, category
    as_of: date
    bought_products: int  # products ever bought

    @property
    def categories(self) -> DataFrame:
        return self.products.select(S.PRODUCT_ID, S.CATEGORY)


# Every writer of gold.recommendations is held to these (Delta CHECK constraints). The rank's
# upper bound is recommend.k, a setting, so it is not a constraint: a smaller k would be
# refused by the rows of earlier as-of dates.
CONSTRAINTS = {
    "rank_from_1": f"{S.RANK} >= 1",
    "list_is_known": f"{S.LIST} IN ('{S.FOR_YOU}', '{S.DISCOVER}')",
}


def read_inputs(lake: Lakehouse) -> Inputs:
    transactions = lake.read("silver.transactions")
    check_transactions(transactions)
    last = transactions.agg(F.max(S.EVENT_DATE).alias("last")).first()
    if last is None or last["last"] is None:
        raise RetailmlError("silver.transactions is empty; run `retailml task clean` first")
    products = lake.read("silver.products")
    return Inputs(
        transactions=transactions,
        customers=lake.read("silver.customers").select(S.CUSTOMER_ID, S.COUNTRY),
        products=products.select(S.PRODUCT_ID, S.PRODUCT_NAME, S.CATEGORY),
        as_of=last["last"] + timedelta(days=1),
        # silver.products holds products only, one row each: a count of a small table.
        bought_products=products.where(F.col("purchase_lines") > 0).count(),
    )


def champion_model(
    client: MlflowClient, cfg: RecommendSettings, version: str
) -> tuple[PipelineModel, str, float | None]:
    """The champion loaded through its alias, its version, and the half-life it was tuned with
    (None if not recorded)."""
    serving = mlflow.spark.load_model(f"models:/{cfg.model_name}@{registry.CHAMPION}")
    tags = client.get_model_version(cfg.model_name, version).tags
    tag = tags.get(f"{N.VERSION_PARAM_PREFIX}{N.HALF_LIFE_PARAM}")
    return serving, version, None if tag is None else float(tag)


def write_lists(
    lake: Lakehouse,
    serving: PipelineModel,
    version: str,
    half_life: float,
    inputs: Inputs,
    *,
    cfg: RecommendSettings,
    keep: list[DataFrame],
) -> dict[tuple[str, str], int]:
    """Serve both lists with ``serving`` at the as-of date, replace the date's rows of
    ``gold.recommendations``; the rows written per list and source."""
    as_of = inputs.as_of
    recommendations = serve(
        serving,
        inputs.transactions,
        inputs.customers,
        as_of=as_of,
        half_life=half_life,
        cfg=cfg,
        categories=inputs.categories,
        keep=keep,
    )
    lake.replace_where(
        "gold.recommendations",
        gold_rows(recommendations, inputs.products, as_of=as_of, model_version=version),
        f"{S.AS_OF_DATE} = '{as_of.isoformat()}'",
    )
    lake.add_constraints("gold.recommendations", CONSTRAINTS)
    return rows_by_source(lake, as_of)


def retrain_reason(
    settings: Settings, client: MlflowClient, now: lineage.Inputs
) -> tuple[str | None, ModelVersion | None]:
    """Why the recommender must be tuned and trained again (None: serve the champion as it
    is), and the champion: the rules every model has (:func:`~retailml.ml.retrain.champion_rules`),
    and a champion that is not a two-stage recommender."""
    reason, champion, _ = champion_rules(settings, client, settings.recommend.model_name, now)
    if champion is not None and champion.tags.get(N.EVAL_KIND) != N.RECOMMENDER_KIND:
        return "the champion is not a two-stage recommender", None
    return reason, champion


@dataclass(frozen=True)
class ServedResult:
    """The champion served as it is (no retraining was needed)."""

    as_of: date
    model_version: str
    age_days: float
    rows_written: int
    rows_by_source: dict[tuple[str, str], int]
    customers: int
    seconds: float

    def headline(self) -> str:
        return f"{self.rows_written:,} rows from champion version {self.model_version} (served)"

    def summary(self) -> list[str]:
        return [
            f"no retraining needed: champion version {self.model_version} is "
            f"{self.age_days:.1f} days old and the settings are unchanged; served as it is",
            f"gold.recommendations as of {self.as_of}: {self.rows_written:,} rows for "
            f"{self.customers:,} customers",
        ]


def serve_champion(
    lake: Lakehouse,
    client: MlflowClient,
    inputs: Inputs,
    champion: ModelVersion,
    *,
    cfg: RecommendSettings,
    started: float,
) -> ServedResult:
    """Both lists from the champion at the new as-of date, without tuning or training: its
    ALS factors, rankers and half-life; the generators run on all history as always."""
    serving, version, half_life = champion_model(client, cfg, str(champion.version))
    kept: list[DataFrame] = []
    try:
        by_source = write_lists(
            lake, serving, version, half_life or 90.0, inputs, cfg=cfg, keep=kept
        )
    finally:
        for df in kept:
            df.unpersist()
    return ServedResult(
        as_of=inputs.as_of,
        model_version=version,
        age_days=registry.age_days(champion),
        rows_written=sum(by_source.values()),
        rows_by_source=by_source,
        customers=inputs.customers.count(),
        seconds=time.monotonic() - started,
    )


def rows_by_source(lake: Lakehouse, as_of: date) -> dict[tuple[str, str], int]:
    written = lake.read("gold.recommendations").where(F.col(S.AS_OF_DATE) == F.lit(as_of))
    counts = written.groupBy(S.LIST, S.SOURCE).agg(F.count(F.lit(1)).alias("n")).collect()
    return {(str(r[S.LIST]), str(r[S.SOURCE])): int(r["n"]) for r in counts}
