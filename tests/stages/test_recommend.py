from __future__ import annotations

import functools
import itertools
import math
import random
from collections import defaultdict
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pyspark.ml import PipelineModel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from retailml import lineage
from retailml import schemas as S
from retailml.errors import InputError, RetailmlError
from retailml.lakehouse import Lakehouse
from retailml.lookup import customer_card
from retailml.ml import names as N
from retailml.ml import registry, tracking
from retailml.ml.sample import customer_share
from retailml.settings import Settings
from retailml.stages import clean, recommend
from tests.conftest import assert_delta_inputs, make_settings

# (invoice, customer (None = guest), product, quantity, day, event_type, country)
Row = tuple[str, str | None, str, int, str, str, str | None]

CANDIDATES = "customer_id string, product_id string, score double"


def silver(spark: SparkSession, rows: list[Row]) -> DataFrame:
    """silver.transactions from compact rows, through the real clean step."""
    ingested = datetime(2011, 6, 1)
    bronze = spark.createDataFrame(
        [
            (
                inv,
                cust,
                prod,
                f"name {prod}",
                "cat",
                qty,
                2.0,
                datetime.fromisoformat(f"{day} 12:00"),
                event,
                country,
                "f.csv",
                "canonical",
                ingested,
                "b1",
            )
            for inv, cust, prod, qty, day, event, country in rows
        ],
        S.BRONZE_TRANSACTIONS,
    )
    return clean.clean_transactions(bronze)


def by_customer(df: DataFrame) -> dict[str, list[tuple[int, str, str]]]:
    """customer → [(rank, product, source)] sorted by rank (tiny test output only)."""
    out: dict[str, list[tuple[int, str, str]]] = defaultdict(list)
    for r in df.collect():
        out[r.customer_id].append((r.rank, r.product_id, r.source))
    return {c: sorted(v) for c, v in out.items()}


def test_interactions_returns_reduce_the_rating_and_guests_are_excluded(
    spark: SparkSession,
) -> None:
    rows: list[Row] = [
        ("i1", "c1", "p1", 1, "2011-01-03", "purchase", "UK"),
        ("i2", "c1", "p1", 1, "2011-01-10", "purchase", "UK"),
        ("i3", "c2", "p1", 1, "2011-01-03", "purchase", "UK"),
        ("i4", "c2", "p1", 1, "2011-01-10", "purchase", "UK"),
        ("C5", "c2", "p1", 1, "2011-01-12", "purchase", "UK"),  # returns 1 of the 2 units
        ("i6", "c3", "p2", 2, "2011-01-03", "purchase", "UK"),
        ("C7", "c3", "p2", 2, "2011-01-04", "purchase", "UK"),  # returns everything
        ("i8", None, "p1", 5, "2011-01-03", "purchase", "UK"),  # guest
        ("i9", "c3", "p3", 1, "2011-01-05", "view", "UK"),  # not a purchase
    ]
    result = {
        (r.customer_id, r.product_id): r
        for r in recommend.interactions(silver(spark, rows)).collect()
    }
    assert set(result) == {("c1", "p1"), ("c2", "p1")}
    assert result[("c1", "p1")].rating == pytest.approx(math.log1p(2))
    # Two purchase lines, half the units kept: worth one line.
    assert result[("c2", "p1")].rating == pytest.approx(math.log1p(1))
    assert result[("c2", "p1")].rating < result[("c1", "p1")].rating
    assert (result[("c2", "p1")].purchases, result[("c2", "p1")].returns) == (2, 1)
    assert result[("c2", "p1")].net_quantity == 1


def test_als_reads_indexed_ratings_in_two_blocks_per_core(spark: SparkSession) -> None:
    rows: list[Row] = [
        ("i1", "c1", "p1", 1, "2011-01-03", "purchase", "UK"),
        ("i2", "c2", "p2", 3, "2011-01-04", "purchase", "UK"),
    ]
    history = recommend.interactions(silver(spark, rows))
    indexers = recommend.fit_indexers(history)
    got = recommend.ratings(indexers, history)
    assert got.columns == ["user_idx", "item_idx", "rating"]
    assert sorted((r.user_idx, r.item_idx) for r in got.collect()) == [(0.0, 0.0), (1.0, 1.0)]
    # From the cores, not the shuffle partitions: ALS's stages per iteration are fixed.
    assert recommend.als_blocks(spark) == 2 * spark.sparkContext.defaultParallelism


