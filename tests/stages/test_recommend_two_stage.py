"""The two-stage recommender's parts on tiny data with values worked out by hand."""

from __future__ import annotations

import math
from datetime import date

import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from retailml import schemas as S
from retailml.ml.sample import customer_share
from retailml.stages import recommend
from retailml.stages.recommend import ranker
from retailml.stages.recommend.generators import rank_column, score_column
from retailml.stages.recommend.twostage import at_most, enough_learners

END = date(2011, 4, 1)
DAYS = "customer_id string, product_id string, event_date date"
SCORES = "customer_id string, product_id string, score double"


def days_frame(spark: SparkSession, rows: list[tuple[str, str, str]]) -> DataFrame:
    return spark.createDataFrame([(c, p, date.fromisoformat(d)) for c, p, d in rows], DAYS)


def as_dict(df: DataFrame, *keys: str, value: str) -> dict[tuple[str, ...], float]:
    return {tuple(r[k] for k in keys): r[value] for r in df.collect()}


def test_repeat_decays_each_purchase_day_by_its_age(spark: SparkSession) -> None:
    days = days_frame(
        spark,
        [("c1", "p1", "2011-03-22"), ("c1", "p1", "2011-03-02"), ("c1", "p2", "2011-01-01")],
    )
    got = as_dict(recommend.repeat(days, end=END, half_life=10.0), S.PRODUCT_ID, value="score")
    assert got[("p1",)] == pytest.approx(2 ** (-10 / 10) + 2 ** (-30 / 10))
    assert got[("p2",)] == pytest.approx(2 ** (-90 / 10))


def test_purchase_days_are_distinct_product_days_of_known_customers_before_the_end(
    spark: SparkSession,
) -> None:
    from tests.stages.test_recommend import silver

    rows = [
        ("i1", "c1", "p1", 1, "2011-03-01", "purchase", "UK"),
        ("i2", "c1", "p1", 2, "2011-03-01", "purchase", "UK"),  # same day: one purchase day
        ("i3", "c1", "p1", 1, "2011-03-05", "purchase", "UK"),
        ("i4", None, "p1", 1, "2011-03-05", "purchase", "UK"),  # a guest
        ("i5", "c1", "POST", 1, "2011-03-05", "purchase", "UK"),  # not a product
        ("i6", "c1", "p2", 1, "2011-04-01", "purchase", "UK"),  # on the end: after
        ("C7", "c1", "p3", -1, "2011-03-06", "return", "UK"),
    ]
    got = recommend.purchase_days(silver(spark, rows), end=END).collect()
    assert sorted((r.product_id, r.event_date.isoformat()) for r in got) == [
        ("p1", "2011-03-01"),
        ("p1", "2011-03-05"),
    ]


