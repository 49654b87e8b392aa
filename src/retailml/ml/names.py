"""The MLflow contract: the names of the tags, params, metrics and artifacts that one module
writes and another reads (train and recommend write; score, the report and the benchmark read).
A name written here is the only spelling of it.
"""

from __future__ import annotations

# --- tags on runs and registered model versions ----------------------------------------------
DATA_TRANSACTIONS_VERSION = "data.silver_transactions_version"  # Delta version read
DATA_FEATURES_VERSION = "data.customer_features_version"
RUN_ID = "run_id"  # on a model version: the run that logged the model
GATE_DECISION = "gate_decision"  # "promoted" or "kept champion"
GATE_REASON = "gate_reason"
PROMOTED, KEPT = "promoted", "kept champion"
CHALLENGER = "challenger"  # the propensity family that challenged the champion
CHALLENGER_VERSION = "challenger_version"
SERVED_VERSION = "served_version"  # the recommender version that wrote the gold rows

# Propensity: where a model was measured.
HOLDOUT_CUTOFF = "holdout_cutoff"
TRAIN_CUTOFFS = "train_cutoffs"
HOLDOUT_ROC_AUC = "holdout_roc_auc"  # on a model version
RETRAIN_REASON = "retrain_reason"  # on a training run: why it retrained
FAMILY = "family"  # also a param of each family's run
IMPLEMENTATION = "implementation"

# Recommender: where a model was measured.
AS_OF_DATE = "as_of_date"
EVAL_CUTOFF = "eval_cutoff"
EVAL_MODE = "eval_mode"
EVAL_K = "eval_k"
EVAL_LIST = "eval_list"  # the list the gate judged (for_you, discover)
EVAL_KIND = "recommender_kind"  # RECOMMENDER_KIND below
EVAL_CUSTOMERS = "eval_customers"  # "all", or the tuning sample's share and hash seed
EVAL_NDCG = "eval_ndcg_at_k"  # on a model version

# The report's run of a workflow run.
WORKFLOW_RUN = "workflow_run_id"
# MLflow's own tag of a nested run.
PARENT_RUN = "mlflow.parentRunId"

# --- params ----------------------------------------------------------------------------------
K = "k"
TUNED_MODE = "tuned_mode"
# The recommender's tuned repeat half-life; a version carries its tuned parameters as
# param_<name> tags.
HALF_LIFE_PARAM = "repeat_half_life"
VERSION_PARAM_PREFIX = "param_"

# --- metrics ---------------------------------------------------------------------------------
HOLDOUT_PREFIX = "holdout_"  # a propensity family's held-out metrics: holdout_roc_auc, …
CHALLENGER_HOLDOUT_ROC_AUC = "challenger_holdout_roc_auc"
REPEAT_SHARE = "repeat_share"
TUNED_NDCG = "tuned_ndcg_at_k"
TASK_SECONDS_PREFIX = "task_seconds_"


def ranking_prefix(model: str, mode: str) -> str:
    """The prefix of a recommender's ranking metrics: ``als_new_ndcg_at_k`` and so on."""
    return f"{RANKING_MODEL_PREFIX[model]}_{mode}_"


# The recommender's models and evaluation modes, as metric names spell them: the two rankers
# (one per list) and the four candidate generators.
FOR_YOU_MODEL, DISCOVER_MODEL = "for_you", "discover"
REPEAT_MODEL, KNN_MODEL, ALS_MODEL, POPULAR_MODEL = "repeat", "item_knn", "als", "popular"
RANKING_MODEL_PREFIX = {
    FOR_YOU_MODEL: "for_you",
    DISCOVER_MODEL: "discover",
    REPEAT_MODEL: "repeat",
    KNN_MODEL: "knn",
    ALS_MODEL: "als",
    POPULAR_MODEL: "pop",
}
# What a recommender version is (a champion of another kind is not comparable).
RECOMMENDER_KIND = "two_stage"
ALL, NEW = "all", "new"
MODES = (ALL, NEW)

# --- artifacts -------------------------------------------------------------------------------
MODEL = "model"  # the logged model's name in its run
EVALUATION = "evaluation"  # a propensity family's evaluation folder
CURVES = "curves.json"
IMPORTANCES = "feature_importance.json"
EVALUATION_FIGURE = "evaluation.png"
REPORT_PAGE = "index.html"
