"""The public entry point: :func:`generate` a data set and its ground truth."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np

from retailml.generate.world import (
    MAX_CUSTOMERS,
    MAX_STOCK_CODES,
    build_world,
    write_ground_truth,
)
from retailml.generate.writer import write_transactions


@dataclass(frozen=True)
class GenerateSummary:
    """What :func:`generate` wrote.

    Attributes:
        out_dir: The output folder.
        files: The transaction CSV files, sorted (one per calendar month).
        ground_truth_dir: Where the ground-truth files are.
        lines: Data lines written (excluding headers), malformed ones included.
        malformed_lines: Lines deliberately corrupted.
        invoices: Invoices written, purchases and cancellations.
        customers: Registered customers in the world.
        products: Products in the catalogue.
    """

    out_dir: Path
    files: tuple[Path, ...]
    ground_truth_dir: Path
    lines: int
    malformed_lines: int
    invoices: int
    customers: int
    products: int


def _check(
    *,
    customers: int,
    products: int,
    days: int,
    start_date: date,
    seed: int,
    fractions: dict[str, float],
) -> None:
    if not 1 <= customers <= MAX_CUSTOMERS:
        raise ValueError(f"customers must be between 1 and {MAX_CUSTOMERS}, got {customers}")
    if not 2 <= products <= MAX_STOCK_CODES:
        raise ValueError(f"products must be between 2 and {MAX_STOCK_CODES}, got {products}")
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    if not isinstance(start_date, date):
        raise ValueError(f"start_date must be a date, got {start_date!r}")
    try:
        # Signup dates reach up to a year before the start.
        start_date - timedelta(days=366)
        start_date + timedelta(days=days)
    except OverflowError:
        raise ValueError(f"start_date {start_date} with days={days} leaves the calendar") from None
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    for name, value in fractions.items():
        if not 0 <= value < 1:
            raise ValueError(f"{name} must be in [0, 1), got {value}")


def generate(
    out_dir: Path,
    *,
    customers: int = 2000,
    products: int = 400,
    days: int = 730,
    start_date: date = date(2010, 1, 1),
    seed: int = 42,
    malformed_fraction: float = 0.002,
    guest_fraction: float = 0.05,
    return_fraction: float = 0.02,
    ground_truth_dir: Path | None = None,
) -> GenerateSummary:
    """Generate a synthetic retail data set in the UCI Online Retail II CSV layout.

    Writes ``out_dir/transactions/online_retail_YYYY-MM.csv`` (one file per calendar month,
    header ``Invoice,StockCode,Description,Quantity,InvoiceDate,Price,Customer ID,Country``)
    and the world's ground truth (customers, taste, products, calendar, favourites and a
    README) into ``ground_truth_dir``. The same arguments give byte-identical files. Output is
    streamed day by day, so memory stays O(customers + products) whatever ``days`` is.

    Args:
        out_dir: Output folder (created if needed).
        customers: Registered customers (1 to MAX_CUSTOMERS; 5-digit ids up to ~29k customers).
        products: Products in the catalogue (at least 2).
        days: Days of history from ``start_date``.
        start_date: The first day.
        seed: Random seed (non-negative).
        malformed_fraction: Share of written lines deliberately corrupted (bad date, bad
            quantity, negative price, missing StockCode or a truncated line).
        guest_fraction: Expected share of invoices without a Customer ID.
        return_fraction: Share of customers' purchase lines cancelled 1–30 days later.
        ground_truth_dir: Where the ground truth goes; default ``out_dir/ground_truth``. Must
            not be inside ``out_dir/transactions``.

    Returns:
        What was written.

    Raises:
        ValueError: An argument is out of range; the message names it.
    """
    _check(
        customers=customers,
        products=products,
        days=days,
        start_date=start_date,
        seed=seed,
        fractions={
            "malformed_fraction": malformed_fraction,
            "guest_fraction": guest_fraction,
            "return_fraction": return_fraction,
        },
    )
    out_dir = Path(out_dir)
    transactions_dir = out_dir / "transactions"
    truth_dir = Path(ground_truth_dir) if ground_truth_dir is not None else out_dir / "ground_truth"
    if truth_dir.resolve().is_relative_to(transactions_dir.resolve()):
        raise ValueError(f"ground_truth_dir must not be inside {transactions_dir}: {truth_dir}")

    # Separate child streams: the world does not change with the stream's parameters, and the
    # clean lines do not change with malformed_fraction.
    world_seed, stream_seed, corrupt_seed = np.random.SeedSequence(seed).spawn(3)
    world = build_world(
        np.random.Generator(np.random.PCG64(world_seed)),
        customers=customers,
        products=products,
        start_date=start_date,
        days=days,
    )
    write_ground_truth(world, truth_dir)
    counts = write_transactions(
        world,
        transactions_dir,
        rng=np.random.Generator(np.random.PCG64(stream_seed)),
        corrupt_rng=np.random.Generator(np.random.PCG64(corrupt_seed)),
        guest_fraction=guest_fraction,
        return_fraction=return_fraction,
        malformed_fraction=malformed_fraction,
    )
    return GenerateSummary(
        out_dir=out_dir,
        files=counts.files,
        ground_truth_dir=truth_dir,
        lines=counts.lines,
        malformed_lines=counts.malformed_lines,
        invoices=counts.invoices,
        customers=customers,
        products=products,
    )
