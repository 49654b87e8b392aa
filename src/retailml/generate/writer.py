"""The transaction stream: one day at a time, drawn with numpy, written as monthly CSV files.

Only the world (O(customers + products)), the current day and the returns still to come are
held in memory, so the size of the output is bounded by disk, not RAM.
"""

from __future__ import annotations

import csv
import heapq
import io
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import TextIO

import numpy as np

from retailml.generate.world import (
    COUNTRY_NAMES,
    COUNTRY_PROBS,
    MAX_PRICE_CENTS,
    World,
    sample_by_taste,
)

HEADER = (
    "Invoice",
    "StockCode",
    "Description",
    "Quantity",
    "InvoiceDate",
    "Price",
    "Customer ID",
    "Country",
)
FILE_PATTERN = "online_retail_*.csv"
FIRST_INVOICE = 489434  # the first invoice number of UCI Online Retail II

MEAN_LINES = 6.0  # geometric lines per basket, before dropping repeated products
# The line modes: favourites, taste-weighted category, global popularity (shares: the profile).
FAVOURITE, TASTE, GLOBAL = 0, 1, 2

QTY_VALUES = np.array([1, 2, 3, 4, 5, 6, 8, 10, 12])
QTY_CUM = np.cumsum([0.25, 0.18, 0.10, 0.10, 0.04, 0.12, 0.05, 0.04, 0.12])
BULK_VALUES = np.array([24, 36, 48, 72, 96, 144, 288])
BULK_P, BULK_P_CHEAP, CHEAP_CENTS = 0.03, 0.10, 100
BULK_DISCOUNT = 0.85  # wholesale buyers get a lower unit price
PRICE_VARY_P, PRICE_VARY_LOW, PRICE_VARY_HIGH = 0.08, 0.85, 1.10
MAX_LINE_CENTS = int(MAX_PRICE_CENTS * PRICE_VARY_HIGH) + 1

OPEN_MINUTE, CLOSE_MINUTE = 7 * 60, 20 * 60
HOURS_BETA = (2.2, 2.8)  # peak a little after noon

MAX_RETURN_DELAY = 30
PARTIAL_RETURN_P = 0.3

# Lines that are not merchandise, as the UCI data has them (stock code, description):
# postage on most invoices sent abroad, dotcom postage on web orders, and now and then a
# manual line, a discount (a cancellation invoice of its own), bank charges and a bad-debt
# adjustment (an "A" invoice without a customer).
POSTAGE = ("POST", "POSTAGE")
DOTCOM_POSTAGE = ("DOT", "DOTCOM POSTAGE")
MANUAL = ("M", "Manual")
DISCOUNT = ("D", "Discount")
BANK_CHARGES = ("BANK CHARGES", "Bank Charges")
BAD_DEBT = ("B", "Adjust bad debt")
POSTAGE_ABROAD_P = 0.85  # of purchase invoices of customers outside the home country
POSTAGE_CENTS = 1800  # per parcel
DOTCOM_P = 0.5  # of the guests' home-country invoices
MANUAL_P = 0.003  # of purchase invoices
# Expected invoices of their own per day.
DISCOUNTS_PER_DAY, BANK_CHARGES_PER_DAY, BAD_DEBTS_PER_DAY = 0.15, 0.03, 0.005

BAD_DATES = ("2010-13-45 25:61:00", "not a date")
CORRUPTIONS = 6  # two bad dates, bad quantity, negative price, missing StockCode, truncated


@dataclass(frozen=True)
class StreamCounts:
    """What :func:`write_transactions` wrote."""

    files: tuple[Path, ...]
    lines: int
    malformed_lines: int
    invoices: int
    service_lines: int


@dataclass(frozen=True, eq=False)
class _Lines:
    """Lines of one day (or returns due on one day), with their invoices.

    Line arrays: ``invoice`` (index into the invoice arrays), ``product``, ``quantity`` (signed),
    ``cents``. Invoice arrays: ``customer`` (-1 for guests), ``country``, ``minute`` of the day.
    """

    invoice: np.ndarray
    product: np.ndarray
    quantity: np.ndarray
    cents: np.ndarray
    customer: np.ndarray
    country: np.ndarray
    minute: np.ndarray

    @property
    def invoices(self) -> int:
        return len(self.minute)


