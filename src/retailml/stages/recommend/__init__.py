"""Recommend: a two-stage recommender on purchase history → ``gold.recommendations``, two lists
per customer: ``for_you`` (rebuys allowed) and ``discover`` (never-bought products only).

The package: :mod:`.data` (interactions, purchases, indexers, popularity), :mod:`.als` (the
ALS estimator and exact top-k scoring), :mod:`.generators` (the candidate generators),
:mod:`.ranker` (candidates, features, the learned ranker), :mod:`.evaluation` (the evaluation
set, ALS's grid, the popularity baseline), :mod:`.twostage` (the repeat half-life and the
rankers, trained and measured on time), :mod:`.serving` (both lists, the popularity fill, gold
rows), :mod:`.publish` (the task's inputs and writes, and serving the champion as it is) and
:mod:`.task` (``run``).

**Products only.** Lines that are not merchandise (``line_kind`` other than ``product``:
postage, fees, discounts…) never enter the interactions, the generators, the popularity
ranking, the evaluation truth or the catalogue size, so they are never recommended.

**Interactions** (:func:`interactions`, ALS's input). Known customers' purchase and return
lines (guests have no id to recommend to) become one row per customer and product with the
rating ``log1p(purchase lines × share of the bought units that were kept)``: how often a
customer bought a product, discounted by what they sent back. Lines rather than units, so a
wholesale order of 500 pieces does not outweigh a product bought every month.

**Generators** (first stage, :mod:`.generators`): each a DataFrame function of the history
before a cutoff — ``repeat`` (the customer's own products by time-decayed purchase days, the
half-life tuned), ``item_knn`` (co-purchase neighbours, cosine or BM25, top-N per product), ``als``
(implicit-feedback ALS, exactly scored) and ``popular`` (recent best sellers).

**Ranker** (second stage, :mod:`.ranker`): per customer, the union of every generator's top
``candidates``, with features (each generator's score, relative score and rank; purchase
days, mean gap, days since, how due; the customer's activity; the product's recent and
same-season-last-year buyer shares and popularity rank; the customer's share of its
category), scored by an xgboost classifier trained on ``ranker_windows`` windows before the
evaluation window (label: bought in that window). ``for_you`` ranks all candidates;
``discover`` ranks the never-bought ones (the repeat generator proposes none of those).

**Evaluation** is on time, never on a random split. The as-of date is the day after the last
event; the evaluation cutoff lies ``eval_days`` before it. Every model is fitted on what came
before the cutoff and measured against what customers bought in ``[cutoff, as_of)``, for the
customers who had bought something before the cutoff (a customer without history is the
fallback's job). Two modes:

- ``all``: against everything bought in the window, repeat purchases included, with
  recommendations that may contain products bought before;
- ``new``: against the products new to the customer, with recommendations that exclude
  everything bought before the cutoff.

Both rankers and all four generators are measured in both modes and logged to MLflow. The
repeat share (window customer × product pairs the customer had bought before) says which mode
describes the business. ALS's grid (``ranks × reg_params × alphas``) is tuned on NDCG@k of the
mode that matches ``exclude_purchased``; ``recommend.parallelism`` grid points (and the
baseline) are measured at once, in threads that inherit the task's Spark job tags.

**ALS candidates** (:func:`scored_candidates`). Each customer's factors are scored against the
whole catalogue in a Python worker (NumPy matrix products on chunks of customers), the
excluded products are set to ``-inf`` and the best are kept with ``argpartition``: exact,
without a shuffle, and as cheap for a customer who bought 300 products as for one who bought 1.

**Fill** (:func:`recommend_customers`). Every customer gets exactly ``k`` rows per list: first
the ranker's, then the popularity ranking (distinct buyers in the last ``popular_days``; the
customer's country first when that country had at least ``k`` products bought, then the
global ranking), skipping products already on the list and, on ``discover``, already bought.
``source`` names the generator that proposed a ranked row (the one that ranked it highest) or
``popular`` for the fill; ranks run 1..k without gaps. ``score`` is the ranker's probability,
or for a fill row the share of recent buyers who bought the product.

**Registry.** The final model — the two ``StringIndexer`` models, ``ALSModel`` fitted on all
history, and both rankers (as measured) in one
``PipelineModel`` — is logged and registered with its tuned half-life. The champion gate
compares NDCG@k of the list ``exclude_purchased`` chooses (``discover`` against new products,
or ``for_you`` against everything) with the champion's recorded ``eval_ndcg_at_k`` when the
champion was evaluated on the same cutoff, mode, k and list, and is a two-stage recommender;
otherwise it is not comparable (its final model has seen the current evaluation window), so
the challenger, fitted on newer data, replaces it. The rows are written by the champion after
the gate: the new model when promoted, else the champion loaded through its alias — so
re-running with nothing changed writes the same rows. ``model_version`` on every row, popular
ones included, is the version that produced the list.

The write replaces the as-of date's rows of ``gold.recommendations`` (idempotent per date).

**Similar products.** A version's first serve computes item-kNN's neighbours of every product
at its as-of date and stores them in ``gold.similar_products`` under the version (ranked per
product: "bought together"; found by the MLflow run that logged the version); every later
serve of that version reads them back instead of counting co-purchases again. Like the ALS
factors, they are part of the version until a retrained one replaces it: a product first sold
since then gets item-kNN candidates only from a newer version.

**Retrain on need.** A run whose inputs are unchanged does nothing (``ops.lineage``). When they
changed, the recommender is tuned and trained again only if asked (``workflow.retrain``), if
there is no two-stage champion, if the recommend settings changed, or if the champion is older
than ``workflow.max_champion_age_days``; otherwise the champion serves both lists at the new
as-of date as it is (its ALS factors, item neighbours and rankers; the customers' own
purchases and the popularity ranking are read at the new date, so new customers still get
repeat, item-kNN and popularity candidates, and new products popularity ones), to the
customers whose lists are due; the others keep theirs (``publish.carry_forward``).
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
from retailml.stages.recommend.generators import (
    GENERATORS,
    als_candidates,
    item_knn,
    item_neighbours,
    popular_candidates,
    purchase_days,
    repeat,
    top_candidates,
)
from retailml.stages.recommend.publish import ServedResult, similar_products
from retailml.stages.recommend.ranker import (
    FEATURES,
    CutoffFacts,
    candidate_features,
    candidates_at,
    cutoff_facts,
    labelled,
    neighbours_at,
    rank_candidates,
    ranker_estimator,
)
from retailml.stages.recommend.serving import (
    MAX_EXTRA_CANDIDATES,
    gold_rows,
    pack,
    recommend_customers,
    serve,
    unpack,
)
from retailml.stages.recommend.task import PopularOnlyResult, RecommendResult, run
from retailml.stages.recommend.twostage import TwoStage, train_two_stage

__all__ = [
    "FEATURES",
    "GENERATORS",
    "MAX_EXTRA_CANDIDATES",
    "REQUIRED_COLUMNS",
    "TIE_MARGIN",
    "CutoffFacts",
    "EvaluationSet",
    "GridPoint",
    "Indexers",
    "ItemFactors",
    "PopularOnlyResult",
    "RecommendResult",
    "ServedResult",
    "TwoStage",
    "als_blocks",
    "als_candidates",
    "als_estimator",
    "als_top_k",
    "audience",
    "candidate_features",
    "candidates_at",
    "check_transactions",
    "cutoff_facts",
    "evaluation_set",
    "fit_indexers",
    "gold_rows",
    "in_parallel",
    "interactions",
    "item_knn",
    "item_neighbours",
    "labelled",
    "neighbours_at",
    "pack",
    "popular_candidates",
    "popularity",
    "purchase_days",
    "purchased",
    "rank_candidates",
    "ranker_estimator",
    "ratings",
    "recommend_customers",
    "repeat",
    "run",
    "scored_candidates",
    "serve",
    "similar_products",
    "top_candidates",
    "top_k",
    "top_k_from_candidates",
    "train_two_stage",
    "tune",
    "unpack",
]
