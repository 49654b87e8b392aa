"""Real retail files as people have them: each kind of export quirk read right, or refused in one
line. Every file here is small and made up, written the way the tool that makes such files
writes them (pandas, openpyxl, a European spreadsheet, an ISO-8859-1 export)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pandas as pd
import pytest
from pyspark.sql import SparkSession

from retailml.errors import InputError
from retailml.lakehouse import Lakehouse
from retailml.stages import ingest
from tests.conftest import GATES_WARN, make_settings

HEADER = "Invoice,StockCode,Description,Quantity,InvoiceDate,Price,Customer ID,Country"


def run(spark: SparkSession, tmp_path: Path, source: Path, **overrides: object):
    settings = make_settings(tmp_path / "project", **{**GATES_WARN, **overrides})
    result = ingest.run(settings, spark, source=str(source))
    lake = Lakehouse(settings, spark)
    good = {r.product_id: r for r in lake.read("bronze.transactions").collect()}
    bad = [(r.raw, r.reason) for r in lake.read("bronze.quarantine").collect()]
    return result, good, bad


def csv_file(
    path: Path, lines: list[str], *, header: str = HEADER, encoding: str = "utf-8"
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(("\n".join([header, *lines]) + "\n").encode(encoding))
    return path


def test_day_first_dates_are_decided_per_file(spark: SparkSession, tmp_path: Path) -> None:
    uk = csv_file(
        tmp_path / "src" / "uk.csv",
        [
            "536365,A1,MUG,6,01/12/2010 08:26,2.55,17850,United Kingdom",
            "536366,A2,CUP,6,13/12/2010 09:02,1.85,17850,United Kingdom",
        ],
    )
    us = csv_file(
        tmp_path / "src" / "us.csv",
        [
            "536367,B1,MUG,6,12/1/2010 8:26,2.55,17851,United States",
            "536368,B2,CUP,6,12/13/2010 9:02 PM,1.85,17851,United States",
        ],
    )
    result, good, bad = run(spark, tmp_path, uk.parent)
    assert bad == []
    assert good["A1"].event_time == dt.datetime(2010, 12, 1, 8, 26)  # 1 December, not 12 January
    assert good["A2"].event_time == dt.datetime(2010, 12, 13, 9, 2)
    assert good["B1"].event_time == dt.datetime(2010, 12, 1, 8, 26)
    assert good["B2"].event_time == dt.datetime(2010, 12, 13, 21, 2)
    assert result.decided[str(uk)] == "dates day-first"
    assert result.decided[str(us)] == "dates month-first"


def test_undecidable_dates_are_one_line_naming_the_setting(
    spark: SparkSession, tmp_path: Path
) -> None:
    ambiguous = csv_file(
        tmp_path / "src" / "dec.csv",
        [
            "536365,A1,MUG,6,01/12/2010 08:26,2.55,17850,United Kingdom",
            "536366,A2,CUP,6,02/12/2010 09:02,1.85,17850,United Kingdom",
        ],
    )
    with pytest.raises(
        InputError,
        match=r"dec\.csv: cannot tell day from month in InvoiceDate .*ingest\.timestamp_formats",
    ):
        run(spark, tmp_path, ambiguous)
    assert not Lakehouse(make_settings(tmp_path / "project"), spark).exists("bronze.transactions")
    _, good, _ = run(
        spark, tmp_path, ambiguous, **{"ingest.timestamp_formats": ["dd/MM/yyyy HH:mm"]}
    )
    assert good["A2"].event_time == dt.datetime(2010, 12, 2, 9, 2)


def test_iso_8601_with_zone_and_fraction_is_stored_in_utc(
    spark: SparkSession, tmp_path: Path
) -> None:
    header = "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session"
    src = csv_file(
        tmp_path / "events.csv",
        [
            "2019-10-01T00:00:03Z,view,1,7,,acme,3.10,5,s1",
            "2019-10-01T00:00:04.000Z,view,2,7,,acme,3.10,5,s1",
            "2019-10-01T02:00:05+02:00,purchase,3,7,,acme,3.10,5,s1",
            "2019-10-01 00:00:06 UTC,purchase,4,7,,acme,3.10,5,s1",
        ],
        header=header,
    )
    _, good, bad = run(spark, tmp_path, src)
    assert bad == []
    assert [good[p].event_time for p in "1234"] == [
        dt.datetime(2019, 10, 1, 0, 0, s) for s in (3, 4, 5, 6)
    ]


def test_single_byte_encodings_are_never_replacement_characters(
    spark: SparkSession, tmp_path: Path
) -> None:
    src = csv_file(
        tmp_path / "latin.csv",
        [
            "536365,A1,CAFÉ CRÈME MUG £5,6,2010-12-01 08:26:00,2.55,17850,Réunion",
            "536366,A2,PLAIN CUP,6,2010-12-01 09:02:00,1.85,17851,France",
        ],
        encoding="latin-1",
    )
    result, good, _ = run(spark, tmp_path, src)
    assert good["A1"].product_name == "CAFÉ CRÈME MUG £5"
    assert good["A1"].country == "Réunion"
    assert result.decided[str(src)] == "encoding cp1252"


def test_missing_value_tokens_and_float_ids(spark: SparkSession, tmp_path: Path) -> None:
    src = csv_file(
        tmp_path / "pandas.csv",
        [
            "536365.0,A1,MUG,6,2010-12-01 08:26:00,2.55,17850.0,United Kingdom",
            "536366,A2,CUP,6,2010-12-01 09:02:00,1.85,1.2345678E7,United Kingdom",
            "536367,A3,BOWL,1,2010-12-01 09:03:00,1.85,nan,United Kingdom",
            "536368,A4,BOWL,1,2010-12-01 09:04:00,1.85,None,NULL",
            "536369,A5,N/A,1,2010-12-01 09:05:00,1.85,NaN,United Kingdom",
        ],
    )
    _, good, bad = run(spark, tmp_path, src)
    assert bad == []
    assert (good["A1"].invoice_id, good["A1"].customer_id) == ("536365", "17850")
    assert good["A2"].customer_id == "12345678"
    assert [good[p].customer_id for p in ("A3", "A4", "A5")] == [None, None, None]  # guests
    assert good["A4"].country is None and good["A5"].product_name is None


def test_customer_id_header_spellings_are_one_column(spark: SparkSession, tmp_path: Path) -> None:
    header = HEADER.replace("Customer ID", "CustomerID")
    src = csv_file(
        tmp_path / "x.csv",
        ["536365,A1,MUG,6,2010-12-01 08:26:00,2.55,17850,United Kingdom"],
        header=header,
    )
    _, good, _ = run(spark, tmp_path, src)
    assert good["A1"].customer_id == "17850"
    misnamed = csv_file(
        tmp_path / "y.csv",
        ["536365,A1,MUG,6,2010-12-01 08:26:00,2.55,17850,United Kingdom"],
        header=HEADER.replace("Customer ID", "Client"),
    )
    with pytest.raises(InputError, match=r"y\.csv: missing column 'Customer ID'"):
        run(spark, tmp_path, misnamed)


def test_rfc4180_quotes_and_line_breaks(spark: SparkSession, tmp_path: Path) -> None:
    src = csv_file(
        tmp_path / "q.csv",
        [
            '536365,A1,"PHOTO FRAME 7"" SQUARE",6,2010-12-01 08:26:00,2.55,17850,United Kingdom',
            '536366,A2,"SET OF 3, ""HEART"" TINS",6,2010-12-01 08:26:00,2.55,17850,United Kingdom',
            '536367,A3,CUP,6,2010-12-01 08:26:00,2.55,17850,"United\nKingdom"',
            '536368,A4,CUP,6,not a date,2.55,17850,"Channel\nIslands"',
        ],
    )
    result, good, bad = run(spark, tmp_path, src)
    assert good["A1"].product_name == 'PHOTO FRAME 7" SQUARE'
    assert good["A2"].product_name == 'SET OF 3, "HEART" TINS'
    assert good["A3"].country == "United\nKingdom"
    assert bad == [
        (
            '536368,A4,CUP,6,not a date,2.55,17850,"Channel\nIslands"',
            "InvoiceDate: not a date ('not a date')",
        )
    ]
    assert result.input_rows == 4


def test_decimal_commas_and_thousands_points(spark: SparkSession, tmp_path: Path) -> None:
    header = HEADER.replace(",", ";")
    src = csv_file(
        tmp_path / "eu.csv",
        [
            "536365;A1;MUG;1.000;01.12.2010 08:26;2,55;17850;Deutschland",
            "536366;A2;CUP;6;13.12.2010 09:02;1.234,56;17850;Deutschland",
            "536367;A3;BAD;6;13.12.2010 09:02;1.5;17850;Deutschland",
        ],
        header=header,
    )
    result, good, bad = run(spark, tmp_path, src)
    assert (good["A1"].quantity, good["A1"].unit_price) == (1000, 2.55)
    assert good["A2"].unit_price == 1234.56
    assert good["A1"].event_time == dt.datetime(2010, 12, 1, 8, 26)
    assert bad == [
        ("536367;A3;BAD;6;13.12.2010 09:02;1.5;17850;Deutschland", "Price: not a number ('1.5')")
    ]
    assert result.decided[str(src)] == "dates day-first, decimal comma"
    # A comma in a file with decimal points is never a thousands separator unless grouped by 3.
    dot = csv_file(
        tmp_path / "dot.csv",
        [
            '1,A9,MUG,6,2010-12-01 08:26:00,"2,55",1,UK',
            "2,B9,MUG,6,2010-12-01 08:26:00,2.50,1,UK",
            '3,C9,MUG,6,2010-12-01 08:26:00,"1,234.50",1,UK',
        ],
    )
    _, good, bad = run(spark, tmp_path / "second", dot)
    assert good["C9"].unit_price == 1234.5
    assert [reason for _, reason in bad] == ["Price: not a number ('2,55')"]


def test_parquet_written_by_pandas(spark: SparkSession, tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "Invoice": ["536365", "536366"],
            "StockCode": ["A1", "A2"],
            "Description": ["MUG", "CUP"],
            "Quantity": [6, 2],
            # pandas' default: nanosecond timestamps, which Spark refuses without help.
            "InvoiceDate": pd.to_datetime(
                ["2010-12-01 08:26:00", "2010-12-01 09:02:00.5"], format="ISO8601"
            ),
            "Price": [2.55, 1.85],
            # A column with a missing value is float64 in pandas: 17850.0 and NaN.
            "Customer ID": [17850.0, float("nan")],
            "Country": ["United Kingdom", None],
        }
    )
    path = tmp_path / "src" / "sheet [2010].parquet"  # glob characters in the name
    path.parent.mkdir(parents=True)
    frame.to_parquet(path)
    _, good, bad = run(spark, tmp_path, path.parent)
    assert bad == []
    assert good["A1"].event_time == dt.datetime(2010, 12, 1, 8, 26)
    assert good["A2"].event_time == dt.datetime(2010, 12, 1, 9, 2, 0, 500000)
    assert (good["A1"].customer_id, good["A2"].customer_id) == ("17850", None)


def test_an_unreadable_parquet_file_names_the_cause(spark: SparkSession, tmp_path: Path) -> None:
    bad = tmp_path / "broken.parquet"
    bad.write_bytes(b"PAR1 this is not really parquet")
    with pytest.raises(
        InputError, match=r"broken\.parquet: not a readable Parquet file \(.+\)"
    ) as info:
        run(spark, tmp_path, bad)
    assert "\n" not in str(info.value) and "\x00" not in str(info.value)


def test_a_workbook_in_a_text_file_is_refused_without_binary_bytes(
    spark: SparkSession, tmp_path: Path
) -> None:
    fake = tmp_path / "export.csv"
    fake.write_bytes(b"PK\x03\x04\x14\x00\x06\x00\x08\x00\x00\x00!\x00binary")
    with pytest.raises(
        InputError,
        match=r"export\.csv: not a text file \(it holds a zip archive or an Excel workbook\)",
    ) as info:
        run(spark, tmp_path, fake)
    assert "\x00" not in str(info.value)


def write_workbook(path: Path, sheets: dict[str, list[list[object]]]) -> Path:
    from openpyxl import Workbook

    book = Workbook()
    book.remove(book.active)
    for name, rows in sheets.items():
        sheet = book.create_sheet(name)
        for row in rows:
            sheet.append(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    book.save(path)
    return path


def test_workbook_with_two_overlapping_sheets(spark: SparkSession, tmp_path: Path) -> None:
    columns = HEADER.split(",")
    when = dt.datetime(2010, 12, 1, 8, 26)
    shared = ["536365", "A1", "MUG", 6, when, 2.55, 17850.0, "United Kingdom"]
    book = write_workbook(
        tmp_path / "src" / "online_retail_II.xlsx",
        {
            "Year 2009-2010": [
                columns,
                [
                    "489434",
                    "B1",
                    "CUP",
                    12,
                    dt.datetime(2009, 12, 1, 7, 45),
                    6.95,
                    13085.0,
                    "United Kingdom",
                ],
                shared,
            ],
            "Year 2010-2011": [
                columns,
                shared,
                ["536366", "C1", "BOWL", "12O", when, 1.85, None, "France"],
            ],
        },
    )
    result, good, bad = run(spark, tmp_path, book.parent)
    assert result.input_rows == 4 and result.bronze_rows == 3
    assert good["B1"].customer_id == "13085" and good["B1"].quantity == 12
    assert good["A1"].event_time == when
    sources = {
        r.source_file
        for r in Lakehouse(make_settings(tmp_path / "project"), spark)
        .read("bronze.transactions")
        .collect()
    }
    assert sources == {f"{book}#Year 2009-2010", f"{book}#Year 2010-2011"}
    [(raw, reason)] = bad
    assert reason == "Quantity: not an integer ('12O')"
    assert json.loads(raw)["Quantity"] == "12O" and json.loads(raw)["Customer ID"] is None
    # One sheet only, by setting; re-ingesting replaces the workbook's rows.
    result, good, _ = run(spark, tmp_path, book, **{"ingest.sheets": ["Year 2009-2010"]})
    assert result.input_rows == 2
    assert set(good) == {"A1", "B1"}
    with pytest.raises(InputError, match=r"no sheet 'Year 2012' \(ingest\.sheets\)"):
        run(spark, tmp_path, book, **{"ingest.sheets": ["Year 2012"]})