def test_top_k_ranks_without_gaps_and_excludes(spark: SparkSession) -> None:
    candidates = spark.createDataFrame(
        [
            ("c1", "p1", 0.9),
            ("c1", "p2", 0.8),
            ("c1", "p3", 0.7),
            ("c1", "p4", 0.6),
            ("c1", "p5", 0.5),
            ("c2", "p2", 0.5),
            ("c2", "p1", 0.5),  # a tie: the smaller product id ranks first
        ],
        CANDIDATES,
    )
    bought = spark.createDataFrame([("c1", "p2")], "customer_id string, product_id string")
    ranked = {
        (r.customer_id, r.rank): r.product_id
        for r in recommend.top_k(candidates, k=3, exclude=bought).collect()
    }
    assert ranked == {
        ("c1", 1): "p1",
        ("c1", 2): "p3",
        ("c1", 3): "p4",
        ("c2", 1): "p1",
        ("c2", 2): "p2",
    }
    unexcluded = recommend.top_k(candidates, k=3).where("customer_id = 'c1'").collect()
    assert [r.product_id for r in sorted(unexcluded, key=lambda r: r.rank)] == ["p1", "p2", "p3"]


@pytest.fixture(scope="module")
def popular(spark: SparkSession) -> Iterator[DataFrame]:
    """Global best sellers g1 > g2 > g3 > g4; French buyers prefer f1 > f2 > f3."""
    rows: list[Row] = []
    counts = {"g1": 9, "g2": 8, "g3": 7, "g4": 6}
    for product, buyers in counts.items():
        rows += [
            (f"{product}-{b}", f"u{b}", product, 1, "2011-03-01", "purchase", "UK")
            for b in range(buyers)
        ]
    for product, buyers in {"f1": 3, "f2": 2, "f3": 1}.items():
        rows += [
            (f"{product}-{b}", f"fr{b}", product, 1, "2011-03-02", "purchase", "FR")
            for b in range(buyers)
        ]
    # An old best seller outside the recent window ranks only after every recent one.
    rows += [(f"old-{b}", f"u{b}", "old", 1, "2010-01-01", "purchase", "UK") for b in range(20)]
    ranking = recommend.popularity(
        silver(spark, rows), end=date(2011, 3, 10), days=30, min_country_products=3
    ).persist()
    yield ranking
    ranking.unpersist()


def test_popularity_ranking(popular: DataFrame) -> None:
    ranking = {(r.country, r.position): (r.product_id, r.score) for r in popular.collect()}
    assert [ranking[(None, p)][0] for p in range(1, 9)] == [
        "g1",
        "g2",
        "g3",
        "g4",
        "f1",
        "f2",
        "f3",
        "old",
    ]
    assert [ranking[("FR", p)][0] for p in range(1, 4)] == ["f1", "f2", "f3"]
    assert ranking[("FR", 1)][1] == pytest.approx(3 / 3)  # every recent French buyer bought f1
    assert ranking[(None, 1)][1] == pytest.approx(9 / 12)  # 9 of 9 + 3 recent buyers
    assert ("UK", 1) in ranking and ranking[(None, 8)][1] == 0.0


def test_popularity_counts_distinct_buyers_as_defined(spark: SparkSession) -> None:
    """The ranking equals its definition worked in Python over the cleaned lines: guests
    (a buyer per invoice), buyers in two countries or with no country, a product bought both
    before and inside the recent window, lines on or after ``end``, other event types."""
    rng = random.Random(7)
    rows: list[Row] = []
    for n in range(400):
        customer = rng.choice([*(f"u{i}" for i in range(9)), None])
        rows.append(
            (
                f"i{n // 2}",
                customer,
                f"p{rng.randrange(7)}",
                rng.choice([1, 1, 1, 2]),
                (date(2011, 1, 1) + timedelta(days=rng.randrange(80))).isoformat(),
                rng.choice(["purchase"] * 5 + ["view"]),
                rng.choice(["UK", "UK", "FR", "DE", None]),
            )
        )
    end, days, least = date(2011, 3, 10), 30, 4
    start = end - timedelta(days=days)
    transactions = silver(spark, rows)
    got = {
        (r.country, r.position): (r.product_id, r.buyers, round(r.score, 12))
        for r in recommend.popularity(
            transactions, end=end, days=days, min_country_products=least
        ).collect()
    }

    lines = [
        r
        for r in transactions.collect()
        if r.line_kind == S.PRODUCT_LINE and r.event_type == "purchase" and r.event_date < end
    ]

    def buyer(r: Any) -> str:
        return r.customer_id or f"guest:{r.invoice_id or r.transaction_id}"

    def ranked(buyers: dict[str, set[str]], tie: dict[str, set[str]], total: int) -> list[Any]:
        order = sorted(buyers, key=lambda p: (-len(buyers[p]), -len(tie.get(p, ())), p))
        return [(p, len(buyers[p]), round(len(buyers[p]) / total if total else 0.0, 12))
                for p in order]  # fmt: skip

    recent = [r for r in lines if r.event_date >= start]
    every: dict[str, set[str]] = defaultdict(set)
    for r in lines:
        every[r.product_id].add(buyer(r))
    now: dict[str, set[str]] = {p: set() for p in every}  # every product bought before end
    for r in recent:
        now[r.product_id].add(buyer(r))
    expected = {
        (None, i + 1): row
        for i, row in enumerate(ranked(now, every, len({buyer(r) for r in recent})))
    }
    for country in {r.country for r in recent} - {None}:
        mine = [r for r in recent if r.country == country]
        theirs: dict[str, set[str]] = defaultdict(set)
        for r in mine:
            theirs[r.product_id].add(buyer(r))
        if len(theirs) >= least:
            national = ranked(theirs, {}, len({buyer(r) for r in mine}))
            expected |= {(country, i + 1): row for i, row in enumerate(national)}
    assert len({c for c, _ in expected}) >= 3  # the global ranking and two countries at least
    assert got == expected


