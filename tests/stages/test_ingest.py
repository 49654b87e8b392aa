from __future__ import annotations

import csv
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from pyspark.sql import SparkSession

from retailml import schemas as S
from retailml.errors import InputError
from retailml.lakehouse import Lakehouse
from retailml.settings import Settings
from retailml.stages import ingest
from retailml.stages.ingest import ONLINE_RETAIL, ONLINE_RETAIL_II, REES46, detect_layout
from tests.conftest import GATES_WARN, make_settings

HEADER_II = "Invoice,StockCode,Description,Quantity,InvoiceDate,Price,Customer ID,Country"
GOOD = [
    '489434,85048,"15CM CHRISTMAS GLASS BALL, 20 LIGHTS",12,2009-12-01 07:45:00,6.95,13085.0,United Kingdom',
    "489434,79323P,PINK CHERRY LIGHTS,12,2009-12-01 07:45:00,6.75,13085.0,United Kingdom",
    "C489449,22087,PAPER BUNTING WHITE LACE,-12,2009-12-01 10:33:00,2.95,16321.0,Australia",
    "489450,22088,GUEST MUG,1,2009-12-01 11:00:00,1.25,,United Kingdom",
]
BAD = {
    "489435,22350,CAT BOWL,12O,2009-12-01 07:46:00,2.55,13085.0,United Kingdom": "Quantity: not an integer ('12O')",
    "489436,22350,CAT BOWL,1,2009-13-45 07:46:00,2.55,,United Kingdom": "InvoiceDate: not a date ('2009-13-45 07:46:00')",
    "489437,22350,CAT BOWL,1,2009-12-01 07:46:00": "malformed line: expected 8 fields (found 5)",
    "489438,,CAT BOWL,1,2009-12-01 07:46:00,2.55,13085.0,United Kingdom": "StockCode: missing",
    "489439,22350,CAT BOWL,1,2009-12-01 07:46:00,-2.55,13085.0,United Kingdom": "Price: negative ('-2.55')",
    "489440,22350,CAT BOWL,0,2009-12-01 07:46:00,2.55,13085.0,United Kingdom": "Quantity: zero",
    "489441,22350,CAT BOWL,1,2009-12-01 07:46:00,abc,13085.0,United Kingdom": "Price: not a number ('abc')",
}


def write(path: Path, header: str, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *lines]) + "\n", encoding="utf-8")
    return path


def test_detects_known_layouts() -> None:
    assert detect_layout(HEADER_II.split(","), source="f").name == "online_retail_ii"
    uci1 = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country"
    assert detect_layout(uci1.split(","), source="f").name == ONLINE_RETAIL.name
    rees = "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session"
    assert detect_layout(rees.split(","), source="f").name == REES46.name
    # Column names are matched without regard to case or surrounding spaces.
    assert (
        detect_layout([c.upper() for c in HEADER_II.split(",")], source="f").name
        == ONLINE_RETAIL_II.name
    )


def test_missing_required_column_names_file_and_column() -> None:
    columns = [c for c in HEADER_II.split(",") if c != "Price"]
    with pytest.raises(
        InputError,
        match=r"^x\.csv: missing column 'Price' of the online_retail_ii layout \(columns found",
    ):
        detect_layout(columns, source="x.csv")
    with pytest.raises(InputError, match="no column 'when'"):
        detect_layout(
            ["a", "b"],
            source="y.csv",
            mapping={"event_time": "when", "product_id": "a", "unit_price": "b"},
        )
    with pytest.raises(InputError, match="required column 'unit_price' is not mapped"):
        detect_layout(["a", "b"], source="y.csv", mapping={"event_time": "a", "product_id": "b"})


def canonical_rows(spark: SparkSession, tmp_path: Path, lines: list[str]) -> list[dict]:
    """Both bronze tables' rows of one ingested file, as dicts with ``reason`` (None if valid)."""
    settings = make_settings(tmp_path, **GATES_WARN)
    ingest.run(settings, spark, source=str(write(tmp_path / "in.csv", HEADER_II, lines)))
    lake = Lakehouse(settings, spark)
    good = [r.asDict() | {"reason": None} for r in lake.read("bronze.transactions").collect()]
    bad = [r.asDict() for r in lake.read("bronze.quarantine").collect()]
    return good + bad


