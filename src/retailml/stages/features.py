"""Features: ``silver.transactions`` → ``silver.customer_features``.

Point in time. A cutoff T is midnight UTC at the start of day T. A customer's row at T is built
only from events strictly before T, and its label says whether the customer bought in
``[T, T + horizon)``; a customer gets a row at T once they have bought at least once before T.

Cutoffs (:func:`cutoff_dates`): the score cutoff is the day after the last event, with no label
yet; the holdout cutoff is the latest whose label window is complete; the training cutoffs lie
further back, so that every training label window ends on or before the holdout cutoff and no
training row has seen the holdout period. Two calibration cutoffs, labelled, are the ones the
probabilities at the holdout and at the score cutoff are calibrated on: 52 weeks before each
(the same season, the same weekdays: purchase rates move with the season far more than the
features see), or, when the data do not reach back that far, the window just before each.

Scale: transactions are summarised once per customer and day (and per customer and product or
category, and per gap between purchase days). Those tables are much smaller than the event log
and are crossed with the handful of cutoffs, so adding a cutoff costs a pass over the summaries,
not over the transactions. Only Spark built-in functions are used (no Python UDFs).

Fills, so that no feature is ever null: a mean gap between purchase days needs two purchase days
and is 0 before that; their standard deviation (population) needs three and is 0 before that;
``views_30`` and ``carts_30`` are 0 for sources that log no such events. A purchase line without
an invoice id belongs to one invoice per customer and day.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import DateType, StringType, StructField, StructType

from retailml import lineage
from retailml import schemas as S
from retailml.errors import InputError
from retailml.lakehouse import Lakehouse
from retailml.settings import Settings

REQUIRED_COLUMNS = (
    S.CUSTOMER_ID,
    S.INVOICE_ID,
    S.PRODUCT_ID,
    S.CATEGORY,
    S.AMOUNT,
    S.EVENT_TIME,
    S.EVENT_TYPE,
    S.LINE_KIND,
)

# Columns of the intermediate summaries.
_DAY = "day"
_FIRST_DAY = "first_day"
_GAP = "gap"
_INVOICES = "invoices"
_CENTS = "cents"
_LINES = "lines"
_RETURNS = "returns"
_VIEWS = "views"
_CARTS = "carts"
_AGE = "age"

_SECONDS_PER_DAY = 86_400
# A year back, in whole weeks: the same season and the same weekdays.
SEASON_DAYS = 364
# Stands in for a missing invoice id, so such lines make one invoice per customer and day.
_NO_INVOICE = "\u0000"


@dataclass(frozen=True)
class CustomerHistory:
    """Per-customer summaries of ``silver.transactions`` that every cutoff is computed from.

    Attributes:
        daily: One row per customer and UTC day with any event: purchase invoices, purchase
            amount in cents, purchase lines, return lines, views and cart events.
        products: One row per customer and purchased product, with the first purchase day.
        categories: One row per customer and purchased (non-null) category, with its first day.
        gaps: One row per purchase day of a customer but the first, with the days since the
            customer's previous purchase day.
    """

    daily: DataFrame
    products: DataFrame
    categories: DataFrame
    gaps: DataFrame

    def persist(self) -> CustomerHistory:
        """Keep the summaries once computed, for several :func:`features_from_history` calls."""
        for df in (self.daily, self.products, self.categories, self.gaps):
            df.persist(StorageLevel.MEMORY_AND_DISK)
        return self

    def unpersist(self) -> None:
        """Release what :meth:`persist` kept."""
        for df in (self.daily, self.products, self.categories, self.gaps):
            df.unpersist()


@dataclass(frozen=True)
class FeaturesResult:
    """What :func:`run` wrote.

    Attributes:
        cutoffs: The cutoff dates of each split (see :func:`cutoff_dates`).
        rows: Rows of ``silver.customer_features`` per split.
        positive_rate: Share of label 1 in each labelled split (0.0 for a split without rows).
    """

    cutoffs: dict[str, list[date]]
    rows: dict[str, int]
    positive_rate: dict[str, float]

    def headline(self) -> str:
        return ", ".join(f"{n:,} {split}" for split, n in self.rows.items()) + " rows"

    def summary(self) -> list[str]:
        lines = []
        for split, dates in self.cutoffs.items():
            at = ", ".join(d.isoformat() for d in dates)
            rate = self.positive_rate.get(split)
            bought = f"; label rate {rate:.1%}" if rate is not None and split != S.SCORE else ""
            lines.append(f"{split:<11} {self.rows.get(split, 0):>8,} rows at {at}{bought}")
        return lines


def cutoff_dates(
    last_date: date,
    *,
    first_date: date,
    horizon_days: int,
    train_cutoffs: int,
    spacing_days: int,
) -> dict[str, list[date]]:
    """The cutoff dates of each split, for data from ``first_date`` to the end of ``last_date``.

    The score cutoff S is ``last_date + 1``; the holdout cutoff H is ``S - horizon_days``, the
    latest whose label window is complete; training cutoff i (newest first) is
    ``H - horizon_days - i * spacing_days``, so every training label window ends on or before H.

    Args:
        last_date: The last event date in the data.
        first_date: The first event date in the data.
        horizon_days: Length of the label window.
        train_cutoffs: How many training cutoffs.
        spacing_days: Days between consecutive training cutoffs.

    Returns:
        ``{"train": [T_0 > T_1 > ...], "holdout": [H], "score": [S], "calibration": [C_H,
        C_S]}``: ``C_X = X - 364 days`` when both lie at least ``horizon_days`` after
        ``first_date``, else ``C_H = T_0`` (``H - horizon``) and ``C_S = H``; ``C_H < C_S``.

    Raises:
        ValueError: A non-positive argument, or too little history: the oldest training cutoff
            would fall on or before ``first_date`` and see no history at all.
    """
    for name, value in (
        ("horizon_days", horizon_days),
        ("train_cutoffs", train_cutoffs),
        ("spacing_days", spacing_days),
    ):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    score = last_date + timedelta(days=1)
    holdout = score - timedelta(days=horizon_days)
    train = [
        holdout - timedelta(days=horizon_days + i * spacing_days) for i in range(train_cutoffs)
    ]
    if train[-1] <= first_date:
        # The oldest cutoff must be at least one day after first_date, so the data must span
        # 2 × horizon (one label window for the holdout, one for the newest training cutoff)
        # plus the spacing of the older cutoffs plus that day.
        needed = 2 * horizon_days + (train_cutoffs - 1) * spacing_days + 1
        have = (last_date - first_date).days + 1
        raise ValueError(
            f"too little history: {train_cutoffs} training cutoff(s) {spacing_days} days apart "
            f"with a {horizon_days}-day horizon need at least {needed} days of data, but "
            f"{first_date} to {last_date} is {have} day(s)"
        )
    seasonal = [holdout - timedelta(days=SEASON_DAYS), score - timedelta(days=SEASON_DAYS)]
    if seasonal[0] < first_date + timedelta(days=horizon_days):
        seasonal = [train[0], holdout]
    return {S.TRAIN: train, S.HOLDOUT: [holdout], S.SCORE: [score], S.CALIBRATION: seasonal}


def _utc_day(column: str) -> Column:
    # Whole days since the epoch, so that the day is the UTC date of the instant whatever the
    # session time zone, and "before day T" means exactly "before midnight UTC of T".
    days = F.floor(F.unix_seconds(F.col(column)) / _SECONDS_PER_DAY).cast("int")
    return F.date_from_unix_date(days)


def summarise_history(transactions: DataFrame) -> CustomerHistory:
    """Summarise ``silver.transactions`` per customer and day (see :class:`CustomerHistory`).

    Guest rows (no customer id) are dropped: they can have no features.

    Raises:
        ValueError: ``transactions`` lacks a column the features need.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in transactions.columns]
    if missing:
        raise ValueError(f"transactions: missing column(s) {', '.join(missing)}")
    kind = F.col(S.EVENT_TYPE)
    purchase = kind == S.PURCHASE
    # Postage, fees, discounts… are no purchase (a customer did not buy when only a fee was
    # charged) but count in what the customer spent.
    bought = purchase & (F.col(S.LINE_KIND) == S.PRODUCT_LINE)
    events = transactions.where(
        F.col(S.CUSTOMER_ID).isNotNull() & kind.isin(S.PURCHASE, S.RETURN, S.VIEW, S.CART)
    ).select(*REQUIRED_COLUMNS, _utc_day(S.EVENT_TIME).alias(_DAY))

    def count(condition: Column) -> Column:
        return F.count(F.when(condition, F.lit(1)))

    daily = events.groupBy(S.CUSTOMER_ID, _DAY).agg(
        # An invoice lies within one day, so distinct invoices per day can be summed later.
        F.count_distinct(F.when(bought, F.coalesce(F.col(S.INVOICE_ID), F.lit(_NO_INVOICE)))).alias(
            _INVOICES
        ),
        # Integer cents make the sums exact and independent of the order Spark adds them in.
        F.coalesce(
            F.sum(F.when(purchase, F.round(F.col(S.AMOUNT) * 100).cast("long"))),
            F.lit(0).cast("long"),
        ).alias(_CENTS),
        count(bought).alias(_LINES),
        count(kind == S.RETURN).alias(_RETURNS),
        count(kind == S.VIEW).alias(_VIEWS),
        count(kind == S.CART).alias(_CARTS),
    )
    purchases = events.where(bought)
    products = purchases.groupBy(S.CUSTOMER_ID, S.PRODUCT_ID).agg(F.min(_DAY).alias(_FIRST_DAY))
    categories = (
        purchases.where(F.col(S.CATEGORY).isNotNull())
        .groupBy(S.CUSTOMER_ID, S.CATEGORY)
        .agg(F.min(_DAY).alias(_FIRST_DAY))
    )
    # The gaps between consecutive purchase days are cutoff-independent: a gap ending before T
    # lies wholly before T. One window pass serves every cutoff.
    previous = F.lag(_DAY).over(Window.partitionBy(S.CUSTOMER_ID).orderBy(_DAY))
    gaps = (
        daily.where(F.col(_LINES) > 0)
        .select(S.CUSTOMER_ID, _DAY, F.datediff(F.col(_DAY), previous).cast("long").alias(_GAP))
        .where(F.col(_GAP).isNotNull())
    )
    return CustomerHistory(daily=daily, products=products, categories=categories, gaps=gaps)


