from __future__ import annotations

import math
import random

import pytest
from pyspark.mllib.evaluation import RankingMetrics as MllibRankingMetrics
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from retailml.ml.ranking import ranking_metrics, ranking_metrics_by

REC_SCHEMA = "customer_id string, product_id string, rank int"
REL_SCHEMA = "customer_id string, product_id string"


def test_hand_computed_example(spark: SparkSession) -> None:
    # u1: [a, b, c] against {a, c}: hits at 1 and 3.
    # u2: [d, e, f] against {f, g, h, i}: one hit at 3.
    # u3: no recommendations against {a}: zeros.
    # u4: recommendations but nothing relevant: not evaluated, counts only for coverage.
    recommended = spark.createDataFrame(
        [
            ("u1", "a", 1),
            ("u1", "b", 2),
            ("u1", "c", 3),
            ("u2", "d", 1),
            ("u2", "e", 2),
            ("u2", "f", 3),
            ("u4", "a", 1),
            ("u4", "g", 2),
            ("u4", "b", 3),
            ("u4", "z", 4),  # beyond k: ignored, also for coverage
        ],
        REC_SCHEMA,
    )
    relevant = spark.createDataFrame(
        [
            ("u1", "a"),
            ("u1", "c"),
            ("u1", "c"),  # a duplicate purchase is one relevant item
            ("u2", "f"),
            ("u2", "g"),
            ("u2", "h"),
            ("u2", "i"),
            ("u3", "a"),
        ],
        REL_SCHEMA,
    )
    m = ranking_metrics(recommended, relevant, k=3, catalog_size=10)

    g2, g3 = 1 / math.log2(3), 1 / math.log2(4)  # discounts at positions 2 and 3 (g3 = 0.5)
    assert m.users == 3
    assert m.precision_at_k == pytest.approx((2 / 3 + 1 / 3 + 0) / 3)
    assert m.recall_at_k == pytest.approx((2 / 2 + 1 / 4 + 0) / 3)
    ndcg_u1 = (1 + g3) / (1 + g2)  # ideal: both relevant items at 1 and 2
    ndcg_u2 = g3 / (1 + g2 + g3)  # ideal: three of the four relevant items at 1..3
    assert m.ndcg_at_k == pytest.approx((ndcg_u1 + ndcg_u2) / 3)
    # AP: u1 (1/1 + 2/3) / min(2, 3); u2 (1/3) / min(4, 3).
    assert m.map_at_k == pytest.approx(((1 + 2 / 3) / 2 + (1 / 3) / 3) / 3)
    assert m.hit_rate == pytest.approx(2 / 3)
    assert m.coverage == pytest.approx(7 / 10)  # a, b, c, d, e, f, g
    assert m.as_dict("als_new_")["als_new_ndcg_at_k"] == m.ndcg_at_k


def test_matches_spark_mllib_ranking_metrics(spark: SparkSession) -> None:
    rng = random.Random(7)
    items = [f"p{i:02d}" for i in range(40)]
    k = 5
    recs, rels, pairs = [], [], []
    for u in range(60):
        user = f"u{u:02d}"
        relevant = rng.sample(items, rng.randint(1, 9))
        # Some users get fewer than k recommendations, some none at all.
        recommended = rng.sample(items, rng.choice([0, 2, 5, 5, 5, 8]))
        recs += [(user, item, pos) for pos, item in enumerate(recommended, start=1)]
        rels += [(user, item) for item in relevant]
        pairs.append((recommended, relevant))
    # Users with recommendations but nothing relevant are not evaluated by either.
    recs += [("lurker", items[0], 1), ("lurker", items[1], 2)]

    ours = ranking_metrics(
        spark.createDataFrame(recs, REC_SCHEMA),
        spark.createDataFrame(rels, REL_SCHEMA),
        k=k,
        catalog_size=len(items),
    )
    reference = MllibRankingMetrics(spark.sparkContext.parallelize(pairs, 2))
    assert ours.users == 60
    assert ours.precision_at_k == pytest.approx(reference.precisionAt(k))
    assert ours.recall_at_k == pytest.approx(reference.recallAt(k))
    assert ours.ndcg_at_k == pytest.approx(reference.ndcgAt(k))
    assert ours.map_at_k == pytest.approx(reference.meanAveragePrecisionAt(k))


def test_no_relevant_users_gives_zeros(spark: SparkSession) -> None:
    recommended = spark.createDataFrame([("u1", "a", 1)], REC_SCHEMA)
    relevant = spark.createDataFrame([], REL_SCHEMA)
    m = ranking_metrics(recommended, relevant, k=3, catalog_size=4)
    assert m.users == 0 and m.ndcg_at_k == 0.0 and m.hit_rate == 0.0
    assert m.coverage == pytest.approx(0.25)


def test_bad_input_is_named(spark: SparkSession) -> None:
    recommended = spark.createDataFrame([("u1", "a")], REL_SCHEMA)
    relevant = spark.createDataFrame([("u1", "a")], REL_SCHEMA)
    with pytest.raises(ValueError, match="recommended lacks column"):
        ranking_metrics(recommended, relevant, k=3, catalog_size=4)
    with pytest.raises(ValueError, match="k must be at least 1"):
        ranking_metrics(recommended, relevant, k=0, catalog_size=4)


def test_grouped_metrics_match_separate_calls(spark: SparkSession) -> None:
    recommended = spark.createDataFrame(
        [("u1", "a", 1), ("u1", "b", 2), ("u2", "c", 1), ("u2", "d", 2)], REC_SCHEMA
    )
    relevant = spark.createDataFrame([("u1", "b"), ("u2", "c"), ("u2", "x")], REL_SCHEMA)
    new_recs = recommended.where("product_id != 'b'")  # e.g. with bought products excluded
    new_rel = relevant.where("customer_id = 'u2'")

    def tagged(df: DataFrame, group: str) -> DataFrame:
        return df.withColumn("mode", F.lit(group))

    grouped = ranking_metrics_by(
        tagged(recommended, "all").unionByName(tagged(new_recs, "new")),
        tagged(relevant, "all").unionByName(tagged(new_rel, "new")),
        group_col="mode",
        k=2,
        catalog_size=5,
    )
    assert grouped == {
        "all": ranking_metrics(recommended, relevant, k=2, catalog_size=5),
        "new": ranking_metrics(new_recs, new_rel, k=2, catalog_size=5),
    }
    assert grouped["new"].users == 1 and grouped["all"].users == 2
