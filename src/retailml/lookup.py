"""Look-ups for people: one customer's score and recommendations, read from the gold tables."""

from __future__ import annotations

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from retailml import schemas as S
from retailml.errors import RetailmlError
from retailml.lakehouse import Lakehouse
from retailml.settings import Settings

LIST_TITLES = {
    S.FOR_YOU: "for you (rebuys allowed)",
    S.DISCOVER: "discover (never bought)",
}


def customer_card(settings: Settings, spark: SparkSession, customer_id: str) -> list[str]:
    """Printable lines: the customer's latest propensity, decile, rank and recommendations.

    Reads only the gold tables (filtered to one customer), so it needs no model.

    Raises:
        RetailmlError: The customer is unknown to the gold tables.
    """
    lake = Lakehouse(settings, spark)
    lines: list[str] = []
    scores = (
        lake.read("gold.purchase_propensity")
        .where(F.col(S.CUSTOMER_ID) == customer_id)
        .orderBy(F.col(S.AS_OF_DATE).desc())
        .limit(1)
        .collect()
        if lake.exists("gold.purchase_propensity")
        else []
    )
    if scores:
        s = scores[0]
        lines.append(
            f"customer {customer_id} as of {s[S.AS_OF_DATE]}: purchase probability "
            f"{s[S.PROBABILITY]:.3f}, decile {s[S.DECILE]}, rank {s[S.RANK]:,} "
            f"(model {s[S.MODEL_NAME]} v{s[S.MODEL_VERSION]})"
        )
    recs = []
    if lake.exists("gold.recommendations"):
        mine = lake.read("gold.recommendations").where(F.col(S.CUSTOMER_ID) == customer_id)
        latest = mine.agg(F.max(S.AS_OF_DATE)).first()
        if latest and latest[0] is not None:
            recs = (
                mine.where(F.col(S.AS_OF_DATE) == latest[0])
                .orderBy(*([F.col(S.LIST).desc()] if S.LIST in mine.columns else []), S.RANK)
                .collect()
            )
    shown: object = object()
    for r in recs:
        which = r.asDict().get(S.LIST)  # absent from a table written before lists existed
        if which != shown:
            shown = which
            name = LIST_TITLES.get(str(which), "recommendations")
            lines.append(f"{name} as of {r[S.AS_OF_DATE]}:")
        lines.append(
            f"  {r[S.RANK]}. {r[S.PRODUCT_ID]:<10} {r[S.PRODUCT_NAME] or '':<40} "
            f"{r[S.SCORE_VALUE]:.3f} ({r[S.SOURCE]})"
        )
    if not lines:
        raise RetailmlError(
            f"customer {customer_id!r} is not in gold.purchase_propensity or "
            "gold.recommendations; run `retailml task score` / `retailml task recommend`"
        )
    return lines