def test_item_neighbours_are_cosine_of_buyers_top_n_from_recent_products(
    spark: SparkSession,
) -> None:
    days = days_frame(
        spark,
        [
            ("a", "p1", "2011-03-01"),
            ("a", "p2", "2011-03-02"),
            ("b", "p1", "2011-03-01"),
            ("b", "p2", "2011-03-03"),
            ("c", "p1", "2011-03-01"),
            ("c", "p3", "2011-03-04"),
            # d's oldest product falls outside recent_products=2, and e's outside the lookback.
            ("d", "p3", "2011-03-01"),
            ("d", "p4", "2011-03-10"),
            ("d", "p5", "2011-03-11"),
            ("e", "p1", "2010-01-01"),
            ("e", "p3", "2010-01-01"),
        ],
    )
    top = recommend.item_neighbours(
        days, end=END, lookback_days=365, neighbours=1, recent_products=2, weighting="cosine"
    )
    got = as_dict(top, "item", "neighbour", value="similarity")
    # Buyers: p1 {a, b, c}, p2 {a, b}, p3 {c}, p4 {d}, p5 {d}.
    assert got == {
        ("p1", "p2"): pytest.approx(2 / math.sqrt(3 * 2)),
        ("p2", "p1"): pytest.approx(2 / math.sqrt(3 * 2)),
        ("p3", "p1"): pytest.approx(1 / math.sqrt(3 * 1)),
        ("p4", "p5"): pytest.approx(1.0),
        ("p5", "p4"): pytest.approx(1.0),
    }
    # Asked for some products: theirs, as among everyone's (the counts still from everyone).
    asked = spark.createDataFrame([("p1",), ("p3",), ("p1",)], "product_id string")
    some = recommend.item_neighbours(
        days,
        end=END,
        lookback_days=365,
        neighbours=1,
        recent_products=2,
        weighting="cosine",
        items=asked,
    )
    assert as_dict(some, "item", "neighbour", value="similarity") == {
        key: value for key, value in got.items() if key[0] in ("p1", "p3")
    }

    weights = spark.createDataFrame([("x", "p1", 2.0), ("x", "p3", 1.0)], SCORES)
    scores = as_dict(recommend.item_knn(weights, top, depth=10), S.PRODUCT_ID, value="score")
    # x's p1 proposes p2; x's p3 proposes p1 (a product x bought may come back).
    assert scores == {
        ("p2",): pytest.approx(2.0 * 2 / math.sqrt(6)),
        ("p1",): pytest.approx(1.0 / math.sqrt(3)),
    }


@pytest.mark.parametrize("weighting", ["bm25", "cosine"])
@pytest.mark.parametrize("flush_at", [1, 10**9])
def test_co_purchase_sums_are_the_weighted_product_of_the_baskets(
    weighting: str, flush_at: int
) -> None:
    """The workers' sums against the docstring's weights on a dense matrix: two Arrow batches
    of one partition, some products asked for, handed on after every batch or once."""
    import numpy as np
    import pyarrow as pa

    from retailml.stages.recommend.generators import _co_purchases

    rng = np.random.default_rng(7)
    ids = [f"p{i}" for i in range(6)]
    baskets = [sorted(rng.choice(6, size=rng.integers(1, 5), replace=False)) for _ in range(9)]
    days = [rng.integers(1, 4, size=len(b)).astype(float) for b in baskets]
    x = np.zeros((len(baskets), len(ids)))
    for c, (basket, n) in enumerate(zip(baskets, days, strict=True)):
        x[c, basket] = n
    buyers, lengths = (x > 0).sum(axis=0), x.sum(axis=0)
    if weighting == "bm25":
        norm = 1 - 0.75 + 0.75 * lengths / lengths.mean()
        idf = np.maximum(np.log(len(ids)) - np.log1p((x > 0).sum(axis=1)), 0)[:, None]
        w = np.where(x > 0, x * 2.2 / (1.2 * norm + x) * idf, 0.0)
    else:
        w = np.where(x > 0, 1 / np.sqrt(buyers), 0.0)
    expected = w.T @ w
    wanted = np.array([1, 3, 4], dtype=np.int32)

    sums = _co_purchases(
        ids,
        buyers=buyers.astype(float),
        lengths=lengths,
        weighting=weighting,
        wanted=wanted,
        flush_at=flush_at,
    )
    batches = [
        pa.RecordBatch.from_pydict(
            {
                "_p": [[ids[i] for i in b] for b in baskets[part]],
                "_x": [list(n) for n in days[part]],
            }
        )
        for part in (slice(0, 4), slice(4, None))
    ]
    got: dict[tuple[int, int], float] = {}
    for out in sums(iter(batches)):
        for i, j, s in zip(*(out.column(n).to_pylist() for n in ("_i", "_j", "_s")), strict=True):
            got[(i, j)] = got.get((i, j), 0.0) + s
    assert got == {
        (i, j): pytest.approx(expected[i, j])
        for i in wanted
        for j in range(len(ids))
        if i != j and expected[i, j] > 0
    }


