"""Clean: ``bronze.transactions`` → ``silver.transactions``, ``silver.products`` and
``silver.customers``.

Rules, in the order they apply:

- exact duplicates (same invoice, customer, product, quantity, price, time and event type, from
  any file — the two sheets of the UCI workbook overlap in December 2010) collapse into one
  row; the earliest ``source_file`` is kept;
- every line gets a **line kind** (:func:`line_kind`): ``product`` for merchandise, else the
  kind of the first ``clean.line_kinds`` rule it matches — ``postage``, ``fee``, ``discount``,
  ``manual``, ``adjustment``, ``voucher``, ``sample``, ``other`` by default, from the UCI
  codes (``POST``, ``DOT``, ``M``, ``D``, ``BANK CHARGES``, ``A`` invoices…), with description
  words only as a fallback. Such lines stay (they count in revenue and in a customer's spend)
  but are never products: not in ``silver.products``, and no product statistic counts them;
- a purchase row with a negative quantity, or from an invoice whose id starts with ``C`` (the UCI
  convention for cancellations), is a credit: negative quantity and amount. A credit of a
  product is a **return**: ``event_type = 'return'``, ``is_return``. A credit of another kind
  (a discount, a manual refund, refunded postage) is not a return: it keeps its event type and
  lowers revenue. Returns are flagged, not netted away, so both the gross sales and the return
  behaviour stay visible; a customer's ``total_spent`` is net of returns and credits;
- rows without a customer id are **guest** purchases: kept (they count for product popularity)
  and marked ``is_guest``.

The first run, a run with other clean settings, and ``workflow.full`` build the three tables
from all of bronze (overwrite). After that a run cleans only the files ingested since the last
clean (``ops.ingested_files``): it rebuilds the silver rows of every transaction those files
have or had — from every bronze file that has it, so de-duplication across files still holds —
and MERGEs them into ``silver.transactions`` by ``transaction_id`` (a row no file has any more
is deleted), then rebuilds and MERGEs the product and customer rows those transactions touch.
Either way the tables equal a full rebuild, and re-running with nothing new does nothing.

Before anything is written the batch passes the data-quality gates (:mod:`retailml.quality`):
the shares of purchase lines without a customer, of product lines with a zero or negative price,
and of product lines of products silver has never seen. ``silver.transactions`` holds every
writer to ``quantity <> 0`` (a Delta CHECK constraint).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from retailml import lineage
from retailml import quality as Q
from retailml import schemas as S
from retailml.lakehouse import Lakehouse
from retailml.line_kinds import DEFAULT_LINE_KINDS, LineKindRule
from retailml.settings import Gate, QualitySettings, Settings

OUTPUTS = ("silver.transactions", "silver.products", "silver.customers")
CONSTRAINTS = {"quantity_not_zero": f"{S.QUANTITY} <> 0"}
# Above this many changed files a run rebuilds silver instead of merging.
_MAX_MERGED_FILES = 500

_BUSINESS_COLUMNS = (
    S.INVOICE_ID,
    S.CUSTOMER_ID,
    S.PRODUCT_ID,
    S.PRODUCT_NAME,
    S.CATEGORY,
    S.QUANTITY,
    S.UNIT_PRICE,
    S.EVENT_TIME,
    S.EVENT_TYPE,
    S.COUNTRY,
)


@dataclass(frozen=True)
class KindTotals:
    """Lines and revenue (sum of amounts, credits negative) of one line kind."""

    lines: int
    revenue: float


@dataclass(frozen=True)
class CleanResult:
    """Row counts of the silver tables, how many bronze duplicates were dropped, and the lines
    and revenue of each line kind."""

    bronze_rows: int
    transactions: int
    duplicates_dropped: int
    returns: int
    guest_rows: int
    products: int
    customers: int
    kinds: dict[str, KindTotals] = field(default_factory=dict)
    merged_files: int | None = None  # None: rebuilt from all of bronze
    gates: list[str] = field(default_factory=list)

    def headline(self) -> str:
        aside = sum(t.lines for k, t in self.kinds.items() if k != S.PRODUCT_LINE)
        other = f", {aside:,} non-product lines" if aside else ""
        return (
            f"{self.transactions:,} transactions, {self.products:,} products, "
            f"{self.customers:,} customers{other}"
        )

    def summary(self) -> list[str]:
        lines = [
            f"silver.transactions {self.transactions:,} (dropped {self.duplicates_dropped:,} "
            f"duplicates; {self.returns:,} returns, {self.guest_rows:,} guest rows), "
            f"silver.products {self.products:,}, silver.customers {self.customers:,}"
        ]
        others = {k: t for k, t in self.kinds.items() if k != S.PRODUCT_LINE}
        if others:
            lines.append(
                "  not products (kept in silver.transactions and revenue, never a product):"
            )
            lines += [
                f"    {kind:<11} {t.lines:>9,} lines  revenue {t.revenue:>14,.2f}"
                for kind, t in sorted(others.items(), key=lambda kv: -kv[1].lines)
            ]
        if self.merged_files is not None:
            lines.append(f"  merged the rows of {self.merged_files} new or changed files")
        return lines + [f"  {gate}" for gate in self.gates]


def line_kind(rules: Sequence[LineKindRule] = DEFAULT_LINE_KINDS) -> Column:
    """Each line's kind: the first rule whose codes, code patterns or invoice patterns match,
    else the first whose description patterns match, else ``product``. Case is ignored and
    patterns match the whole value (see :class:`~retailml.settings.LineKindRule`)."""
    code = F.upper(F.trim(F.col(S.PRODUCT_ID)))
    invoice = F.coalesce(F.col(S.INVOICE_ID), F.lit(""))
    name = F.coalesce(F.trim(F.col(S.PRODUCT_NAME)), F.lit(""))

    def whole(patterns: Sequence[str]) -> str:
        return "(?i)^(?:" + "|".join(f"(?:{p})" for p in patterns) + ")$"

    kind: Column | None = None

    def add(condition: Column, value: str) -> None:
        nonlocal kind
        kind = F.when(condition, F.lit(value)) if kind is None else kind.when(condition, value)

    for rule in rules:
        by_code = []
        if rule.codes:
            by_code.append(code.isin(*[c.strip().upper() for c in rule.codes]))
        if rule.code_patterns:
            by_code.append(F.col(S.PRODUCT_ID).rlike(whole(rule.code_patterns)))
        if rule.invoice_patterns:
            by_code.append(invoice.rlike(whole(rule.invoice_patterns)))
        for condition in by_code:
            add(condition, rule.kind)
    for rule in rules:
        if rule.descriptions:
            add(name.rlike(whole(rule.descriptions)), rule.kind)
    return F.lit(S.PRODUCT_LINE) if kind is None else kind.otherwise(S.PRODUCT_LINE)


def _is_product() -> Column:
    return F.col(S.LINE_KIND) == S.PRODUCT_LINE


def clean_transactions(
    bronze: DataFrame, *, line_kinds: Sequence[LineKindRule] = DEFAULT_LINE_KINDS
) -> DataFrame:
    """Typed, de-duplicated transactions with line kinds, returns and guests (see the module
    docstring)."""
    deduped = (
        bronze.groupBy(*_BUSINESS_COLUMNS)
        .agg(F.min(S.SOURCE_FILE).alias(S.SOURCE_FILE))
        .withColumn(S.LINE_KIND, line_kind(line_kinds))
    )
    credit = (F.col(S.EVENT_TYPE) == S.PURCHASE) & (
        (F.col(S.QUANTITY) < 0) | F.coalesce(F.col(S.INVOICE_ID).startswith("C"), F.lit(False))
    )
    is_return = credit & _is_product()
    quantity = F.when(credit, -F.abs(F.col(S.QUANTITY))).otherwise(F.col(S.QUANTITY))
    return deduped.select(
        transaction_id().alias(S.TRANSACTION_ID),
        S.INVOICE_ID,
        S.CUSTOMER_ID,
        S.PRODUCT_ID,
        S.PRODUCT_NAME,
        S.CATEGORY,
        quantity.alias(S.QUANTITY),
        S.UNIT_PRICE,
        F.round(quantity * F.col(S.UNIT_PRICE), 2).alias(S.AMOUNT),
        S.EVENT_TIME,
        F.to_date(S.EVENT_TIME).alias(S.EVENT_DATE),
        F.when(is_return, F.lit(S.RETURN)).otherwise(F.col(S.EVENT_TYPE)).alias(S.EVENT_TYPE),
        S.LINE_KIND,
        is_return.alias(S.IS_RETURN),
        F.col(S.CUSTOMER_ID).isNull().alias(S.IS_GUEST),
        S.COUNTRY,
        S.SOURCE_FILE,
    )


def transaction_id() -> Column:
    """A transaction's key: a hash of its business columns as bronze has them (so equal lines
    from two files share it)."""
    key = F.concat_ws(
        "\u0001", *[F.coalesce(F.col(c).cast("string"), F.lit("\u0000")) for c in _BUSINESS_COLUMNS]
    )
    return F.sha2(key, 256).substr(1, 32)


def most_frequent(df: DataFrame, key: str, column: str) -> DataFrame:
    """Each ``key``'s most frequent non-null ``column`` value, the smallest on ties.

    ``F.mode`` would do it in one aggregate, but it keeps a map of counts per group in an
    object buffer (ObjectHashAggregate, falling back to sorting when the maps grow): it was
    most of clean's time at M and L. Counting ``(key, value)`` pairs is a plain hash
    aggregate, and ranking the few values per key is a small window.

    Returns:
        ``key, column`` (keys without a non-null value are absent).
    """
    counted = (
        df.where(F.col(column).isNotNull()).groupBy(key, column).agg(F.count(F.lit(1)).alias("_n"))
    )
    order = Window.partitionBy(key).orderBy(F.col("_n").desc(), F.col(column))
    return (
        counted.withColumn("_r", F.row_number().over(order))
        .where(F.col("_r") == 1)
        .select(key, column)
    )


def build_products(transactions: DataFrame) -> DataFrame:
    """One row per product seen in any event: most frequent name and category, price stats.
    Lines of other kinds (postage, fees…) are not products and are left out."""
    transactions = transactions.where(_is_product())
    purchase = F.col(S.EVENT_TYPE) == S.PURCHASE

    def when_purchase(column: str) -> F.Column:
        return F.when(purchase, F.col(column))

    stats = transactions.groupBy(S.PRODUCT_ID).agg(
        F.min(when_purchase(S.UNIT_PRICE)).alias("min_price"),
        F.round(F.avg(when_purchase(S.UNIT_PRICE)), 4).alias("avg_price"),
        F.max(when_purchase(S.UNIT_PRICE)).alias("max_price"),
        F.count(when_purchase(S.QUANTITY)).alias("purchase_lines"),
        F.coalesce(F.sum(when_purchase(S.QUANTITY)), F.lit(0)).alias("units_sold"),
        F.countDistinct(when_purchase(S.CUSTOMER_ID)).alias("customers"),
        F.min(when_purchase(S.EVENT_DATE)).alias("first_sold"),
        F.max(when_purchase(S.EVENT_DATE)).alias("last_sold"),
    )
    return (
        stats.join(most_frequent(transactions, S.PRODUCT_ID, S.PRODUCT_NAME), S.PRODUCT_ID, "left")
        .join(most_frequent(transactions, S.PRODUCT_ID, S.CATEGORY), S.PRODUCT_ID, "left")
        .select(S.PRODUCT_ID, S.PRODUCT_NAME, S.CATEGORY, *stats.columns[1:])
    )


def build_customers(transactions: DataFrame) -> DataFrame:
    """One row per known customer: country, first/last purchase, counts, net spend.

    Purchases, invoices and products count product lines only (postage is not a purchase, a
    bad-debt adjustment not an invoice of goods); ``total_spent`` counts every kind."""
    purchase = (F.col(S.EVENT_TYPE) == S.PURCHASE) & _is_product()
    bought = F.col(S.EVENT_TYPE).isin(S.PURCHASE, S.RETURN)
    known = transactions.where(F.col(S.CUSTOMER_ID).isNotNull())
    stats = known.groupBy(S.CUSTOMER_ID).agg(
        F.min(F.when(purchase, F.col(S.EVENT_TIME))).alias("first_purchase"),
        F.max(F.when(purchase, F.col(S.EVENT_TIME))).alias("last_purchase"),
        F.countDistinct(F.when(purchase, F.col(S.INVOICE_ID))).alias("invoices"),
        F.count(F.when(purchase, F.lit(1))).alias("purchase_lines"),
        F.count(F.when(F.col(S.IS_RETURN), F.lit(1))).alias("return_lines"),
        F.countDistinct(F.when(purchase, F.col(S.PRODUCT_ID))).alias("distinct_products"),
        F.round(F.coalesce(F.sum(F.when(bought, F.col(S.AMOUNT))), F.lit(0.0)), 2).alias(
            "total_spent"
        ),
    )
    return stats.join(most_frequent(known, S.CUSTOMER_ID, S.COUNTRY), S.CUSTOMER_ID, "left").select(
        S.CUSTOMER_ID, S.COUNTRY, *stats.columns[1:]
    )


def run(settings: Settings, spark: SparkSession) -> CleanResult | lineage.UpToDate:
    """Bring the three silver tables up to date with bronze (see the module docstring).

    Raises:
        QualityGateError: The new batch breached a failing gate; silver is unchanged.
    """
    lake = Lakehouse(settings, spark)
    return lineage.unless_up_to_date(
        lake,
        "clean",
        lambda now: _clean(lake, settings, now),
        tables=["bronze.transactions"],
        outputs=OUTPUTS,
        config=[settings.clean],
    )


def _clean(lake: Lakehouse, settings: Settings, now: lineage.Inputs) -> CleanResult:
    bronze = lake.read("bronze.transactions")
    rules = settings.clean.line_kinds
    changed = _changed_files(lake, now)
    batch = bronze if changed is None else bronze.where(_of_files([f.path for f in changed]))
    fresh = clean_transactions(batch, line_kinds=rules).persist()
    try:
        batch_id = max(changed, key=lambda f: f.ingested_at).batch_id if changed else "all"
        checks = _gates(settings.quality, fresh, lake, first=changed is None)
        gates = Q.enforce(lake, batch_id, "clean", checks)
        if changed is None:
            lake.overwrite("silver.transactions", fresh)
            # The dimensions from the table just written, not the de-duplication again.
            silver = lake.read("silver.transactions")
            lake.overwrite("silver.products", build_products(silver))
            lake.overwrite("silver.customers", build_customers(silver))
        else:
            _merge(lake, bronze, fresh, [f.path for f in changed], rules)
    finally:
        fresh.unpersist()
    lake.add_constraints("silver.transactions", CONSTRAINTS)
    return _result(lake, bronze, merged=None if changed is None else len(changed), gates=gates)


@dataclass(frozen=True)
class _Ingested:
    """A file ingested since the last clean: its path, batch and when."""

    path: str
    batch_id: str
    ingested_at: datetime


def _changed_files(lake: Lakehouse, now: lineage.Inputs) -> list[_Ingested] | None:
    """The files ingested since the bronze version the last clean built from; None when
    silver must be built from all of bronze (first run, other settings, --full, too many)."""
    last = now.previous
    if (
        last is None
        or lake.settings.workflow.full
        or last.settings_hash != now.settings_hash
        or not all(lake.exists(name) for name in OUTPUTS)
        or not lake.exists("ops.ingested_files")
    ):
        return None
    since = last.versions.get("bronze.transactions", -1)
    # One row per file: bounded by the files of the batches since, not by their rows.
    rows = (
        lake.read("ops.ingested_files")
        .where(F.col(S.BRONZE_VERSION) > since)
        .select(S.PATH, S.BATCH_ID, S.INGESTED_AT)
        .collect()
    )
    files = sorted((_Ingested(*r) for r in rows), key=lambda f: f.path)
    # No file explains the change (bronze was written another way), or too many do: rebuild.
    return files if 0 < len(files) <= _MAX_MERGED_FILES else None


def _of_files(paths: Sequence[str]) -> Column:
    """Rows of these files (a workbook's rows are ``path#sheet``)."""
    condition = F.col(S.SOURCE_FILE).isin(*paths)
    for path in paths:
        condition = condition | F.col(S.SOURCE_FILE).startswith(path + "#")
    return condition


def _gates(
    cfg: QualitySettings, fresh: DataFrame, lake: Lakehouse, *, first: bool
) -> list[Q.Check]:
    """The clean gates, from one aggregation of the batch's cleaned rows per file."""
    product = _is_product()
    purchase = product & (F.col(S.EVENT_TYPE) == S.PURCHASE)
    rows = fresh
    known = F.lit(True)
    if not first and lake.exists("silver.products"):
        ids = lake.read("silver.products").select(S.PRODUCT_ID, F.lit(True).alias("_known"))
        rows = fresh.join(F.broadcast(ids), S.PRODUCT_ID, "left")
        known = F.coalesce(F.col("_known"), F.lit(False))
    per_file = (
        rows.groupBy(S.SOURCE_FILE)
        .agg(
            F.count(F.when(purchase, 1)).alias("purchases"),
            F.count(F.when(purchase & F.col(S.CUSTOMER_ID).isNull(), 1)).alias("guests"),
            F.count(F.when(product, 1)).alias("products"),
            F.count(F.when(product & (F.col(S.UNIT_PRICE) <= 0), 1)).alias("bad_price"),
            F.count(F.when(product & ~known, 1)).alias("unknown"),
        )
        .collect()
    )

    def gate(name: Gate, part: str, whole: str, limit: float) -> Q.Check:
        shares = {r[S.SOURCE_FILE]: r[part] / r[whole] for r in per_file if r[whole]}
        total = (sum(r[part] for r in per_file), sum(r[whole] for r in per_file))
        return Q.share(cfg, name, *total, limit, Q.worst_file(shares))

    checks = [
        gate("missing_customer_share", "guests", "purchases", cfg.max_missing_customer_share),
        gate("bad_price_share", "bad_price", "products", cfg.max_bad_price_share),
    ]
    if not first:
        checks.append(
            gate("unknown_product_share", "unknown", "products", cfg.max_unknown_product_share)
        )
    return checks


def _merge(
    lake: Lakehouse,
    bronze: DataFrame,
    fresh: DataFrame,
    changed: Sequence[str],
    rules: Sequence[LineKindRule],
) -> None:
    """MERGE the silver rows of every transaction the changed files have or had, then the
    product and customer rows those transactions touch."""
    old = lake.read("silver.transactions").where(_of_files(changed))
    touched = (
        fresh.select(S.TRANSACTION_ID, S.PRODUCT_ID, S.CUSTOMER_ID, S.EVENT_TIME)
        .union(old.select(S.TRANSACTION_ID, S.PRODUCT_ID, S.CUSTOMER_ID, S.EVENT_TIME))
        .persist()
    )
    try:
        span = touched.agg(F.min(S.EVENT_TIME), F.max(S.EVENT_TIME)).first()
        if span is None or span[0] is None:
            return
        keys = touched.select(S.TRANSACTION_ID).distinct()
        # Every bronze copy of those transactions, from any file; equal lines have equal event
        # times, so the batch's time span lets Delta skip the files outside it.
        copies = (
            bronze.where(F.col(S.EVENT_TIME).between(span[0], span[1]))
            .withColumn(S.TRANSACTION_ID, transaction_id())
            .join(keys, S.TRANSACTION_ID, "leftsemi")
            .drop(S.TRANSACTION_ID)
        )
        lake.merge_keys(
            "silver.transactions",
            keys,
            clean_transactions(copies, line_kinds=rules),
            S.TRANSACTION_ID,
        )
        silver = lake.read("silver.transactions")
        for name, key, build in (
            ("silver.products", S.PRODUCT_ID, build_products),
            ("silver.customers", S.CUSTOMER_ID, build_customers),
        ):
            ids = touched.where(F.col(key).isNotNull()).select(key).distinct()
            lake.merge_keys(name, ids, build(silver.join(ids, key, "leftsemi")), key)
    finally:
        touched.unpersist()


def _result(
    lake: Lakehouse, bronze: DataFrame, *, merged: int | None, gates: list[str]
) -> CleanResult:
    silver = lake.read("silver.transactions")
    # One pass: per kind, its lines, revenue, returns and guest rows (a handful of rows).
    per_kind = (
        silver.groupBy(S.LINE_KIND)
        .agg(
            F.count(F.lit(1)).alias("rows"),
            F.sum(F.when(F.col(S.EVENT_TYPE).isin(S.PURCHASE, S.RETURN), F.col(S.AMOUNT))).alias(
                "revenue"
            ),
            F.count(F.when(F.col(S.IS_RETURN), 1)).alias("returns"),
            F.count(F.when(F.col(S.IS_GUEST), 1)).alias("guests"),
        )
        .collect()
    )
    rows = sum(int(r["rows"]) for r in per_kind)
    bronze_rows = bronze.count()
    return CleanResult(
        bronze_rows=bronze_rows,
        transactions=rows,
        duplicates_dropped=bronze_rows - rows,
        returns=sum(int(r["returns"]) for r in per_kind),
        guest_rows=sum(int(r["guests"]) for r in per_kind),
        products=lake.read("silver.products").count(),
        customers=lake.read("silver.customers").count(),
        kinds={
            str(r[S.LINE_KIND]): KindTotals(int(r["rows"]), round(float(r["revenue"] or 0.0), 2))
            for r in per_kind
        },
        merged_files=merged,
        gates=gates,
    )
