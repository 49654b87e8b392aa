"""The synthetic retail world: product catalogue, customer population, calendar, ground truth.

Everything here is drawn once, before the transaction stream starts, and is small:
O(customers + products). The stream (:mod:`retailml.generate.writer`) only reads it.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np

# ---------------------------------------------------------------------------------------------
# Vocabulary and shop constants
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Category:
    """A product category: its share of the catalogue, typical price and description words."""

    name: str
    share: float
    median_price: float
    adjectives: tuple[str, ...]
    nouns: tuple[str, ...]


COLOURS = (
    "WHITE",
    "RED",
    "PINK",
    "BLUE",
    "GREEN",
    "IVORY",
    "BLACK",
    "CREAM",
    "SILVER",
    "GOLD",
    "PURPLE",
    "ZINC",
)

CATEGORIES = (
    Category(
        "kitchen",
        0.13,
        2.95,
        (
            "RETRO",
            "VINTAGE",
            "PANTRY",
            "REGENCY",
            "ENAMEL",
            "FRENCH",
            "STRAWBERRY",
            "GINGHAM",
            "SPOTTY",
            "FLORAL",
        ),
        (
            "CAKE TIN",
            "MUG",
            "TEA TOWEL",
            "JAM JAR",
            "TEAPOT",
            "CAKE STAND",
            "LUNCH BOX",
            "SUGAR BOWL",
            "BREAD BIN",
            "EGG CUP",
            "MEASURING SPOONS",
            "BAKING CASES",
        ),
    ),
    Category(
        "home decor",
        0.12,
        3.75,
        (
            "HANGING HEART",
            "BAROQUE",
            "SHABBY CHIC",
            "MOROCCAN",
            "ANTIQUE",
            "RUSTIC",
            "ORNATE",
            "GLASS",
            "WOODEN",
            "METAL",
        ),
        (
            "PHOTO FRAME",
            "WALL MIRROR",
            "DOORSTOP",
            "CLOCK",
            "COAT RACK",
            "SIGN",
            "DRAWER KNOB",
            "VASE",
            "TRINKET BOX",
            "WALL ART",
        ),
    ),
    Category(
        "lighting",
        0.09,
        3.25,
        (
            "HANGING",
            "MOROCCAN",
            "GLASS",
            "STAR",
            "HEART",
            "LANTERN STYLE",
            "CHANDELIER",
            "FAIRY",
            "BIRD",
            "FLOWER",
        ),
        (
            "T-LIGHT HOLDER",
            "CANDLE",
            "LANTERN",
            "LIGHT CHAIN",
            "NIGHT LIGHT",
            "TEA LIGHTS",
            "LAMP",
            "CANDLESTICK",
            "STRING LIGHTS",
            "VOTIVE",
        ),
    ),
    Category(
        "garden",
        0.07,
        4.25,
        (
            "ENAMEL",
            "ZINC",
            "RUSTIC",
            "BIRD",
            "BUTTERFLY",
            "FLOWER",
            "COUNTRY",
            "HERB",
            "WIRE",
            "GARDENERS",
        ),
        (
            "WATERING CAN",
            "PLANT POT",
            "BIRD FEEDER",
            "KNEELING PAD",
            "PARASOL",
            "GARDEN MARKER",
            "WINDMILL",
            "HANGING BASKET",
            "TROWEL",
            "SEED TIN",
        ),
    ),
    Category(
        "stationery",
        0.09,
        0.85,
        (
            "VINTAGE",
            "ROSES",
            "PAISLEY",
            "DOLLY GIRL",
            "SPACEBOY",
            "DINOSAUR",
            "RETROSPOT",
            "WOODLAND",
            "ALPHABET",
            "TEATIME",
        ),
        (
            "NOTEBOOK",
            "GIFT WRAP",
            "GREETING CARD",
            "PENCILS",
            "STICKER SHEET",
            "ENVELOPES",
            "ERASER",
            "RULER",
            "WRITING SET",
            "MEMO BOARD",
        ),
    ),
    Category(
        "toys",
        0.08,
        2.10,
        (
            "SPACEBOY",
            "DOLLY GIRL",
            "DINOSAUR",
            "CIRCUS",
            "PIRATE",
            "WOODLAND",
            "TOADSTOOL",
            "ROBOT",
            "JUNGLE",
            "FARMYARD",
        ),
        (
            "SKIPPING ROPE",
            "JIGSAW",
            "SPINNING TOP",
            "TOY CAR",
            "PUPPET",
            "BUILDING BLOCKS",
            "YO-YO",
            "KNITTING KIT",
            "PLAYHOUSE",
            "COLOURING SET",
        ),
    ),
    Category(
        "textiles",
        0.09,
        3.50,
        (
            "PAISLEY",
            "FLORAL",
            "RETROSPOT",
            "GINGHAM",
            "DOILY",
            "PATCHWORK",
            "POLKADOT",
            "TARTAN",
            "LACE",
            "VINTAGE",
        ),
        (
            "CUSHION COVER",
            "APRON",
            "SHOPPING BAG",
            "TOTE BAG",
            "OVEN GLOVE",
            "TABLECLOTH",
            "NAPKINS",
            "HOT WATER BOTTLE",
            "THROW",
            "BUNTING",
        ),
    ),
    Category(
        "christmas",
        0.09,
        1.65,
        (
            "CHRISTMAS",
            "SNOWFLAKE",
            "REINDEER",
            "STAR",
            "ANGEL",
            "GINGERBREAD",
            "FESTIVE",
            "SANTA",
            "ROBIN",
            "HOLLY",
        ),
        (
            "BAUBLE",
            "TREE DECORATION",
            "CRACKERS",
            "WREATH",
            "STOCKING",
            "ADVENT CALENDAR",
            "GIFT TAG",
            "HANGING ORNAMENT",
            "PAPER CHAIN KIT",
            "SNOW GLOBE",
        ),
    ),
    Category(
        "party",
        0.07,
        1.25,
        (
            "PARTY",
            "BIRTHDAY",
            "CARNIVAL",
            "PAPER",
            "RETROSPOT",
            "BUNNY",
            "FAIRY CAKE",
            "POLKADOT",
            "CIRCUS",
            "50'S",
        ),
        (
            "PAPER PLATES",
            "PAPER NAPKINS",
            "BALLOONS",
            "PAPER BUNTING",
            "CUPS",
            "STRAWS",
            "PARTY BAGS",
            "CAKE CASES",
            "BIRTHDAY CANDLES",
            "BANNER",
        ),
    ),
    Category(
        "storage",
        0.07,
        2.45,
        (
            "LARGE",
            "SMALL",
            "JUMBO",
            "WICKER",
            "METAL",
            "RECYCLED",
            "VINTAGE",
            "STACKING",
            "NESTING",
            "HOME",
        ),
        (
            "STORAGE TIN",
            "BASKET",
            "STORAGE BOX",
            "JUMBO BAG",
            "LUNCH BAG",
            "CRATE",
            "HAMPER",
            "STORAGE JAR",
            "BIN",
            "TRUNK",
        ),
    ),
    Category(
        "jewellery",
        0.05,
        1.95,
        (
            "DIAMANTE",
            "CRYSTAL",
            "BEADED",
            "SILVER",
            "GOLD",
            "PEARL",
            "SEQUIN",
            "VELVET",
            "BOHO",
            "FLOWER",
        ),
        (
            "NECKLACE",
            "EARRINGS",
            "HAIR CLIP",
            "BRACELET",
            "BROOCH",
            "HAIR BAND",
            "PURSE",
            "KEYRING",
            "RING",
            "HAIR COMB",
        ),
    ),
    Category(
        "bathroom",
        0.05,
        2.95,
        (
            "SPA",
            "LAVENDER",
            "ROSE",
            "SEASIDE",
            "FRENCH",
            "ENAMEL",
            "CERAMIC",
            "SHELL",
            "BATH",
            "DOVE",
        ),
        (
            "SOAP DISH",
            "TOWEL",
            "TOOTHBRUSH HOLDER",
            "WASH BAG",
            "SOAP",
            "BATH SALTS",
            "MIRROR",
            "SHOWER CAP",
            "LAUNDRY BAG",
            "TOILET ROLL HOLDER",
        ),
    ),
)

# UCI Online Retail II spellings ("EIRE", "RSA"); the shares of the non-UK countries are
# relative and rescaled so that the United Kingdom keeps UK_SHARE.
UK_SHARE = 0.80
OTHER_COUNTRIES = (
    ("Germany", 0.20),
    ("France", 0.17),
    ("EIRE", 0.14),
    ("Netherlands", 0.07),
    ("Spain", 0.06),
    ("Belgium", 0.05),
    ("Switzerland", 0.05),
    ("Portugal", 0.04),
    ("Italy", 0.04),
    ("Norway", 0.03),
    ("Sweden", 0.03),
    ("Denmark", 0.02),
    ("Finland", 0.02),
    ("Austria", 0.02),
    ("Australia", 0.02),
    ("USA", 0.015),
    ("Channel Islands", 0.015),
    ("Japan", 0.01),
    ("RSA", 0.01),
)
COUNTRY_NAMES = ("United Kingdom", *(name for name, _ in OTHER_COUNTRIES))
_other = np.array([share for _, share in OTHER_COUNTRIES])
COUNTRY_PROBS = np.concatenate([[UK_SHARE], (1 - UK_SHARE) * _other / _other.sum()])

# Monday..Sunday, mean 1. UCI II has almost no Saturday trade and a quiet Sunday.
WEEKDAY_FACTORS = np.array([1.20, 1.25, 1.25, 1.40, 1.05, 0.05, 0.80])
# January..December, mean 1: a Q4 run-up peaking in November (December trade stops early).
MONTH_FACTORS = np.array([0.75, 0.75, 0.95, 0.85, 0.95, 0.95, 0.90, 0.90, 1.15, 1.30, 1.60, 0.95])
CLOSED_DAYS = ((12, 24), (12, 25), (12, 26), (12, 31), (1, 1))
# How much more (or less) likely the christmas category is chosen, by month.
CHRISTMAS_FACTORS = np.array([0.3, 0.3, 0.4, 0.5, 0.6, 0.7, 0.9, 1.3, 1.8, 2.3, 2.5, 1.5])
CHRISTMAS = "christmas"

ZIPF_EXPONENT = 1.1
PRICE_SIGMA = 0.55
MAX_PRICE_CENTS = 25_000
MAX_STOCK_CODES = 99_999 - 10_002 + 1  # 5-digit StockCode bases 10002..99999
COMMA_SHARE = 0.04

FIRST_CUSTOMER_ID = 12346  # the smallest Customer ID in UCI Online Retail II
# Ids grow past UCI's five digits for the large benchmark sizes (1M customers).
MAX_CUSTOMERS = 9_999_999 - FIRST_CUSTOMER_ID + 1
MEAN_BASE_RATE = 1 / 20  # baskets per day: one every ~3 weeks on an average calendar day
RATE_SHAPE = 0.7  # gamma shape < 1: most customers are occasional, a few are heavy buyers
MEAN_LIFETIME_DAYS = 880.0  # exponential churn hazard: ~40 % lapse within two years
ALREADY_ACTIVE_SHARE = 1 / 3
TASTE_ALPHA = 0.3
FAVOURITE_CANDIDATES = 24


@dataclass(frozen=True)
class Profile:
    """What kind of shop the world is: how much of a basket is the customer's own favourites.

    Attributes:
        name: ``gift`` or ``grocery``.
        favourite_share: Share of a registered customer's lines drawn from their favourites.
        taste_share: Share drawn by category taste; the rest is the catalogue by popularity.
        favourites_min: Favourites per customer: this many ...
        favourites_mean_extra: ... plus Poisson with this mean.
    """

    name: str
    favourite_share: float
    taste_share: float
    favourites_min: int
    favourites_mean_extra: float

    @property
    def global_share(self) -> float:
        return 1.0 - self.favourite_share - self.taste_share


# A gift shop like the UCI data (a third of lines rebuys), and a grocery (most lines rebuys of
# a customer's staples).
PROFILES = {
    "gift": Profile("gift", 0.30, 0.55, 2, 3.0),
    "grocery": Profile("grocery", 0.70, 0.20, 4, 6.0),
}


# ---------------------------------------------------------------------------------------------
# Data classes
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Catalogue:
    """The products. Arrays are indexed by product index ``0..products-1`` (StockCode order).

    Attributes:
        stock_codes: UCI-style StockCodes ("85123A").
        descriptions: Unique upper-case descriptions; a few contain a comma.
        category: Category index per product (into ``category_names``).
        category_names: The categories in use.
        base_cents: Base price in cents.
        popularity: Zipf-like popularity, sums to 1.
        by_category: Product indices grouped by category (for within-category sampling).
        category_key: ``category + cumulative within-category popularity`` for ``by_category``.
    """

    stock_codes: tuple[str, ...]
    descriptions: tuple[str, ...]
    category: np.ndarray
    category_names: tuple[str, ...]
    base_cents: np.ndarray
    popularity: np.ndarray
    by_category: np.ndarray
    category_key: np.ndarray

    @property
    def size(self) -> int:
        return len(self.stock_codes)

    def sample_in_category(self, category: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Products drawn by popularity within each given category; ``u`` uniform in [0, 1)."""
        pos = np.searchsorted(self.category_key, category + u, side="right")
        return self.by_category[np.minimum(pos, self.size - 1)]