def test_item_knn_keeps_each_customers_best_and_best_unbought(spark: SparkSession) -> None:
    from retailml.stages.recommend.generators import top_candidates

    neighbours = spark.createDataFrame(
        [("a", "b", 0.9), ("a", "c", 0.5), ("a", "d", 0.1), ("b", "a", 0.8), ("b", "d", 0.4)],
        "item string, neighbour string, similarity double",
    )
    # x bought a, b and d; y bought only c, which has no neighbours.
    weights = spark.createDataFrame(
        [("x", "a", 1.0), ("x", "b", 1.0), ("x", "d", 1.0), ("y", "c", 2.0)], SCORES
    )
    bought = weights.select(S.CUSTOMER_ID, S.PRODUCT_ID)
    # x's scores: b 0.9 and a 0.8 (bought, through each other), c 0.5, and d 0.5 (bought):
    # tied with c, after it by product id.
    every = recommend.item_knn(weights, neighbours, depth=10)
    assert as_dict(every, S.CUSTOMER_ID, S.PRODUCT_ID, value="score") == {
        ("x", "b"): pytest.approx(0.9),
        ("x", "a"): pytest.approx(0.8),
        ("x", "c"): pytest.approx(0.5),
        ("x", "d"): pytest.approx(0.5),
    }
    one = recommend.item_knn(weights, neighbours, depth=1)
    assert sorted(r.product_id for r in one.collect()) == ["b", "c"]  # best; best not bought
    # At every depth, the tops with and without the bought products are those of every score.
    for depth in (1, 2, 3):
        kept = recommend.item_knn(weights, neighbours, depth=depth)
        for exclude in (None, bought):
            tops = [
                sorted(top_candidates({"item_knn": f}, depth=depth, exclude=exclude).collect())
                for f in (kept, every)
            ]
            assert tops[0] == tops[1]


def test_item_neighbours_bm25_weighs_purchase_days_products_and_customers(
    spark: SparkSession,
) -> None:
    days = days_frame(
        spark,
        [
            ("a", "p1", "2011-03-01"),
            ("a", "p1", "2011-03-08"),  # two purchase days: x = 2
            ("a", "p2", "2011-03-02"),
            ("b", "p1", "2011-03-01"),
            ("b", "p2", "2011-03-01"),
            ("b", "p3", "2011-03-01"),
            ("c", "p2", "2011-03-03"),
            ("c", "p3", "2011-03-04"),
            ("d", "p1", "2011-03-05"),
            ("d", "p2", "2011-03-05"),
            ("d", "p3", "2011-03-05"),
            ("d", "p4", "2011-03-05"),
        ],
    )
    top = recommend.item_neighbours(
        days, end=END, lookback_days=365, neighbours=1, recent_products=10, weighting="bm25"
    )
    got = as_dict(top, "item", "neighbour", value="similarity")
    # N = 4 products; len = Σ x: p1 4, p2 4, p3 3, p4 1 (mean 3), so L = 0.25 + 0.75 len / 3:
    # 1.25, 1.25, 1, 0.5. idf = ln 4 - ln(1 + n_c): a and c (2 products) ln(4/3); b (3) 0;
    # d (4) below 0, kept at 0 — b and d weigh nothing, so p4 has no neighbour.
    idf = math.log(4 / 3)

    def w(x: float, length: float) -> float:
        return x * 2.2 / (1.2 * length + x) * idf

    # p2's neighbours: p1 through a, p3 through c; a's two days of p1 make p1 the nearer.
    assert got == {
        ("p1", "p2"): pytest.approx(w(2, 1.25) * w(1, 1.25)),
        ("p2", "p1"): pytest.approx(w(2, 1.25) * w(1, 1.25)),
        ("p3", "p2"): pytest.approx(w(1, 1.25) * w(1, 1.0)),
    }
    with pytest.raises(ValueError, match="'jaccard' is not one of bm25, cosine"):
        recommend.item_neighbours(
            days, end=END, lookback_days=365, neighbours=1, recent_products=2, weighting="jaccard"
        )


