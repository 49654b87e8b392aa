"""The synthetic data generator: layout, determinism, counts and the ground truth it records."""

from __future__ import annotations

import csv
import json
import math
import re
from collections import Counter, defaultdict
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest

from retailml.generate import GenerateSummary, generate

HEADER = [
    "Invoice",
    "StockCode",
    "Description",
    "Quantity",
    "InvoiceDate",
    "Price",
    "Customer ID",
    "Country",
]
START = date(2010, 10, 20)
SIZES = {"customers": 150, "products": 80, "days": 75, "start_date": START}
PRICE = re.compile(r"^\d+\.\d{2}$")


def _rows(summary: GenerateSummary) -> list[list[str]]:
    rows: list[list[str]] = []
    for path in summary.files:
        with path.open(encoding="utf-8", newline="") as fh:
            reader = csv.reader(fh)
            assert next(reader) == HEADER
            rows.extend(reader)
    return rows


def _problem(row: list[str]) -> str | None:
    """Why a data row is not valid, or None."""
    if len(row) != len(HEADER):
        return "fields"
    if not row[1]:
        return "stock code"
    try:
        when = datetime.strptime(row[4], "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return "date"
    if not START <= when.date() < START + timedelta(days=SIZES["days"]):
        return "date range"
    if not re.fullmatch(r"-?\d+", row[3]) or int(row[3]) == 0:
        return "quantity"
    if not PRICE.match(row[5]):
        return "price"
    return None


@pytest.fixture(scope="module")
def noisy(tmp_path_factory: pytest.TempPathFactory) -> GenerateSummary:
    return generate(tmp_path_factory.mktemp("noisy"), **SIZES, malformed_fraction=0.03)


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> GenerateSummary:
    return generate(tmp_path_factory.mktemp("clean"), **SIZES, malformed_fraction=0.0)


def _all_files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_same_seed_gives_the_same_bytes_and_another_seed_does_not(tmp_path: Path) -> None:
    small = {**SIZES, "customers": 60, "days": 40}
    generate(tmp_path / "a", **small, seed=7)
    generate(tmp_path / "b", **small, seed=7)
    generate(tmp_path / "c", **small, seed=8)
    a, b, c = (_all_files(tmp_path / x) for x in "abc")
    assert len(a) > 5
    assert a == b
    assert a.keys() == c.keys()
    november = "transactions/online_retail_2010-11.csv"
    assert a[november] != c[november]


def test_monthly_files_with_the_uci_layout(clean: GenerateSummary) -> None:
    names = [p.name for p in clean.files]
    assert names == [
        "online_retail_2010-10.csv",
        "online_retail_2010-11.csv",
        "online_retail_2010-12.csv",
        "online_retail_2011-01.csv",
    ]
    assert all(p.parent == clean.out_dir / "transactions" for p in clean.files)
    first = clean.files[0].read_bytes()
    assert first.startswith(
        b"Invoice,StockCode,Description,Quantity,InvoiceDate,Price,Customer ID,Country\n"
    )
    assert b"\r" not in first

    rows = _rows(clean)
    assert [r for r in rows if _problem(r)] == []
    assert any("," in r[2] for r in rows), "a quoted description with a comma"
    assert all(re.fullmatch(r"[CA]?\d{6}", r[0]) for r in rows)
    assert all(re.fullmatch(r"\d{5}\.0|", r[6]) for r in rows)
    hours = {int(r[4][11:13]) for r in rows}
    assert min(hours) >= 7 and max(hours) < 20


def test_invoices_are_numbered_in_time_order(clean: GenerateSummary) -> None:
    when: dict[int, str] = {}
    for row in _rows(clean):
        when.setdefault(int(row[0].lstrip("CA")), row[4])
    numbers = sorted(when)
    assert numbers == list(range(489434, 489434 + len(numbers)))
    assert len(numbers) == clean.invoices
    times = [when[n] for n in numbers]
    assert times == sorted(times)


def test_counts_match_the_files(noisy: GenerateSummary, clean: GenerateSummary) -> None:
    rows = _rows(noisy)
    assert noisy.lines == len(rows)
    bad = Counter(_problem(r) for r in rows if _problem(r))
    # Every corruption makes a line invalid, and only corrupted lines are invalid.
    assert sum(bad.values()) == noisy.malformed_lines
    assert set(bad) >= {"fields", "stock code", "date", "quantity", "price"}
    expected = 0.03 * noisy.lines
    assert abs(noisy.malformed_lines - expected) < 5 * math.sqrt(expected) + 1
    assert noisy.customers == SIZES["customers"] and noisy.products == SIZES["products"]

    assert clean.malformed_lines == 0
    assert clean.lines == len(_rows(clean))


def test_malformed_lines_do_not_change_the_clean_ones(
    noisy: GenerateSummary, clean: GenerateSummary
) -> None:
    noisy_rows, clean_rows = _rows(noisy), _rows(clean)
    assert len(noisy_rows) == len(clean_rows)
    same = sum(a == b for a, b in zip(noisy_rows, clean_rows, strict=True))
    assert same == len(clean_rows) - noisy.malformed_lines


def test_returns_cancel_an_earlier_purchase_of_the_same_customer(clean: GenerateSummary) -> None:
    bought: dict[tuple[str, str], list[datetime]] = defaultdict(list)
    returns = 0
    for row in _rows(clean):  # files and lines are in time order
        if row[1] in SERVICE_CODES:  # a discount's cancellation invoice cancels no purchase
            continue
        when = datetime.strptime(row[4], "%Y-%m-%d %H:%M:%S")
        key = (row[6], row[1])
        if row[0].startswith("C"):
            returns += 1
            assert int(row[3]) < 0
            assert row[6], "returns belong to registered customers"
            lags = [(when.date() - b.date()).days for b in bought[key]]
            assert any(1 <= lag <= 30 for lag in lags), row
        else:
            assert int(row[3]) > 0
            bought[key].append(when)
    assert returns > 0


SERVICE_CODES = {"POST", "DOT", "M", "D", "BANK CHARGES", "B"}


def test_lines_that_are_not_merchandise_as_in_the_uci_data(clean: GenerateSummary) -> None:
    rows = _rows(clean)
    service = [r for r in rows if r[1] in SERVICE_CODES]
    assert clean.service_lines == len(service) > 0
    by_invoice: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        by_invoice[r[0]].add(r[1])
    abroad = {r[0] for r in rows if r[6] and r[7] != "United Kingdom" and r[0][0].isdigit()}
    posted = sum("POST" in by_invoice[i] for i in abroad)
    assert posted > 0.7 * len(abroad)  # postage on most invoices sent abroad
    assert all(r[7] != "United Kingdom" for r in rows if r[1] == "POST")
    assert all(r[0].startswith("C") and int(r[3]) < 0 for r in rows if r[1] == "D")
    assert all(r[0].startswith("A") and r[6] == "" for r in rows if r[1] == "B")
    # The merchandise lines are the same with or without them (their own random stream).
    products = [r for r in rows if r[1] not in SERVICE_CODES]
    assert len(products) == clean.lines - clean.service_lines


def test_guests_have_no_customer_id(clean: GenerateSummary, tmp_path: Path) -> None:
    rows = _rows(clean)
    guests = {r[0] for r in rows if r[6] == ""}
    invoices = {r[0] for r in rows if not r[0].startswith("C")}
    assert 0 < len(guests) < 0.2 * len(invoices)

    none = generate(tmp_path, **SIZES, guest_fraction=0.0, malformed_fraction=0.0)
    assert all(r[6] for r in _rows(none))


def test_ground_truth(clean: GenerateSummary) -> None:
    truth = clean.ground_truth_dir
    assert truth == clean.out_dir / "ground_truth"
    assert not truth.resolve().is_relative_to((clean.out_dir / "transactions").resolve())
    for name in (
        "customers.csv",
        "taste.csv",
        "products.csv",
        "calendar.csv",
        "favourites.csv",
        "README.txt",
    ):
        assert (truth / name).is_file(), name

    def read(name: str) -> list[dict[str, str]]:
        with (truth / name).open(encoding="utf-8", newline="") as fh:
            return list(csv.DictReader(fh))

    customers = read("customers.csv")
    assert len(customers) == len({c["customer_id"] for c in customers}) == SIZES["customers"]
    taste: dict[str, float] = defaultdict(float)
    for row in read("taste.csv"):
        taste[row["customer_id"]] += float(row["weight"])
    assert len(taste) == SIZES["customers"]
    assert all(abs(total - 1) < 1e-4 for total in taste.values())
    products = read("products.csv")
    assert len({p["product_id"] for p in products}) == SIZES["products"]
    assert len({p["description"] for p in products}) == SIZES["products"]
    assert abs(sum(float(p["popularity"]) for p in products) - 1) < 1e-4
    assert len(read("calendar.csv")) == SIZES["days"]


def test_invoice_rates_follow_the_ground_truth(clean: GenerateSummary) -> None:
    with (clean.ground_truth_dir / "calendar.csv").open() as fh:
        multiplier = {r["date"]: float(r["multiplier"]) for r in csv.DictReader(fh)}
    with (clean.ground_truth_dir / "customers.csv").open() as fh:
        customers = list(csv.DictReader(fh))
    expected = 0.0
    for c in customers:
        churn = c["churn_date"] or "9999-12-31"
        expected += float(c["base_rate_per_day"]) * sum(
            m for d, m in multiplier.items() if c["signup_date"] <= d < churn
        )
    observed = len({r[0] for r in _rows(clean) if r[6] and not r[0].startswith("C")})
    assert abs(observed - expected) < 0.15 * expected


def test_popularity_is_skewed(clean: GenerateSummary) -> None:
    counts = Counter(r[1] for r in _rows(clean) if not r[0].startswith("C"))
    top = sum(n for _, n in counts.most_common(SIZES["products"] // 10))
    assert top > 0.3 * sum(counts.values())


def test_ground_truth_may_not_sit_among_the_transactions(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ground_truth_dir"):
        generate(tmp_path, **SIZES, ground_truth_dir=tmp_path / "transactions" / "truth")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("customers", 0),
        ("products", 1),
        ("days", 0),
        ("malformed_fraction", 1.0),
        ("guest_fraction", -0.1),
        ("return_fraction", 1.5),
    ],
)
def test_invalid_arguments_name_the_parameter(tmp_path: Path, name: str, value: float) -> None:
    with pytest.raises(ValueError, match=name):
        generate(tmp_path, **{**SIZES, name: value})
    assert not (tmp_path / "transactions").exists()


def test_a_grocery_rebuys_more_than_a_gift_shop(tmp_path: Path) -> None:
    def rebuy_share(profile: str) -> float:
        summary = generate(
            tmp_path / profile,
            customers=300,
            products=400,
            days=200,
            start_date=START,
            malformed_fraction=0.0,
            profile=profile,
        )
        shares = json.loads((summary.ground_truth_dir / "profile.json").read_text())
        assert shares["profile"] == profile
        assert shares["favourite"] + shares["taste"] + shares["popular"] == pytest.approx(1.0)
        seen: set[tuple[str, str]] = set()
        rebuys = lines = 0
        for r in _rows(summary):  # in time order
            if r[6] and r[0][0].isdigit() and r[1] not in SERVICE_CODES:
                lines += 1
                rebuys += (r[6], r[1]) in seen
                seen.add((r[6], r[1]))
        return rebuys / lines

    gift, grocery = rebuy_share("gift"), rebuy_share("grocery")
    assert grocery > gift + 0.1, (gift, grocery)
    with pytest.raises(ValueError, match="profile must be one of gift, grocery"):
        generate(tmp_path / "x", customers=10, products=10, days=10, profile="pharmacy")