def test_parses_good_rows(spark: SparkSession, tmp_path: Path) -> None:
    rows = sorted(canonical_rows(spark, tmp_path, GOOD), key=lambda r: r["product_id"])
    assert [r["reason"] for r in rows] == [None] * 4
    rows = [
        next(r for r in rows if r["product_id"] == code)
        for code in ("85048", "79323P", "22087", "22088")
    ]
    first = rows[0]
    assert first["product_name"] == "15CM CHRISTMAS GLASS BALL, 20 LIGHTS"  # quoted comma
    assert first["customer_id"] == "13085"  # "13085.0" → "13085"
    assert (first["quantity"], first["unit_price"]) == (12, 6.95)
    assert str(first["event_time"]) == "2009-12-01 07:45:00"
    assert first["event_type"] == S.PURCHASE and first["source_layout"] == "online_retail_ii"
    assert rows[3]["customer_id"] is None  # guest


def test_each_bad_row_gets_its_reason(spark: SparkSession, tmp_path: Path) -> None:
    rows = canonical_rows(spark, tmp_path, list(BAD))
    assert {r["raw"]: r["reason"] for r in rows} == BAD  # the raw line exactly as in the file


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """These files are about parsing: many rows are bad on purpose, so the gates only warn."""
    return make_settings(tmp_path, **GATES_WARN)


def test_run_counts_quarantine_and_idempotency(
    settings: Settings, spark: SparkSession, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    write(src / "a.csv", HEADER_II, GOOD)
    write(src / "sub" / "b.csv", HEADER_II, list(BAD))
    (src / "_SUCCESS").write_text("")  # marker files are not data
    first = ingest.run(settings, spark, source=str(src))
    assert (first.files, first.input_rows, first.bronze_rows, first.quarantine_rows) == (
        2,
        11,
        4,
        7,
    )
    assert first.reasons["Quantity: not an integer"] == 1
    lake = Lakehouse(settings, spark)
    quarantine = lake.read("bronze.quarantine")
    assert quarantine.where(f"source_file = '{src / 'sub' / 'b.csv'}'").count() == 7
    versions = {n: lake.version(n) for n in ("bronze.transactions", "bronze.quarantine")}
    # Same files again: nothing is read or written.
    again = ingest.run(settings, spark, source=str(src))
    assert (again.files, again.unchanged, again.headline()) == (
        0,
        2,
        "nothing new (2 files unchanged)",
    )
    assert {n: lake.version(n) for n in versions} == versions
    # --full reads them again, and replaces their rows: nothing is added.
    full = settings.with_overrides({"workflow.full": True})
    assert ingest.run(full, spark, source=str(src)).files == 2
    assert lake.read("bronze.transactions").count() == 4
    assert lake.read("bronze.quarantine").count() == 7
    assert {r.batch_id for r in lake.read("bronze.transactions").collect()} != {first.batch_id}


def test_a_bad_file_writes_nothing(settings: Settings, spark: SparkSession, tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "a.csv", HEADER_II, GOOD)
    write(src / "b.csv", HEADER_II.replace(",Price", ""), ["1,2,3,4,5,6,7"])
    with pytest.raises(InputError, match=r"b\.csv: missing column 'Price'"):
        ingest.run(settings, spark, source=str(src))
    assert not Lakehouse(settings, spark).exists("bronze.transactions")


@pytest.mark.parametrize("case", ["missing", "empty_folder", "empty_file", "header_only"])
def test_empty_input_is_a_clear_error(
    settings: Settings, spark: SparkSession, tmp_path: Path, case: str
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    if case == "missing":
        src = src / "nope"
    elif case == "empty_file":
        (src / "a.csv").write_text("")
    elif case == "header_only":
        write(src / "a.csv", HEADER_II, [])
    message = {
        "missing": "no such file or folder",
        "empty_folder": "empty folder",
        "empty_file": r"a\.csv: empty file",
        "header_only": "no data rows",
    }[case]
    with pytest.raises(InputError, match=message):
        ingest.run(settings, spark, source=str(src))
    assert not Lakehouse(settings, spark).exists("bronze.transactions")


def test_rees46_events_and_parquet(settings: Settings, spark: SparkSession, tmp_path: Path) -> None:
    header = "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session"
    events = [
        "2019-10-01 00:00:00 UTC,view,44600062,2103807459595387724,,shiseido,35.79,541312140,72d76fde",
        "2019-10-01 00:00:01 UTC,purchase,3900821,2053013552326770905,appliances.water_heater,aqua,33.20,554748717,9333dfbd",
        "2019-10-01 00:00:02 UTC,teleport,3900821,2053013552326770905,,aqua,33.20,554748717,9333dfbd",
    ]
    src = write(tmp_path / "events" / "2019-Oct.csv", header, events)
    parquet = str(tmp_path / "pq")
    spark.read.option("header", True).csv(str(src)).write.parquet(parquet)
    for source in (str(src), parquet):
        result = ingest.run(settings, spark, source=source)
        assert (result.bronze_rows, result.quarantine_rows) == (2, 1), source
        assert list(result.reasons) == ["event_type: unknown event type"]
    bronze = Lakehouse(settings, spark).read("bronze.transactions")
    by_type = {r.event_type: r for r in bronze.where("source_layout = 'rees46'").collect()}
    assert by_type["purchase"].category == "appliances.water_heater"
    assert by_type["purchase"].quantity == 1 and by_type["view"].customer_id == "541312140"


def test_column_mapping_for_other_layouts(tmp_path: Path, spark: SparkSession) -> None:
    settings = make_settings(
        tmp_path,
        **{
            "ingest.column_mapping": {
                "event_time": "ts",
                "product_id": "sku",
                "unit_price": "amount",
                "customer_id": "who",
                "quantity": "n",
            },
            "ingest.delimiter": ";",
        },
    )
    src = write(tmp_path / "x.csv", "ts;sku;amount;who;n", ["2024-01-02 10:00:00;A1;3.5;c1;2"])
    result = ingest.run(settings, spark, source=str(src))
    assert (result.bronze_rows, result.quarantine_rows) == (1, 0)
    row = Lakehouse(settings, spark).read("bronze.transactions").first()
    assert (row.product_id, row.unit_price, row.quantity, row.source_layout) == (
        "A1",
        3.5,
        2,
        "custom",
    )


FIELD = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="\x00"),
    max_size=12,
)


