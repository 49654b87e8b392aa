"""The single-node comparison: retailml's propensity and recommendation work in one process.

The work of ``retailml run``, done with pandas, LightGBM and the ``implicit`` library on the same
source files, timed per phase.

    .venv/bin/python benchmarks/single_node.py --size S      (or --data FOLDER of CSV files)

Why: retailml's tasks run on Spark so that they scale out; on data that fits one machine a
single process is the yardstick. ``benchmarks/bench.py`` runs this right after the retailml run
of the same size and prints both, with the ratio, on ``docs/benchmarks.md``. It needs the
``bench`` extra (``pip install -e '.[bench]'``; ``make bench`` installs it); retailml itself does
not depend on any of it. Only pure modules of retailml are imported (settings, line kinds,
schemas), for the defaults and names, so both sides work from one set of parameters.

Run it on a quiet machine, as the retailml benchmark: LightGBM's OpenMP threads wait for each
other at every split, so when another process holds a core they crawl (on S, at ``nice 19``
beside a Spark job on both cores, training took 124 s on two threads and 4 s on one);
``--threads 1`` on a shared machine.

Phases, each timed with ``time.perf_counter``:

- **load**: read the CSV files (pyarrow's reader), parse and validate like ingest (a line with
  the wrong number of fields, no product code, a time that is no date, a quantity that is no
  non-zero integer or a missing or negative price is quarantined), then clean like
  ``stages/clean.py``: exact duplicates collapse, every line gets its line kind from
  ``clean.line_kinds`` (:data:`retailml.line_kinds.DEFAULT_LINE_KINDS`), credits (negative
  quantity or a ``C`` invoice) get a negative quantity and amount and are returns when they are
  products, lines without a customer are guests;
- **features**: ``stages/features.py``'s point-in-time features and label at the same cutoffs
  (training cutoffs 30 days apart, holdout, score and the two calibration cutoffs; label: bought
  a product in ``[T, T + horizon)``), from the same per-customer-and-day summaries;
- **train**: LightGBM tuned on the training cutoffs with folds grouped by customer (one
  validation fold above ``train.validation_split_above_rows``, as retailml), refitted, and its
  ROC-AUC on the held-out cutoff — the number retailml reports for its best family;
- **recommend**: ``stages/recommend``'s evaluation — cutoff ``as_of − eval_days``; the evaluated
  customers are those with a product purchase before the cutoff who bought in the window;
  NDCG@k (:func:`ranking_metrics`, the definitions of ``ml/ranking.py``) in mode ``all``
  (everything bought in the window) and ``new`` (only products new to the customer, everything
  bought before excluded) — of implicit's ALS (the ratings and grid of ``recommend``; the grid
  point chosen on the judged mode), implicit's BM25-weighted item-kNN, a cosine item-kNN (the
  similarity of retailml's ``item_knn``), the customers' own products with time decay
  (``repeat``, half-life tuned on ``all`` as retailml does) and the popularity baseline; then the
  final ALS fitted on all history and both lists (rebuys allowed, and never-bought only) for
  every customer, popular products for those ALS cannot score.

Approximations (each small next to a comparison of different targets, which this is not):

- input: the Online Retail II CSV layout the generator writes, ISO times ``yyyy-MM-dd HH:mm:ss``
  read as UTC, ids written as floats (``17850.0``) as integers; ingest's other layouts, date
  notations, decimal commas and thousands separators are not handled. The data has no category
  column, so ``distinct_categories`` is 0 on both sides; ``views_30`` and ``carts_30`` are 0 too;
- amounts are rounded half up on the binary double (Spark rounds the decimal value), which can
  move a cent on a value ending in exactly half a cent;
- ALS: implicit's solver (conjugate gradient, 3 steps per iteration) with confidence
  ``1 + alpha × rating`` as Spark's, but its factors may be negative (Spark's are non-negative
  here) and its regularisation is not scaled by each customer's and product's number of ratings
  (Spark's ALS-WR is), so each ``reg_param`` is multiplied by the mean number of ratings per
  customer (:func:`als_regularization`): the customers' side regularised about as in Spark, the
  products' side less;
- item-kNN: ties among neighbours and among scores are broken by implicit, not by product id
  (ALS and kNN scores seldom tie);
- no learned ranker: retailml's ``for_you`` and ``discover`` lists re-rank the union of its
  generators with xgboost; here each recommender is measured alone, and the served lists are
  ALS's;
- propensity: LightGBM only, without Platt scaling on the calibration cutoff (ROC-AUC does not
  change under a monotone map; the calibration cutoff's features are built all the same);
- recommendation tuning samples customers above ``recommend.tune_max_customers`` in retailml
  (L only); here every customer is used.

What agrees exactly shows that both sides measure the same thing: on S (at ``0ecf4f5``) the
180,155 transactions (358 lines quarantined), the 7,586 training and held-out rows (11,394 feature
rows in all), the 561 evaluated customers, and NDCG@5 all / new of repeat (0.5740 / 0), popular
(0.3257 / 0.1119) and the cosine item-kNN (0.3115 / 0.1202 against retailml's item_knn 0.3114 /
0.1202); LightGBM's held-out ROC-AUC is 0.9082, as retailml's champion challenger's. On M: the
36,169 evaluated customers and 73,406 served, repeat 0.4882 (retailml 0.488), cosine item-kNN
0.2968 (0.297), ALS new 0.1762 (Spark's tuned 0.1757), ROC-AUC 0.8151 (0.8158).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import resource
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pyarrow import csv as pacsv

from retailml.line_kinds import DEFAULT_LINE_KINDS, LineKindRule
from retailml.schemas import FEATURE_COLUMNS, FEATURE_WINDOWS
from retailml.settings import (
    DEFAULT_NULL_VALUES,
    FeatureSettings,
    RecommendSettings,
    TrainSettings,
)

SEED = 42  # the settings' default seed
EPOCH = date(1970, 1, 1)
SEASON_DAYS = 364  # features.SEASON_DAYS: a year back in whole weeks
ALL, NEW = "all", "new"  # the evaluation modes (ml/names.py)
TRAIN, HOLDOUT, SCORE, CALIBRATION = "train", "holdout", "score", "calibration"
PRODUCT_LINE = "product"
# The popularity fill walks at most this many entries past k (serving.MAX_EXTRA_CANDIDATES).
MAX_EXTRA = 200
# LightGBM's grid: leaves (about depth 3 and 5, xgboost's grid in retailml) × rounds.
LIGHTGBM_GRID = ((7, 200), (31, 200), (7, 500), (31, 500))
LIGHTGBM_LEARNING_RATE = 0.05

# The Online Retail II layout (ingest/layouts.py) → the names used here.
LAYOUT = {
    "Invoice": "invoice",
    "StockCode": "product",
    "Description": "name",
    "Quantity": "quantity",
    "InvoiceDate": "time",
    "Price": "price",
    "Customer ID": "customer",
    "Country": "country",
}
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


# --- load: ingest's parsing and clean's rules ---------------------------------------------------


@dataclass
class Silver:
    """``silver.transactions`` as columns of integer codes, one row per cleaned line.

    Attributes:
        lines: ``customer`` (code, -1 for a guest), ``product`` (code; codes follow the sorted
            product ids, so a lower code is a smaller id, the tie-break of every ranking),
            ``invoice`` (code), ``country`` (code, -1 when missing), ``quantity`` (credits
            negative), ``amount``, ``day`` (UTC days since 1970-01-01), ``is_product`` (line kind
            ``product``), ``is_return`` (event type ``return``; every other line is a purchase).
        customers, products, countries: The ids behind the codes.
        source_lines: Data lines read, valid or not.
        quarantined: Lines ingest would quarantine.
        duplicates: Exact duplicates dropped.
    """

    lines: pd.DataFrame
    customers: np.ndarray
    products: np.ndarray
    countries: np.ndarray
    source_lines: int
    quarantined: int
    duplicates: int


def read_source(folder: Path) -> tuple[pd.DataFrame, int, int]:
    """The valid lines of every CSV file in ``folder``, typed, and the counts of lines read and
    quarantined (see the module docstring for what is valid).

    Returns:
        ``invoice, customer, product, name, country`` (strings, null when missing),
        ``quantity`` (int64), ``price`` (float64), ``time`` (seconds since the epoch, int64),
        ``source_file``; the number of data lines; how many of them were invalid.

    Raises:
        ValueError: No CSV file in ``folder``, or a file without a column of the layout.
    """
    files = sorted(folder.glob("*.csv"))
    if not files:
        raise ValueError(f"{folder}: no CSV files")
    short = [0]

    def skip(_row: object) -> str:
        short[0] += 1  # a line with another number of fields: quarantined by ingest
        return "skip"

    tables = []
    for path in files:
        try:
            table = pacsv.read_csv(
                path,
                parse_options=pacsv.ParseOptions(invalid_row_handler=skip),
                convert_options=pacsv.ConvertOptions(
                    column_types=dict.fromkeys(LAYOUT, pa.string()),
                    include_columns=list(LAYOUT),
                    strings_can_be_null=True,
                    null_values=[""],
                ),
            )
        except (pa.ArrowInvalid, KeyError) as exc:
            raise ValueError(f"{path}: not the Online Retail II layout ({exc})") from None
        table = table.rename_columns([LAYOUT[c] for c in table.column_names])
        tables.append(table.append_column("source_file", pa.array([path.name] * len(table))))
    raw = pa.concat_tables(tables)
    parsed = parse(raw)
    return parsed, len(raw) + short[0], len(raw) - len(parsed) + short[0]


def parse(raw: pa.Table) -> pd.DataFrame:
    """Records (all text) → typed, valid lines: trimmed text, the missing-value tokens
    (``ingest.null_values``) as null, ids written as floats as integers; rows failing a check of
    ``ingest/canonical.py`` dropped."""
    nulls = pa.array(list(DEFAULT_NULL_VALUES))

    def text(name: str) -> pa.ChunkedArray:
        values = pc.utf8_trim_whitespace(raw[name])
        values = pc.if_else(pc.is_in(values, nulls), pa.scalar(None, pa.string()), values)
        return pc.if_else(pc.equal(values, ""), pa.scalar(None, pa.string()), values)

    def identifier(name: str) -> pa.ChunkedArray:
        return pc.replace_substring_regex(text(name), r"^([+-]?\d+)\.0*$", r"\1")

    quantity = pd.to_numeric(text("quantity").to_pandas(), errors="coerce")
    price = pd.to_numeric(text("price").to_pandas(), errors="coerce")
    when = pc.strptime(text("time"), format=TIME_FORMAT, unit="s", error_is_null=True)
    seconds = pc.cast(when, pa.int64()).to_pandas()  # float64, NaN where no date
    product = identifier("product")
    whole = (quantity == np.floor(quantity)) & (quantity.abs() < 2_147_483_647) & (quantity != 0)
    valid = (
        pd.Series(pc.is_valid(product)).to_numpy()
        & seconds.notna().to_numpy()
        & whole.fillna(False).to_numpy()
        & (price >= 0).fillna(False).to_numpy()
    )
    keep = pa.array(valid)
    frame = pd.DataFrame(
        {
            "invoice": identifier("invoice").filter(keep).to_pandas(),
            "customer": identifier("customer").filter(keep).to_pandas(),
            "product": product.filter(keep).to_pandas(),
            "name": text("name").filter(keep).to_pandas(),
            "country": text("country").filter(keep).to_pandas(),
            "quantity": quantity[valid].astype("int64").to_numpy(),
            "price": price[valid].astype("float64").to_numpy(),
            "time": seconds[valid].astype("int64").to_numpy(),
            "source_file": raw["source_file"].filter(keep).to_pandas(),
        }
    )
    return frame


def line_kinds(
    product: pd.Series,
    invoice: pd.Series,
    name: pd.Series,
    rules: Sequence[LineKindRule] = DEFAULT_LINE_KINDS,
) -> np.ndarray:
    """Each line's kind, as ``clean.line_kind``: the first rule whose codes, code patterns or
    invoice patterns match, else the first whose description patterns match, else ``product``;
    case ignored, patterns matched against the whole value. Each pattern is matched once per
    distinct value, not once per line.

    Returns:
        An object array of kinds.
    """

    def matcher(
        values: pd.Series, transform: str | None = None
    ) -> tuple[pd.Series, Callable[[np.ndarray], np.ndarray]]:
        codes, uniques = pd.factorize(values.fillna(""))
        uniques = pd.Series(uniques, dtype=object).astype(str)
        if transform == "code":
            uniques = uniques.str.strip().str.upper()
        elif transform == "name":
            uniques = uniques.str.strip()

        def where(condition: np.ndarray) -> np.ndarray:
            return np.asarray(condition, dtype=bool)[codes]

        return uniques, where

    codes_u, by_code = matcher(product, "code")
    raw_u, by_raw = matcher(product)
    invoice_u, by_invoice = matcher(invoice)
    name_u, by_name = matcher(name, "name")

    def full(values: pd.Series, patterns: Sequence[str]) -> np.ndarray:
        joined = "|".join(f"(?:{p})" for p in patterns)
        return values.str.fullmatch(f"(?i:{joined})").to_numpy(dtype=bool)

    conditions: list[tuple[np.ndarray, str]] = []
    for rule in rules:
        if rule.codes:
            wanted = {c.strip().upper() for c in rule.codes}
            conditions.append((by_code(codes_u.isin(wanted).to_numpy()), rule.kind))
        if rule.code_patterns:
            conditions.append((by_raw(full(raw_u, rule.code_patterns)), rule.kind))
        if rule.invoice_patterns:
            conditions.append((by_invoice(full(invoice_u, rule.invoice_patterns)), rule.kind))
    for rule in rules:
        if rule.descriptions:
            conditions.append((by_name(full(name_u, rule.descriptions)), rule.kind))
    kind = np.full(len(product), PRODUCT_LINE, dtype=object)
    decided = np.zeros(len(product), dtype=bool)
    for condition, value in conditions:
        hit = condition & ~decided
        kind[hit] = value
        decided |= hit
    return kind


def clean(lines: pd.DataFrame, *, source_lines: int, quarantined: int) -> Silver:
    """Valid lines (:func:`read_source`) → :class:`Silver` by ``stages/clean.py``'s rules."""
    business = ["invoice", "customer", "product", "name", "quantity", "price", "time", "country"]
    # Files are read in name order, so the first copy of a line is the one with the smallest
    # source_file, the one clean keeps.
    codes = pd.DataFrame(
        {c: pd.factorize(lines[c])[0] if lines[c].dtype == object else lines[c] for c in business}
    )
    unique = ~codes.duplicated(keep="first").to_numpy()
    lines = lines[unique].reset_index(drop=True)
    kind = line_kinds(lines["product"], lines["invoice"], lines["name"])
    is_product = kind == PRODUCT_LINE
    quantity = lines["quantity"].to_numpy()
    cancelled = lines["invoice"].fillna("").str.startswith("C").to_numpy(dtype=bool)
    credit = (quantity < 0) | cancelled
    quantity = np.where(credit, -np.abs(quantity), quantity)
    customer, customers = pd.factorize(lines["customer"], sort=True)
    product, products = pd.factorize(lines["product"], sort=True)
    invoice, _ = pd.factorize(lines["invoice"])
    country, countries = pd.factorize(lines["country"], sort=True)
    silver = pd.DataFrame(
        {
            "customer": customer.astype(np.int32),
            "product": product.astype(np.int32),
            "invoice": invoice.astype(np.int32),
            "country": country.astype(np.int32),
            "quantity": quantity,
            "amount": _round_half_up(quantity * lines["price"].to_numpy(), 2),
            "day": (lines["time"].to_numpy() // 86_400).astype(np.int32),
            "is_product": is_product,
            "is_return": credit & is_product,
        }
    )
    return Silver(
        lines=silver,
        customers=np.asarray(customers, dtype=object),
        products=np.asarray(products, dtype=object),
        countries=np.asarray(countries, dtype=object),
        source_lines=source_lines,
        quarantined=quarantined,
        duplicates=int((~unique).sum()),
    )


def _round_half_up(values: np.ndarray, digits: int) -> np.ndarray:
    scale = 10.0**digits
    return np.sign(values) * np.floor(np.abs(values) * scale + 0.5) / scale


def load(folder: Path) -> Silver:
    """Read, parse and clean the CSV files of ``folder``."""
    lines, source_lines, quarantined = read_source(folder)
    return clean(lines, source_lines=source_lines, quarantined=quarantined)


# --- features -------------------------------------------------------------------------------


def cutoff_dates(
    last_date: date, *, first_date: date, horizon_days: int, train_cutoffs: int, spacing_days: int
) -> dict[str, list[date]]:
    """``features.cutoff_dates``: score = the day after the last, holdout = score − horizon,
    training cutoff i = holdout − horizon − i × spacing, calibration a season (364 days) before
    the holdout and the score cutoff, or the newest training cutoff and the holdout when the
    data do not reach back that far.

    Raises:
        ValueError: The oldest training cutoff would see no history.
    """
    score = last_date + timedelta(days=1)
    holdout = score - timedelta(days=horizon_days)
    train = [
        holdout - timedelta(days=horizon_days + i * spacing_days) for i in range(train_cutoffs)
    ]
    if train[-1] <= first_date:
        raise ValueError(f"too little history: {first_date} to {last_date}")
    seasonal = [holdout - timedelta(days=SEASON_DAYS), score - timedelta(days=SEASON_DAYS)]
    if seasonal[0] < first_date + timedelta(days=horizon_days):
        seasonal = [train[0], holdout]
    return {TRAIN: train, HOLDOUT: [holdout], SCORE: [score], CALIBRATION: seasonal}


@dataclass(frozen=True)
class History:
    """Per-customer summaries every cutoff is computed from (``features.CustomerHistory``).

    Attributes:
        daily: ``customer, day, invoices, cents, lines, returns`` per customer and day with any
            purchase or return: distinct invoices with a product purchase, purchase amount in
            cents (every kind), product purchase lines, return lines.
        products: ``customer, first_day`` per customer and product bought.
        gaps: ``customer, day, gap`` per purchase day but a customer's first.
        customers: How many customer codes there are.
    """

    daily: pd.DataFrame
    products: pd.DataFrame
    gaps: pd.DataFrame
    customers: int


def summarise_history(silver: Silver) -> History:
    """:class:`History` of the known customers' lines (guests can have no features)."""
    lines = silver.lines[silver.lines["customer"] >= 0]
    bought = (~lines["is_return"] & lines["is_product"]).to_numpy()
    purchase = ~lines["is_return"].to_numpy()
    cents = np.where(purchase, _round_half_up(lines["amount"].to_numpy() * 100, 0), 0.0)
    keys = ["customer", "day"]
    daily = (
        pd.DataFrame(
            {
                "customer": lines["customer"].to_numpy(),
                "day": lines["day"].to_numpy(),
                "cents": cents.astype(np.int64),
                "lines": bought.astype(np.int64),
                "returns": lines["is_return"].to_numpy().astype(np.int64),
            }
        )
        .groupby(keys, sort=True)
        .sum()
    )
    invoices = lines.loc[bought, [*keys, "invoice"]].drop_duplicates().groupby(keys).size()
    daily["invoices"] = invoices.reindex(daily.index, fill_value=0).to_numpy()
    daily = daily.reset_index()
    products = (
        lines.loc[bought].groupby(["customer", "product"])["day"].min().rename("first_day")
    ).reset_index()[["customer", "first_day"]]
    days = daily.loc[daily["lines"] > 0, keys]  # sorted by customer, day
    previous = days.groupby("customer")["day"].shift()
    gaps = days.assign(gap=days["day"] - previous).dropna(subset=["gap"])
    return History(
        daily=daily,
        products=products,
        gaps=gaps.astype({"gap": np.int64}),
        customers=len(silver.customers),
    )


def features_at(
    history: History, cutoff: date, *, split: str, horizon_days: int, label: bool = True
) -> pd.DataFrame:
    """Every customer's features at ``cutoff`` (``features.features_from_history``): one row per
    customer with a product purchase before the cutoff, built from what happened before it;
    ``label`` 1 when the customer bought a product in ``[cutoff, cutoff + horizon)``.

    Returns:
        ``customer, cutoff_date, split``, :data:`FEATURE_COLUMNS` and ``label`` (missing when
        ``label`` is False).
    """
    t = (cutoff - EPOCH).days
    n = history.customers
    d = history.daily
    customer = d["customer"].to_numpy()
    day = d["day"].to_numpy()
    age = t - day
    before = age >= 1

    def total(column: str, mask: np.ndarray) -> np.ndarray:
        values = d[column].to_numpy()
        return np.bincount(customer[mask], weights=values[mask], minlength=n)

    def within(days: int) -> np.ndarray:
        return before & (age <= days)

    lines = total("lines", before)
    bought = before & (d["lines"].to_numpy() > 0)
    last = np.full(n, np.iinfo(np.int64).min)
    first = np.full(n, np.iinfo(np.int64).max)
    np.maximum.at(last, customer[bought], day[bought])
    np.minimum.at(first, customer[bought], day[bought])
    # By window: 30, 90, 365 days, and "all" (everything before the cutoff).
    frequency: dict[int | str, np.ndarray] = {
        w: total("invoices", within(w)) for w in FEATURE_WINDOWS
    }
    frequency["all"] = total("invoices", before)
    cents: dict[int | str, np.ndarray] = {w: total("cents", within(w)) for w in FEATURE_WINDOWS}
    cents["all"] = total("cents", before)
    previous_90 = total("invoices", within(180) & (age > 90))
    returns = total("returns", before)
    products = history.products
    distinct = np.bincount(
        products["customer"].to_numpy()[products["first_day"].to_numpy() < t], minlength=n
    )
    g = history.gaps
    earlier = g["day"].to_numpy() < t
    gap_customer, gap = g["customer"].to_numpy()[earlier], g["gap"].to_numpy()[earlier]
    gap_n = np.bincount(gap_customer, minlength=n).astype(np.float64)
    gap_sum = np.bincount(gap_customer, weights=gap, minlength=n)
    gap_sq = np.bincount(gap_customer, weights=gap * gap, minlength=n)

    rows = np.flatnonzero(lines > 0)

    def ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
        out = np.zeros(len(rows))
        np.divide(numerator[rows], denominator[rows], out=out, where=denominator[rows] != 0)
        return out

    features = {
        "recency_days": (t - last[rows]).astype(np.float64),
        "tenure_days": (t - first[rows]).astype(np.float64),
        **{f"frequency_{w}": frequency[w][rows] for w in frequency},
        **{f"monetary_{w}": cents[w][rows] / 100 for w in cents},
        "avg_basket_value": ratio(cents["all"] / 100, frequency["all"]),
        "avg_basket_size": ratio(lines, frequency["all"]),
        "distinct_products": distinct[rows].astype(np.float64),
        "distinct_categories": np.zeros(len(rows)),  # the layout has no category
        "mean_days_between": ratio(gap_sum, gap_n),
        "std_days_between": np.sqrt(ratio(gap_n * gap_sq - gap_sum * gap_sum, gap_n * gap_n)),
        "trend_90": (frequency[90][rows] + 1) / (previous_90[rows] + 1),
        "return_rate": ratio(returns, lines),
        "views_30": np.zeros(len(rows)),
        "carts_30": np.zeros(len(rows)),
    }
    out = pd.DataFrame({"customer": rows, "cutoff_date": cutoff, "split": split})
    for name in FEATURE_COLUMNS:
        out[name] = features[name]
    if label:
        future = np.bincount(
            customer[(age <= 0) & (age > -horizon_days)],
            weights=d["lines"].to_numpy()[(age <= 0) & (age > -horizon_days)],
            minlength=n,
        )
        out["label"] = (future[rows] > 0).astype(np.int8)
    else:
        out["label"] = pd.array([pd.NA] * len(rows), dtype="Int8")
    return out


def build_features(silver: Silver, *, cfg: FeatureSettings) -> tuple[pd.DataFrame, dict]:
    """``silver.customer_features``: the training, holdout, score and calibration cutoffs'
    rows (a calibration cutoff can be a training or the holdout cutoff too: its rows then
    appear twice, under each split, as in retailml).

    Returns:
        The rows, and the cutoffs by split.
    """
    days = silver.lines["day"]
    first, last = EPOCH + timedelta(int(days.min())), EPOCH + timedelta(int(days.max()))
    cutoffs = cutoff_dates(
        last,
        first_date=first,
        horizon_days=cfg.horizon_days,
        train_cutoffs=cfg.train_cutoffs,
        spacing_days=cfg.cutoff_spacing_days,
    )
    history = summarise_history(silver)
    frames = [
        features_at(history, t, split=split, horizon_days=cfg.horizon_days, label=split != SCORE)
        for split, dates in cutoffs.items()
        for t in dates
    ]
    return pd.concat(frames, ignore_index=True), cutoffs


# --- propensity -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Propensity:
    """The tuned model's held-out quality and what it was fitted on."""

    roc_auc: float
    tuning_roc_auc: float
    params: dict[str, float]
    train_rows: int
    holdout_rows: int
    holdout_rate: float


def train_propensity(
    features: pd.DataFrame, *, cfg: TrainSettings, threads: int, seed: int
) -> Propensity:
    """LightGBM tuned on the training rows (folds of customers), refitted, measured on the
    held-out cutoff by ROC-AUC."""
    import lightgbm
    from sklearn.metrics import roc_auc_score

    train = features[features["split"] == TRAIN]
    holdout = features[features["split"] == HOLDOUT]
    x, y = train[list(FEATURE_COLUMNS)].to_numpy(), train["label"].to_numpy(dtype=int)
    customers = int(features["customer"].max()) + 1
    fold_of = np.random.default_rng(seed).integers(0, cfg.folds, customers)
    fold_of = fold_of[train["customer"].to_numpy()]
    # As retailml: one validation fold of customers above a size, else every fold.
    folds = [0] if len(train) > cfg.validation_split_above_rows else range(cfg.folds)

    def model(leaves: int, rounds: int) -> Any:
        return lightgbm.LGBMClassifier(
            num_leaves=leaves,
            n_estimators=rounds,
            learning_rate=LIGHTGBM_LEARNING_RATE,
            n_jobs=threads,
            random_state=seed,
            verbose=-1,
        )

    scores = []
    for leaves, rounds in LIGHTGBM_GRID:
        aucs = []
        for fold in folds:
            fit = fold_of != fold
            fitted = model(leaves, rounds).fit(x[fit], y[fit])
            aucs.append(roc_auc_score(y[~fit], fitted.predict_proba(x[~fit])[:, 1]))
        scores.append(float(np.mean(aucs)))
    best = int(np.argmax(scores))
    leaves, rounds = LIGHTGBM_GRID[best]
    final = model(leaves, rounds).fit(x, y)
    truth = holdout["label"].to_numpy(dtype=int)
    predicted = final.predict_proba(holdout[list(FEATURE_COLUMNS)].to_numpy())[:, 1]
    return Propensity(
        roc_auc=float(roc_auc_score(truth, predicted)),
        tuning_roc_auc=scores[best],
        params={"num_leaves": leaves, "n_estimators": rounds},
        train_rows=len(train),
        holdout_rows=len(holdout),
        holdout_rate=float(truth.mean()) if len(truth) else 0.0,
    )


# --- ranking metrics ------------------------------------------------------------------------


@dataclass(frozen=True)
class Ranking:
    """Top-k quality, as ``ml/ranking.py`` defines it: means over the users with at least one
    relevant item (a user without recommendations counts with zeros)."""

    ndcg: float
    precision: float
    recall: float
    map: float
    hit_rate: float
    users: int


def ranking_metrics(recommended: pd.DataFrame, relevant: pd.DataFrame, *, k: int) -> Ranking:
    """NDCG, precision, recall and MAP at ``k`` and hit rate (``ml.ranking.ranking_metrics``).

    For a user with relevant set R and hits at positions p: NDCG = Σ 1/log2(p + 1) over the
    hits / Σ_{i ≤ min(|R|, k)} 1/log2(i + 1); precision = hits / k; recall = hits / |R|;
    AP = Σ over the i-th hit (1-based) at p of i / p, / min(|R|, k).

    Args:
        recommended: ``customer, product, rank`` (1-based; ranks beyond ``k`` are ignored).
        relevant: ``customer, product`` (duplicates ignored).
        k: The cut-off.

    Raises:
        ValueError: ``k < 1``.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    keys = ["customer", "product"]
    truth = relevant[keys].drop_duplicates()
    if truth.empty:
        return Ranking(0.0, 0.0, 0.0, 0.0, 0.0, 0)
    top = recommended.loc[recommended["rank"] <= k, [*keys, "rank"]]
    joined = truth.merge(top, on=keys, how="left")
    hits = joined.dropna(subset=["rank"]).sort_values(["customer", "rank"])
    hits = hits.assign(
        gain=1.0 / np.log2(hits["rank"].to_numpy(dtype=float) + 1),
        precision=(hits.groupby("customer").cumcount() + 1) / hits["rank"],
    )
    per_user = pd.DataFrame({"relevant": truth.groupby("customer").size()})
    by_hit = hits.groupby("customer")
    per_user["hits"] = by_hit.size().reindex(per_user.index, fill_value=0)
    per_user["dcg"] = by_hit["gain"].sum().reindex(per_user.index, fill_value=0.0)
    per_user["ap"] = by_hit["precision"].sum().reindex(per_user.index, fill_value=0.0)
    ideal = np.cumsum(1.0 / np.log2(np.arange(1, k + 1) + 1))
    top_n = np.minimum(per_user["relevant"].to_numpy(), k)
    return Ranking(
        ndcg=float((per_user["dcg"] / ideal[top_n - 1]).mean()),
        precision=float((per_user["hits"] / k).mean()),
        recall=float((per_user["hits"] / per_user["relevant"]).mean()),
        map=float((per_user["ap"] / top_n).mean()),
        hit_rate=float((per_user["hits"] > 0).mean()),
        users=len(per_user),
    )


def top_k(scores: pd.DataFrame, *, k: int) -> pd.DataFrame:
    """The ``k`` best ``customer, product, score`` rows per customer (product on ties), ranked."""
    ordered = scores.sort_values(["customer", "score", "product"], ascending=[True, False, True])
    ordered = ordered.assign(rank=ordered.groupby("customer").cumcount() + 1)
    return ordered[ordered["rank"] <= k]


def _long(
    users: np.ndarray, ids: np.ndarray, scores: np.ndarray, *, positive: bool
) -> pd.DataFrame:
    """implicit's ``(users × N)`` ids and scores as ``customer, product, rank`` rows: padding
    (-1 ids, -inf scores) dropped, and with ``positive`` the rows scored 0 or less too (a kNN
    score of 0 is no neighbour at all)."""
    keep = (ids >= 0) & np.isfinite(scores)
    if positive:
        keep &= scores > 0
    rank = np.broadcast_to(np.arange(1, ids.shape[1] + 1), ids.shape)
    customer = np.broadcast_to(users[:, None], ids.shape)
    return pd.DataFrame({"customer": customer[keep], "product": ids[keep], "rank": rank[keep]})


# --- recommendations ------------------------------------------------------------------------


@dataclass
class Recommendations:
    """The evaluation of every recommender, the tuned choices, the served lists and where the
    time went.

    Attributes:
        metrics: Recommender → mode → :class:`Ranking`.
        seconds: Step → seconds (evaluation set, ALS grid, repeat, kNN, popular, serve).
    """

    as_of: date
    eval_cutoff: date
    eval_customers: int
    metrics: dict[str, dict[str, Ranking]]
    als_params: dict[str, float]
    half_life: float
    served_rows: int
    served_customers: int
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class EvaluationSet:
    """What every recommender is measured with (``evaluation.EvaluationSet``)."""

    cutoff: int  # day number
    customers: np.ndarray  # the evaluated customers' codes
    prior: pd.DataFrame  # customer, product bought before the cutoff
    relevant: dict[str, pd.DataFrame]  # mode → customer, product


def product_purchases(silver: Silver) -> pd.DataFrame:
    """Known customers' product purchase lines (``data.known_purchases``)."""
    lines = silver.lines
    keep = (lines["customer"] >= 0) & lines["is_product"] & ~lines["is_return"]
    return lines.loc[keep, ["customer", "product", "day", "country", "invoice"]]


def evaluation_set(purchases: pd.DataFrame, *, cutoff: int) -> EvaluationSet:
    """The customers who bought a product before ``cutoff`` and in the window after it, their
    earlier products, and the window's products by mode."""
    pairs = ["customer", "product"]
    prior = purchases.loc[purchases["day"] < cutoff, pairs].drop_duplicates()
    window = purchases.loc[purchases["day"] >= cutoff, pairs].drop_duplicates()
    relevant_all = window[window["customer"].isin(prior["customer"].unique())]
    seen = relevant_all.merge(prior.assign(_seen=True), on=pairs, how="left")["_seen"]
    relevant_new = relevant_all[seen.isna().to_numpy()]
    return EvaluationSet(
        cutoff=cutoff,
        customers=np.sort(relevant_all["customer"].unique()),
        prior=prior,
        relevant={ALL: relevant_all, NEW: relevant_new},
    )


def ratings(silver: Silver, *, end: int) -> pd.DataFrame:
    """``data.interactions`` before day ``end``: per known customer and product,
    ``rating = log1p(purchase lines × kept share)``, rows with a rating of 0 or less dropped."""
    lines = silver.lines
    keep = (lines["customer"] >= 0) & lines["is_product"] & (lines["day"] < end)
    rows = lines.loc[keep, ["customer", "product", "quantity", "is_return"]]
    purchase = ~rows["is_return"]
    per_pair = (
        rows.assign(
            purchases=purchase.astype(np.int64),
            bought=np.where(purchase, rows["quantity"], 0),
        )
        .groupby(["customer", "product"])
        .agg(purchases=("purchases", "sum"), bought=("bought", "sum"), net=("quantity", "sum"))
        .reset_index()
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        kept = np.clip(per_pair["net"] / per_pair["bought"].where(per_pair["purchases"] > 0), 0, 1)
    per_pair["rating"] = np.log1p(per_pair["purchases"] * kept)
    return per_pair.loc[per_pair["rating"] > 0, ["customer", "product", "rating"]]


def _matrix(frame: pd.DataFrame, values: np.ndarray, shape: tuple[int, int]) -> Any:
    """A ``customers × products`` CSR matrix of ``values`` at ``frame``'s pairs."""
    from scipy.sparse import csr_matrix

    return csr_matrix(
        (values.astype(np.float32), (frame["customer"].to_numpy(), frame["product"].to_numpy())),
        shape=shape,
    )


def repeat_scores(purchases: pd.DataFrame, *, end: int, half_life: float) -> pd.DataFrame:
    """``generators.repeat``: per customer and product bought before ``end``,
    ``Σ 2^(-age / half_life)`` over the distinct purchase days."""
    days = purchases.loc[purchases["day"] < end, ["customer", "product", "day"]].drop_duplicates()
    weight = np.exp(-math.log(2) / half_life * (end - days["day"].to_numpy()))
    return days.assign(score=weight).groupby(["customer", "product"])["score"].sum().reset_index()


def popularity(
    purchases_all: pd.DataFrame, silver: Silver, *, end: int, days: int, min_country_products: int
) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """``data.popularity`` before day ``end``: the global ranking (recent distinct buyers, then
    all-time buyers, then product id) and each country's (recent buyers on the country's lines,
    then product id; only countries with at least ``min_country_products`` products). A buyer is
    a known customer or a guest invoice.

    Args:
        purchases_all: Product purchase lines of customers and guests (``customer`` -1).

    Returns:
        The global ranking's product codes, and country code → its ranking's product codes.
    """
    bought = purchases_all[purchases_all["day"] < end]
    buyer = np.where(
        bought["customer"] >= 0, bought["customer"], len(silver.customers) + bought["invoice"]
    )
    bought = bought.assign(buyer=buyer)
    recent = bought[bought["day"] >= end - days]
    ever = bought[["product", "buyer"]].drop_duplicates().groupby("product").size()
    lately = recent[["product", "buyer"]].drop_duplicates().groupby("product").size()
    table = pd.DataFrame({"tie": ever, "buyers": lately.reindex(ever.index, fill_value=0)})
    table = table.reset_index().sort_values(
        ["buyers", "tie", "product"], ascending=[False, False, True]
    )
    national = recent[recent["country"] >= 0]
    per_country = (
        national[["country", "product", "buyer"]]
        .drop_duplicates()
        .groupby(["country", "product"])
        .size()
        .rename("buyers")
        .reset_index()
        .sort_values(["country", "buyers", "product"], ascending=[True, False, True])
    )
    countries = {
        int(c): rows["product"].to_numpy()
        for c, rows in per_country.groupby("country")
        if len(rows) >= min_country_products
    }
    return table["product"].to_numpy(), countries


def customer_countries(silver: Silver) -> np.ndarray:
    """``silver.customers.country``: each customer's most frequent country (the smallest on
    ties; -1 without one), by customer code."""
    lines = silver.lines
    known = lines[(lines["customer"] >= 0) & (lines["country"] >= 0)]
    counted = known.groupby(["customer", "country"]).size().rename("n").reset_index()
    best = counted.sort_values(["customer", "n", "country"], ascending=[True, False, True])
    best = best.drop_duplicates("customer")
    out = np.full(len(silver.customers), -1, dtype=np.int64)
    out[best["customer"].to_numpy()] = best["country"].to_numpy()
    return out


def popular_lists(
    customers: np.ndarray,
    country_of: np.ndarray,
    ranking: tuple[np.ndarray, dict[int, np.ndarray]],
    *,
    k: int,
    exclude: pd.DataFrame | None = None,
    products: int,
) -> pd.DataFrame:
    """``serving.recommend_customers`` without a model: each customer's country ranking, then
    the global one without the country's products, first ``k`` (of the first ``k`` + 200
    entries, without the ``exclude``d pairs when given).

    Returns:
        ``customer, product, rank``.
    """
    world, national = ranking
    depth = min(k + MAX_EXTRA, len(world))
    codes = np.unique(country_of[customers])
    # One fill list per country, all `depth` long: a country's products are in the global
    # ranking too (it holds every product bought), so its list is as long as the global one.
    lists = np.empty((len(codes), depth), dtype=np.int64)
    for i, code in enumerate(codes):
        mine = national.get(int(code))
        order = world if mine is None else np.concatenate([mine, world[~np.isin(world, mine)]])
        lists[i] = order[:depth]
    candidates = lists[np.searchsorted(codes, country_of[customers])]
    keep = np.ones(candidates.shape, dtype=bool)
    if exclude is not None:
        owner = exclude["customer"].to_numpy(np.int64)
        pairs = owner * products + exclude["product"].to_numpy(np.int64)
        keep = ~np.isin(customers[:, None].astype(np.int64) * products + candidates, pairs)
    rank = np.cumsum(keep, axis=1)
    keep &= rank <= k
    return pd.DataFrame(
        {
            "customer": np.broadcast_to(customers[:, None], candidates.shape)[keep],
            "product": candidates[keep],
            "rank": rank[keep],
        }
    )


@contextmanager
def _clock(seconds: dict[str, float], step: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        seconds[step] = time.perf_counter() - started


def recommend(
    silver: Silver, *, cfg: RecommendSettings, threads: int, seed: int
) -> Recommendations:
    """Evaluate ALS, BM25 and cosine item-kNN, repeat and popularity on the window after
    ``as_of − eval_days`` in both modes, then serve ALS's two lists to every customer."""
    from implicit.nearest_neighbours import BM25Recommender, CosineRecommender

    seconds: dict[str, float] = {}
    k = cfg.k
    shape = (len(silver.customers), len(silver.products))
    as_of = int(silver.lines["day"].max()) + 1
    cutoff = as_of - cfg.eval_days
    tuned_mode = NEW if cfg.exclude_purchased else ALL
    metrics: dict[str, dict[str, Ranking]] = {}

    def measure(lists: dict[str, pd.DataFrame]) -> dict[str, Ranking]:
        return {mode: ranking_metrics(df, data.relevant[mode], k=k) for mode, df in lists.items()}

    with _clock(seconds, "evaluation set"):
        purchases = product_purchases(silver)
        data = evaluation_set(purchases, cutoff=cutoff)
        users = data.customers
        prior = _matrix(data.prior, np.ones(len(data.prior)), shape)

    with _clock(seconds, "ALS grid"):
        before = ratings(silver, end=cutoff)
        rated = np.zeros(shape[1], dtype=bool)
        rated[before["product"].to_numpy()] = True
        unrated = np.flatnonzero(~rated)  # no factors in Spark's ALS: never recommended
        has_ratings = np.zeros(shape[0], dtype=bool)
        has_ratings[before["customer"].to_numpy()] = True
        known = users[has_ratings[users]]  # Spark's ALS has no factors for the others
        best: tuple[float, dict[str, Ranking], dict[str, float]] | None = None
        for rank, reg, alpha in itertools.product(cfg.ranks, cfg.reg_params, cfg.alphas):
            params = {"rank": rank, "reg_param": reg, "alpha": alpha}
            model = fit_als(before, params, shape=shape, cfg=cfg, threads=threads, seed=seed)
            found = measure(_als_lists(model, known, prior, unrated, k=k))
            # The first of equal points, as retailml's max.
            if best is None or found[tuned_mode].ndcg > best[0]:
                best = (found[tuned_mode].ndcg, found, params)
        assert best is not None  # the grid has at least one point
        metrics["als"], als_params = best[1], best[2]

    with _clock(seconds, "repeat"):
        mine = purchases[purchases["customer"].isin(users)]
        by_half_life = {}
        for half_life in cfg.repeat_half_lives:
            scores = repeat_scores(mine, end=cutoff, half_life=half_life)
            by_half_life[half_life] = (scores, measure({ALL: top_k(scores, k=k)}))
        half_life = max(cfg.repeat_half_lives, key=lambda h: by_half_life[h][1][ALL].ndcg)
        weights, found = by_half_life[half_life]
        # Without what was bought, a customer's own products leave nothing.
        metrics["repeat"] = {**found, NEW: measure({NEW: top_k(weights.iloc[:0], k=k)})[NEW]}

    with _clock(seconds, "item-kNN"):
        per_pair = recent_products(
            purchases,
            end=cutoff,
            lookback_days=cfg.knn_lookback_days,
            recent=cfg.knn_recent_products,
        )
        # Scored from the customers' decayed products, as retailml's item_knn.
        weighted = _matrix(weights, weights["score"].to_numpy(), shape)[users]
        # K + 1: a product is its own nearest neighbour, dropped after the fit.
        for name, model, values in (
            ("bm25_knn", BM25Recommender(K=cfg.knn_neighbours + 1, num_threads=threads),
             per_pair["days"].to_numpy()),
            ("cosine_knn", CosineRecommender(K=cfg.knn_neighbours + 1, num_threads=threads),
             np.ones(len(per_pair))),
        ):  # fmt: skip
            model.fit(_matrix(per_pair, values, shape), show_progress=False)
            _without_self(model)
            lists = {}
            for mode in (ALL, NEW):
                ids, scores = model.recommend(
                    users, weighted, N=k, filter_already_liked_items=mode == NEW
                )
                lists[mode] = _long(users, ids, scores, positive=True)
            metrics[name] = measure(lists)

    with _clock(seconds, "popular"):
        lines = silver.lines
        every = lines.loc[
            lines["is_product"] & ~lines["is_return"],
            ["customer", "product", "day", "country", "invoice"],
        ]
        ranking = popularity(
            every, silver, end=cutoff, days=cfg.popular_days, min_country_products=k
        )
        country_of = customer_countries(silver)
        metrics["popular"] = measure(
            {
                mode: popular_lists(
                    users,
                    country_of,
                    ranking,
                    k=k,
                    exclude=data.prior if mode == NEW else None,
                    products=shape[1],
                )
                for mode in (ALL, NEW)
            }
        )

    with _clock(seconds, "serve"):
        served_rows, served_customers = _serve(
            silver,
            every,
            country_of,
            purchases=purchases,
            as_of=as_of,
            params=als_params,
            cfg=cfg,
            threads=threads,
            seed=seed,
        )
    return Recommendations(
        as_of=EPOCH + timedelta(as_of),
        eval_cutoff=EPOCH + timedelta(cutoff),
        eval_customers=len(users),
        metrics=metrics,
        als_params=als_params,
        half_life=half_life,
        served_rows=served_rows,
        served_customers=served_customers,
        seconds=seconds,
    )


def als_regularization(reg_param: float, rated: pd.DataFrame) -> float:
    """implicit's regularisation for Spark's ``regParam``: Spark's ALS-WR multiplies it by each
    customer's (and product's) number of ratings, implicit uses one value for all, so the value
    is multiplied by the mean number of ratings per customer of ``rated``."""
    per_customer = len(rated) / max(rated["customer"].nunique(), 1)
    return reg_param * per_customer


def fit_als(
    rated: pd.DataFrame,
    params: dict[str, float],
    *,
    shape: tuple[int, int],
    cfg: RecommendSettings,
    threads: int,
    seed: int,
) -> Any:
    """implicit's ALS on :func:`ratings` with Spark's confidence ``1 + alpha × rating``
    (implicit's own ``alpha`` multiplies the values it is given, so it stays 1)."""
    from implicit.als import AlternatingLeastSquares

    model = AlternatingLeastSquares(
        factors=int(params["rank"]),
        regularization=als_regularization(params["reg_param"], rated),
        alpha=1.0,
        iterations=cfg.max_iter,
        num_threads=threads,
        random_state=seed,
    )
    confidence = 1 + params["alpha"] * rated["rating"].to_numpy()
    model.fit(_matrix(rated, confidence, shape), show_progress=False)
    return model


def recent_products(
    purchases: pd.DataFrame, *, end: int, lookback_days: int, recent: int
) -> pd.DataFrame:
    """The co-purchase input of ``generators.item_neighbours``: each customer's ``recent`` most
    recently bought products (product id on ties) in ``[end - lookback_days, end)``, with the
    number of days they bought each.

    Returns:
        ``customer, product, days``.
    """
    window = purchases[(purchases["day"] < end) & (purchases["day"] >= end - lookback_days)]
    per_pair = (
        window[["customer", "product", "day"]]
        .drop_duplicates()
        .groupby(["customer", "product"])["day"]
        .agg(days="size", last="max")
        .reset_index()
        .sort_values(["customer", "last", "product"], ascending=[True, False, True])
    )
    newest = per_pair.groupby("customer").cumcount() < recent
    return per_pair.loc[newest, ["customer", "product", "days"]].reset_index(drop=True)


def _als_lists(
    model: Any, users: np.ndarray, prior: Any, unrated: np.ndarray, *, k: int
) -> dict[str, pd.DataFrame]:
    """An ALS model's top k for ``users`` in both modes (``new``: without their earlier
    products)."""
    lists = {}
    for mode in (ALL, NEW):
        ids, scores = model.recommend(
            users,
            prior[users],
            N=k,
            filter_already_liked_items=mode == NEW,
            filter_items=unrated if len(unrated) else None,
        )
        lists[mode] = _long(users, ids, scores, positive=False)
    return lists


def _without_self(model: Any) -> None:
    """Drop each product's similarity to itself (retailml's item-kNN has no self pairs)."""
    from implicit._nearest_neighbours import NearestNeighboursScorer

    similarity = model.similarity.tocoo()
    other = similarity.row != similarity.col
    model.similarity = type(model.similarity)(
        (similarity.data[other], (similarity.row[other], similarity.col[other])),
        shape=similarity.shape,
    ).tocsr()
    model.scorer = NearestNeighboursScorer(model.similarity)


def _serve(
    silver: Silver,
    every: pd.DataFrame,
    country_of: np.ndarray,
    *,
    purchases: pd.DataFrame,
    as_of: int,
    params: dict[str, float],
    cfg: RecommendSettings,
    threads: int,
    seed: int,
) -> tuple[int, int]:
    """ALS with the tuned point fitted on all history, and both lists of ``k`` for every known
    customer: ALS's (never-bought only on the second), popular products for customers without
    factors. Returns the rows and customers served."""
    shape = (len(silver.customers), len(silver.products))
    history = ratings(silver, end=as_of + 1)
    model = fit_als(history, params, shape=shape, cfg=cfg, threads=threads, seed=seed)
    bought = purchases[["customer", "product"]].drop_duplicates()
    seen = _matrix(bought, np.ones(len(bought)), shape)
    everyone = np.arange(shape[0])
    scored = np.unique(history["customer"].to_numpy())
    rated = np.zeros(shape[1], dtype=bool)
    rated[history["product"].to_numpy()] = True
    lists = _als_lists(model, scored, seen, np.flatnonzero(~rated), k=cfg.k)
    rest = everyone[~np.isin(everyone, scored)]
    ranking = popularity(
        every, silver, end=as_of, days=cfg.popular_days, min_country_products=cfg.k
    )
    fill = [
        popular_lists(
            rest, country_of, ranking, k=cfg.k, exclude=bought if mode == NEW else None,
            products=shape[1],
        )
        for mode in (ALL, NEW)
    ]  # fmt: skip
    rows = sum(len(df) for df in lists.values()) + sum(len(df) for df in fill)
    return rows, shape[0]


# --- the whole comparison -------------------------------------------------------------------


@dataclass
class SingleNodeResult:
    """Timings and quality of one single-node run.

    Attributes:
        seconds: Phase → seconds (``load``, ``features``, ``train``, ``recommend``).
        total_seconds: All four, from reading the first file to the last served list.
        roc_auc: LightGBM's ROC-AUC on the held-out cutoff.
        ndcg: Recommender → mode → NDCG@k on the evaluation window.
        recommend_seconds: The recommend phase's steps.
    """

    data: str
    threads: int
    k: int
    source_lines: int
    quarantined: int
    duplicates: int
    transactions: int
    seconds: dict[str, float]
    total_seconds: float
    cutoffs: dict[str, list[str]]
    feature_rows: dict[str, int]
    train_rows: int
    holdout_rows: int
    holdout_rate: float
    roc_auc: float
    tuning_roc_auc: float
    lightgbm_params: dict[str, float]
    eval_cutoff: str
    as_of: str
    eval_customers: int
    ndcg: dict[str, dict[str, float]]
    users: dict[str, dict[str, int]]
    als_params: dict[str, float]
    half_life: float
    served_rows: int
    served_customers: int
    recommend_seconds: dict[str, float]
    python_peak_mb: float

    def summary(self) -> list[str]:
        """Lines for a terminal."""
        phases = ", ".join(f"{name} {s:.1f} s" for name, s in self.seconds.items())
        steps = ", ".join(f"{name} {s:.1f} s" for name, s in self.recommend_seconds.items())
        lines = [
            f"single node ({self.threads} thread(s)) on {self.data}: {self.total_seconds:.1f} s "
            f"({phases}); Python peak {self.python_peak_mb:,.0f} MB",
            f"  {self.source_lines:,} lines, {self.quarantined:,} quarantined, "
            f"{self.duplicates:,} duplicates, {self.transactions:,} transactions",
            f"  propensity: {self.train_rows:,} training rows, {self.holdout_rows:,} held-out "
            f"(rate {self.holdout_rate:.1%}); LightGBM {self.lightgbm_params} held-out ROC-AUC "
            f"{self.roc_auc:.4f} (tuning {self.tuning_roc_auc:.4f})",
            f"  recommend: evaluated {self.eval_customers:,} customers on {self.eval_cutoff} .. "
            f"{self.as_of} (exclusive); ALS {self.als_params}, repeat half-life "
            f"{self.half_life:g} d; served {self.served_rows:,} rows to "
            f"{self.served_customers:,} customers; {steps}",
            f"  {'model':<11} {f'NDCG@{self.k} all':>11} {f'NDCG@{self.k} new':>11}",
        ]
        lines += [
            f"  {model:<11} {modes[ALL]:>11.4f} {modes[NEW]:>11.4f}"
            for model, modes in self.ndcg.items()
        ]
        return lines


def run(data: Path, *, threads: int = 1, seed: int = SEED) -> SingleNodeResult:
    """The whole single-node pipeline on the CSV files in ``data``, timed per phase.

    Args:
        data: The folder of source CSV files (``benchmarks/data/<size>/transactions``).
        threads: Threads for LightGBM and implicit (numpy's BLAS stays at one: implicit's
            advice, since its own threads already use the cores).
        seed: Every random choice's seed.
    """
    # Imported before the BLAS limit, which applies to the libraries loaded when it is set
    # (scipy and implicit bring their own OpenBLAS).
    import implicit.als
    import implicit.nearest_neighbours  # noqa: F401
    import lightgbm  # noqa: F401
    import sklearn.metrics  # noqa: F401
    from implicit.utils import ParameterWarning
    from threadpoolctl import threadpool_limits

    features_cfg, train_cfg, recommend_cfg = FeatureSettings(), TrainSettings(), RecommendSettings()
    seconds: dict[str, float] = {}
    with threadpool_limits(limits=1, user_api="blas"), warnings.catch_warnings():
        # implicit's BM25 and cosine models hand themselves COO matrices and say so.
        warnings.simplefilter("ignore", ParameterWarning)
        started = time.perf_counter()
        with _clock(seconds, "load"):
            silver = load(data)
        with _clock(seconds, "features"):
            features, cutoffs = build_features(silver, cfg=features_cfg)
        with _clock(seconds, "train"):
            propensity = train_propensity(features, cfg=train_cfg, threads=threads, seed=seed)
        with _clock(seconds, "recommend"):
            recs = recommend(silver, cfg=recommend_cfg, threads=threads, seed=seed)
        total = time.perf_counter() - started
    return SingleNodeResult(
        data=str(data),
        threads=threads,
        k=recommend_cfg.k,
        source_lines=silver.source_lines,
        quarantined=silver.quarantined,
        duplicates=silver.duplicates,
        transactions=len(silver.lines),
        seconds={name: round(s, 3) for name, s in seconds.items()},
        total_seconds=round(total, 3),
        cutoffs={split: [d.isoformat() for d in dates] for split, dates in cutoffs.items()},
        feature_rows={s: int(n) for s, n in features["split"].value_counts().items()},
        train_rows=propensity.train_rows,
        holdout_rows=propensity.holdout_rows,
        holdout_rate=round(propensity.holdout_rate, 4),
        roc_auc=round(propensity.roc_auc, 4),
        tuning_roc_auc=round(propensity.tuning_roc_auc, 4),
        lightgbm_params=propensity.params,
        eval_cutoff=recs.eval_cutoff.isoformat(),
        as_of=recs.as_of.isoformat(),
        eval_customers=recs.eval_customers,
        ndcg={
            m: {mode: round(r.ndcg, 4) for mode, r in v.items()} for m, v in recs.metrics.items()
        },
        users={m: {mode: r.users for mode, r in v.items()} for m, v in recs.metrics.items()},
        als_params=recs.als_params,
        half_life=recs.half_life,
        served_rows=recs.served_rows,
        served_customers=recs.served_customers,
        recommend_seconds={name: round(s, 3) for name, s in recs.seconds.items()},
        python_peak_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--size", default="S", help="A benchmark size (S, M, L); default S.")
    where.add_argument("--data", type=Path, help="A folder of CSV files instead.")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="Threads for LightGBM and implicit; 0: all cores (1 on a machine that is busy).",
    )
    parser.add_argument("--json", type=Path, help="Also write the result as JSON to this file.")
    args = parser.parse_args(argv)
    if args.data is not None:
        data = args.data
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from bench import SIZES, ensure_data

        if args.size not in SIZES:
            parser.error(f"--size: one of {', '.join(SIZES)}")
        data = ensure_data(args.size, SIZES[args.size])[0]
    threads = args.threads or os.cpu_count() or 1
    result = run(data, threads=threads)
    for line in result.summary():
        print(line)
    if args.json:
        args.json.write_text(json.dumps(asdict(result), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