@dataclass(frozen=True, eq=False)
class Population:
    """The registered customers. Arrays are indexed by customer index (Customer ID order).

    Days are counted from the start date; ``signup_day`` may be negative (signed up before the
    window) and ``churn_day`` may be beyond the window (never churns in it). A customer buys on
    day ``d`` only while ``signup_day <= d < churn_day``.

    Attributes:
        ids: 5-digit Customer IDs.
        country: Country index per customer (into ``COUNTRY_NAMES``).
        signup_day: First day the customer can buy.
        churn_day: First day the customer no longer buys.
        base_rate: Expected baskets per day before the calendar multiplier.
        taste: Category weights, shape (customers, categories), rows sum to 1.
        fav_owner: Customer index of each favourite (sorted).
        fav_product: Product index of each favourite.
        fav_weight: Weight of each favourite within its owner's favourites (sums to 1).
        fav_key: ``owner + cumulative weight``, for sampling a favourite per customer.
    """

    ids: np.ndarray
    country: np.ndarray
    signup_day: np.ndarray
    churn_day: np.ndarray
    base_rate: np.ndarray
    taste: np.ndarray
    fav_owner: np.ndarray
    fav_product: np.ndarray
    fav_weight: np.ndarray
    fav_key: np.ndarray

    @property
    def size(self) -> int:
        return len(self.ids)

    def sample_favourite(self, customer: np.ndarray, u: np.ndarray) -> np.ndarray:
        """One favourite product per given customer, by favourite weight; ``u`` in [0, 1)."""
        pos = np.searchsorted(self.fav_key, customer + u, side="right")
        return self.fav_product[np.minimum(pos, len(self.fav_product) - 1)]