def _concat(parts: list[_Lines]) -> _Lines:
    offsets = np.cumsum([0, *(p.invoices for p in parts)])[:-1]
    return _Lines(
        invoice=np.concatenate([p.invoice + o for p, o in zip(parts, offsets, strict=True)]),
        product=np.concatenate([p.product for p in parts]),
        quantity=np.concatenate([p.quantity for p in parts]),
        cents=np.concatenate([p.cents for p in parts]),
        customer=np.concatenate([p.customer for p in parts]),
        country=np.concatenate([p.country for p in parts]),
        minute=np.concatenate([p.minute for p in parts]),
    )


def _empty_lines() -> _Lines:
    empty = np.zeros(0, dtype=np.int64)
    return _Lines(empty, empty, empty, empty, empty, empty, empty)


class _Stream:
    """Draws the purchases of each day and keeps the returns that are still to come."""

    def __init__(
        self,
        world: World,
        rng: np.random.Generator,
        *,
        guest_fraction: float,
        return_fraction: float,
    ) -> None:
        self.world = world
        self.rng = rng
        # Guests come on top of the customers' baskets, so they make up guest_fraction of all.
        self.guest_ratio = guest_fraction / (1.0 - guest_fraction)
        self.return_fraction = return_fraction
        self.country_cum = np.cumsum(COUNTRY_PROBS)
        profile = world.profile
        self.mode_cum = np.array(
            [profile.favourite_share, profile.favourite_share + profile.taste_share]
        )
        self.pending: dict[int, list[_Lines]] = {}

    def _minutes(self, n: int) -> np.ndarray:
        # A beta over opening hours: busiest around midday, nothing piled up at the edges.
        share = self.rng.beta(*HOURS_BETA, n)
        return OPEN_MINUTE + np.floor(share * (CLOSE_MINUTE - OPEN_MINUTE)).astype(np.int64)

    def purchases(self, day: int) -> _Lines:
        """Draw the purchase baskets of ``day`` and schedule their returns."""
        world, rng = self.world, self.rng
        pop, cat = world.population, world.catalogue

        active = (pop.signup_day <= day) & (day < pop.churn_day)
        mean = np.where(active, pop.base_rate * world.multiplier[day], 0.0)
        per_customer = rng.poisson(mean)
        guests = rng.poisson(self.guest_ratio * mean.sum())
        basket_customer = np.r_[np.repeat(np.arange(pop.size), per_customer), np.full(guests, -1)]
        baskets = len(basket_customer)
        minute = self._minutes(baskets)
        guest_country = np.searchsorted(self.country_cum, rng.random(baskets), side="right")
        guest_country = np.minimum(guest_country, len(COUNTRY_NAMES) - 1)
        country = np.where(
            basket_customer >= 0, pop.country[np.maximum(basket_customer, 0)], guest_country
        )

        sizes = np.minimum(rng.geometric(1.0 / MEAN_LINES, baskets), cat.size)
        basket = np.repeat(np.arange(baskets), sizes)
        customer = basket_customer[basket]
        n = len(basket)
        mode = np.searchsorted(self.mode_cum, rng.random(n), side="right")
        mode[customer < 0] = GLOBAL  # guests have no taste or favourites on record

        factors = world.category_factors(day)
        product = np.empty(n, dtype=np.int64)
        pick = mode == FAVOURITE
        product[pick] = pop.sample_favourite(customer[pick], rng.random(int(pick.sum())))
        pick = mode == TASTE
        product[pick] = sample_by_taste(rng, cat, pop.taste[customer[pick]] * factors)
        pick = mode == GLOBAL
        cum = np.cumsum(cat.popularity * factors[cat.category])
        drawn = np.searchsorted(cum, rng.random(int(pick.sum())) * cum[-1], side="right")
        product[pick] = np.minimum(drawn, cat.size - 1)

        # A product appears once per basket; later draws of the same product are dropped.
        _, first = np.unique(basket * cat.size + product, return_index=True)
        keep = np.sort(first)
        basket, customer, product = basket[keep], customer[keep], product[keep]
        n = len(keep)

        small = QTY_VALUES[
            np.minimum(np.searchsorted(QTY_CUM, rng.random(n), side="right"), len(QTY_VALUES) - 1)
        ]
        base = cat.base_cents[product]
        bulk = rng.random(n) < np.where(base < CHEAP_CENTS, BULK_P_CHEAP, BULK_P)
        quantity = np.where(bulk, BULK_VALUES[rng.integers(0, len(BULK_VALUES), n)], small)
        vary = rng.random(n) < PRICE_VARY_P
        factor = np.where(vary, rng.uniform(PRICE_VARY_LOW, PRICE_VARY_HIGH, n), 1.0)
        factor = np.where(bulk, factor * BULK_DISCOUNT, factor)
        cents = np.maximum(np.rint(base * factor), 1).astype(np.int64)

        lines = _Lines(basket, product, quantity, cents, basket_customer, country, minute)
        self._schedule_returns(day, lines)
        return lines

    def _schedule_returns(self, day: int, lines: _Lines) -> None:
        rng, n = self.rng, len(lines.invoice)
        # Draw for every line and basket so the stream does not depend on which are returned.
        returned = rng.random(n) < self.return_fraction
        delay = rng.integers(1, MAX_RETURN_DELAY + 1, lines.invoices)
        minute = self._minutes(lines.invoices)
        partial = rng.random(n) < PARTIAL_RETURN_P
        partial_quantity = rng.integers(1, lines.quantity + 1) if n else lines.quantity
        quantity = np.where(partial, partial_quantity, lines.quantity)

        due = day + delay[lines.invoice]
        returned &= (lines.customer[lines.invoice] >= 0) & (due < self.world.days)
        picked = np.flatnonzero(returned)
        for due_day in np.unique(due[picked]).tolist():
            sub = picked[due[picked] == due_day]
            # All lines returned from one basket on one day form one cancellation invoice.
            baskets, invoice = np.unique(lines.invoice[sub], return_inverse=True)
            self.pending.setdefault(due_day, []).append(
                _Lines(
                    invoice=invoice.reshape(-1),
                    product=lines.product[sub],
                    quantity=-quantity[sub],
                    cents=lines.cents[sub],
                    customer=lines.customer[baskets],
                    country=lines.country[baskets],
                    minute=minute[baskets],
                )
            )

    def returns(self, day: int) -> _Lines:
        """The return lines due on ``day`` (forgotten once taken)."""
        parts = self.pending.pop(day, [])
        return _concat(parts) if parts else _empty_lines()