@hsettings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    good=st.lists(st.sampled_from(GOOD), max_size=6),
    bad=st.lists(st.sampled_from(list(BAD)), max_size=6),
    junk=st.lists(st.lists(FIELD, min_size=1, max_size=10), max_size=6),
)
def test_counts_in_equal_bronze_plus_quarantine(
    spark: SparkSession,
    tmp_path_factory: pytest.TempPathFactory,
    good: list[str],
    bad: list[str],
    junk: list[list[str]],
) -> None:
    base = tmp_path_factory.mktemp("hyp")
    settings = make_settings(base, **GATES_WARN)
    lines = good + bad
    src = base / "src" / "mixed.csv"
    src.parent.mkdir(parents=True)
    src.write_text("\n".join([HEADER_II, *lines]) + "\n", encoding="utf-8")
    with src.open("a", newline="", encoding="utf-8") as fh:
        # Records written by csv.writer: quoted fields with delimiters, quotes and line breaks
        # (CRLF line ends, so that a lone CR in a field is quoted too).
        csv.writer(fh, lineterminator="\r\n").writerows(junk)
    records = len(lines) + sum(1 for row in junk if any(v.strip() for v in row))
    if not records:
        return
    result = ingest.run(settings, spark, source=str(src))
    assert result.input_rows == records
    assert result.bronze_rows + result.quarantine_rows == records
    lake = Lakehouse(settings, spark)
    assert lake.read("bronze.transactions").count() == result.bronze_rows
    assert lake.read("bronze.quarantine").count() == result.quarantine_rows
    assert result.bronze_rows >= len(good)
