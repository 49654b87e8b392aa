"""The single-node comparison's own logic (benchmarks/single_node.py): the pandas parts only —
parsing, cleaning, features, cutoffs and ranking metrics on tiny literal data. No Spark, and
neither LightGBM nor implicit: the module imports them only inside the functions that fit models,
which these tests never call."""

from __future__ import annotations

import math
import subprocess
import sys
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import single_node as sn  # noqa: E402

HEADER = "Invoice,StockCode,Description,Quantity,InvoiceDate,Price,Customer ID,Country\n"


def day(d: date) -> int:
    return (d - date(1970, 1, 1)).days


def test_importing_the_module_loads_neither_lightgbm_nor_implicit() -> None:
    # A fresh interpreter: this test process may have loaded them for another reason.
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import single_node; "
        "loaded = [m for m in ('lightgbm', 'implicit', 'sklearn') if m in sys.modules]; "
        "print(loaded); sys.exit(1 if loaded else 0)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(BENCH)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_ranking_metrics_hand_computed_example() -> None:
    # The example of tests/ml/test_ranking.py, so both implementations answer the same.
    # u1: [a, b, c] against {a, c}: hits at 1 and 3.
    # u2: [d, e, f] against {f, g, h, i}: one hit at 3.
    # u3: no recommendations against {a}: zeros.
    # u4: recommendations but nothing relevant: not evaluated.
    recommended = pd.DataFrame(
        [("u1", "a", 1), ("u1", "b", 2), ("u1", "c", 3),
         ("u2", "d", 1), ("u2", "e", 2), ("u2", "f", 3),
         ("u4", "a", 1), ("u4", "g", 2), ("u4", "b", 3),
         ("u1", "z", 4)],  # beyond k: ignored
        columns=["customer", "product", "rank"],
    )  # fmt: skip
    relevant = pd.DataFrame(
        [("u1", "a"), ("u1", "c"), ("u1", "c"),  # a duplicate purchase is one relevant item
         ("u2", "f"), ("u2", "g"), ("u2", "h"), ("u2", "i"),
         ("u3", "a")],
        columns=["customer", "product"],
    )  # fmt: skip
    m = sn.ranking_metrics(recommended, relevant, k=3)

    g2, g3 = 1 / math.log2(3), 1 / math.log2(4)
    assert m.users == 3
    assert m.precision == pytest.approx((2 / 3 + 1 / 3 + 0) / 3)
    assert m.recall == pytest.approx((2 / 2 + 1 / 4 + 0) / 3)
    ndcg_u1 = (1 + g3) / (1 + g2)
    ndcg_u2 = g3 / (1 + g2 + g3)
    assert m.ndcg == pytest.approx((ndcg_u1 + ndcg_u2) / 3)
    assert m.map == pytest.approx(((1 + 2 / 3) / 2 + (1 / 3) / 3) / 3)
    assert m.hit_rate == pytest.approx(2 / 3)


def test_ranking_metrics_of_nothing_relevant_and_a_bad_k() -> None:
    empty = pd.DataFrame({"customer": [], "product": []})
    recommended = pd.DataFrame({"customer": ["u"], "product": ["a"], "rank": [1]})
    assert sn.ranking_metrics(recommended, empty, k=5) == sn.Ranking(0.0, 0.0, 0.0, 0.0, 0.0, 0)
    with pytest.raises(ValueError, match="k must be at least 1"):
        sn.ranking_metrics(recommended, empty, k=0)


def test_top_k_breaks_ties_by_product() -> None:
    scores = pd.DataFrame(
        {"customer": [1, 1, 1, 2], "product": [9, 3, 5, 7], "score": [1.0, 2.0, 2.0, 0.5]}
    )
    top = sn.top_k(scores, k=2)
    assert top[["customer", "product", "rank"]].values.tolist() == [[1, 3, 1], [1, 5, 2], [2, 7, 1]]


@pytest.mark.parametrize(
    ("first", "last"),
    [(date(2010, 1, 1), date(2011, 12, 31)), (date(2010, 1, 1), date(2010, 8, 28))],
    ids=["two years: seasonal calibration", "240 days: calibration on the newest cutoffs"],
)
def test_cutoffs_are_retailmls(first: date, last: date) -> None:
    from retailml.stages.features import cutoff_dates

    args = {"first_date": first, "horizon_days": 30, "train_cutoffs": 4, "spacing_days": 30}
    assert sn.cutoff_dates(last, **args) == cutoff_dates(last, **args)


def test_too_little_history_for_the_cutoffs() -> None:
    with pytest.raises(ValueError, match="too little history"):
        sn.cutoff_dates(
            date(2010, 3, 1),
            first_date=date(2010, 1, 1),
            horizon_days=30,
            train_cutoffs=4,
            spacing_days=30,
        )