class _Formatter:
    """Turns a day's arrays into CSV rows through lookup tables, not per-field formatting."""

    def __init__(self, world: World) -> None:
        cat, pop = world.catalogue, world.population
        self.stock = np.array(cat.stock_codes, dtype=object)
        self.description = np.array(cat.descriptions, dtype=object)
        # UCI II writes Customer ID as a float; the extra last entry is the guests' empty id.
        self.customer = np.array([f"{i}.0" for i in pop.ids.tolist()] + [""], dtype=object)
        self.guest = pop.size
        self.country = np.array(COUNTRY_NAMES, dtype=object)
        self.max_quantity = int(BULK_VALUES.max())
        self.quantity = np.array(
            [str(q) for q in range(-self.max_quantity, self.max_quantity + 1)], dtype=object
        )
        self.price = np.array([f"{c / 100:.2f}" for c in range(MAX_LINE_CENTS + 1)], dtype=object)
        self.clock = np.array(
            [f"{m // 60:02d}:{m % 60:02d}:00" for m in range(24 * 60)], dtype=object
        )

    def rows(
        self,
        day: date,
        lines: _Lines,
        numbers: np.ndarray,
        is_return: np.ndarray,
    ) -> list[tuple[str, ...]]:
        prefix = day.isoformat() + " "
        invoice_text = np.array(
            [
                ("C" if r else "") + str(n)
                for n, r in zip(numbers.tolist(), is_return.tolist(), strict=True)
            ],
            dtype=object,
        )
        date_text = np.array([prefix + c for c in self.clock[lines.minute].tolist()], dtype=object)
        inv = lines.invoice
        customer = np.where(lines.customer < 0, self.guest, lines.customer)
        columns = (
            invoice_text[inv],
            self.stock[lines.product],
            self.description[lines.product],
            self.quantity[lines.quantity + self.max_quantity],
            date_text[inv],
            self.price[lines.cents],
            self.customer[customer[inv]],
            self.country[lines.country[inv]],
        )
        return list(zip(*(c.tolist() for c in columns), strict=True))


def _invoice_number(row: Sequence[str]) -> int:
    return int(row[0].lstrip("CA"))


