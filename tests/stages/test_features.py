from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import DataFrame, SparkSession

from retailml import lineage
from retailml import schemas as S
from retailml.errors import InputError
from retailml.lakehouse import Lakehouse
from retailml.stages import features
from tests.conftest import make_settings

T = date(2010, 7, 1)  # the cutoff: midnight UTC at the start of 1 July 2010
HORIZON = 30


def at(y: int, m: int, d: int, h: int = 12, mi: int = 0, s: int = 0) -> datetime:
    return datetime(y, m, d, h, mi, s, tzinfo=UTC)


def ev(
    customer: str | None,
    when: datetime,
    *,
    invoice: str | None = None,
    product: str = "p1",
    category: str | None = None,
    qty: int = 1,
    price: float = 1.0,
    kind: str = S.PURCHASE,
    line_kind: str = S.PRODUCT_LINE,
) -> dict[str, Any]:
    """One silver.transactions row; returns have a negative quantity and amount."""
    return {
        "line_kind": line_kind,
        "invoice": invoice,
        "customer": customer,
        "product": product,
        "category": category,
        "qty": qty,
        "price": price,
        "when": when,
        "kind": kind,
    }


def transactions(spark: SparkSession, events: list[dict[str, Any]]) -> DataFrame:
    rows = [
        (
            f"t{i}",
            e["invoice"],
            e["customer"],
            e["product"],
            None,
            e["category"],
            e["qty"],
            e["price"],
            round(e["qty"] * e["price"], 2),
            e["when"],
            e["when"].date(),
            e["kind"],
            e["line_kind"],
            e["kind"] == S.RETURN,
            e["customer"] is None,
            "UK",
            "test.csv",
        )
        for i, e in enumerate(events)
    ]
    return spark.createDataFrame(rows, S.SILVER_TRANSACTIONS)


# A hand-checkable history around T. Days before T: 2 Jan = 180, 1 Mar = 122, 15 Apr = 77,
# 1 May = 61, 1 Jun = 30, 20 Jun = 11, 25 Jun = 6.
HISTORY = [
    # a: three purchase days (gaps 103 and 66), two invoices on 20 Jun, one return, events.
    ev("a", at(2010, 1, 2), invoice="a1", product="p1", category="X", qty=2, price=5.0),
    ev("a", at(2010, 1, 2), invoice="a1", product="p2", category="Y", qty=1, price=20.0),
    ev("a", at(2010, 4, 15), invoice="a2", product="p1", category="X", qty=1, price=10.0),
    ev("a", at(2010, 6, 20), invoice="a3", product="p3", category=None, qty=1, price=7.5),
    ev("a", at(2010, 6, 20), invoice="a4", product="p1", category="X", qty=1, price=2.5),
    ev(
        "a",
        at(2010, 6, 21),
        invoice="Ca4",
        product="p1",
        category="X",
        qty=-1,
        price=2.5,
        kind=S.RETURN,
    ),
    ev("a", at(2010, 5, 1), product="p5", kind=S.VIEW),  # 61 days before T: not in views_30
    ev("a", at(2010, 6, 25), product="p1", kind=S.VIEW),
    ev("a", at(2010, 6, 25), product="p2", kind=S.VIEW),
    ev("a", at(2010, 6, 25), product="p1", kind=S.CART),
    ev("a", at(2010, 6, 25), product="p1", kind=S.REMOVE_FROM_CART),
    ev("a", at(2010, 7, 10), invoice="a5", product="p2", category="Y", qty=1, price=20.0),
    # b: one purchase in the last second before T; the next exactly at T + horizon.
    ev(
        "b", at(2010, 6, 30, 23, 59, 59), invoice="b1", product="p9", category="Z", qty=3, price=1.5
    ),
    ev("b", at(2010, 7, 31, 0, 0, 0), invoice="b2", product="p9", category="Z", qty=1, price=1.5),
    # e: lines without an invoice id (one invoice for the day); the last buy 30 days before T.
    ev("e", at(2010, 3, 1), product="p1", category="X", qty=1, price=4.0),
    ev("e", at(2010, 3, 1), product="p2", category="Y", qty=1, price=6.0),
    ev("e", at(2010, 6, 1, 0, 0, 0), invoice="e1", product="p1", category="X", qty=1, price=10.0),
    # c: browses before T but first buys exactly at T; a guest buys before T. Neither gets a row.
    ev("c", at(2010, 6, 28), product="p1", kind=S.VIEW),
    ev("c", at(2010, 7, 1, 0, 0, 0), invoice="c1", product="p1", category="X", qty=1, price=3.0),
    ev(None, at(2010, 6, 1), invoice="g1", product="p1", category="X", qty=1, price=3.0),
]