def test_popularity_without_a_recent_buyer_ranks_by_all_time_buyers(spark: SparkSession) -> None:
    """A shop with no sale in the recent window (a seasonal gap): every share is 0 (not a
    division by zero), the global ranking falls back on all-time buyers, no country ranks."""
    rows: list[Row] = [
        (f"i{b}-{p}", f"u{b}", p, 1, "2010-06-01", "purchase", "UK")
        for p, buyers in {"p1": 3, "p2": 1, "p3": 2}.items()
        for b in range(buyers)
    ]
    ranking = recommend.popularity(
        silver(spark, rows), end=date(2011, 3, 10), days=30, min_country_products=1
    ).collect()
    assert sorted((r.country, r.position, r.product_id, r.buyers, r.score) for r in ranking) == [
        (None, 1, "p1", 0, 0.0),
        (None, 2, "p3", 0, 0.0),
        (None, 3, "p2", 0, 0.0),
    ]


def test_lines_that_are_not_products_are_never_recommended_nor_popular(
    spark: SparkSession,
) -> None:
    rows: list[Row] = []
    for b in range(6):  # postage on every invoice: the most widely "bought" line
        rows += [
            (f"i{b}", f"u{b}", "POST", 1, "2011-03-01", "purchase", "FR"),
            (f"i{b}", f"u{b}", f"p{b % 2}", 1, "2011-03-01", "purchase", "FR"),
        ]
    rows.append(("C9", "u1", "D", -1, "2011-03-02", "purchase", "FR"))  # a discount
    transactions = silver(spark, rows)
    ranking = recommend.popularity(
        transactions, end=date(2011, 3, 10), days=30, min_country_products=1
    )
    assert {r.product_id for r in ranking.collect()} == {"p0", "p1"}
    assert {r.product_id for r in recommend.interactions(transactions).collect()} == {"p0", "p1"}
    assert {r.product_id for r in recommend.purchased(transactions).collect()} == {"p0", "p1"}


def test_fill_gives_exactly_k_rows_als_first_then_popular(
    spark: SparkSession, popular: DataFrame
) -> None:
    customers = spark.createDataFrame(
        [("c1", "UK"), ("c2", "UK"), ("c3", "UK"), ("c4", "UK")],
        "customer_id string, country string",
    )
    als = spark.createDataFrame(
        [
            ("c1", "g1", 0.9, 1),
            ("c1", "x7", 0.8, 2),
            ("c2", "x1", 0.9, 1),
            ("c2", "x2", 0.8, 2),
            ("c2", "x3", 0.7, 3),
            ("c2", "x4", 0.6, 4),  # beyond k: ignored
            ("zz", "x1", 0.9, 1),  # not a requested customer: ignored
        ],
        "customer_id string, product_id string, score double, rank int",
    )
    bought = spark.createDataFrame(
        [("c3", "g1"), ("c3", "g2"), ("c3", "g3"), ("c1", "g2")],
        "customer_id string, product_id string",
    )
    recs = recommend.recommend_customers(customers, popular, k=3, ranked=als, bought=bought)
    got = by_customer(recs)
    assert set(got) == {"c1", "c2", "c3", "c4"}
    assert all([rank for rank, _, _ in rows] == [1, 2, 3] for rows in got.values())
    # ALS rows keep their order; the fill skips what ALS already has (g1) and what was bought (g2).
    assert got["c1"] == [(1, "g1", "als"), (2, "x7", "als"), (3, "g3", "popular")]
    assert got["c2"] == [(1, "x1", "als"), (2, "x2", "als"), (3, "x3", "als")]
    # c3 bought the three best sellers: the fill goes deeper.
    assert got["c3"] == [(1, "g4", "popular"), (2, "f1", "popular"), (3, "f2", "popular")]
    assert got["c4"] == [(1, "g1", "popular"), (2, "g2", "popular"), (3, "g3", "popular")]

    # Without exclusion, bought products may be recommended.
    allowed = by_customer(recommend.recommend_customers(customers, popular, k=3, ranked=als))
    assert allowed["c3"][0] == (1, "g1", "popular")