def test_top_candidates_union_every_generator_with_absent_ones_filled(
    spark: SparkSession,
) -> None:
    first = spark.createDataFrame([("c1", "p1", 3.0), ("c1", "p2", 2.0), ("c1", "p3", 1.0)], SCORES)
    second = spark.createDataFrame([("c1", "p3", 0.5), ("c1", "p4", 0.9)], SCORES)
    bought = spark.createDataFrame([("c1", "p1")], "customer_id string, product_id string")
    union = recommend.top_candidates({"a": first, "b": second}, depth=2)
    got = {r.product_id: r for r in union.collect()}
    assert set(got) == {"p1", "p2", "p3", "p4"}  # p3 from b (a's third)
    assert (got["p3"][score_column("a")], got["p3"][rank_column("a")]) == (0.0, 3)
    assert (got["p3"][score_column("b")], got["p3"][rank_column("b")]) == (0.5, 2)
    assert got["p4"][rank_column("b")] == 1

    # Excluding before ranking: p1 goes, and a's p3 moves up to its second place.
    unbought = recommend.top_candidates({"a": first, "b": second}, depth=2, exclude=bought)
    ranks = {r.product_id: r[rank_column("a")] for r in unbought.collect()}
    assert ranks == {"p2": 1, "p3": 2, "p4": 3}


def test_candidate_features_worked_by_hand(spark: SparkSession) -> None:
    days = days_frame(
        spark,
        [
            ("c1", "p1", "2011-03-02"),
            ("c1", "p1", "2011-03-12"),
            ("c1", "p1", "2011-03-22"),  # every 10 days; last 10 days ago: due 1.0
            ("c1", "p2", "2011-03-31"),
            ("c2", "p2", "2011-03-30"),
            ("c2", "p3", "2010-04-05"),  # in the same window a year before (364 days)
        ],
    )
    candidates = spark.createDataFrame(
        [("c1", "p1", 2.0, 1), ("c1", "p3", 1.0, 2)],
        f"customer_id string, product_id string, {score_column('repeat')} double, "
        f"{rank_column('repeat')} int",
    )
    popular = spark.createDataFrame(
        [(None, "p2", 1, 2, 1.0), (None, "p1", 2, 1, 0.5)],
        "country string, product_id string, position int, buyers long, score double",
    )
    categories = spark.createDataFrame(
        [("p1", "mugs"), ("p2", "mugs"), ("p3", None)], "product_id string, category string"
    )
    facts = ranker.cutoff_facts(
        days,
        candidates.select(S.CUSTOMER_ID).distinct(),
        end=END,
        window_days=30,
        popular=popular,
        categories=categories,
    )
    features = ranker.candidate_features(candidates, facts, depth=20)
    assert features.columns == [S.CUSTOMER_ID, S.PRODUCT_ID, *ranker.FEATURES]
    got = {r.product_id: r for r in features.collect()}
    p1, p3 = got["p1"], got["p3"]
    assert (p1.purchase_days, p1.mean_gap, p1.days_since, p1.due) == (3, 10.0, 10, 1.0)
    assert (p3.purchase_days, p3.mean_gap, p3.days_since, p3.due) == (0, 0.0, -1, 0.0)
    assert p1.relative_repeat == 1.0 and p3.relative_repeat == 0.5
    # Generators the candidates lack: score 0 and rank depth + 1.
    assert (p1.score_als, p1.rank_als, p1.relative_als) == (0.0, 21.0, 0.0)
    assert (p1.customer_products, p1.customer_recency, p1.customer_recent_days) == (2, 1, 4)
    # In the last 30 days c1 and c2 bought: p1 by c1 → 1/2; a year before only c2 bought p3.
    assert (p1.recent_share, p1.season_share, p1.popularity_rank) == (0.5, 0.0, 2.0)
    assert (p3.recent_share, p3.season_share, p3.popularity_rank) == (0.0, 1.0, 1_000_000.0)
    # c1's purchase days: four in "mugs", none elsewhere; p3 has no category.
    assert (p1.category_share, p3.category_share) == (1.0, 0.0)
    # Discover's candidates, never bought, get the same features without the pairs' join.
    unbought = candidates.where(F.col(S.PRODUCT_ID) == "p3")
    assert ranker.candidate_features(unbought, facts, depth=20, never_bought=True).collect() == (
        ranker.candidate_features(unbought, facts, depth=20).collect()
    )