def _cutoff_frame(spark: SparkSession, split_of: Mapping[date, str]) -> DataFrame:
    schema = StructType(
        [StructField(S.CUTOFF_DATE, DateType(), False), StructField(S.SPLIT, StringType(), False)]
    )
    # A handful of rows: broadcast, so crossing it with the summaries never shuffles them.
    return F.broadcast(spark.createDataFrame(sorted(split_of.items()), schema))


def _count_first_before(table: DataFrame, cutoffs: DataFrame, name: str) -> DataFrame:
    """How many of a customer's products (or categories) were first bought before each cutoff."""
    return (
        table.join(cutoffs.select(S.CUTOFF_DATE), F.col(_FIRST_DAY) < F.col(S.CUTOFF_DATE))
        .groupBy(S.CUSTOMER_ID, S.CUTOFF_DATE)
        .agg(F.count(F.lit(1)).alias(name))
    )


def features_from_history(
    history: CustomerHistory,
    cutoffs: Sequence[date],
    *,
    horizon_days: int,
    split_of: Mapping[date, str] | None = None,
    label: bool = True,
) -> DataFrame:
    """Customer features at each cutoff, from summaries made by :func:`summarise_history`.

    Same arguments and result as :func:`build_features`; use this one to build several sets of
    cutoffs from one (persisted) summary.
    """
    if not cutoffs:
        raise ValueError("no cutoff dates given")
    if horizon_days < 1:
        raise ValueError(f"horizon_days must be at least 1, got {horizon_days}")
    if split_of is None:
        split_of = {t: S.TRAIN if label else S.SCORE for t in cutoffs}
    unassigned = sorted(t for t in set(cutoffs) if t not in split_of)
    if unassigned:
        raise ValueError(f"split_of has no split for cutoff(s) {', '.join(map(str, unassigned))}")
    cut = _cutoff_frame(history.daily.sparkSession, {t: split_of[t] for t in cutoffs})

    # age = days from an event's day to the cutoff: 1 is the day before T, 0 is T itself, so
    # "before T" is age >= 1, the window [T - w, T) is 1 <= age <= w and the label window
    # [T, T + horizon) is 1 - horizon <= age <= 0.
    age = F.col(_AGE)
    before = age >= 1
    lowest_age = 1 - horizon_days if label else 1
    rows = history.daily.join(
        cut, F.col(_DAY) < F.date_add(F.col(S.CUTOFF_DATE), 1 - lowest_age)
    ).withColumn(_AGE, F.datediff(F.col(S.CUTOFF_DATE), F.col(_DAY)))

    def total(column: str, condition: Column) -> Column:
        return F.coalesce(F.sum(F.when(condition, F.col(column))), F.lit(0))

    def within(days: int) -> Column:
        return before & (age <= days)

    bought = before & (F.col(_LINES) > 0)
    windows = (*S.FEATURE_WINDOWS, None)
    per_cutoff = (
        rows.groupBy(S.CUSTOMER_ID, S.CUTOFF_DATE, S.SPLIT)
        .agg(
            F.max(F.when(bought, F.col(_DAY))).alias("last_bought"),
            F.min(F.when(bought, F.col(_DAY))).alias("first_bought"),
            *[
                total(_INVOICES, within(w) if w else before).alias(f"frequency_{w or 'all'}")
                for w in windows
            ],
            *[
                total(_CENTS, within(w) if w else before).alias(f"cents_{w or 'all'}")
                for w in windows
            ],
            total(_INVOICES, within(180) & (age > 90)).alias("frequency_prev_90"),
            total(_LINES, before).alias("purchase_lines"),
            total(_RETURNS, before).alias("return_lines"),
            total(_VIEWS, within(30)).alias("views_30"),
            total(_CARTS, within(30)).alias("carts_30"),
            total(_LINES, age <= 0).alias("future_lines"),
        )
        .where(F.col("purchase_lines") > 0)
    )
    gaps = (
        history.gaps.join(cut.select(S.CUTOFF_DATE), F.col(_DAY) < F.col(S.CUTOFF_DATE))
        .groupBy(S.CUSTOMER_ID, S.CUTOFF_DATE)
        .agg(
            F.count(F.lit(1)).alias("gap_n"),
            F.sum(_GAP).alias("gap_sum"),
            F.sum(F.col(_GAP) * F.col(_GAP)).alias("gap_sq"),
        )
    )
    keys = [S.CUSTOMER_ID, S.CUTOFF_DATE]
    joined = (
        per_cutoff.join(_count_first_before(history.products, cut, "products"), keys, "left")
        .join(_count_first_before(history.categories, cut, "categories"), keys, "left")
        .join(gaps, keys, "left")
        .fillna(0, subset=["products", "categories", "gap_n", "gap_sum", "gap_sq"])
    )

    def num(column: str) -> Column:
        return F.col(column).cast("double")

    def ratio(numerator: Column, denominator: Column) -> Column:
        # Never divides by zero here (every row has a purchase), but stays 0 rather than failing.
        return F.coalesce(F.try_divide(numerator, denominator), F.lit(0.0))

    n, gap_sum = F.col("gap_n"), F.col("gap_sum")
    # Population variance from integer sums: n·Σg² − (Σg)² is exact in longs, so the result
    # does not depend on the order rows arrive in, and it is never negative from rounding.
    variance = ratio(
        (n * F.col("gap_sq") - gap_sum * gap_sum).cast("double"), (n * n).cast("double")
    )
    cutoff = F.col(S.CUTOFF_DATE)
    features: dict[str, Column] = {
        "recency_days": F.datediff(cutoff, F.col("last_bought")).cast("double"),
        "tenure_days": F.datediff(cutoff, F.col("first_bought")).cast("double"),
        **{f"frequency_{w or 'all'}": num(f"frequency_{w or 'all'}") for w in windows},
        **{f"monetary_{w or 'all'}": num(f"cents_{w or 'all'}") / 100 for w in windows},
        "avg_basket_value": ratio(num("cents_all") / 100, num("frequency_all")),
        "avg_basket_size": ratio(num("purchase_lines"), num("frequency_all")),
        "distinct_products": num("products"),
        "distinct_categories": num("categories"),
        "mean_days_between": ratio(gap_sum.cast("double"), n.cast("double")),
        "std_days_between": F.sqrt(variance),
        "trend_90": (num("frequency_90") + 1) / (num("frequency_prev_90") + 1),
        "return_rate": ratio(num("return_lines"), num("purchase_lines")),
        "views_30": num("views_30"),
        "carts_30": num("carts_30"),
    }
    target = (F.col("future_lines") > 0).cast("int") if label else F.lit(None).cast("int")
    return joined.select(
        F.col(S.CUSTOMER_ID),
        F.col(S.CUTOFF_DATE),
        F.col(S.SPLIT),
        *[features[name].cast("double").alias(name) for name in S.FEATURE_COLUMNS],
        target.alias(S.LABEL),
    )