def test_brand_new_customers_get_the_popular_fallback_country_first(
    spark: SparkSession, popular: DataFrame
) -> None:
    newcomers = spark.createDataFrame(
        [("new-fr", "FR"), ("new-nowhere", None), ("new-de", "DE")],
        "customer_id string, country string",
    )
    got = by_customer(recommend.recommend_customers(newcomers, popular, k=4))
    assert got["new-fr"] == [
        (1, "f1", "popular"),
        (2, "f2", "popular"),
        (3, "f3", "popular"),
        (4, "g1", "popular"),
    ]
    # No country, or one without enough recent products: the global ranking.
    assert got["new-nowhere"] == got["new-de"] == [(i, f"g{i}", "popular") for i in range(1, 5)]
    # A plain list of ids works too.
    ids = spark.createDataFrame([("someone",)], "customer_id string")
    assert [
        p for _, p, _ in by_customer(recommend.recommend_customers(ids, popular, k=2))["someone"]
    ] == ["g1", "g2"]


def two_taste_history() -> list[Row]:
    """12 customers in two taste groups (a: p1-p5, b: p6-p10), UK and FR, over 90 days; one
    customer who only viewed, a guest, and a return."""
    rows: list[Row] = []
    start = date(2011, 1, 1)
    for i in range(12):
        customer, country = f"c{i:02d}", "UK" if i < 8 else "FR"
        group = [f"p{n}" for n in (range(1, 6) if i % 2 == 0 else range(6, 11))]
        for j in range(9):
            day = start + timedelta(days=(i * 5 + j * 10) % 90)
            product = group[(i + j * 2) % 4]  # the fifth product of a group is rarer
            rows.append((f"i{i}-{j}", customer, product, 1, day.isoformat(), "purchase", country))
        rows.append(
            (
                f"x{i}",
                customer,
                group[4],
                1,
                (start + timedelta(days=80 + i % 5)).isoformat(),
                "purchase",
                country,
            )
        )
    rows.append(("v1", "viewer", "p1", 1, "2011-02-01", "view", "UK"))
    rows.append(("g1", None, "p9", 3, "2011-03-20", "purchase", "UK"))
    rows.append(("C1", "c00", "p1", 1, "2011-02-02", "purchase", "UK"))
    rows.append(("last", "c01", "p6", 1, "2011-03-31", "purchase", "UK"))
    return rows


def write_silver(settings: Settings, spark: SparkSession, rows: list[Row]) -> Lakehouse:
    lake = Lakehouse(settings, spark)
    lake.overwrite("silver.transactions", silver(spark, rows))
    transactions = lake.read("silver.transactions")
    lake.overwrite("silver.products", clean.build_products(transactions))
    lake.overwrite("silver.customers", clean.build_customers(transactions))
    return lake


def test_a_model_of_another_shape_is_refused_by_name(spark: SparkSession) -> None:
    transactions = silver(spark, two_taste_history())
    history = recommend.interactions(transactions)
    indexers = recommend.fit_indexers(history)
    als = recommend.als_estimator(
        rank=2, reg_param=0.1, alpha=5.0, max_iter=2, seed=1, blocks=2
    ).fit(indexers.index(history))
    # What earlier versions registered: no rankers.
    earlier = PipelineModel(stages=[indexers.user, indexers.item, als])
    with pytest.raises(RetailmlError, match=r"not StringIndexer.*\(StringIndexerModel, "):
        recommend.unpack(earlier)


def test_als_top_k_matches_brute_force_whatever_was_bought(spark: SparkSession) -> None:
    """The scored candidates give exactly the top k of all scores minus the excluded products,
    for customers who bought nothing, a few, most and all but one of the products."""
    # 40 products, customers who bought 0, 3, 12, 30 and 39 of them.
    products = [f"p{n:02d}" for n in range(40)]
    rows: list[Row] = []
    for c, bought_n in enumerate((0, 3, 12, 30, 30, 12, 39)):
        customer = f"c{c}"
        for j in range(max(bought_n, 1)):
            product = products[(c * 7 + j) % 40]
            event = "purchase" if bought_n else "view"
            rows.append((f"i{c}-{j}", customer, product, 1, "2011-01-10", event, "UK"))
    # Everyone's history is in the model; c0 only viewed, so the model knows c0 only if
    # another row makes it a buyer: give c0 one purchase of p39 that is not excluded.
    rows.append(("i0-x", "c0", "p39", 1, "2011-01-11", "purchase", "UK"))
    transactions = silver(spark, rows)
    history = recommend.interactions(transactions)
    indexers = recommend.fit_indexers(history)
    als = recommend.als_estimator(
        rank=3, reg_param=0.1, alpha=5.0, max_iter=5, seed=3, blocks=2
    ).fit(indexers.index(history))
    bought = recommend.purchased(transactions).where("customer_id != 'c0'")

    everyone = spark.createDataFrame([(f"c{c}",) for c in range(7)], "customer_id string")
    got = by_rank(recommend.als_top_k(als, indexers, k=2, customers=everyone, exclude=bought))
    unexcluded = by_rank(recommend.als_top_k(als, indexers, k=2, customers=everyone))

    users = dict(zip(indexers.user.labels, range(len(indexers.user.labels)), strict=True))
    items = indexers.item.labels
    user_f = {r.id: r.features for r in als.userFactors.collect()}
    item_f = {r.id: r.features for r in als.itemFactors.collect()}
    excluded: dict[str, set[str]] = defaultdict(set)
    for r in bought.collect():
        excluded[r.customer_id].add(r.product_id)

    def scores(customer: str, skip: set[str]) -> dict[str, float]:
        u = user_f[users[customer]]
        return {
            items[i]: float(sum(a * b for a, b in zip(u, f, strict=True)))
            for i, f in item_f.items()
            if items[i] not in skip
        }

    def check(customer: str, found: list[str], skip: set[str]) -> None:
        # The k best scores of the allowed products (which of several equal scores ALS
        # returns is its choice, so scores are compared, not ids).
        allowed = scores(customer, skip)
        best = sorted(allowed.values(), reverse=True)[:2]  # c6 has one product left
        assert not set(found) & skip, customer
        assert [allowed[p] for p in found] == pytest.approx(best, abs=1e-5), customer

    assert set(got) == set(users)
    for customer in users:
        check(customer, got[customer], excluded[customer])
        check(customer, unexcluded[customer], set())
    # Only the scored subset when customers are given.
    subset = spark.createDataFrame([("c3",), ("nobody",)], "customer_id string")
    only = by_rank(recommend.als_top_k(als, indexers, k=2, customers=subset, exclude=bought))
    assert set(only) == {"c3"}
    check("c3", only["c3"], excluded["c3"])


