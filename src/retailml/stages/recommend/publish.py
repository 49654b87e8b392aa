"""What the recommend task reads and writes: its inputs, both lists of
``gold.recommendations`` from a model, and the daily path — serving the champion as it is when
nothing asks for retraining (:func:`retrain_reason`), to the customers whose lists are due
(:func:`carry_forward`)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import date, timedelta

import mlflow
import mlflow.spark
from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient
from py4j.protocol import Py4JJavaError
from pyspark.errors import PySparkException
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
from retailml.stages.recommend.data import check_transactions, persist
from retailml.stages.recommend.generators import ITEM, NEIGHBOUR, SIMILARITY, purchase_days
from retailml.stages.recommend.ranker import neighbours_at
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


_log = logging.getLogger(__name__)

# Every writer of gold.recommendations is held to these (Delta CHECK constraints). The rank's
# upper bound is recommend.k, a setting, so it is not a constraint: a smaller k would be
# refused by the rows of earlier as-of dates.
CONSTRAINTS = {
    "rank_from_1": f"{S.RANK} >= 1",
    "list_is_known": f"{S.LIST} IN ('{S.FOR_YOU}', '{S.DISCOVER}')",
    "computed_by_as_of": f"{S.COMPUTED_AS_OF} IS NULL OR {S.COMPUTED_AS_OF} <= {S.AS_OF_DATE}",
}
SIMILAR_CONSTRAINTS = {
    "rank_from_1": f"{S.RANK} >= 1",
    "similarity_positive": f"{S.SIMILARITY} > 0",
    "not_itself": f"{S.SIMILAR_PRODUCT_ID} <> {S.PRODUCT_ID}",
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
    cfg: RecommendSettings, champion: ModelVersion
) -> tuple[PipelineModel, float | None]:
    """The champion loaded through its alias, and the half-life it was tuned with (None if
    not recorded)."""
    serving = mlflow.spark.load_model(f"models:/{cfg.model_name}@{registry.CHAMPION}")
    tag = champion.tags.get(f"{N.VERSION_PARAM_PREFIX}{N.HALF_LIFE_PARAM}")
    return serving, None if tag is None else float(tag)


def write_lists(
    lake: Lakehouse,
    serving: PipelineModel,
    version: ModelVersion,
    half_life: float,
    inputs: Inputs,
    *,
    cfg: RecommendSettings,
    keep: list[DataFrame],
    carried: Carried | None = None,
    days: DataFrame | None = None,
) -> dict[tuple[str, str], int]:
    """Serve both lists with ``serving`` at the as-of date — to every customer, or with
    ``carried`` to its ``fresh`` customers, the others keeping its rows — and replace the
    date's rows of ``gold.recommendations``; the rows written per list and source.

    Item-kNN serves with the version's own neighbours (:func:`similar_products`): a version's
    first serve computes every product's at its as-of date (with the ``recommend.knn_*``
    settings then) and stores them in ``gold.similar_products``, and every later serve of that
    version reads them back — like its ALS factors, they are part of the model until a
    retrained version replaces it. A version whose first serve found no co-purchases stores
    none and computes them again at its next serve. ``days``: every customer's
    :func:`~retailml.stages.recommend.generators.purchase_days` before the as-of date, when the
    caller has them (else they are read from the transactions)."""
    as_of = inputs.as_of
    customers = inputs.customers
    if carried is not None:
        customers = customers.join(carried.fresh, S.CUSTOMER_ID, "left_semi")
    neighbours = similar_products(lake, version, keep=keep)
    if neighbours is None:
        if days is None:
            days = persist(purchase_days(inputs.transactions, end=as_of), keep)
        neighbours = neighbours_at(days, end=as_of, cfg=cfg, keep=keep)
        stored = similar_rows(neighbours, version=version, as_of=as_of)
        lake.replace_where("gold.similar_products", stored, _of_run(version))
        lake.add_constraints("gold.similar_products", SIMILAR_CONSTRAINTS)
    recommendations = serve(
        serving,
        inputs.transactions,
        customers,
        as_of=as_of,
        half_life=half_life,
        cfg=cfg,
        categories=inputs.categories,
        keep=keep,
        neighbours=neighbours,
        days=days,
    )
    rows = gold_rows(
        recommendations, inputs.products, as_of=as_of, model_version=str(version.version)
    )
    if carried is not None:
        rows = rows.unionByName(carried.rows)
    lake.replace_where("gold.recommendations", rows, f"{S.AS_OF_DATE} = '{as_of.isoformat()}'")
    lake.add_constraints("gold.recommendations", CONSTRAINTS)
    return rows_by_source(lake, as_of)


def _of_run(version: ModelVersion) -> str:
    """The SQL condition selecting ``version``'s rows of ``gold.similar_products``."""
    run = str(version.run_id).replace("'", "''")
    return f"{S.MODEL_RUN} = '{run}'"


