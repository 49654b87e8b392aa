"""Top-k ranking metrics computed with Spark, so only one summary row reaches the driver.

The definitions follow ``pyspark.mllib.evaluation.RankingMetrics`` (binary relevance), so the two
agree to floating-point precision; the tests check that.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from pyspark.sql import DataFrame, Row
from pyspark.sql import functions as F

from retailml import schemas as S

# Columns of the intermediate per-user tables.
_POS = "_pos"
_N_REL = "_n_relevant"
_HIT_POS = "_hit_positions"


@dataclass(frozen=True)
class RankingMetrics:
    """Quality of top-k recommendations against what users went on to buy; larger is better.

    Every field but ``coverage`` and ``users`` is a mean over the evaluated users (those with at
    least one relevant item); see :func:`ranking_metrics` for the definitions.
    """

    precision_at_k: float
    recall_at_k: float
    ndcg_at_k: float
    map_at_k: float
    hit_rate: float
    coverage: float
    users: int

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}{k}": float(v) for k, v in self.__dict__.items()}


def _require(df: DataFrame, columns: Iterable[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(
            f"{what} lacks column(s) {', '.join(missing)}; it has {', '.join(df.columns)}"
        )


def ranking_metrics(
    recommended: DataFrame,
    relevant: DataFrame,
    *,
    k: int,
    user_col: str = S.CUSTOMER_ID,
    item_col: str = S.PRODUCT_ID,
    rank_col: str = S.RANK,
    catalog_size: int,
) -> RankingMetrics:
    """Precision, recall, NDCG and MAP at ``k``, hit rate and catalogue coverage.

    A user is evaluated when they have at least one relevant item; a user without
    recommendations counts with zeros, and recommendations for users without relevant items
    only count towards coverage. For one user with relevant set ``R`` (``|R| ≥ 1``) and hits
    ``h`` among the recommendations at positions ``1..k``:

    - precision@k = h / k (also when fewer than k items were recommended);
    - recall@k = h / |R| (Spark's ``recallAt``; it can stay below 1 when ``|R| > k``);
    - NDCG@k = DCG / IDCG with DCG = Σ over hits at position i of 1 / log2(i + 1) and IDCG the
      DCG of a perfect list, Σ_{i ≤ min(|R|, k)} 1 / log2(i + 1);
    - AP@k = Σ over hits at position i of (hits at positions ≤ i) / i, divided by min(|R|, k)
      (Spark's ``meanAveragePrecisionAt``); MAP@k is its mean;
    - hit rate = share of users with h ≥ 1;
    - coverage = distinct items recommended at positions ≤ k to any user, evaluated or not,
      divided by ``catalog_size``.

    Args:
        recommended: One row per recommendation: user, item and its 1-based position
            ``rank_col`` (rows beyond ``k`` are ignored; an item appears once per user).
        relevant: (user, item) pairs the users bought in the evaluation window; duplicates
            are ignored.
        k: The cut-off.
        user_col: User column of both inputs.
        item_col: Item column of both inputs.
        rank_col: Position column of ``recommended``.
        catalog_size: How many items could have been recommended.

    Returns:
        The metrics; all zero, with ``users = 0``, when no user has a relevant item.

    Raises:
        ValueError: A missing column, ``k < 1`` or ``catalog_size < 1``.
    """
    group = "_group"
    by_group = ranking_metrics_by(
        recommended.withColumn(group, F.lit("")),
        relevant.withColumn(group, F.lit("")),
        group_col=group,
        k=k,
        user_col=user_col,
        item_col=item_col,
        rank_col=rank_col,
        catalog_size=catalog_size,
    )
    return by_group.get("", RankingMetrics(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0))


def ranking_metrics_by(
    recommended: DataFrame,
    relevant: DataFrame,
    *,
    group_col: str,
    k: int,
    user_col: str = S.CUSTOMER_ID,
    item_col: str = S.PRODUCT_ID,
    rank_col: str = S.RANK,
    catalog_size: int,
) -> dict[str, RankingMetrics]:
    """:func:`ranking_metrics` of several recommenders or modes in one pass.

    Both inputs carry ``group_col`` (for example the mode, ``all`` or ``new``); each group is
    evaluated on its own, exactly as :func:`ranking_metrics` would, and only one small row per
    group reaches the driver.

    Returns:
        Group value → metrics, for every group in either input.

    Raises:
        ValueError: A missing column, ``k < 1`` or ``catalog_size < 1``.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if catalog_size < 1:
        raise ValueError(f"catalog_size must be at least 1, got {catalog_size}")
    _require(recommended, (group_col, user_col, item_col, rank_col), "recommended")
    _require(relevant, (group_col, user_col, item_col), "relevant")

    keys = [group_col, user_col, item_col]
    rec = recommended.where(F.col(rank_col) <= k).select(
        *keys, F.col(rank_col).cast("int").alias(_POS)
    )
    # Each relevant item with its position among the recommendations (null when missed); the
    # sorted hit positions of a user are at most k values, so arrays stay small.
    per_user = (
        relevant.select(*keys)
        .distinct()
        .join(rec, keys, "left")
        .groupBy(group_col, user_col)
        .agg(
            F.count(F.lit(1)).alias(_N_REL),
            F.array_sort(F.collect_list(_POS)).alias(_HIT_POS),
        )
    )
    hit_pos = F.col(_HIT_POS)
    hits = F.size(hit_pos).cast("double")
    dcg = F.aggregate(hit_pos, F.lit(0.0), lambda acc, p: acc + 1.0 / F.log2(p + 1))
    # The i-th hit (0-based) at position p contributes precision (i + 1) / p.
    ap_sum = F.aggregate(
        F.transform(hit_pos, lambda p, i: (i + 1) / p), F.lit(0.0), lambda acc, x: acc + x
    )

    # IDCG for 1..k relevant items, looked up by min(|R|, k).
    ideal, total = [], 0.0
    for i in range(1, k + 1):
        total += 1.0 / math.log2(i + 1)
        ideal.append(F.lit(total))
    top = F.least(F.col(_N_REL), F.lit(k)).cast("int")
    summary = (
        per_user.groupBy(group_col)
        .agg(
            F.count(F.lit(1)).alias("users"),
            F.avg(hits / k).alias("precision"),
            F.avg(hits / F.col(_N_REL)).alias("recall"),
            F.avg(dcg / F.element_at(F.array(*ideal), top)).alias("ndcg"),
            F.avg(ap_sum / top).alias("map"),
            F.avg((hits > 0).cast("double")).alias("hit_rate"),
        )
        .join(
            rec.groupBy(group_col).agg(F.countDistinct(item_col).alias("items")),
            group_col,
            "full",
        )
    )

    def value(row: Row, name: str) -> float:
        return float(row[name]) if row[name] is not None else 0.0

    return {
        str(row[group_col]): RankingMetrics(
            precision_at_k=value(row, "precision"),
            recall_at_k=value(row, "recall"),
            ndcg_at_k=value(row, "ndcg"),
            map_at_k=value(row, "map"),
            hit_rate=value(row, "hit_rate"),
            coverage=value(row, "items") / catalog_size,
            users=int(row["users"] or 0),
        )
        for row in summary.collect()
    }