def test_facts_days_keep_the_served_customers_lines_and_everyones_in_the_share_windows(
    spark: SparkSession,
) -> None:
    # Share windows at END with 30 days: recent [2011-03-02, 2011-04-01), season
    # [2010-04-02, 2010-05-02).
    days = days_frame(
        spark,
        [
            ("c1", "p1", "2011-03-22"),
            ("c1", "p4", "2010-12-15"),  # the served customer's, outside both windows: kept
            ("c2", "p1", "2011-03-01"),  # the day before the recent window: dropped
            ("c2", "p1", "2011-03-02"),  # its first day: kept
            ("c2", "p2", "2011-03-31"),  # its last day: kept
            ("c2", "p4", "2010-04-01"),  # the day before the season window: dropped
            ("c2", "p4", "2010-04-02"),  # its first day: kept
            ("c3", "p1", "2010-05-01"),  # its last day: kept
            ("c3", "p2", "2010-05-02"),  # the day after: dropped
            ("c3", "p2", "2010-12-01"),  # outside both: dropped
        ],
    )
    who = spark.createDataFrame([("c1",)], "customer_id string")
    fewer = ranker.facts_days(days, who, end=END, window_days=30)
    dropped = {
        ("c2", "2011-03-01"),
        ("c2", "2010-04-01"),
        ("c3", "2010-05-02"),
        ("c3", "2010-12-01"),
    }
    assert sorted(fewer.collect()) == sorted(
        r for r in days.collect() if (r.customer_id, r.event_date.isoformat()) not in dropped
    )
    # c1's candidates get the same features from either.
    candidates = spark.createDataFrame(
        [("c1", p, 1.0, 1) for p in ("p1", "p2", "p4")],
        f"customer_id string, product_id string, {score_column('repeat')} double, "
        f"{rank_column('repeat')} int",
    )
    popular = spark.createDataFrame(
        [(None, "p1", 1, 2, 1.0), (None, "p2", 2, 1, 0.5)],
        "country string, product_id string, position int, buyers long, score double",
    )
    categories = spark.createDataFrame(
        [("p1", "mugs"), ("p2", "mugs"), ("p4", "tins")], "product_id string, category string"
    )

    def features(rows: DataFrame) -> list:
        facts = ranker.cutoff_facts(
            rows, who, end=END, window_days=30, popular=popular, categories=categories
        )
        return sorted(ranker.candidate_features(candidates, facts, depth=20).collect())

    assert features(fewer) == features(days)