def test_line_kinds_codes_before_descriptions() -> None:
    product = pd.Series(["POST", " post ", "12345", "M", "gift_0001_20", "22222", "33333"])
    invoice = pd.Series(["1", "2", "3", "4", "5", "A77", None])
    name = pd.Series(["x", "y", "POSTAGE", "DISCOUNT", "voucher", "thing", "Amazon Fee"])
    kinds = sn.line_kinds(product, invoice, name)
    # POST by code (trimmed, any case); a product code named POSTAGE by its description; M is
    # manual by code although its description says discount; a gift code pattern; an A invoice
    # is an adjustment; a fee by description.
    assert kinds.tolist() == [
        "postage", "postage", "postage", "manual", "voucher", "adjustment", "fee",
    ]  # fmt: skip


def write(folder: Path, name: str, lines: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(HEADER + "".join(line + "\n" for line in lines))


def test_load_quarantines_dedupes_and_resolves_credits(tmp_path: Path) -> None:
    source = tmp_path / "transactions"
    write(source, "a.csv", [
        "1001,10001,RED MUG,2,2010-01-04 10:00:00,1.50,17850.0,United Kingdom",
        "1001,POST,POSTAGE,1,2010-01-04 10:00:00,18.00,17850.0,United Kingdom",
        "C1002,10001,RED MUG,-1,2010-01-09 11:00:00,1.50,17850.0,United Kingdom",
        "C1003,POST,POSTAGE,-1,2010-01-09 11:00:00,18.00,17850.0,United Kingdom",
        "1004,10002,BLUE MUG,3,2010-01-05 09:00:00,2.00,,France",
        "1005,10001,RED MUG,4",  # truncated
        "1006,10001,RED MUG,2,not a date,1.50,12345.0,France",
        "1007,10001,RED MUG,12O,2010-01-05 09:00:00,1.50,12345.0,France",
        "1008,10001,RED MUG,0,2010-01-05 09:00:00,1.50,12345.0,France",
        "1009,10001,RED MUG,1,2010-01-05 09:00:00,-1.50,12345.0,France",
        "1010,,RED MUG,1,2010-01-05 09:00:00,1.50,12345.0,France",
        "1011,10003,\"GREEN, LARGE MUG\",1,2010-01-06 09:00:00,NULL,12345.0,France",
    ])  # fmt: skip
    write(source, "b.csv", [
        "1001,10001,RED MUG,2,2010-01-04 10:00:00,1.50,17850.0,United Kingdom",  # a duplicate
    ])  # fmt: skip
    silver = sn.load(source)

    assert (silver.source_lines, silver.quarantined, silver.duplicates) == (13, 7, 1)
    lines = silver.lines.assign(
        customer=[silver.customers[c] if c >= 0 else None for c in silver.lines["customer"]],
        product=silver.products[silver.lines["product"]],
    )
    rows = lines[["customer", "product", "quantity", "amount", "is_product", "is_return"]]
    assert rows.values.tolist() == [
        ["17850", "10001", 2, 3.0, True, False],
        ["17850", "POST", 1, 18.0, False, False],
        ["17850", "10001", -1, -1.5, True, True],  # a returned product
        ["17850", "POST", -1, -18.0, False, False],  # refunded postage: a credit, no return
        [None, "10002", 3, 6.0, True, False],  # a guest
    ]
    assert lines["day"].tolist() == [
        day(date(2010, 1, d)) for d in (4, 4, 9, 9, 5)
    ]  # fmt: skip


def tiny_silver() -> sn.Silver:
    """Customer 0: two product lines on 2020-01-01 (one invoice), one and a postage line on
    2020-01-11 (another), a return on 2020-01-15, a purchase on 2020-02-05; customer 1 buys
    first on 2020-02-10; customer 2 once, on 2019-12-01."""
    rows = [
        # customer, product, invoice, quantity, amount, date, is_product, is_return
        (0, 0, 0, 1, 10.0, date(2020, 1, 1), True, False),
        (0, 1, 0, 1, 5.5, date(2020, 1, 1), True, False),
        (0, 0, 1, 1, 4.0, date(2020, 1, 11), True, False),
        (0, 2, 1, 1, 3.0, date(2020, 1, 11), False, False),  # postage
        (0, 1, 2, -1, -5.5, date(2020, 1, 15), True, True),
        (0, 0, 3, 1, 4.0, date(2020, 2, 5), True, False),
        (1, 0, 4, 1, 4.0, date(2020, 2, 10), True, False),
        (2, 1, 5, 2, 11.0, date(2019, 12, 1), True, False),
    ]
    lines = pd.DataFrame(
        rows,
        columns=["customer", "product", "invoice", "quantity", "amount", "date", "is_product",
                 "is_return"],
    )  # fmt: skip
    lines["day"] = [day(d) for d in lines.pop("date")]
    lines["country"] = 0
    return sn.Silver(
        lines=lines,
        customers=np.array(["c0", "c1", "c2"], dtype=object),
        products=np.array(["p0", "p1", "post"], dtype=object),
        countries=np.array(["UK"], dtype=object),
        source_lines=len(rows),
        quarantined=0,
        duplicates=0,
    )


def test_features_at_a_cutoff_by_hand() -> None:
    history = sn.summarise_history(tiny_silver())
    rows = sn.features_at(history, date(2020, 2, 1), split="train", horizon_days=30)

    assert rows["customer"].tolist() == [0, 2]  # customer 1 has bought nothing yet
    c0 = rows.iloc[0]
    expected = {
        "recency_days": 21.0,  # last bought 2020-01-11
        "tenure_days": 31.0,  # first bought 2020-01-01
        "frequency_30": 1.0,  # the 2020-01-11 invoice
        "frequency_90": 2.0,
        "frequency_all": 2.0,
        "monetary_30": 7.0,  # postage counts in the spend
        "monetary_all": 22.5,  # the return does not
        "avg_basket_value": 11.25,
        "avg_basket_size": 1.5,  # three product lines, two invoices
        "distinct_products": 2.0,
        "distinct_categories": 0.0,
        "mean_days_between": 10.0,
        "std_days_between": 0.0,
        "trend_90": 3.0,
        "return_rate": 1 / 3,
        "views_30": 0.0,
    }
    for name, value in expected.items():
        assert c0[name] == pytest.approx(value), name
    assert c0["label"] == 1  # bought on 2020-02-05, within [2020-02-01, 2020-03-02)
    c2 = rows.iloc[1]
    assert (c2["recency_days"], c2["label"], c2["mean_days_between"]) == (62.0, 0, 0.0)
    assert list(rows.columns) == ["customer", "cutoff_date", "split", *sn.FEATURE_COLUMNS, "label"]


def test_features_see_nothing_from_the_cutoff_on() -> None:
    history = sn.summarise_history(tiny_silver())
    # At 2020-01-11 the purchases of that very day are the label's, not the features'.
    rows = sn.features_at(history, date(2020, 1, 11), split="train", horizon_days=3)
    c0 = rows[rows["customer"] == 0].iloc[0]
    assert (c0["frequency_all"], c0["monetary_all"], c0["label"]) == (1.0, 15.5, 1)
    score = sn.features_at(history, date(2020, 3, 1), split="score", horizon_days=30, label=False)
    assert score["label"].isna().all()
    assert sorted(score["customer"]) == [0, 1, 2]


def test_evaluation_set_and_ratings() -> None:
    silver = tiny_silver()
    purchases = sn.product_purchases(silver)
    data = sn.evaluation_set(purchases, cutoff=day(date(2020, 2, 1)))
    # Customer 0 bought before and in the window; customer 1 only in the window.
    assert data.customers.tolist() == [0]
    assert data.relevant["all"][["customer", "product"]].values.tolist() == [[0, 0]]
    assert data.relevant["new"].empty  # product 0 was bought before
    rated = sn.ratings(silver, end=day(date(2020, 2, 1)))
    # Customer 0: product 0 twice (log1p(2)); product 1 bought once and returned: dropped.
    assert rated.values.tolist() == [
        [0, 0, pytest.approx(math.log1p(2))],
        [2, 1, pytest.approx(math.log1p(1))],
    ]


def test_popularity_and_the_fill_by_country() -> None:
    # Products 0..3. Recent window: the 10 days before day 100. Customer 0 (country 0) and a
    # guest invoice buy product 2 recently; customer 1 (country 1) buys 3 recently; product 0
    # was bought long ago by three buyers, product 1 by one.
    lines = pd.DataFrame(
        [(0, 2, 95, 0, 10), (-1, 2, 96, 0, 11), (1, 3, 97, 1, 12),
         (0, 0, 10, 0, 1), (1, 0, 11, 1, 2), (-1, 0, 12, 0, 3), (1, 1, 13, 1, 4)],
        columns=["customer", "product", "day", "country", "invoice"],
    )  # fmt: skip
    silver = tiny_silver()
    world, national = sn.popularity(lines, silver, end=100, days=10, min_country_products=1)
    # Recent buyers first (2: two, 3: one), then all-time buyers (0: three, 1: one).
    assert world.tolist() == [2, 3, 0, 1]
    assert {c: v.tolist() for c, v in national.items()} == {0: [2], 1: [3]}
    country_of = np.array([1, 0, -1])  # customer 2 has no country: the global list
    lists = sn.popular_lists(np.array([0, 1, 2]), country_of, (world, national), k=2, products=4)
    assert lists.values.tolist() == [
        [0, 3, 1],
        [0, 2, 2],
        [1, 2, 1],
        [1, 3, 2],
        [2, 2, 1],
        [2, 3, 2],
    ]
    bought = pd.DataFrame({"customer": [0, 0], "product": [3, 2]})
    without = sn.popular_lists(
        np.array([0]), country_of, (world, national), k=2, exclude=bought, products=4
    )
    assert without.values.tolist() == [[0, 0, 1], [0, 1, 2]]