def test_grid_jobs_run_in_threads_in_order_with_the_task_tag(spark: SparkSession) -> None:
    """Parallel grid jobs come back in order, and their Spark jobs carry the job tag of the
    thread that started them (the workflow runner tags a task's jobs this way, and finds and
    cancels them by it)."""
    tag = "retailml-test-grid"
    # As the runner does in classic Spark. (Not spark.addTag: in Spark 4.2 a session tag makes
    # the session unserialisable for LogisticRegression's evaluate in later tests.)
    sc = spark.sparkContext
    sc.addJobTag(tag)
    try:

        def job(n: int) -> Any:
            return n, set(sc.getJobTags()), spark.range(n).count()

        jobs = [functools.partial(job, n) for n in (3, 1, 2)]
        got: list[Any] = recommend.in_parallel(jobs, spark, parallelism=2)
    finally:
        sc.removeJobTag(tag)
    assert [g[0] for g in got] == [3, 1, 2]
    assert all(tag in g[1] for g in got)
    assert [g[2] for g in got] == [3, 1, 2]


def by_rank(df: DataFrame) -> dict[str, list[str]]:
    """customer → products by rank, checking ranks run 1..n (tiny test output only)."""
    out: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for r in df.collect():
        out[r.customer_id].append((r.rank, r.product_id))
    for rows in out.values():
        assert [rank for rank, _ in sorted(rows)] == list(range(1, len(rows) + 1))
    return {c: [p for _, p in sorted(rows)] for c, rows in out.items()}