def build_features(
    transactions: DataFrame,
    cutoffs: Sequence[date],
    *,
    horizon_days: int,
    split_of: Mapping[date, str] | None = None,
    label: bool = True,
) -> DataFrame:
    """Point-in-time customer features and purchase labels at each cutoff.

    One row per customer and cutoff T for every customer with a purchase before T (midnight UTC
    at the start of day T). Features see only events strictly before T; the label is 1 when the
    customer buys in ``[T, T + horizon_days)``. See the module docstring for the fills.

    Args:
        transactions: Rows of ``silver.transactions`` (at least :data:`REQUIRED_COLUMNS`).
        cutoffs: The cutoff dates.
        horizon_days: Length of the label window in days.
        split_of: The split name of each cutoff; default ``train`` for every cutoff, or
            ``score`` when ``label`` is False.
        label: Whether to compute the label; False (for the score cutoff) leaves it null.

    Returns:
        A DataFrame with the columns of ``schemas.CUSTOMER_FEATURES``.

    Raises:
        ValueError: A missing input column, no cutoffs, a cutoff without a split, or a
            non-positive horizon.
    """
    return features_from_history(
        summarise_history(transactions),
        cutoffs,
        horizon_days=horizon_days,
        split_of=split_of,
        label=label,
    )


def run(settings: Settings, spark: SparkSession) -> FeaturesResult | lineage.UpToDate:
    """Rebuild ``silver.customer_features`` from ``silver.transactions`` (overwrite; idempotent),
    unless neither it nor the settings changed since the last build.

    Raises:
        InputError: ``silver.transactions`` is empty or spans too few days for the configured
            horizon, number of training cutoffs and their spacing.
    """
    lake = Lakehouse(settings, spark)
    return lineage.unless_up_to_date(
        lake,
        "features",
        lambda _: _build(lake, settings),
        tables=["silver.transactions"],
        outputs=["silver.customer_features"],
        config=[settings.features],
    )