def similar_products(
    lake: Lakehouse, version: ModelVersion, *, keep: list[DataFrame]
) -> DataFrame | None:
    """The neighbours ``version`` serves with, as
    :func:`~retailml.stages.recommend.generators.item_neighbours` returns them
    (``item, neighbour, similarity, rank``; persisted into ``keep``), or None when
    ``gold.similar_products`` holds none of it (found by the run that logged it: version
    numbers repeat across model names and registries)."""
    if not lake.exists("gold.similar_products"):
        return None
    rows = lake.read("gold.similar_products").where(_of_run(version))
    found = persist(
        rows.select(
            F.col(S.PRODUCT_ID).alias(ITEM),
            F.col(S.SIMILAR_PRODUCT_ID).alias(NEIGHBOUR),
            SIMILARITY,
            S.RANK,
        ),
        keep,
    )
    return None if found.isEmpty() else found


def similar_rows(neighbours: DataFrame, *, version: ModelVersion, as_of: date) -> DataFrame:
    """:func:`~retailml.stages.recommend.generators.item_neighbours`' rows (``item,
    neighbour, similarity, rank``) as ``gold.similar_products`` rows of ``version``."""
    return neighbours.select(
        F.col(ITEM).alias(S.PRODUCT_ID),
        S.RANK,
        F.col(NEIGHBOUR).alias(S.SIMILAR_PRODUCT_ID),
        SIMILARITY,
        F.lit(str(version.version)).alias(S.MODEL_VERSION),
        F.lit(str(version.run_id)).alias(S.MODEL_RUN),
        F.lit(as_of).cast("date").alias(S.AS_OF_DATE),
    )


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
class Carried:
    """The lists kept from the last as-of date, and who is served again."""

    rows: DataFrame  # gold.recommendations rows, moved to the new as-of date
    fresh: DataFrame  # customer_id of the customers served again (one row each)
    previous_as_of: date
    customers: int  # customers who keep their lists


