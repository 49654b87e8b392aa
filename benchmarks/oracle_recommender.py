"""The best any recommender could do on generated data: rank products by the generator's own
purchase probabilities (ground truth), and measure it exactly like ``retailml task recommend``.

For customer c and product p the generator draws a basket line from
f × favourite weight(c, p) + t × taste(c, category(p)) × popularity of p within its category
+ (1 − f − t) × popularity(p), with the shop profile's shares f and t (0.30 and 0.55 for the
gift shop, 0.70 and 0.20 for the grocery; data/ground_truth/profile.json); ranking by that is
the oracle, in both modes (all products, and products new to the customer).

Run after ``make run`` (it reads silver.transactions and data/ground_truth):

    .venv/bin/python benchmarks/oracle_recommender.py
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from pyspark.sql import Window
from pyspark.sql import functions as F

from retailml import schemas as S
from retailml.lakehouse import Lakehouse
from retailml.ml.ranking import ranking_metrics
from retailml.settings import load_settings
from retailml.spark import build_session
from retailml.stages.recommend import purchased


def main() -> None:
    settings = load_settings()
    spark = build_session(settings)
    truth = Path(settings.path(settings.data_dir)) / "ground_truth"
    k, eval_days = settings.recommend.k, settings.recommend.eval_days

    def csv(name: str):  # type: ignore[no-untyped-def]
        return spark.read.option("header", True).option("inferSchema", True).csv(str(truth / name))

    transactions = Lakehouse(settings, spark).read("silver.transactions")
    last = transactions.agg(F.max(S.EVENT_DATE)).first()[0]
    as_of = last + timedelta(days=1)
    cutoff = as_of - timedelta(days=eval_days)
    before = purchased(transactions.where(F.col(S.EVENT_DATE) < F.lit(cutoff)))
    window = purchased(transactions.where(F.col(S.EVENT_DATE) >= F.lit(cutoff)))
    evaluated = before.select(S.CUSTOMER_ID).distinct()
    relevant_all = window.join(evaluated, S.CUSTOMER_ID)
    relevant_new = relevant_all.join(before, [S.CUSTOMER_ID, S.PRODUCT_ID], "left_anti")

    products = csv("products.csv").select(
        F.col("product_id").cast("string").alias(S.PRODUCT_ID), "category", "popularity"
    )
    in_category = products.withColumn(
        "pop_in_cat", F.col("popularity") / F.sum("popularity").over(Window.partitionBy("category"))
    )
    taste = csv("taste.csv").select(
        F.col("customer_id").cast("string").alias(S.CUSTOMER_ID),
        "category",
        F.col("weight").alias("taste"),
    )
    favourites = csv("favourites.csv").select(
        F.col("customer_id").cast("string").alias(S.CUSTOMER_ID),
        F.col("product_id").cast("string").alias(S.PRODUCT_ID),
        F.col("weight").alias("fav"),
    )
    # The shop profile's shares of the three ways a line is drawn (gift: 0.30, 0.55, 0.15).
    shares_file = truth / "profile.json"
    shares = (
        json.loads(shares_file.read_text())
        if shares_file.is_file()
        else {"favourite": 0.30, "taste": 0.55, "popular": 0.15}
    )
    probability = (
        evaluated.join(taste, S.CUSTOMER_ID)
        .join(in_category, "category")
        .join(favourites, [S.CUSTOMER_ID, S.PRODUCT_ID], "left")
        .select(
            S.CUSTOMER_ID,
            S.PRODUCT_ID,
            (
                shares["favourite"] * F.coalesce(F.col("fav"), F.lit(0.0))
                + shares["taste"] * F.col("taste") * F.col("pop_in_cat")
                + shares["popular"] * F.col("popularity")
            ).alias("p"),
        )
    )

    def top(candidates):  # type: ignore[no-untyped-def]
        order = Window.partitionBy(S.CUSTOMER_ID).orderBy(F.col("p").desc(), S.PRODUCT_ID)
        return candidates.withColumn(S.RANK, F.row_number().over(order)).where(F.col(S.RANK) <= k)

    catalog = products.count()
    results = {
        "all": ranking_metrics(top(probability), relevant_all, k=k, catalog_size=catalog),
        "new": ranking_metrics(
            top(probability.join(before, [S.CUSTOMER_ID, S.PRODUCT_ID], "left_anti")),
            relevant_new,
            k=k,
            catalog_size=catalog,
        ),
    }
    print(f"oracle (ground-truth purchase probabilities), evaluated on {cutoff} .. {last}")
    print(
        f"{'mode':<5} {'P@k':>7} {'R@k':>7} {'NDCG@k':>7} {'MAP@k':>7} {'hit rate':>8} "
        f"{'coverage':>8}"
    )
    for mode, m in results.items():
        print(
            f"{mode:<5} {m.precision_at_k:>7.4f} {m.recall_at_k:>7.4f} {m.ndcg_at_k:>7.4f} "
            f"{m.map_at_k:>7.4f} {m.hit_rate:>8.3f} {m.coverage:>8.3f}   ({m.users} customers)"
        )
    spark.stop()


if __name__ == "__main__":
    main()