def _build(lake: Lakehouse, settings: Settings) -> FeaturesResult:
    transactions = lake.read("silver.transactions")
    span = transactions.agg(
        F.min(_utc_day(S.EVENT_TIME)).alias("first"), F.max(_utc_day(S.EVENT_TIME)).alias("last")
    ).first()
    if span is None or span["first"] is None:
        raise InputError("silver.transactions has no rows; there is nothing to build features from")
    f = settings.features
    try:
        cutoffs = cutoff_dates(
            span["last"],
            first_date=span["first"],
            horizon_days=f.horizon_days,
            train_cutoffs=f.train_cutoffs,
            spacing_days=f.cutoff_spacing_days,
        )
    except ValueError as exc:
        raise InputError(
            f"silver.transactions: {exc}; lower features.horizon_days, features.train_cutoffs "
            "or features.cutoff_spacing_days, or add older data"
        ) from None

    # Every distinct cutoff in one pass over the summaries, under its first split; a
    # calibration cutoff that is also a training or the holdout cutoff (as when the data do not
    # reach a year back) is built once and written under both splits.
    split_of: dict[date, str] = {}
    for split in (S.TRAIN, S.HOLDOUT, S.SCORE, S.CALIBRATION):
        for t in cutoffs[split]:
            split_of.setdefault(t, split)
    shared = [t for t in cutoffs[S.CALIBRATION] if split_of[t] != S.CALIBRATION]
    # The score copy's label is set to null below: a shared score cutoff would lose its label.
    assert S.SCORE not in (split_of[t] for t in shared), cutoffs
    splits = F.array(F.col(S.SPLIT))
    if shared:
        splits = F.when(
            F.col(S.CUTOFF_DATE).isin(shared), F.array(F.col(S.SPLIT), F.lit(S.CALIBRATION))
        ).otherwise(splits)
    history = summarise_history(transactions).persist()
    try:
        # Labelled throughout: features read only events before their cutoff and only the
        # label sees its window, so the score cutoff's rows are those of an unlabelled call
        # once its label is set to null.
        built = features_from_history(
            history, list(split_of), horizon_days=f.horizon_days, split_of=split_of
        )
        unknown = F.when(F.col(S.SPLIT) == S.SCORE, F.lit(None).cast("int"))
        columns = {
            S.SPLIT: F.explode(splits).alias(S.SPLIT),
            S.LABEL: unknown.otherwise(F.col(S.LABEL)).alias(S.LABEL),
        }
        lake.overwrite(
            "silver.customer_features", built.select(*[columns.get(c, c) for c in built.columns])
        )
    finally:
        history.unpersist()

    # At most one row per split: a bounded summary, safe to collect.
    stats = (
        lake.read("silver.customer_features")
        .groupBy(S.SPLIT)
        .agg(F.count(F.lit(1)).alias("rows"), F.avg(S.LABEL).alias("positive_rate"))
        .collect()
    )
    by_split = {row[S.SPLIT]: row for row in stats}
    return FeaturesResult(
        cutoffs=cutoffs,
        rows={s: int(by_split[s]["rows"]) if s in by_split else 0 for s in cutoffs},
        positive_rate={
            s: float(by_split[s]["positive_rate"] or 0.0) if s in by_split else 0.0
            for s in (S.TRAIN, S.HOLDOUT, S.CALIBRATION)
        },
    )