def carry_forward(
    lake: Lakehouse,
    inputs: Inputs,
    version: str,
    previous: lineage.Inputs | None,
    *,
    refresh_days: int,
    keep: list[DataFrame],
) -> Carried | None:
    """Which customers to serve again when the champion serves as it is, and the lists the
    others keep; None when everyone is served (``refresh_days`` 0, ``workflow.full``, no lists
    of an earlier date from this champion version, gold holds lists of a later date than the
    new one, or the silver.customers version the task last read is gone).

    A customer keeps the lists the task wrote last — at an earlier date, or at this one when a
    late file changed silver without a newer event — moved to the new as-of date,
    ``computed_as_of`` unchanged, when their ``silver.customers`` row is exactly as the task
    last read it (no purchase, return or correction since: Delta time travel to that version)
    and the lists are not due: younger than ``refresh_days`` at the new date, and this is not
    the customer's day of the ``refresh_days`` cycle (a hash of the id: after a full serve,
    about ``1 / refresh_days`` of the lists come due each day). Everyone else — new
    customers, changed ones, due lists — is served again. A kept list is what the model said at its
    ``computed_as_of``: the products are the same, the time-decayed scores a few days older.
    """
    if refresh_days == 0 or lake.settings.workflow.full or previous is None:
        return None
    at = previous.versions.get("silver.customers", -1)
    gold = lake.read("gold.recommendations")
    # The lists the task wrote last: an earlier date's, or this date's when a late file
    # changed silver without a newer event.
    last = gold.where(F.col(S.AS_OF_DATE) <= F.lit(inputs.as_of)).agg(F.max(S.AS_OF_DATE)).first()
    if at < 0 or last is None or last[0] is None:
        return None
    previous_as_of: date = last[0]
    if gold.where(F.col(S.AS_OF_DATE) > F.lit(inputs.as_of)).limit(1).count():
        return None  # the as-of date went back (newest events removed): serve everyone
    earlier = gold.where(F.col(S.AS_OF_DATE) == F.lit(previous_as_of))
    if {r[0] for r in earlier.select(S.MODEL_VERSION).distinct().collect()} != {version}:
        return None
    computed = F.lit(previous_as_of)
    if S.COMPUTED_AS_OF in gold.columns:  # lists written before the column was added
        computed = F.coalesce(F.col(S.COMPUTED_AS_OF), computed)
    # Each customer's lists are also due on their own day of the refresh_days cycle (a hash
    # of the id), so after a full serve they come due a share a day, not all on one day.
    slot = F.pmod(F.xxhash64(F.col(S.CUSTOMER_ID)), F.lit(refresh_days))
    today = (inputs.as_of - date(1970, 1, 1)).days % refresh_days
    due = (slot == F.lit(today)) & (computed < F.lit(inputs.as_of))
    young = earlier.where((computed > F.lit(inputs.as_of - timedelta(days=refresh_days))) & ~due)
    now = lake.read("silver.customers")
    try:
        then = lake.read("silver.customers", at)
        changed = now.subtract(then.select(*now.columns)).select(S.CUSTOMER_ID)
        kept = persist(
            young.select(S.CUSTOMER_ID)
            .distinct()
            .join(changed, S.CUSTOMER_ID, "left_anti")
            .join(now.select(S.CUSTOMER_ID), S.CUSTOMER_ID, "left_semi"),
            keep,
        )
        carried = kept.count()
    except (PySparkException, Py4JJavaError) as error:  # e.g. that version was vacuumed
        _log.warning("silver.customers v%s cannot be read; serving everyone: %s", at, error)
        return None
    rows = young.join(kept, S.CUSTOMER_ID, "left_semi").select(
        *[c for c in S.RECOMMENDATIONS.fieldNames() if c not in (S.AS_OF_DATE, S.COMPUTED_AS_OF)],
        F.lit(inputs.as_of).alias(S.AS_OF_DATE),
        computed.alias(S.COMPUTED_AS_OF),
    )
    # Computed now: the write replaces rows of the table these are read from, and a write to a
    # catalog table may refuse a plan that reads its own target.
    rows = rows.localCheckpoint()
    fresh = inputs.customers.select(S.CUSTOMER_ID).join(kept, S.CUSTOMER_ID, "left_anti")
    return Carried(rows, fresh, previous_as_of, carried)


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
    carried: int = 0  # customers whose lists were carried forward
    previous_as_of: date | None = None

    def headline(self) -> str:
        return f"{self.rows_written:,} rows from champion version {self.model_version} (served)"

    def summary(self) -> list[str]:
        lines = [
            f"no retraining needed: champion version {self.model_version} is "
            f"{self.age_days:.1f} days old and the settings are unchanged; served as it is",
            f"gold.recommendations as of {self.as_of}: {self.rows_written:,} rows for "
            f"{self.customers:,} customers",
        ]
        if self.carried:
            lines.append(
                f"lists served again to {self.customers - self.carried:,} customers (new, "
                f"changed, or due); {self.carried:,} unchanged kept those of "
                f"{self.previous_as_of} or earlier (recommend.refresh_days)"
            )
        return lines


def serve_champion(
    lake: Lakehouse,
    inputs: Inputs,
    champion: ModelVersion,
    *,
    cfg: RecommendSettings,
    started: float,
    previous: lineage.Inputs | None,
) -> ServedResult:
    """Both lists from the champion at the new as-of date, without tuning or training: its
    ALS factors, item neighbours, rankers and half-life, with the customers' purchases and the
    popularity ranking at the new date, for the customers whose lists are due
    (:func:`carry_forward`)."""
    serving, half_life = champion_model(cfg, champion)
    version = str(champion.version)
    kept: list[DataFrame] = []
    try:
        carried = carry_forward(
            lake, inputs, version, previous, refresh_days=cfg.refresh_days, keep=kept
        )
        by_source = write_lists(
            lake, serving, champion, half_life or 90.0, inputs, cfg=cfg, keep=kept, carried=carried
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
        carried=carried.customers if carried else 0,
        previous_as_of=carried.previous_as_of if carried else None,
    )


def rows_by_source(lake: Lakehouse, as_of: date) -> dict[tuple[str, str], int]:
    written = lake.read("gold.recommendations").where(F.col(S.AS_OF_DATE) == F.lit(as_of))
    counts = written.groupBy(S.LIST, S.SOURCE).agg(F.count(F.lit(1)).alias("n")).collect()
    return {(str(r[S.LIST]), str(r[S.SOURCE])): int(r["n"]) for r in counts}
