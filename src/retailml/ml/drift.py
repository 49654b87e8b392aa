"""Drift: the population stability index (PSI) of features and scores, and ``ops.drift``.

PSI compares an actual distribution with an expected (reference) one over the reference's
quantile bins: ``PSI = Σ (a_i − e_i) · ln(a_i / e_i)``, with ``a_i`` and ``e_i`` the shares of
rows in bin ``i`` (missing values are a bin of their own; an empty bin counts as
:data:`EPSILON`). Below 0.1 is usually read as no shift, 0.1–0.2 as moderate, above 0.2 as
large (Siddiqi, *Credit Risk Scorecards*, 2006; Yurdakul, "Statistical properties of the
population stability index", 2018).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from retailml import schemas as S
from retailml.lakehouse import Lakehouse

TABLE = "ops.drift"
TRAIN_VS_SCORE = "train_vs_score"
SCORE_VS_PREVIOUS = "score_vs_previous"
EPSILON = 1e-4
_NULL_BIN = -1


def psi(expected: DataFrame, actual: DataFrame, columns: Sequence[str], *, bins: int = 10) -> Drift:
    """The PSI of each numeric column of ``actual`` against ``expected``.

    Bin edges are ``expected``'s quantiles (``approxQuantile``, relative error 0.001), repeated
    edges merged, so a column with few distinct values gets fewer bins. The quantiles are taken
    over its rows in one partition in a fixed order, so the same rows give the same edges
    however they are stored. Two passes: the quantiles of ``expected``, then one aggregation of
    both frames' bins (a few rows per column).

    Args:
        expected: The reference rows (for example the training cutoff's features).
        actual: The rows compared with it (for example the scoring cutoff's).
        columns: Numeric columns present in both.
        bins: Quantile bins of the reference (at most; fewer with ties).

    Returns:
        Column → PSI (≥ 0; 0 when the shares are equal; empty frames give 0), and the rows on
        each side.
    """
    if not columns:
        return Drift({}, 0, 0)
    probabilities = [i / bins for i in range(1, bins)]
    cast = [F.col(c).cast("double").alias(c) for c in columns]
    # The quantile sketch depends on how the rows are split into partitions (their summaries
    # are merged) and, past its 50,000-row buffer, on their order: the same rows in other
    # files gave other edges (PSI moved in the 4th digit). In one partition, sorted by every
    # column, both are the rows' own.
    ordered = expected.select(cast).repartition(1).sortWithinPartitions(*columns)
    quantiles = ordered.approxQuantile(list(columns), probabilities, 0.001)
    edges = {c: sorted(set(q)) for c, q in zip(columns, quantiles, strict=True)}

    # Both sides' bins in one aggregation: (side, column, bin) → rows, columns × bins × 2 rows
    # collected.
    def binned(df: DataFrame, side: int) -> DataFrame:
        return df.select(
            F.lit(side).alias("side"),
            F.array(*[_bin(F.col(c), edges[c]) for c in columns]).alias("b"),
        )

    counted = (
        binned(expected, 0)
        .unionByName(binned(actual, 1))
        .select("side", F.posexplode("b").alias("i", "bin"))
        .groupBy("side", "i", "bin")
        .count()
        .collect()
    )

    def shares(side: int) -> tuple[dict[tuple[int, int], float], int]:
        """Each (column, bin)'s share of the side's rows, and the side's rows."""
        rows = [r for r in counted if r["side"] == side]
        totals: dict[int, int] = {}
        for r in rows:
            totals[r["i"]] = totals.get(r["i"], 0) + int(r["count"])
        found = {(r["i"], r["bin"]): int(r["count"]) / totals[r["i"]] for r in rows}
        return found, totals.get(0, 0)

    (e, expected_rows), (a, actual_rows) = shares(0), shares(1)
    result = {}
    for i, column in enumerate(columns):
        keys = {b for (j, b) in (*e, *a) if j == i}
        total = 0.0
        for b in keys:
            pe, pa = max(e.get((i, b), 0.0), EPSILON), max(a.get((i, b), 0.0), EPSILON)
            total += (pa - pe) * math.log(pa / pe)
        result[column] = total
    return Drift(result, expected_rows, actual_rows)


@dataclass(frozen=True)
class Drift:
    """PSI per column, and how many rows each side had."""

    values: dict[str, float]
    expected_rows: int
    actual_rows: int

    def worst(self, *, ignore: Sequence[str] = (), min_rows: int = 1) -> tuple[str, float] | None:
        """The column with the largest PSI that may trigger retraining: not ignored, and both
        sides with at least ``min_rows`` rows (None: none may)."""
        if min(self.expected_rows, self.actual_rows) < min_rows:
            return None
        kept = {c: v for c, v in self.values.items() if c not in ignore}
        return max(kept.items(), key=lambda kv: kv[1]) if kept else None


def _bin(column: Column, edges: Sequence[float]) -> Column:
    """The bin of each value: the number of edges below it; missing values in their own bin."""
    value = column.cast("double")
    count = sum((F.when(value > edge, 1).otherwise(0) for edge in edges), F.lit(0))
    return F.when(value.isNull() | F.isnan(value), F.lit(_NULL_BIN)).otherwise(count)


def record(
    lake: Lakehouse, as_of: date, comparison: str, expected_date: date, found: Drift
) -> None:
    """Write one row per feature to ``ops.drift`` (replacing this as-of date's rows of the
    same comparison, so a re-run does not duplicate them)."""
    rows = [
        (as_of, comparison, expected_date, f, float(v), found.expected_rows, found.actual_rows)
        for f, v in found.values.items()
    ]
    frame = lake.spark.createDataFrame(
        rows,
        "as_of_date date, comparison string, expected_date date, feature string, psi double, "
        "expected_rows bigint, actual_rows bigint",
    ).withColumn(S.RECORDED_AT, F.current_timestamp())
    lake.replace_where(
        TABLE, frame, f"{S.AS_OF_DATE} = '{as_of}' AND {S.COMPARISON} = '{comparison}'"
    )


def latest(lake: Lakehouse, comparison: str, *, since: datetime | None = None) -> Drift:
    """The newest as-of date's PSI per feature of ``comparison``, among the rows recorded
    after ``since`` (UTC) when given (no values when none)."""
    if not lake.exists(TABLE):
        return Drift({}, 0, 0)
    rows = lake.read(TABLE).where(F.col(S.COMPARISON) == comparison)
    if since is not None:
        rows = rows.where(F.col(S.RECORDED_AT) > F.lit(since))
    newest = rows.agg(F.max(S.AS_OF_DATE)).first()
    if newest is None or newest[0] is None:
        return Drift({}, 0, 0)
    found = rows.where(F.col(S.AS_OF_DATE) == newest[0]).collect()
    return Drift(
        {r[S.FEATURE]: float(r[S.PSI]) for r in found},
        min((int(r["expected_rows"]) for r in found), default=0),
        min((int(r["actual_rows"]) for r in found), default=0),
    )