def test_run_writes_both_lists_per_customer_idempotently_and_registers(
    tmp_path: Path, spark: SparkSession
) -> None:
    settings = make_settings(
        tmp_path,
        **{
            "recommend.k": 3,
            "recommend.eval_days": 14,
            "recommend.popular_days": 30,
            "recommend.ranks": [2],
            "recommend.reg_params": [0.1],
            "recommend.alphas": [5.0],
            "recommend.max_iter": 5,
            "recommend.ranker_trees": 10,
            # One training window (about 28 s a window here, and this trains twice): the
            # windows' loop is run by test_run_tunes_on_a_sample_of_customers_above_the_setting,
            # with the default three.
            "recommend.ranker_windows": 1,
        },
    )
    lake = write_silver(settings, spark, two_taste_history())

    first = recommend.run(settings, spark)
    assert first.as_of == date(2011, 4, 1) and first.eval_cutoff == date(2011, 3, 18)
    assert first.decision.promoted and first.model_version == first.decision.challenger_version
    assert 0.0 <= first.repeat_share <= 1.0
    models = ("for_you", "discover", "repeat", "item_knn", "als", "popular")
    assert set(first.metrics) == {(m, mode) for m in models for mode in ("all", "new")}
    assert first.judged == "discover"  # exclude_purchased
    # The repeat generator proposes only what was bought: nothing in the new mode.
    assert first.metrics[("repeat", "new")].ndcg_at_k == 0.0
    two = first.two_stage
    assert two.windows == 1 and two.learners > 0
    assert two.half_life in settings.recommend.repeat_half_lives
    assert set(two.half_lives) == set(settings.recommend.repeat_half_lives)
    assert 0 < two.positives["for_you"] < two.rows["for_you"]
    # These customers buy two products each, over and over: nothing new to learn from, so
    # discover is ranked by the fixed fallback, and says so.
    assert two.positives["discover"] == 0
    assert any("discover: " in line and "nothing to learn from" in line for line in first.summary())
    assert any("NDCG@3" in line for line in first.summary())
    assert first.headline().startswith(f"{first.rows_written:,} rows; NDCG@3 (new) discover ")

    gold = lake.read("gold.recommendations")
    assert gold.columns == S.RECOMMENDATIONS.fieldNames()
    rows = gold.collect()
    known = {r.customer_id for r in lake.read("silver.customers").collect()}
    lists = {name: by_customer(gold.where(f"list = '{name}'")) for name in (S.FOR_YOU, S.DISCOVER)}
    for got in lists.values():
        assert set(got) == known and "viewer" in known
        assert all([rank for rank, _, _ in recs] == [1, 2, 3] for recs in got.values())
        # The viewer bought nothing: popular products only.
        assert {source for _, _, source in got["viewer"]} == {S.SOURCE_POPULAR}
    assert first.rows_written == len(rows) == 2 * 3 * len(known)
    assert {s for _, s in first.rows_by_source} <= {*recommend.GENERATORS, S.SOURCE_POPULAR}
    # discover never offers what was bought; for_you does (these customers rebuy).
    bought = {
        (r.customer_id, r.product_id)
        for r in recommend.purchased(lake.read("silver.transactions")).collect()
    }
    offered = {
        name: {(c, p) for c, recs in got.items() for _, p, _ in recs} for name, got in lists.items()
    }
    assert not offered[S.DISCOVER] & bought
    assert offered[S.FOR_YOU] & bought
    assert {r.as_of_date for r in rows} == {date(2011, 4, 1)}
    assert all(r.product_name == f"name {r.product_id}" for r in rows)
    # `retailml customer ID` shows both lists.
    card = customer_card(settings, spark, "c00")
    assert card[0] == "for you (rebuys allowed) as of 2011-04-01:"
    assert card[4] == "discover (never bought) as of 2011-04-01:" and len(card) == 8
    # The version's item-kNN neighbours: every product's at the as-of date, stored ranked.
    similar = lake.read("gold.similar_products")
    assert similar.columns == S.SIMILAR_PRODUCTS.fieldNames()
    days = recommend.purchase_days(lake.read("silver.transactions"), end=date(2011, 4, 1))
    cached: list[DataFrame] = []
    expected = recommend.neighbours_at(
        days, end=date(2011, 4, 1), cfg=settings.recommend, keep=cached
    ).collect()
    for df in cached:
        df.unpersist()
    name = settings.recommend.model_name
    run = tracking.configure(settings).get_model_version(name, first.model_version).run_id
    stored_rows = similar.collect()
    assert {(r.model_version, r.model_run, r.as_of_date) for r in stored_rows} == {
        (first.model_version, run, date(2011, 4, 1))
    }
    assert expected and sorted(
        (r.product_id, r.similar_product_id, round(r.similarity, 9)) for r in stored_rows
    ) == sorted((r.item, r.neighbour, round(r.similarity, 9)) for r in expected)
    # Ranked 1.. per product, the most similar first.
    by_product: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for r in stored_rows:
        by_product[r.product_id].append((r.rank, r.similarity))
    for ranked in by_product.values():
        ranked.sort()
        assert [rank for rank, _ in ranked] == list(range(1, len(ranked) + 1))
        assert all(a[1] >= b[1] for a, b in itertools.pairwise(ranked))
    stored = lake.version("gold.similar_products")

    client = tracking.configure(settings)
    name = settings.recommend.model_name
    champion = client.get_model_version_by_alias(name, registry.CHAMPION)
    assert str(champion.version) == first.decision.challenger_version
    assert champion.tags["eval_cutoff"] == "2011-03-18" and "eval_ndcg_at_k" in champion.tags
    assert champion.tags["eval_list"] == "discover"
    assert champion.tags["recommender_kind"] == "two_stage"
    assert float(champion.tags["param_repeat_half_life"]) == two.half_life
    parent = client.get_run(first.parent_run_id)
    assert_delta_inputs(
        parent,
        Lakehouse(settings, spark),
        ["silver.transactions", "silver.customers", "silver.products"],
    )
    for metric in (
        "for_you_all_ndcg_at_k",
        "discover_new_ndcg_at_k",
        "repeat_all_ndcg_at_k",
        "knn_new_ndcg_at_k",
        "als_new_ndcg_at_k",
        "pop_all_precision_at_k",
        "repeat_share",
        "discover_candidate_recall",
    ):
        assert metric in parent.data.metrics, metric

    # Same data, same as-of date: nothing is done unless asked. Redone (--full), the champion
    # serves as it is (nothing asks for retraining): the same rows, not doubled.
    assert isinstance(recommend.run(settings, spark), lineage.UpToDate)
    served = recommend.run(settings.with_overrides({"workflow.full": True}), spark)
    assert isinstance(served, recommend.ServedResult), served
    assert served.model_version == first.model_version
    assert sorted(lake.read("gold.recommendations").collect()) == sorted(rows)
    # Asked to retrain: tuned and trained again; the gate keeps the champion.
    second = recommend.run(settings.with_overrides({"workflow.retrain": True}), spark)
    assert isinstance(second, recommend.RecommendResult)
    assert not second.decision.promoted and second.model_version == first.model_version
    again = lake.read("gold.recommendations").collect()
    assert sorted(again) == sorted(rows)
    # The champion's later serves read its neighbours; nothing rewrites them.
    assert lake.version("gold.similar_products") == stored

    # The next day c02 buys again. The champion serves as it is: c02's lists are computed at
    # the new date, and those of the customers whose day of the 7-day refresh cycle it is;
    # the others' are carried forward from the day before (computed_as_of).
    history = [*two_taste_history(), ("n1", "c02", "p3", 1, "2011-04-01", "purchase", "UK")]
    lake = write_silver(settings, spark, history)
    today = (date(2011, 4, 2) - date(1970, 1, 1)).days % 7
    slots = spark.createDataFrame([(c,) for c in sorted(known)], "customer_id string")
    slots = slots.select("customer_id", F.pmod(F.xxhash64("customer_id"), F.lit(7)).alias("s"))
    fresh = {"c02"} | {r.customer_id for r in slots.collect() if r.s == today}
    assert len(fresh) < len(known)
    daily = recommend.run(settings, spark)
    assert isinstance(daily, recommend.ServedResult), daily
    assert daily.carried == len(known) - len(fresh) and daily.previous_as_of == date(2011, 4, 1)
    assert any(f"served again to {len(fresh)} customers" in line for line in daily.summary())

    def lists(as_of: date) -> dict[tuple[str, str], list[tuple[int, str, date]]]:
        got: dict[tuple[str, str], list[tuple[int, str, date]]] = defaultdict(list)
        for r in lake.read("gold.recommendations").where(f"as_of_date = '{as_of}'").collect():
            got[(r.customer_id, r.list)].append((r.rank, r.product_id, r.computed_as_of))
        return {key: sorted(v) for key, v in got.items()}

    before, after = lists(date(2011, 4, 1)), lists(date(2011, 4, 2))
    assert set(after) == set(before) and daily.rows_written == 2 * 3 * len(known)
    for (customer, name), recs in after.items():
        if customer in fresh:
            assert {computed for _, _, computed in recs} == {date(2011, 4, 2)}
        else:
            assert recs == before[(customer, name)]  # computed 2011-04-01
    # Served to everyone (--full), c02's lists are the same: serving a few customers gives
    # each of them what serving everyone does.
    served = recommend.run(settings.with_overrides({"workflow.full": True}), spark)
    assert isinstance(served, recommend.ServedResult) and served.carried == 0
    everyone = lists(date(2011, 4, 2))
    assert {c for recs in everyone.values() for _, _, c in recs} == {date(2011, 4, 2)}
    for name in (S.FOR_YOU, S.DISCOVER):
        assert [p for _, p, _ in everyone[("c02", name)]] == [p for _, p, _ in after[("c02", name)]]
    # The daily serves too read the version's neighbours of 2011-04-01.
    assert lake.version("gold.similar_products") == stored