def _service_rows(
    rng: np.random.Generator,
    formatter: _Formatter,
    day: date,
    lines: _Lines,
    numbers: np.ndarray,
    is_return: np.ndarray,
    next_number: int,
) -> tuple[list[tuple[str, ...]], int]:
    """The day's lines that are not merchandise (see :data:`POSTAGE` and the rates below it).

    Drawn from their own stream, so the merchandise lines do not depend on them.

    Returns:
        The rows (on the day's invoices, or on invoices of their own numbered from
        ``next_number``), and how many invoices of their own they took.
    """
    n = lines.invoices
    prefix = day.isoformat() + " "
    customer = np.where(lines.customer < 0, formatter.guest, lines.customer)
    draws = rng.random((3, n))

    def row(
        number: str, code: tuple[str, str], quantity: int, cents: int, i: int, minute: int = -1
    ) -> tuple:
        return (
            number,
            *code,
            str(quantity),
            prefix + formatter.clock[lines.minute[i] if minute < 0 else minute],
            f"{cents / 100:.2f}",
            formatter.customer[customer[i]],
            formatter.country[lines.country[i]],
        )

    rows = []
    buying = ~is_return
    abroad = buying & (lines.customer >= 0) & (lines.country != 0)
    parcels = rng.integers(1, 4, n)
    for i in np.flatnonzero(abroad & (draws[0] < POSTAGE_ABROAD_P)).tolist():
        rows.append(row(str(numbers[i]), POSTAGE, int(parcels[i]), POSTAGE_CENTS, i))
    web = buying & (lines.customer < 0) & (lines.country == 0)
    web_cents = rng.integers(100, 4000, n)
    for i in np.flatnonzero(web & (draws[1] < DOTCOM_P)).tolist():
        rows.append(row(str(numbers[i]), DOTCOM_POSTAGE, 1, int(web_cents[i]), i))
    manual_cents = rng.integers(50, 5000, n)
    for i in np.flatnonzero(buying & (draws[2] < MANUAL_P)).tolist():
        rows.append(row(str(numbers[i]), MANUAL, 1, int(manual_cents[i]), i))

    # Invoices of their own: a discount (a cancellation), bank charges, a bad-debt adjustment.
    known = np.flatnonzero(buying & (lines.customer >= 0))
    own = 0
    for code, rate, prefix_letter, sign, low, high in (
        (DISCOUNT, DISCOUNTS_PER_DAY, "C", -1, 500, 6000),
        (BANK_CHARGES, BANK_CHARGES_PER_DAY, "", 1, 1500, 1501),
        (BAD_DEBT, BAD_DEBTS_PER_DAY, "A", 1, 50000, 1200000),
    ):
        count = int(rng.poisson(rate))
        picks = rng.integers(0, max(len(known), 1), count)
        cents = rng.integers(low, high, count)
        for k in range(count if len(known) else 0):
            i = int(known[picks[k]])
            number = f"{prefix_letter}{next_number + own}"
            # Numbered after the day's invoices, so timed at closing: numbers follow the clock.
            line = row(number, code, sign, int(cents[k]), i, minute=CLOSE_MINUTE - 1)
            if code == BAD_DEBT:  # written off against no customer
                line = (*line[:6], "", line[7])
            rows.append(line)
            own += 1
    rows.sort(key=_invoice_number)
    return rows, own


def _corrupt(
    rng: np.random.Generator, rows: list[tuple[str, ...]], fraction: float
) -> tuple[int, dict[int, str]]:
    """Corrupt about ``fraction`` of ``rows`` in place.

    Returns:
        How many rows were corrupted, and the truncated ones (by row index) as raw text.

    Drawn from its own stream, so the clean data do not depend on ``malformed_fraction``.
    """
    hit = np.flatnonzero(rng.random(len(rows)) < fraction)
    kinds = rng.integers(0, CORRUPTIONS, len(hit))
    extra = rng.integers(3, 7, len(hit))
    truncated: dict[int, str] = {}
    for i, kind, k in zip(hit.tolist(), kinds.tolist(), extra.tolist(), strict=True):
        row = list(rows[i])
        if kind in (0, 1):
            row[4] = BAD_DATES[kind]
        elif kind == 2:
            row[3] = f"{row[3]}O" if k % 2 else "abc"  # a letter O typed for a zero
        elif kind == 3:
            row[5] = "-" + row[5]
        elif kind == 4:
            row[1] = ""
        else:
            # Quoted like csv.writer would, so the line is a faithful prefix of the real one.
            buffer = io.StringIO()
            csv.writer(buffer, lineterminator="").writerow(row[:k])
            truncated[i] = buffer.getvalue()
        rows[i] = tuple(row)
    return len(hit), truncated


