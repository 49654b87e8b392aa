"""Recommend: implicit-feedback ALS on purchase history → ``gold.recommendations``.

The package: :mod:`.data` (interactions, purchases, indexers, popularity), :mod:`.als` (the
estimator and exact top-k scoring), :mod:`.serving` (the lists and gold rows),
:mod:`.evaluation` (the evaluation set, the grid, the baseline) and :mod:`.task` (``run``).

**Products only.** Lines that are not merchandise (``line_kind`` other than ``product``:
postage, fees, discounts…) never enter the interactions, the popularity ranking, the
evaluation truth or the catalogue size, so they are never recommended.

**Interactions** (:func:`interactions`). Known customers' purchase and return lines (guests
have no id to recommend to) become one row per customer and product with the rating
``log1p(purchase lines × share of the bought units that were kept)``: how often a customer
bought a product, discounted by what they sent back (bought 10 units, returned 1 → 0.9 of the
lines count; everything returned → 0, and the row is dropped). Lines rather than units, so a
wholesale order of 500 pieces does not outweigh a product bought every month.

**Evaluation** is on time, never on a random split. The as-of date is the day after the last
event; the evaluation cutoff lies ``eval_days`` before it. ALS is fitted on the interactions
before the cutoff and measured against what customers bought in ``[cutoff, as_of)``, for the
customers who had bought something before the cutoff (a customer without history is the
fallback's job, whichever model is evaluated). Two modes:

- ``all``: against everything bought in the window, repeat purchases included, with
  recommendations that may contain products bought before;
- ``new``: against the products new to the customer, with recommendations that exclude
  everything bought before the cutoff.

The repeat share (window customer × product pairs the customer had bought before) says which
mode describes the business. The popularity baseline is measured the same way. The grid
(``ranks × reg_params × alphas``) is tuned on NDCG@k of the mode that matches
``exclude_purchased``; ``recommend.parallelism`` grid points (and the baseline) are measured at
once, in threads that inherit the task's Spark job tags, and logged to MLflow in grid order.

**Candidates** (:func:`scored_candidates`, :func:`top_k_from_candidates`). Each customer's
factors are scored against the whole catalogue in a Python worker (NumPy matrix products on
chunks of customers; the product factors, one row per product, travel with the function), the
excluded products are set to ``-inf`` and the ``k`` best (and a few more for ties) are kept
with ``argpartition``: exact, without a shuffle, and as cheap for a customer who bought 300
products as for one who bought 1. Only those rows are ranked with ``row_number`` over a window
per customer (score descending, product id on ties). No per-customer data reaches the driver.

**Fallback** (:func:`recommend_customers`). Every customer gets exactly ``k`` rows: first the
customer's ALS recommendations, then the popularity ranking (distinct buyers in the last
``popular_days``; the customer's country first when that country had at least ``k`` products
bought, then the global ranking), skipping products already recommended and, when excluding,
already bought. ``source`` says which; ranks run 1..k without gaps (the ALS rows keep their
ranks 1..a, the fill continues at a + 1). ``score`` is the ALS score, or for a popular row the
share of recent buyers (of the country, or of all) who bought the product. A customer can get
fewer than ``k`` rows only by having bought more than :data:`MAX_EXTRA_CANDIDATES` products,
or from a catalogue too small to fill the list.

**Registry.** The final model (the two ``StringIndexer`` models and ``ALSModel`` in one
``PipelineModel``, so it maps indices back to ids by itself) is fitted on all history, logged
and registered; the champion gate compares the tuned NDCG@k with the champion's recorded
``eval_ndcg_at_k`` when the champion was evaluated on the same cutoff, mode and k. A champion
measured on another cutoff is not comparable (its final model has seen the current evaluation
window), so the challenger, fitted on newer data, replaces it. The rows are written by the
champion after the gate: the new model when promoted, else the champion loaded through its
alias — so re-running with nothing changed writes the same rows. ``model_version`` on every
row, popular ones included, is the version that produced the list.

The write replaces the as-of date's rows of ``gold.recommendations`` (idempotent per date).
"""

from retailml.stages.recommend.als import (
    TIE_MARGIN,
    ItemFactors,
    als_blocks,
    als_estimator,
    als_top_k,
    audience,
    scored_candidates,
    top_k,
    top_k_from_candidates,
)
from retailml.stages.recommend.data import (
    REQUIRED_COLUMNS,
    Indexers,
    check_transactions,
    fit_indexers,
    interactions,
    popularity,
    purchased,
    ratings,
)
from retailml.stages.recommend.evaluation import (
    EvaluationSet,
    GridPoint,
    evaluation_set,
    in_parallel,
    tune,
)
from retailml.stages.recommend.serving import (
    MAX_EXTRA_CANDIDATES,
    gold_rows,
    recommend_customers,
    serve,
    unpack,
)
from retailml.stages.recommend.task import PopularOnlyResult, RecommendResult, run

__all__ = [
    "MAX_EXTRA_CANDIDATES",
    "REQUIRED_COLUMNS",
    "TIE_MARGIN",
    "EvaluationSet",
    "GridPoint",
    "Indexers",
    "ItemFactors",
    "PopularOnlyResult",
    "RecommendResult",
    "als_blocks",
    "als_estimator",
    "als_top_k",
    "audience",
    "check_transactions",
    "evaluation_set",
    "fit_indexers",
    "gold_rows",
    "in_parallel",
    "interactions",
    "popularity",
    "purchased",
    "ratings",
    "recommend_customers",
    "run",
    "scored_candidates",
    "serve",
    "top_k",
    "top_k_from_candidates",
    "tune",
    "unpack",
]