def test_ranked_candidates_name_the_generator_that_ranked_them_highest(
    spark: SparkSession,
) -> None:
    from pyspark.ml import Pipeline
    from pyspark.ml.classification import LogisticRegression
    from pyspark.ml.feature import VectorAssembler

    rows = [
        # customer, product, score_g / rank_g of repeat, item_knn, als, popular
        ("c1", "p1", [(1.0, 1.0), (0.0, 21.0), (0.9, 1.0), (0.0, 21.0)], 1.0),
        ("c1", "p2", [(0.0, 21.0), (0.5, 1.0), (0.0, 21.0), (0.4, 3.0)], 0.0),
        ("c1", "p3", [(0.0, 21.0), (0.0, 21.0), (0.5, 2.0), (0.6, 2.0)], 0.0),
    ]
    schema = ", ".join(
        [f"{S.CUSTOMER_ID} string", f"{S.PRODUCT_ID} string"]
        + [
            f"{col} double"
            for g in recommend.GENERATORS
            for col in (score_column(g), rank_column(g))
        ]
        + ["label double"]
    )
    frame = spark.createDataFrame(
        [(c, p, *[v for pair in gens for v in pair], label) for c, p, gens, label in rows],
        schema,
    )
    inputs = [score_column(g) for g in recommend.GENERATORS]
    model = Pipeline(
        stages=[
            VectorAssembler(inputCols=inputs, outputCol="features"),
            LogisticRegression(labelCol="label", maxIter=5),
        ]
    ).fit(frame)
    got = ranker.rank_candidates(model, frame, k=3).collect()
    assert sorted(r.rank for r in got) == [1, 2, 3]
    assert max(got, key=lambda r: r.score).product_id == "p1"  # the one bought
    # p1: repeat and ALS both rank it first (repeat comes first in GENERATORS); p3: ALS and
    # popular both second (ALS comes first).
    assert {r.product_id: r.source for r in got} == {
        "p1": "repeat",
        "p2": "item_knn",
        "p3": "als",
    }
    assert len(ranker.rank_candidates(model, frame, k=2).collect()) == 2


def test_an_xgboost_rankers_score_is_its_transforms_probability(spark: SparkSession) -> None:
    from pyspark.ml.functions import vector_to_array

    # The label follows the first feature (leaves need weight 20: enough rows to split).
    rows = [
        (f"c{i % 7}", f"p{i}", *[((i * (j + 3)) % 11) / 10.0 for j in range(len(ranker.FEATURES))])
        for i in range(600)
    ]
    schema = ", ".join(
        [f"{S.CUSTOMER_ID} string", f"{S.PRODUCT_ID} string"]
        + [f"{c} double" for c in ranker.FEATURES]
        + [f"{ranker.LABEL} double"]
    )
    frame = spark.createDataFrame([(*r, float(r[2] > 0.5)) for r in rows], schema)
    model = ranker.ranker_estimator(max_depth=2, trees=5, learning_rate=0.3, seed=1).fit(frame)
    expected = {
        (r.customer_id, r.product_id): r.p
        for r in model.transform(frame)
        .select(S.CUSTOMER_ID, S.PRODUCT_ID, vector_to_array("probability")[1].alias("p"))
        .collect()
    }
    got = ranker.score_candidates(model, frame).collect()
    assert {(r.customer_id, r.product_id): r.score for r in got} == expected
    assert len(set(expected.values())) > 1  # the trees split: not one constant


def test_the_rankers_sample_keeps_about_the_limit_of_an_already_sampled_set(
    spark: SparkSession,
) -> None:
    everyone = spark.range(20_000).selectExpr("concat('c', id) AS customer_id")
    seed, limit = 42, 2_000
    got, count = at_most(everyone, limit, seed)
    assert count == limit and abs(got.count() - limit) < 0.1 * limit
    # The tuning sample cuts the same hash: the ranker's cut must be relative to it, or it
    # keeps limit / 0.4 customers (about 5,000 here).
    tuned = everyone.where(customer_share(seed) < 0.4)
    got, count = at_most(tuned, limit, seed, sampled=0.4)
    assert count == limit and abs(got.count() - limit) < 0.1 * limit
    small, count = at_most(tuned, 100_000, seed, sampled=0.4)
    assert count == small.count() == tuned.count()


def test_a_window_is_added_only_while_fewer_than_half_the_learners_are_there() -> None:
    # M: the last window brings 18,276 of the tuning sample's customers; a second one cost as
    # much as the first to add 1,724 more.
    assert enough_learners(18_276, 20_000)
    assert enough_learners(10_000, 20_000)
    # A small shop's month: the next window adds a month's worth, as many again.
    assert not enough_learners(9_999, 20_000)
    assert not enough_learners(0, 20_000)