def test_an_earlier_gold_table_gains_the_list_column(tmp_path: Path, spark: SparkSession) -> None:
    """gold.recommendations written before it had `list`: the as-of date is replaced and the
    column added, earlier dates keep their rows (with no list)."""
    settings = make_settings(tmp_path)
    lake = Lakehouse(settings, spark)
    earlier = [f for f in S.RECOMMENDATIONS.fields if f.name not in (S.LIST, S.COMPUTED_AS_OF)]
    old = spark.createDataFrame(
        [
            ("c1", 1, "p1", "name p1", 0.5, "als", "1", date(2011, 3, 1)),
            ("c1", 1, "p1", "name p1", 0.5, "als", "1", date(2011, 4, 1)),
        ],
        StructType(earlier),
    )
    old.write.format("delta").save(lake.location("gold.recommendations"))
    new = spark.createDataFrame(
        [("c1", S.FOR_YOU, 1, "p2", "name p2", 0.7, "repeat", "2", date(2011, 4, 1), None)],
        S.RECOMMENDATIONS,
    )
    lake.replace_where("gold.recommendations", new, "as_of_date = '2011-04-01'")
    got = sorted(
        (r.as_of_date.isoformat(), r.list, r.product_id)
        for r in lake.read("gold.recommendations").collect()
    )
    assert got == [("2011-03-01", None, "p1"), ("2011-04-01", S.FOR_YOU, "p2")]