FEATURE_NAMES = list(S.FEATURE_COLUMNS)
EXPECTED = {
    "a": dict(
        recency_days=11, tenure_days=180,
        frequency_30=2, frequency_90=3, frequency_365=4, frequency_all=4,
        monetary_30=10.0, monetary_90=20.0, monetary_365=50.0, monetary_all=50.0,
        avg_basket_value=12.5, avg_basket_size=5 / 4,
        distinct_products=3, distinct_categories=2,  # p3 has no category
        mean_days_between=(103 + 66) / 2, std_days_between=(103 - 66) / 2,
        trend_90=(3 + 1) / (1 + 1),  # 2 Jan (180 days before T) is in the previous 90 days
        return_rate=1 / 5,
        views_30=2, carts_30=1,
        label=1,
    ),
    "b": dict(
        recency_days=1, tenure_days=1,
        frequency_30=1, frequency_90=1, frequency_365=1, frequency_all=1,
        monetary_30=4.5, monetary_90=4.5, monetary_365=4.5, monetary_all=4.5,
        avg_basket_value=4.5, avg_basket_size=1,
        distinct_products=1, distinct_categories=1,
        mean_days_between=0, std_days_between=0,
        trend_90=2.0, return_rate=0, views_30=0, carts_30=0,
        label=0,
    ),
    "e": dict(
        recency_days=30, tenure_days=122,
        frequency_30=1, frequency_90=1, frequency_365=2, frequency_all=2,
        monetary_30=10.0, monetary_90=10.0, monetary_365=20.0, monetary_all=20.0,
        avg_basket_value=10.0, avg_basket_size=3 / 2,
        distinct_products=2, distinct_categories=2,
        mean_days_between=92, std_days_between=0,  # one gap: the std needs three dates
        trend_90=(1 + 1) / (1 + 1), return_rate=0, views_30=0, carts_30=0,
        label=0,
    ),
}  # fmt: skip


def by_customer(df: DataFrame) -> dict[str, dict[str, Any]]:
    rows = [r.asDict() for r in df.collect()]
    out = {r[S.CUSTOMER_ID]: r for r in rows}
    assert len(out) == len(rows), "one row per customer and cutoff"
    return out


def feature_values(rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c: {k: r[k] for k in FEATURE_NAMES} for c, r in rows.items()}


def test_features_match_a_hand_computation(spark: SparkSession) -> None:
    out = features.build_features(transactions(spark, HISTORY), [T], horizon_days=HORIZON)
    assert [(f.name, f.dataType) for f in out.schema] == [
        (f.name, f.dataType) for f in S.CUSTOMER_FEATURES
    ]
    rows = by_customer(out)
    assert set(rows) == {"a", "b", "e"}  # not c (first buys at T), not the guest
    for customer, expected in EXPECTED.items():
        row = rows[customer]
        assert (row[S.CUTOFF_DATE], row[S.SPLIT]) == (T, S.TRAIN)
        got = {k: row[k] for k in expected}
        assert got == pytest.approx(expected), customer
        assert all(row[k] is not None for k in FEATURE_NAMES)


def test_score_rows_have_no_label(spark: SparkSession) -> None:
    out = features.build_features(
        transactions(spark, HISTORY), [T], horizon_days=HORIZON, label=False
    )
    rows = by_customer(out)
    assert {r[S.LABEL] for r in rows.values()} == {None}
    assert {r[S.SPLIT] for r in rows.values()} == {S.SCORE}
    assert feature_values(rows)["a"] == pytest.approx(
        {k: v for k, v in EXPECTED["a"].items() if k != S.LABEL}
    )


