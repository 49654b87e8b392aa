"""The readers of ingest, without Spark: CSV records, encodings, workbook cells, source listing."""

from __future__ import annotations

import datetime as dt
import io
from pathlib import Path

import pytest

from retailml.errors import InputError
from retailml.stages.ingest import records as R
from retailml.stages.ingest.layouts import ONLINE_RETAIL_II, detect_layout, normalise
from retailml.stages.ingest.sources import cause, list_source_files


def records(text: str, *, fields: int = 3, delimiter: str = ",") -> list[R.Record]:
    lines = io.StringIO(text, newline="")
    return list(R.csv_records(lines, delimiter=delimiter, fields=fields))


def test_rfc4180_quoting_is_read_right_and_raw_stays_exact() -> None:
    text = (
        "code,name,price\n"
        '1,"PHOTO FRAME 7"" SQUARE",2.55\n'
        '2,"SET OF 3, ""HEART"" TINS",4.95\n'
        '3,"TWO\nLINES",1.00\n'
        "4,plain,0.85\n"
    )
    got = records(text)
    assert [r.fields for r in got] == [
        ["1", 'PHOTO FRAME 7" SQUARE', "2.55"],
        ["2", 'SET OF 3, "HEART" TINS', "4.95"],
        ["3", "TWO\nLINES", "1.00"],
        ["4", "plain", "0.85"],
    ]
    assert got[2].raw == '3,"TWO\nLINES",1.00'  # both lines of the record, as in the file
    assert all(r.problem is None for r in got)


def test_a_quote_that_never_closes_costs_one_line_only() -> None:
    body = ['1,"BROKEN,2.55'] + [f"{i},ok,1.00" for i in range(2, 200)]
    got = records("code,name,price\n" + "\n".join(body) + "\n")
    assert got[0] == R.Record(None, '1,"BROKEN,2.55', "malformed line: unclosed quote")
    assert [r.fields[0] for r in got[1:]] == [str(i) for i in range(2, 200)]
    # At the end of the file too.
    tail = records('code,name,price\n1,a,2\n2,"open,3\n')
    assert tail[-1] == R.Record(None, '2,"open,3', "malformed line: unclosed quote")


def test_field_counts_blank_lines_and_padding() -> None:
    got = records("a,b,c\n\n1,2,3\n1,2\n1,2,3,,\n1,2,3,4\n,,\n  \n")
    assert [(r.fields, r.problem) for r in got] == [
        (["1", "2", "3"], None),
        (None, "malformed line: expected 3 fields (found 2)"),
        (["1", "2", "3"], None),  # empty trailing fields, as spreadsheets pad, are dropped
        (None, "malformed line: expected 3 fields (found 4)"),
    ]


def test_encodings_are_detected_per_file(tmp_path: Path) -> None:
    text = "code,name,country\n1,ŒUF £5 CAFÉ,Réunion\n2,MÜNCHEN MUG,Österreich\n"
    for encoding, expected in [
        ("utf-8", "utf-8"),
        ("utf-8-sig", "utf-8-sig"),
        ("cp1252", "cp1252"),
        ("utf-16", "utf-16"),
    ]:
        data = text.encode(encoding)
        assert R.decide_encoding(io.BytesIO(data)) == expected, encoding
        spec = R.ReadSpec("x.csv", "x.csv", "csv", ("code", "name", "country"), (), ())
        _, got = R.read_csv(io.BytesIO(data), spec)
        assert [r.fields for r in got] == [
            ["1", "ŒUF £5 CAFÉ", "Réunion"],
            ["2", "MÜNCHEN MUG", "Österreich"],
        ], encoding
    # Latin-1 bytes of Western text read as the most common code page, never as cp1250 (Ł).
    assert R.detect_single_byte("PHOTO FRAME £5,Réunion".encode("latin-1")) == "cp1252"
    assert R.detect_single_byte("Größe,Straße,Müller,Bäckerei".encode("cp1252")) == "cp1252"
    assert R.detect_single_byte("Łódź,Kraków,Gdańsk,Zażółć gęślą jaźń".encode("cp1250")) == "cp1250"
    assert R.detect_single_byte("Москва,Санкт-Петербург,магазин".encode("cp1251")) == "cp1251"