def test_without_a_window_before_the_evaluation_window_the_ranker_is_a_clear_error(
    tmp_path: Path, spark: SparkSession
) -> None:
    settings = make_settings(
        tmp_path,
        **{
            "recommend.k": 2,
            "recommend.eval_days": 20,
            "recommend.ranks": [2],
            "recommend.reg_params": [0.1],
            "recommend.alphas": [5.0],
            "recommend.max_iter": 2,
        },
    )
    # Purchases from 2 March; the evaluation window starts 12 March; the ranker's would start
    # on 20 February, before any history.
    rows: list[Row] = [
        (f"i{c}-{d}", f"c{c}", f"p{(c + d) % 4}", 1, f"2011-03-{d + 2:02d}", "purchase", "UK")
        for c in range(6)
        for d in range(0, 30, 3)
    ]
    write_silver(settings, spark, rows)
    with pytest.raises(RetailmlError, match="the ranker has no window before the evaluation"):
        recommend.run(settings, spark)


def test_run_tunes_on_a_sample_of_customers_above_the_setting(
    tmp_path: Path, spark: SparkSession
) -> None:
    """With more customers than recommend.tune_max_customers, the grid is evaluated on a fixed
    share of them, but the final model and the written rows cover everyone."""
    settings = make_settings(
        tmp_path,
        **{
            "recommend.k": 3,
            "recommend.eval_days": 14,
            "recommend.ranks": [2],
            "recommend.reg_params": [0.1],
            "recommend.alphas": [5.0],
            "recommend.max_iter": 5,
            "recommend.tune_max_customers": 6,  # of the 12 buyers
            "recommend.ranker_trees": 10,
        },
    )
    lake = write_silver(settings, spark, two_taste_history())
    result = recommend.run(settings, spark)
    client = tracking.configure(settings)
    params = client.get_run(result.parent_run_id).data.params
    assert float(params["tuning_sample"]) == 0.5
    # The gate compares figures measured on the same customers only.
    version = client.get_model_version(
        settings.recommend.model_name, result.decision.challenger_version
    )
    assert version.tags[N.EVAL_CUSTOMERS] == f"0.500000 seed {settings.seed}"
    share = {
        r.customer_id
        for r in lake.read("silver.customers").where(customer_share(settings.seed) < 0.5).collect()
    }
    assert 0 < result.eval_customers <= len(share & {f"c{i:02d}" for i in range(12)}) < 12
    # Far fewer learners than half of ranker_max_customers: every window the history allows.
    assert result.two_stage.windows == 3
    assert any("rankers trained on 3 window(s) before" in line for line in result.summary())
    got = by_customer(lake.read("gold.recommendations").where(f"list = '{S.FOR_YOU}'"))
    assert len(got) == lake.read("silver.customers").count()
    assert all(len(recs) == 3 for recs in got.values())


def test_too_little_history_is_a_clear_error(tmp_path: Path, spark: SparkSession) -> None:
    settings = make_settings(tmp_path, **{"recommend.eval_days": 30, "recommend.k": 2})
    rows: list[Row] = [
        ("i1", "c1", "p1", 1, "2011-03-20", "purchase", "UK"),
        ("i2", "c2", "p2", 1, "2011-03-31", "purchase", "UK"),
    ]
    write_silver(settings, spark, rows)
    with pytest.raises(
        RetailmlError,
        match="no purchases by known customers before the evaluation cutoff 2011-03-02",
    ):
        recommend.run(settings, spark)


def test_a_one_product_shop_gets_popularity_without_tuning(
    tmp_path: Path, spark: SparkSession
) -> None:
    settings = make_settings(tmp_path, **{"recommend.eval_days": 10})
    rows: list[Row] = [
        (f"i{c}", f"c{c}", "only", 1, f"2011-03-{c + 1:02d}", "purchase", "UK") for c in range(6)
    ]
    rows += [
        (f"p{c}", f"c{c}", "POST", 1, f"2011-03-{c + 1:02d}", "purchase", "UK") for c in range(6)
    ]
    rows.append(("v1", "viewer", "only", 1, "2011-03-20", "view", "UK"))
    lake = write_silver(settings, spark, rows)
    result = recommend.run(settings, spark)
    assert isinstance(result, recommend.PopularOnlyResult)
    assert result.summary()[0].startswith(
        "only 1 product(s) were ever bought, fewer than recommend.k = 5: nothing was tuned"
    )
    gold = lake.read("gold.recommendations")
    # for_you allows rebuys: every customer gets the one product.
    everyone = {f"c{c}" for c in range(6)} | {"viewer"}
    assert by_customer(gold.where(f"list = '{S.FOR_YOU}'")) == {
        c: [(1, "only", S.SOURCE_POPULAR)] for c in everyone
    }
    got = by_customer(gold.where(f"list = '{S.DISCOVER}'"))
    # The buyers have bought the whole catalogue; the viewer gets it. Postage is never offered.
    assert got == {"viewer": [(1, "only", S.SOURCE_POPULAR)]}
    assert result.rows_written == len(everyone) + 1 and "()" not in result.headline()


def test_missing_columns_are_named(spark: SparkSession) -> None:
    df = spark.createDataFrame([("c1", "p1")], "customer_id string, product_id string")
    with pytest.raises(InputError, match=r"silver\.transactions lacks column.*quantity"):
        recommend.check_transactions(df)
