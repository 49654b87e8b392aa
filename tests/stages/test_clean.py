from __future__ import annotations

from datetime import datetime

from pyspark.sql import DataFrame, SparkSession

from retailml import lineage
from retailml import schemas as S
from retailml.lakehouse import Lakehouse
from retailml.line_kinds import LineKindRule
from retailml.settings import Settings
from retailml.stages import clean

T0 = datetime(2010, 1, 4, 10, 0)
T1 = datetime(2010, 1, 9, 12, 30)
T2 = datetime(2010, 2, 1, 9, 0)


def bronze(spark: SparkSession, rows: list[tuple]) -> DataFrame:
    """Bronze rows from (invoice, customer, product, name, qty, price, time, country, file)."""
    full = [
        (
            inv,
            cust,
            prod,
            name,
            None,
            qty,
            price,
            ts,
            S.PURCHASE,
            country,
            src,
            "online_retail_ii",
            T2,
            "b1",
        )
        for inv, cust, prod, name, qty, price, ts, country, src in rows
    ]
    return spark.createDataFrame(full, S.BRONZE_TRANSACTIONS)


ROWS = [
    ("1", "c1", "p1", "MUG", 2, 1.5, T0, "UK", "b.csv"),
    ("1", "c1", "p1", "MUG", 2, 1.5, T0, "UK", "a.csv"),  # the same line from another file
    ("1", "c1", "p2", "BOWL", 1, 4.0, T0, "UK", "a.csv"),
    ("C2", "c1", "p1", "MUG", -1, 1.5, T1, "UK", "a.csv"),  # a cancellation
    ("3", None, "p2", "BOWL", 3, 4.0, T1, "UK", "a.csv"),  # a guest
    ("4", "c2", "p2", "BOWL BLUE", 1, 5.0, T2, "FR", "a.csv"),
    ("5", "c2", "p1", "MUG", 1, 1.5, T2, "DE", "a.csv"),
    ("6", "c2", "p3", None, 1, 2.0, T2, "FR", "a.csv"),
]


def test_dedupes_flags_returns_and_guests(spark: SparkSession) -> None:
    out = clean.clean_transactions(bronze(spark, ROWS))
    rows = out.collect()
    assert len(rows) == len(ROWS) - 1
    dup = [r for r in rows if r.invoice_id == "1" and r.product_id == "p1"]
    assert len(dup) == 1 and dup[0].source_file == "a.csv"  # deterministic: earliest file
    ret = next(r for r in rows if r.invoice_id == "C2")
    assert (ret.event_type, ret.is_return, ret.quantity, ret.amount) == (S.RETURN, True, -1, -1.5)
    guest = next(r for r in rows if r.invoice_id == "3")
    assert guest.is_guest and guest.customer_id is None
    assert all(len(r.transaction_id) == 32 for r in rows)
    assert len({r.transaction_id for r in rows}) == len(rows)
    assert next(r for r in rows if r.invoice_id == "4").event_date.isoformat() == "2010-02-01"


def test_products_and_customers(spark: SparkSession) -> None:
    silver = clean.clean_transactions(bronze(spark, ROWS))
    products = {r.product_id: r for r in clean.build_products(silver).collect()}
    assert products["p2"].product_name == "BOWL"  # most frequent name (2 of 3 lines)
    assert (products["p2"].min_price, products["p2"].max_price) == (4.0, 5.0)
    assert products["p2"].purchase_lines == 3 and products["p2"].units_sold == 5
    assert products["p2"].customers == 2  # c1, c2; the guest does not count
    assert products["p1"].purchase_lines == 2  # the return is not a purchase
    assert products["p3"].product_name is None
    customers = {r.customer_id: r for r in clean.build_customers(silver).collect()}
    assert set(customers) == {"c1", "c2"}
    c1 = customers["c1"]
    assert (c1.invoices, c1.purchase_lines, c1.return_lines, c1.distinct_products) == (1, 2, 1, 2)
    assert c1.total_spent == 3.0 + 4.0 - 1.5  # net of the return
    assert c1.first_purchase == T0 and c1.last_purchase == T0
    assert customers["c2"].country == "FR"  # the most frequent country