def test_undecodable_bytes_are_quarantined_not_replaced() -> None:
    data = "code,name,price\n1,CAFÉ,2\n".encode("cp1252") + b"2,BAD \x81 BYTE,3\n"
    spec = R.ReadSpec("x.csv", "x.csv", "csv", ("code", "name", "price"), (), (), encoding="cp1252")
    _, got = R.read_csv(io.BytesIO(data), spec)
    rows = list(got)
    assert rows[0].fields == ["1", "CAFÉ", "2"]
    assert rows[1] == R.Record(None, "2,BAD \\x81 BYTE,3", "not valid cp1252 text")


def test_delimiter_is_sniffed_from_the_header() -> None:
    assert R.sniff_delimiter("Invoice;StockCode;Description;Price") == ";"
    assert R.sniff_delimiter("Invoice\tStockCode\tPrice") == "\t"
    assert R.sniff_delimiter("Invoice,StockCode,Price") == ","
    assert R.sniff_delimiter("single") == ","


def test_workbook_cells_become_text() -> None:
    assert R.cell_text(17850.0) == "17850"
    assert R.cell_text(2.55) == "2.55"
    assert R.cell_text(12) == "12"
    assert R.cell_text(dt.datetime(2010, 12, 1, 8, 26)) == "2010-12-01 08:26:00"
    assert R.cell_text(dt.date(2010, 12, 1)) == "2010-12-01"
    assert R.cell_text(True) == "TRUE"
    assert R.cell_text(None) is None


def test_header_names_match_without_case_spaces_or_underscores() -> None:
    assert normalise("Customer ID") == normalise("CustomerID") == normalise("customer_id")
    header = "Invoice,StockCode,Description,Quantity,InvoiceDate,Price,CustomerID,Country"
    layout = detect_layout(header.split(","), source="f.csv")
    assert layout.name == ONLINE_RETAIL_II.name
    assert layout.columns["customer_id"] == "CustomerID"  # the file's spelling


def test_a_layout_column_under_another_name_is_refused() -> None:
    header = "Invoice,StockCode,Description,Quantity,InvoiceDate,Price,Cust Ref,Country"
    with pytest.raises(
        InputError, match=r"^f\.csv: missing column 'Customer ID' of the online_retail_ii"
    ):
        detect_layout(header.split(","), source="f.csv")


def test_listing_skips_what_is_not_data(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    for name in [
        "a.csv",
        "sub/b.xlsx",
        "c.parquet",
        "README.txt",
        "notes.md",
        "_SUCCESS",
        ".a.csv.crc",
    ]:
        (tmp_path / name).write_text("x")
    listing = list_source_files(None, str(tmp_path))  # type: ignore[arg-type]
    assert [Path(p).name for p in listing.files] == ["a.csv", "c.parquet", "b.xlsx"]
    assert [Path(p).name for p in listing.skipped] == ["README.txt", "notes.md"]


def test_a_generated_folder_is_read_for_its_transactions_only(tmp_path: Path) -> None:
    (tmp_path / "transactions").mkdir()
    (tmp_path / "ground_truth").mkdir()
    (tmp_path / "generated.json").write_text("{}")
    (tmp_path / "transactions" / "2010-01.csv").write_text("x")
    (tmp_path / "ground_truth" / "customers.csv").write_text("x")
    (tmp_path / "ground_truth" / "README.txt").write_text("x")
    listing = list_source_files(None, str(tmp_path))  # type: ignore[arg-type]
    assert [Path(p).name for p in listing.files] == ["2010-01.csv"]


def test_an_unsupported_file_type_is_one_line_naming_it(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("x")
    (tmp_path / "Online Retail.xls").write_text("x")
    with pytest.raises(
        InputError, match=r"Online Retail\.xls: unsupported file type \.xls .*save it as \.xlsx"
    ):
        list_source_files(None, str(tmp_path))  # type: ignore[arg-type]


def test_cause_is_the_message_not_the_stack() -> None:
    exc = RuntimeError(
        "[PARQUET_TYPE_ILLEGAL] Illegal Parquet type: INT64 (TIMESTAMP(NANOS,false)). SQLSTATE: 42846\n"
        "\tat org.apache.spark.sql.errors...\n"
    )
    assert cause(exc).startswith("[PARQUET_TYPE_ILLEGAL] Illegal Parquet type: INT64")