def test_no_leakage_from_at_or_after_the_cutoff(spark: SparkSession) -> None:
    def build(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        df = transactions(spark, events)
        return by_customer(features.build_features(df, [T], horizon_days=HORIZON))

    cutoff = datetime(T.year, T.month, T.day, tzinfo=UTC)
    before = [e for e in HISTORY if e["when"] < cutoff]
    after = [e for e in HISTORY if e["when"] >= cutoff]
    assert after  # the history has something to tamper with
    original = build(HISTORY)

    scaled = before + [{**e, "qty": e["qty"] * 7, "price": e["price"] * 3} for e in after]
    deleted = before
    added = [
        *HISTORY,
        ev("a", at(2010, 7, 1, 0, 0, 0), invoice="n1", product="p8", category="W", qty=9, price=99.0),
        ev("b", at(2010, 7, 2), invoice="n2", product="p7", category="V", qty=2, price=5.0),
        ev("e", at(2010, 7, 3), invoice="n3", product="p6", category="U", qty=1, price=1.0),
        ev("e", at(2010, 7, 3), invoice="Cn3", product="p6", category="U", qty=-1, price=1.0, kind=S.RETURN),
        ev("e", at(2010, 7, 3), product="p6", kind=S.VIEW),
        ev("new", at(2010, 7, 4), invoice="n4", product="p1", category="X", qty=1, price=1.0),
    ]  # fmt: skip
    changed = {
        name: build(events)
        for name, events in (("scaled", scaled), ("deleted", deleted), ("added", added))
    }
    for name, rows in changed.items():
        assert feature_values(rows) == feature_values(original), name

    def labels(rows: dict[str, dict[str, Any]]) -> dict[str, int]:
        return {c: r[S.LABEL] for c, r in rows.items()}

    assert labels(original) == labels(changed["scaled"]) == {"a": 1, "b": 0, "e": 0}
    assert labels(changed["deleted"]) == {"a": 0, "b": 0, "e": 0}
    assert labels(changed["added"]) == {"a": 1, "b": 1, "e": 1}


def test_label_window_is_from_cutoff_to_horizon(spark: SparkSession) -> None:
    cutoff = datetime(T.year, T.month, T.day, tzinfo=UTC)
    horizon = 10
    early = at(2010, 6, 1)
    events = [
        ev("at_t", early), ev("at_t", cutoff),
        ev("at_end", early), ev("at_end", cutoff + timedelta(days=horizon)),
        ev("before_end", early), ev("before_end", cutoff + timedelta(days=horizon, seconds=-1)),
        ev("before_t", cutoff - timedelta(seconds=1)),
        ev("no_buy", early),
        ev("no_buy", cutoff + timedelta(days=1), kind=S.VIEW),
        ev("no_buy", cutoff + timedelta(days=2), qty=-1, kind=S.RETURN),
    ]  # fmt: skip
    rows = by_customer(
        features.build_features(transactions(spark, events), [T], horizon_days=horizon)
    )
    labels = {c: r[S.LABEL] for c, r in rows.items()}
    assert labels == {"at_t": 1, "at_end": 0, "before_end": 1, "before_t": 0, "no_buy": 0}
    assert rows["before_t"]["recency_days"] == 1.0  # the last second before T is a feature


def test_lines_that_are_not_products_count_in_spend_only(spark: SparkSession) -> None:
    early = at(2010, 6, 1)
    cutoff = datetime(T.year, T.month, T.day, tzinfo=UTC)
    base = [ev("a", early, invoice="i1", product="p1", price=10.0)]
    service = [
        ev("a", early, invoice="i1", product="POST", price=18.0, line_kind="postage"),
        ev("a", early + timedelta(days=3), invoice="i2", product="BANK CHARGES", price=15.0, line_kind="fee"),
        ev("a", early + timedelta(days=4), invoice="C3", product="D", qty=-1, price=5.0, line_kind="discount"),
        # Only postage in the label window is not a purchase.
        ev("a", cutoff + timedelta(days=1), invoice="i4", product="POST", price=18.0, line_kind="postage"),
    ]  # fmt: skip
    plain = by_customer(
        features.build_features(transactions(spark, base), [T], horizon_days=HORIZON)
    )
    mixed = by_customer(
        features.build_features(transactions(spark, base + service), [T], horizon_days=HORIZON)
    )
    for name in ("frequency_all", "avg_basket_size", "distinct_products", "recency_days"):
        assert mixed["a"][name] == plain["a"][name], name
    assert mixed["a"]["monetary_all"] == 10.0 + 18.0 + 15.0 - 5.0
    assert mixed["a"][S.LABEL] == plain["a"][S.LABEL] == 0


def test_cutoffs_are_independent_and_keep_their_split(spark: SparkSession) -> None:
    df = transactions(spark, HISTORY)
    earlier = date(2010, 5, 25)
    both = features.build_features(
        df, [T, earlier], horizon_days=HORIZON, split_of={earlier: S.TRAIN, T: S.HOLDOUT}
    ).collect()
    alone = [
        *features.build_features(df, [earlier], horizon_days=HORIZON).collect(),
        *features.build_features(df, [T], horizon_days=HORIZON, split_of={T: S.HOLDOUT}).collect(),
    ]
    assert sorted(both) == sorted(alone)
    at_earlier = {r[S.CUSTOMER_ID]: r for r in both if r[S.CUTOFF_DATE] == earlier}
    assert set(at_earlier) == {"a", "e"}  # b first buys in June
    assert at_earlier["a"]["frequency_all"] == 2.0 and at_earlier["a"][S.LABEL] == 1


def test_build_features_rejects_bad_input(spark: SparkSession) -> None:
    df = transactions(spark, HISTORY)
    with pytest.raises(ValueError, match=r"missing column.*amount"):
        features.build_features(df.drop(S.AMOUNT), [T], horizon_days=HORIZON)
    with pytest.raises(ValueError, match=r"no split for cutoff.*2010-07-01"):
        features.build_features(df, [T], horizon_days=HORIZON, split_of={date(2010, 1, 1): "x"})
    with pytest.raises(ValueError, match="no cutoff"):
        features.build_features(df, [], horizon_days=HORIZON)


def test_cutoff_dates() -> None:
    cutoffs = features.cutoff_dates(
        date(2010, 12, 31),
        first_date=date(2010, 1, 1),
        horizon_days=30,
        train_cutoffs=4,
        spacing_days=30,
    )
    assert cutoffs == {
        S.SCORE: [date(2011, 1, 1)],
        S.HOLDOUT: [date(2010, 12, 2)],
        S.TRAIN: [date(2010, 11, 2), date(2010, 10, 3), date(2010, 9, 3), date(2010, 8, 4)],
        # Less than a year: calibrated on the window before the holdout, and the holdout.
        S.CALIBRATION: [date(2010, 11, 2), date(2010, 12, 2)],
    }
    # Two years: the same season a year (52 weeks) before each, on the same weekday.
    seasonal = features.cutoff_dates(
        date(2011, 12, 31),
        first_date=date(2010, 1, 1),
        horizon_days=30,
        train_cutoffs=4,
        spacing_days=30,
    )
    assert seasonal[S.CALIBRATION] == [date(2010, 12, 3), date(2011, 1, 2)]
    assert date(2010, 12, 3).weekday() == date(2011, 12, 2).weekday()
    (holdout,) = cutoffs[S.HOLDOUT]
    assert holdout not in cutoffs[S.TRAIN]
    assert all(t + timedelta(days=30) <= holdout for t in cutoffs[S.TRAIN])
    assert cutoffs[S.TRAIN] == sorted(cutoffs[S.TRAIN], reverse=True)


def test_cutoff_dates_needs_enough_history() -> None:
    kwargs = dict(horizon_days=10, train_cutoffs=3, spacing_days=5)
    needed = 2 * 10 + 2 * 5 + 1  # days from the first to the last date, both included
    first = date(2010, 1, 1)
    enough = features.cutoff_dates(first + timedelta(days=needed - 1), first_date=first, **kwargs)
    assert enough[S.TRAIN][-1] == first + timedelta(days=1)
    with pytest.raises(ValueError, match=f"at least {needed} days"):
        features.cutoff_dates(first + timedelta(days=needed - 2), first_date=first, **kwargs)
    with pytest.raises(ValueError, match="horizon_days"):
        features.cutoff_dates(
            first, first_date=first, horizon_days=0, train_cutoffs=1, spacing_days=1
        )


def test_run_writes_splits_and_is_idempotent(tmp_path: Path, spark: SparkSession) -> None:
    settings = make_settings(
        tmp_path,
        **{
            "features.horizon_days": 10,
            "features.train_cutoffs": 2,
            "features.cutoff_spacing_days": 10,
        },
    )
    start = date(2010, 1, 1)
    events = [
        ev(c, at(2010, 1, 1) + timedelta(days=day), invoice=f"{c}{day}", price=2.0)
        for k, c in enumerate(("u", "v", "w"))
        for day in range(k, 45 - 10 * k, 3 + 2 * k)
    ]
    events.append(ev("u", at(2010, 2, 20), kind=S.VIEW))  # the last event date
    lake = Lakehouse(settings, spark)
    lake.overwrite("silver.transactions", transactions(spark, events))

    first = features.run(settings, spark)
    assert first.cutoffs == {
        S.SCORE: [date(2010, 2, 21)],
        S.HOLDOUT: [date(2010, 2, 11)],
        S.TRAIN: [date(2010, 2, 1), date(2010, 1, 22)],
        S.CALIBRATION: [date(2010, 2, 1), date(2010, 2, 11)],
    }
    table = lake.read("silver.customer_features")
    rows = table.collect()
    assert {r[S.SPLIT] for r in rows} == {S.TRAIN, S.HOLDOUT, S.SCORE, S.CALIBRATION}
    holdout = first.cutoffs[S.HOLDOUT][0]
    assert all(r[S.CUTOFF_DATE] < holdout for r in rows if r[S.SPLIT] == S.TRAIN)
    assert all(r[S.LABEL] is None for r in rows if r[S.SPLIT] == S.SCORE)
    assert all(r[S.LABEL] in (0, 1) for r in rows if r[S.SPLIT] != S.SCORE)
    for split in (S.TRAIN, S.HOLDOUT, S.SCORE, S.CALIBRATION):
        assert first.rows[split] == sum(r[S.SPLIT] == split for r in rows)
    for split in (S.TRAIN, S.HOLDOUT, S.CALIBRATION):
        labels = [r[S.LABEL] for r in rows if r[S.SPLIT] == split]
        assert first.positive_rate[split] == pytest.approx(sum(labels) / len(labels))
    assert start < min(r[S.CUTOFF_DATE] for r in rows)
    # Built once, written twice: a calibration cutoff that is also a training or the holdout
    # cutoff has that split's rows.

    def of(split: str, cutoff: date) -> list[tuple]:
        return sorted(
            tuple(v for k, v in r.asDict().items() if k != S.SPLIT)
            for r in rows
            if r[S.SPLIT] == split and r[S.CUTOFF_DATE] == cutoff
        )

    assert of(S.CALIBRATION, date(2010, 2, 1)) == of(S.TRAIN, date(2010, 2, 1)) != []
    assert of(S.CALIBRATION, holdout) == of(S.HOLDOUT, holdout) != []
    # The score rows are those of a call without labels.
    alone = features.build_features(
        lake.read("silver.transactions"), first.cutoffs[S.SCORE], horizon_days=10, label=False
    )
    assert sorted(alone.collect()) == sorted(r for r in rows if r[S.SPLIT] == S.SCORE)

    # Nothing changed: nothing is done; redone (--full), the same rows.
    assert isinstance(features.run(settings, spark), lineage.UpToDate)
    second = features.run(settings.with_overrides({"workflow.full": True}), spark)
    assert second == first
    assert sorted(lake.read("silver.customer_features").collect()) == sorted(rows)

    # The default settings want 4 cutoffs 30 days apart: far more than these 51 days.
    with pytest.raises(InputError, match="too little history"):
        features.run(make_settings(tmp_path), spark)