SERVICE = [
    ("7", "c3", "p1", "MUG", 1, 1.5, T0, "FR", "a.csv"),
    ("7", "c3", "POST", "POSTAGE", 2, 18.0, T0, "FR", "a.csv"),
    ("8", None, "DOT", "DOTCOM POSTAGE", 1, 7.5, T0, "UK", "a.csv"),
    ("C9", "c3", "D", "Discount", -1, 5.0, T1, "FR", "a.csv"),  # a discount, not a return
    ("C10", "c3", "M", "Manual", -1, 2.0, T1, "FR", "a.csv"),  # a manual credit
    ("11", "c3", "BANK CHARGES", "Bank Charges", 1, 15.0, T1, "FR", "a.csv"),
    ("A12", None, "B", "Adjust bad debt", 1, 500.0, T2, "UK", "a.csv"),
    ("13", "c3", "gift_0001_20", "Dotcomgiftshop Gift Voucher £20.00", 1, 17.0, T2, "FR", "a.csv"),
    ("14", "c3", "X99", "CARRIAGE", 1, 50.0, T2, "FR", "a.csv"),  # by description only
    ("15", "c3", "P42", "POSTAGE STAMP CUSHION", 1, 3.0, T2, "FR", "a.csv"),  # a product
]


def test_line_kinds_are_not_products_but_count_in_spend(spark: SparkSession) -> None:
    silver = clean.clean_transactions(bronze(spark, SERVICE))
    kinds = {
        r.product_id: (r.line_kind, r.event_type, r.is_return, r.amount) for r in silver.collect()
    }
    assert kinds == {
        "p1": ("product", S.PURCHASE, False, 1.5),
        "POST": ("postage", S.PURCHASE, False, 36.0),
        "DOT": ("postage", S.PURCHASE, False, 7.5),
        "D": ("discount", S.PURCHASE, False, -5.0),
        "M": ("manual", S.PURCHASE, False, -2.0),
        "BANK CHARGES": ("fee", S.PURCHASE, False, 15.0),
        "B": ("adjustment", S.PURCHASE, False, 500.0),
        "gift_0001_20": ("voucher", S.PURCHASE, False, 17.0),
        "X99": ("postage", S.PURCHASE, False, 50.0),
        "P42": ("product", S.PURCHASE, False, 3.0),
    }
    assert {r.product_id for r in clean.build_products(silver).collect()} == {"p1", "P42"}
    [c3] = clean.build_customers(silver).collect()
    assert (c3.invoices, c3.purchase_lines, c3.return_lines, c3.distinct_products) == (2, 2, 0, 2)
    assert c3.total_spent == 1.5 + 36.0 - 5.0 - 2.0 + 15.0 + 17.0 + 50.0 + 3.0
    # The rules are settings: a shop whose code for postage is SHIP.
    rules = [LineKindRule(kind="postage", codes=["ship"])]
    custom = clean.clean_transactions(
        bronze(spark, [("1", "c1", "SHIP", "Shipping", 1, 4.0, T0, "UK", "a.csv")]),
        line_kinds=rules,
    )
    assert custom.first().line_kind == "postage"


def test_most_frequent_breaks_ties_by_the_smallest_value_and_ignores_nulls(
    spark: SparkSession,
) -> None:
    df = spark.createDataFrame(
        [("a", "x"), ("a", "y"), ("a", None), ("a", None), ("a", None),  # tie x/y: x
         ("b", "z"), ("b", "y"), ("b", "z"),  # z twice
         ("c", None)],  # only nulls: no row
        "k string, v string",
    )  # fmt: skip
    found = {r.k: r.v for r in clean.most_frequent(df, "k", "v").collect()}
    assert found == {"a": "x", "b": "z"}


def test_run_is_idempotent(settings: Settings, spark: SparkSession) -> None:
    lake = Lakehouse(settings, spark)
    lake.overwrite("bronze.transactions", bronze(spark, ROWS))
    first = clean.run(settings, spark)
    snapshot = {
        n: sorted(lake.read(n).collect())
        for n in ("silver.transactions", "silver.products", "silver.customers")
    }
    versions = {n: lake.version(n) for n in snapshot}
    # Nothing new in bronze: nothing is done or written.
    assert isinstance(clean.run(settings, spark), lineage.UpToDate)
    assert {n: lake.version(n) for n in snapshot} == versions
    # --full rebuilds the same tables.
    second = clean.run(settings.with_overrides({"workflow.full": True}), spark)
    assert first == second
    assert first.duplicates_dropped == 1 and first.returns == 1 and first.guest_rows == 1
    for name, rows in snapshot.items():
        assert sorted(lake.read(name).collect()) == rows


def test_run_reports_lines_and_revenue_per_kind(settings: Settings, spark: SparkSession) -> None:
    Lakehouse(settings, spark).overwrite("bronze.transactions", bronze(spark, ROWS + SERVICE))
    result = clean.run(settings, spark)
    assert result.kinds["postage"] == clean.KindTotals(3, 36.0 + 7.5 + 50.0)
    assert result.kinds["discount"] == clean.KindTotals(1, -5.0)
    assert "8 non-product lines" in result.headline()
    assert any(line.split()[:2] == ["postage", "3"] for line in result.summary())