def _write_rows(
    fh: TextIO,
    writerows: Callable[[Iterable[Sequence[str]]], None],
    rows: list[tuple[str, ...]],
    truncated: dict[int, str],
) -> None:
    # Truncated lines bypass csv.writer, which would otherwise write all the fields it is given.
    start = 0
    for i in sorted(truncated):
        writerows(rows[start:i])
        fh.write(truncated[i] + "\n")
        start = i + 1
    writerows(rows[start:])


def write_transactions(
    world: World,
    directory: Path,
    *,
    rng: np.random.Generator,
    corrupt_rng: np.random.Generator,
    service_rng: np.random.Generator,
    guest_fraction: float,
    return_fraction: float,
    malformed_fraction: float,
) -> StreamCounts:
    """Write the transaction stream as one CSV file per calendar month into ``directory``.

    Existing ``online_retail_*.csv`` files there are removed first so that a shorter run does
    not leave stale months behind.

    Args:
        world: The world to draw from.
        directory: The transactions folder (created if needed).
        rng: The stream's random generator (consumed in day order).
        corrupt_rng: A separate generator for malformed lines.
        service_rng: A separate generator for the lines that are not merchandise.
        guest_fraction: Expected share of invoices without a customer.
        return_fraction: Share of customers' purchase lines returned later.
        malformed_fraction: Share of written lines that are corrupted.

    Returns:
        The files written and what they contain.
    """
    directory.mkdir(parents=True, exist_ok=True)
    for stale in sorted(directory.glob(FILE_PATTERN)):
        stale.unlink()

    stream = _Stream(world, rng, guest_fraction=guest_fraction, return_fraction=return_fraction)
    formatter = _Formatter(world)
    files: list[Path] = []
    lines_written = malformed = invoices = service = 0
    next_number = FIRST_INVOICE
    fh: TextIO | None = None
    month: tuple[int, int] | None = None
    try:
        for t in range(world.days):
            day = world.start_date + timedelta(days=t)
            if (day.year, day.month) != month:
                if fh is not None:
                    fh.close()
                month = (day.year, day.month)
                path = directory / f"online_retail_{day:%Y-%m}.csv"
                fh = path.open("w", encoding="utf-8", newline="")
                writer = csv.writer(fh, lineterminator="\n")
                writer.writerow(HEADER)
                files.append(path)
            assert fh is not None

            purchases = stream.purchases(t)
            returns = stream.returns(t)
            lines = _concat([purchases, returns])
            is_return = np.r_[np.zeros(purchases.invoices, bool), np.ones(returns.invoices, bool)]
            # Invoice numbers follow the clock; ties keep purchase-then-return draw order.
            order = np.lexsort((np.arange(lines.invoices), lines.minute))
            numbers = np.empty(lines.invoices, dtype=np.int64)
            numbers[order] = next_number + np.arange(lines.invoices)
            next_number += lines.invoices
            by_number = np.argsort(numbers[lines.invoice], kind="stable")
            lines = _Lines(
                lines.invoice[by_number],
                lines.product[by_number],
                lines.quantity[by_number],
                lines.cents[by_number],
                lines.customer,
                lines.country,
                lines.minute,
            )

            rows = formatter.rows(day, lines, numbers, is_return)
            extra, own = _service_rows(
                service_rng, formatter, day, lines, numbers, is_return, next_number
            )
            next_number += own
            # Each extra line after its invoice's merchandise (the rows are in invoice order).
            rows = list(heapq.merge(rows, extra, key=_invoice_number))
            corrupted, truncated = _corrupt(corrupt_rng, rows, malformed_fraction)
            _write_rows(fh, writer.writerows, rows, truncated)
            malformed += corrupted
            lines_written += len(rows)
            invoices += lines.invoices + own
            service += len(extra)
    finally:
        if fh is not None:
            fh.close()
    return StreamCounts(tuple(sorted(files)), lines_written, malformed, invoices, service)