@dataclass(frozen=True, eq=False)
class World:
    """Everything the transaction stream is drawn from, and what the ground truth records.

    Attributes:
        start_date: The first day.
        days: Number of days.
        catalogue: The products.
        population: The customers.
        multiplier: Calendar multiplier per day (weekly × seasonal, 0 on closed days).
        christmas_factor: Weight of the christmas category per day, relative to its taste weight.
        profile: The kind of shop (how baskets mix favourites, taste and popularity).
    """

    start_date: date
    days: int
    catalogue: Catalogue
    population: Population
    multiplier: np.ndarray
    christmas_factor: np.ndarray
    profile: Profile = PROFILES["gift"]

    def category_factors(self, day: int) -> np.ndarray:
        """Per-category weight multipliers on ``day`` (1 except for the christmas category)."""
        factors = np.ones(len(self.catalogue.category_names))
        if CHRISTMAS in self.catalogue.category_names:
            factors[self.catalogue.category_names.index(CHRISTMAS)] = self.christmas_factor[day]
        return factors


# ---------------------------------------------------------------------------------------------
# Building the world
# ---------------------------------------------------------------------------------------------


def group_keys(group: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``group + cumulative normalised weight within the group`` for rows sorted by group.

    ``searchsorted(keys, g + u, side="right")`` with ``u`` in [0, 1) then lands on a row of
    group ``g`` with probability proportional to its weight, for many groups at once. The last
    key of each group is set to exactly ``g + 1`` so rounding can never spill into the next.
    """
    cum = np.cumsum(weights)
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    ends = np.r_[starts[1:], len(group)] - 1
    before = np.r_[0.0, cum][starts]
    totals = cum[ends] - before
    size = np.diff(np.r_[starts, len(group)])
    within = (cum - np.repeat(before, size)) / np.repeat(totals, size)
    within[ends] = 1.0
    return group + within


def build_calendar(start_date: date, days: int) -> tuple[np.ndarray, np.ndarray]:
    """The calendar multiplier and the christmas category factor for each day."""
    dates = [start_date + timedelta(days=d) for d in range(days)]
    weekday = np.array([d.weekday() for d in dates])
    month = np.array([d.month for d in dates]) - 1
    closed = np.array([(d.month, d.day) in CLOSED_DAYS for d in dates])
    multiplier = np.where(closed, 0.0, WEEKDAY_FACTORS[weekday] * MONTH_FACTORS[month])
    return multiplier, CHRISTMAS_FACTORS[month]


def _descriptions(rng: np.random.Generator, category: Category, count: int) -> list[str]:
    # Every (optional colour, adjective, noun) combination whose words do not repeat is a
    # candidate ("IVORY BATH BATH SALTS" is not); sampling them without replacement keeps the
    # descriptions unique within the category.
    candidates = []
    for colour in ("", *COLOURS):
        for adjective in category.adjectives:
            for noun in category.nouns:
                words = [colour, adjective, noun]
                text = " ".join(w for w in words if w)
                if len(set(text.split())) == len(text.split()) and adjective not in COLOURS:
                    candidates.append(text)
    picks = rng.permutation(len(candidates))
    # A catalogue larger than the vocabulary reuses it with a design number.
    return [
        candidates[picks[i % len(picks)]]
        + (f" DESIGN {i // len(picks) + 1}" if i >= len(picks) else "")
        for i in range(count)
    ]


def build_catalogue(rng: np.random.Generator, products: int) -> Catalogue:
    """Draw the product catalogue (see :class:`Catalogue`)."""
    categories = CATEGORIES[: min(len(CATEGORIES), products)]
    shares = np.array([c.share for c in categories])
    # One product per category first so every category in use is non-empty.
    counts = 1 + rng.multinomial(products - len(categories), shares / shares.sum())

    names: list[str] = []
    cat_index: list[int] = []
    cents: list[np.ndarray] = []
    for k, (spec, count) in enumerate(zip(categories, counts, strict=True)):
        names.extend(_descriptions(rng, spec, int(count)))
        cat_index.extend([k] * int(count))
        price = spec.median_price * rng.lognormal(0.0, PRICE_SIGMA, size=int(count))
        # Shop prices end in 0 or 5 pence (2.95, 0.85, 12.75).
        cents.append(np.clip(np.rint(price * 20) * 5, 5, MAX_PRICE_CENTS).astype(np.int64))

    # Descriptions are unique within a category; the same words can meet across categories.
    seen: set[str] = set()
    for i, text in enumerate(names):
        unique, n = text, 1
        while unique in seen:
            n += 1
            unique = f"{text} {n}"
        seen.add(unique)
        names[i] = unique

    # "SET OF 3, ..." as in the real data: these need CSV quoting downstream.
    n_comma = max(1, round(COMMA_SHARE * products))
    for i in rng.choice(products, size=n_comma, replace=False):
        names[i] = f"SET OF {int(rng.integers(2, 7))}, {names[i]}"

    bases = 10_002 + rng.choice(MAX_STOCK_CODES, size=products, replace=False)
    letters = np.array(list("ABCDEFG"))
    suffix = np.where(rng.random(products) < 0.12, letters[rng.integers(0, 7, products)], "")
    codes = [f"{b}{s}" for b, s in zip(bases.tolist(), suffix.tolist(), strict=True)]

    # Zipf over a random global ranking: skewed across categories and within each one.
    popularity = (1.0 + rng.permutation(products)) ** -ZIPF_EXPONENT
    popularity /= popularity.sum()

    order = np.argsort(bases, kind="stable")
    category = np.array(cat_index, dtype=np.int64)[order]
    popularity = popularity[order]
    by_category = np.argsort(category, kind="stable")
    return Catalogue(
        stock_codes=tuple(codes[i] for i in order),
        descriptions=tuple(names[i] for i in order),
        category=category,
        category_names=tuple(c.name for c in categories),
        base_cents=np.concatenate(cents)[order],
        popularity=popularity,
        by_category=by_category,
        category_key=group_keys(category[by_category], popularity[by_category]),
    )


def sample_by_taste(
    rng: np.random.Generator, catalogue: Catalogue, taste_rows: np.ndarray
) -> np.ndarray:
    """One product per row of ``taste_rows``: a category by taste, then a product by popularity.

    ``taste_rows`` need not be normalised (seasonal factors may be folded in).
    """
    cum = np.cumsum(taste_rows, axis=1)
    u = rng.random(len(taste_rows)) * cum[:, -1]
    category = np.minimum((cum <= u[:, None]).sum(axis=1), taste_rows.shape[1] - 1)
    return catalogue.sample_in_category(category, rng.random(len(taste_rows)))


def _favourites(
    rng: np.random.Generator, catalogue: Catalogue, taste: np.ndarray, profile: Profile
) -> tuple[np.ndarray, np.ndarray]:
    """Favourite products per customer: the first few distinct taste-driven draws."""
    customers = len(taste)
    wanted = np.minimum(
        profile.favourites_min + rng.poisson(profile.favourites_mean_extra, customers),
        catalogue.size,
    )
    # In chunks: one row of category weights per candidate would be large for many customers.
    candidates = np.concatenate(
        [
            sample_by_taste(
                rng, catalogue, np.repeat(taste[lo : lo + 4096], FAVOURITE_CANDIDATES, axis=0)
            )
            for lo in range(0, customers, 4096)
        ]
    ).reshape(customers, FAVOURITE_CANDIDATES)
    # Keep the first occurrence of each product in draw order, up to `wanted` per customer.
    order = np.argsort(candidates, axis=1, kind="stable")
    ranked = np.take_along_axis(candidates, order, axis=1)
    first_sorted = np.ones_like(ranked, dtype=bool)
    first_sorted[:, 1:] = ranked[:, 1:] != ranked[:, :-1]
    first = np.empty_like(first_sorted)
    np.put_along_axis(first, order, first_sorted, axis=1)
    keep = first & (np.cumsum(first, axis=1) <= wanted[:, None])
    owner, slot = np.nonzero(keep)
    return owner, candidates[owner, slot]


def build_population(
    rng: np.random.Generator,
    catalogue: Catalogue,
    customers: int,
    days: int,
    profile: Profile = PROFILES["gift"],
) -> Population:
    """Draw the customer population (see :class:`Population`)."""
    span = min(max(3 * customers, 6000), MAX_CUSTOMERS)
    ids = FIRST_CUSTOMER_ID + np.sort(rng.choice(span, size=customers, replace=False))
    country = rng.choice(len(COUNTRY_NAMES), size=customers, p=COUNTRY_PROBS)

    already = rng.random(customers) < ALREADY_ACTIVE_SHARE
    signup = np.where(already, -rng.integers(1, 366, customers), rng.integers(0, days, customers))
    lifetime = np.ceil(rng.exponential(MEAN_LIFETIME_DAYS, customers)).astype(np.int64)
    churn = np.maximum(signup, 0) + np.maximum(lifetime, 1)

    base_rate = rng.gamma(RATE_SHAPE, MEAN_BASE_RATE / RATE_SHAPE, customers)
    taste = rng.dirichlet(np.full(len(catalogue.category_names), TASTE_ALPHA), customers)
    # A sparse Dirichlet can underflow to exact zeros; a floor keeps every category reachable.
    taste = np.maximum(taste, 1e-12)
    taste /= taste.sum(axis=1, keepdims=True)

    fav_owner, fav_product = _favourites(rng, catalogue, taste, profile)
    raw = rng.gamma(1.0, 1.0, len(fav_owner))
    fav_weight = raw / np.bincount(fav_owner, weights=raw, minlength=customers)[fav_owner]
    return Population(
        ids=ids,
        country=country,
        signup_day=signup.astype(np.int64),
        churn_day=churn.astype(np.int64),
        base_rate=base_rate,
        taste=taste,
        fav_owner=fav_owner,
        fav_product=fav_product,
        fav_weight=fav_weight,
        fav_key=group_keys(fav_owner, fav_weight),
    )


def build_world(
    rng: np.random.Generator,
    *,
    customers: int,
    products: int,
    start_date: date,
    days: int,
    profile: Profile = PROFILES["gift"],
) -> World:
    """Draw the whole world from ``rng`` in a fixed order."""
    catalogue = build_catalogue(rng, products)
    population = build_population(rng, catalogue, customers, days, profile)
    multiplier, christmas = build_calendar(start_date, days)
    return World(start_date, days, catalogue, population, multiplier, christmas, profile)


# ---------------------------------------------------------------------------------------------
# Ground truth
# ---------------------------------------------------------------------------------------------

README = """\
Ground truth of the synthetic retail world. The pipeline never reads these files as input;
they are here to check what models recover.

customers.csv   customer_id, country, signup_date, churn_date, base_rate_per_day
                customer_id is the 5-digit id (the transactions write it as "13085.0").
                churn_date is empty when the customer does not churn within the window.
                signup_date may lie before the window (customers already active at its start).
taste.csv       customer_id, category, weight: category preferences, summing to 1 per customer.
products.csv    product_id (StockCode), description, category, base_price, popularity
                (popularity sums to 1; weight proportional to rank^-1.1).
calendar.csv    date, multiplier (weekday factor x month factor, 0 on closed days),
                christmas_factor (how much more likely the christmas category is that day).
favourites.csv  customer_id, product_id, weight: products a customer buys repeatedly
                (weights sum to 1 per customer).

Basket rate. A registered customer's number of invoices on day d is Poisson with mean
    base_rate_per_day * multiplier(d)   while signup_date <= d < churn_date, else 0.
Guest invoices (empty Customer ID) come on top: Poisson with mean
    guest_fraction / (1 - guest_fraction) * (sum of the customers' means that day).

Basket contents. Lines per basket: geometric with mean 6 (distinct products; duplicates
drawn within a basket are dropped). Each line's product is drawn from
    {favourite:>3.0f} %  the customer's favourites, by favourite weight;
    {taste:>3.0f} %  a category by taste (christmas weighted by christmas_factor), then a product
          of that category by popularity;
    {popular:>3.0f} %  the whole catalogue by popularity (christmas products weighted by
          christmas_factor).
(The "{profile}" shop profile; profile.json has these shares.)
Guest lines always use the last rule.

Returns. A share return_fraction of registered customers' purchase lines is cancelled 1-30
days later (Invoice "C" + number, negative quantity, same StockCode and price); returns that
would fall after the last day are dropped.
"""


def _write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def write_ground_truth(world: World, directory: Path) -> None:
    """Write the ground-truth files and README.txt into ``directory`` (created if needed)."""
    directory.mkdir(parents=True, exist_ok=True)
    cat, pop = world.catalogue, world.population
    ids = pop.ids.tolist()

    def day_text(day: int) -> str:
        return (world.start_date + timedelta(days=day)).isoformat()

    _write_csv(
        directory / "customers.csv",
        ("customer_id", "country", "signup_date", "churn_date", "base_rate_per_day"),
        (
            (
                cid,
                COUNTRY_NAMES[c],
                day_text(s),
                day_text(ch) if ch < world.days else "",
                f"{r:.6g}",
            )
            for cid, c, s, ch, r in zip(
                ids,
                pop.country.tolist(),
                pop.signup_day.tolist(),
                pop.churn_day.tolist(),
                pop.base_rate.tolist(),
                strict=True,
            )
        ),
    )
    names = cat.category_names
    _write_csv(
        directory / "taste.csv",
        ("customer_id", "category", "weight"),
        (
            (cid, names[k], f"{w:.6g}")
            for cid, row in zip(ids, pop.taste.tolist(), strict=True)
            for k, w in enumerate(row)
        ),
    )
    _write_csv(
        directory / "products.csv",
        ("product_id", "description", "category", "base_price", "popularity"),
        (
            (code, text, names[k], f"{c / 100:.2f}", f"{p:.6g}")
            for code, text, k, c, p in zip(
                cat.stock_codes,
                cat.descriptions,
                cat.category.tolist(),
                cat.base_cents.tolist(),
                cat.popularity.tolist(),
                strict=True,
            )
        ),
    )
    _write_csv(
        directory / "calendar.csv",
        ("date", "multiplier", "christmas_factor"),
        (
            (day_text(d), f"{m:.4f}", f"{x:.2f}")
            for d, (m, x) in enumerate(
                zip(world.multiplier.tolist(), world.christmas_factor.tolist(), strict=True)
            )
        ),
    )
    _write_csv(
        directory / "favourites.csv",
        ("customer_id", "product_id", "weight"),
        (
            (ids[o], cat.stock_codes[p], f"{w:.6g}")
            for o, p, w in zip(
                pop.fav_owner.tolist(),
                pop.fav_product.tolist(),
                pop.fav_weight.tolist(),
                strict=True,
            )
        ),
    )
    profile = world.profile
    shares = {
        "profile": profile.name,
        "favourite": profile.favourite_share,
        "taste": profile.taste_share,
        "popular": profile.global_share,
    }
    (directory / "profile.json").write_text(json.dumps(shares, indent=1), encoding="utf-8")
    text = README.format(
        profile=profile.name,
        favourite=100 * profile.favourite_share,
        taste=100 * profile.taste_share,
        popular=100 * profile.global_share,
    )
    (directory / "README.txt").write_text(text, encoding="utf-8", newline="\n")
