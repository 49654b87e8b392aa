"""Finding the data files under a source and reading their headers, before any data is read.

A source is a file or a folder (searched recursively), local or any Hadoop URI. What is not
data is skipped and listed: names starting with ``.`` or ``_`` (Spark's and Hadoop's markers
and checksums), ``.crc`` files, READMEs, licences and notes. A folder written by ``retailml
generate`` is read for its ``transactions/`` only, never its ground truth. Any other file
whose type is not supported stops the ingest with one line naming it, so no data is dropped
unseen.
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from pyspark.sql import SparkSession

from retailml import schemas as S
from retailml.errors import InputError
from retailml.generate.data import MARKER as GENERATED_MARKER
from retailml.stages.ingest import records as R
from retailml.stages.ingest.layouts import Layout

CSV_SUFFIXES = (".csv", ".csv.gz", ".txt", ".txt.gz", ".tsv", ".tsv.gz")
PARQUET_SUFFIXES = (".parquet", ".parq")
EXCEL_SUFFIXES = (".xlsx", ".xlsm")
DATA_SUFFIXES = CSV_SUFFIXES + PARQUET_SUFFIXES + EXCEL_SUFFIXES
# Files that are never data, wherever they are.
_NOT_DATA = re.compile(
    r"^(readme|licen[cs]e|notice|changelog)([._-].*)?$|\.(md|rst|crc|pdf|html?|log)$",
    re.IGNORECASE,
)
# Formats people have that retailml does not read, with what to do instead.
_UNSUPPORTED = {
    ".xls": "the old Excel format: save it as .xlsx or CSV",
    ".xlsb": "Excel's binary format: save it as .xlsx or CSV",
    ".ods": "save it as .xlsx or CSV",
    ".zip": "unzip it first",
    ".7z": "unpack it first",
    ".json": "JSON is not a supported source",
}
# What `retailml generate` leaves in its output folder: the marker and the data beside it.
GENERATED_DATA = "transactions"
_HEAD_BYTES = 64 * 1024


@dataclass(frozen=True)
class SourceListing:
    """The data files of a source, sorted, and what was skipped (with why)."""

    files: list[str]
    skipped: list[str]


@dataclass(frozen=True)
class SourceFile:
    """One source of rows: a text file, a Parquet file, or one sheet of a workbook.

    Attributes:
        path: The file.
        source_file: The lineage name of its rows: the path, plus ``#sheet`` for a sheet.
        format: ``csv``, ``parquet`` or ``xlsx``.
        columns: The column names (header, Parquet footer, or the sheet's first row).
        delimiter: CSV delimiter (from the setting, or sniffed from the header).
        sheet: The workbook sheet.
    """

    path: str
    source_file: str
    format: str
    columns: tuple[str, ...]
    delimiter: str = ","
    sheet: str | None = None

    def read_spec(self, layout: Layout, *, encoding: str, null_values: Sequence[str]) -> R.ReadSpec:
        """What a Python worker needs to read this source (not for Parquet)."""
        where = layout.index(self.columns)
        return R.ReadSpec(
            path=self.path,
            source_file=self.source_file,
            kind=self.format,
            columns=self.columns,
            positions=tuple(where.get(c) for c in S.CANONICAL_COLUMNS),
            constants=tuple(layout.constants.get(c) for c in S.CANONICAL_COLUMNS),
            delimiter=self.delimiter,
            encoding=encoding,
            sheet=self.sheet,
            null_values=tuple(null_values),
        )


def is_local(path: str) -> bool:
    """Whether a path is on the local file system (no URI scheme, or ``file:``)."""
    return "://" not in path or path.startswith("file:")


def _local(path: str) -> Path:
    return Path(re.sub(r"^file:(//)?", "", path))


def list_source_files(spark: SparkSession, source: str) -> SourceListing:
    """The data files under ``source`` (a file or folder, local or any Hadoop URI).

    Raises:
        InputError: Nothing is there, a file's type is not supported, or no file is data.
    """
    if is_local(source):
        root = _local(source)
        if not root.exists():
            raise InputError(f"{source}: no such file or folder")
        if root.is_file():
            found = [str(root)]
        else:
            if (root / GENERATED_MARKER).is_file() and (root / GENERATED_DATA).is_dir():
                root = root / GENERATED_DATA
            found = sorted(
                str(p)
                for p in root.rglob("*")
                if p.is_file()
                and not any(part.startswith((".", "_")) for part in p.relative_to(root).parts)
            )
    else:
        found = _list_hadoop(spark, source)
    data, skipped = [], []
    for path in found:
        name = PurePosixPath(path).name
        lower = name.lower()
        if _NOT_DATA.search(name) or lower == GENERATED_MARKER:
            skipped.append(path)
        elif lower.endswith(DATA_SUFFIXES):
            data.append(path)
        else:
            suffix = "".join(PurePosixPath(lower).suffixes[-1:]) or "(no extension)"
            advice = _UNSUPPORTED.get(suffix, "move it out of the source folder")
            raise InputError(
                f"{path}: unsupported file type {suffix} (ingest reads "
                f"{', '.join(DATA_SUFFIXES)}); {advice}"
            )
    if not data:
        raise InputError(f"{source}: empty folder: no {', '.join(DATA_SUFFIXES)} files")
    return SourceListing(data, skipped)


@dataclass(frozen=True)
class FileStamp:
    """A file's size and modification time, as its file system reports them."""

    size: int
    modified: datetime


def file_stamps(spark: SparkSession, paths: Sequence[str]) -> dict[str, FileStamp]:
    """Size and modification time (UTC) of each file, without reading it."""
    stamps = {}
    for path in paths:
        if is_local(path):
            st = _local(path).stat()
            size, millis = st.st_size, st.st_mtime_ns // 1_000_000
        else:
            jvm = spark.sparkContext._jvm
            hpath = jvm.org.apache.hadoop.fs.Path(path)  # type: ignore[union-attr]
            fs = hpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
            status = fs.getFileStatus(hpath)
            size, millis = int(status.getLen()), int(status.getModificationTime())
        modified = datetime.fromtimestamp(millis / 1000, tz=UTC).replace(tzinfo=None)
        stamps[path] = FileStamp(size, modified)
    return stamps


def content_hash(path: str) -> str | None:
    """SHA-256 of a local file's bytes (None for a file elsewhere: its size and modification
    time stand for its content)."""
    if not is_local(path):
        return None
    digest = hashlib.sha256()
    with _local(path).open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _list_hadoop(spark: SparkSession, source: str) -> list[str]:
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(source)  # type: ignore[union-attr]
    fs = path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    if not fs.exists(path):
        raise InputError(f"{source}: no such file or folder")
    files, it = [], fs.listFiles(path, True)
    while it.hasNext():
        status = it.next()
        name = status.getPath().toString()
        relative = name[len(source.rstrip("/")) :]
        if not any(part.startswith((".", "_")) for part in relative.split("/") if part):
            files.append(name)
    return sorted(files)


def file_format(path: str, setting: str) -> str:
    """``csv``, ``parquet`` or ``xlsx``: from ``ingest.format`` unless ``auto``, else the
    file's suffix."""
    if setting != "auto":
        return setting
    lower = path.lower()
    if lower.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if lower.endswith(EXCEL_SUFFIXES):
        return "xlsx"
    return "csv"


def head_bytes(spark: SparkSession, path: str, size: int = _HEAD_BYTES) -> bytes:
    """The first ``size`` bytes of a file (decompressed for ``.gz``)."""
    if is_local(path):
        with R.open_binary(str(_local(path))) as stream:
            return stream.read(size)
    row = spark.read.text(R.literal_path(path)).first()
    return (row[0] if row else "").encode("utf-8")


def csv_header(spark: SparkSession, path: str, *, delimiter: str) -> tuple[tuple[str, ...], str]:
    """A text file's column names and delimiter (``auto``: sniffed from the header line).

    Raises:
        InputError: The file is empty, binary, or its header names a column twice.
    """
    head = head_bytes(spark, path)
    if b"\x00" in head and not head.startswith((b"\xff\xfe", b"\xfe\xff")):
        kind = "a zip archive or an Excel workbook" if head.startswith(b"PK") else "binary data"
        raise InputError(
            f"{path}: not a text file (it holds {kind}); give workbooks the .xlsx extension"
        )
    text = R.head_text(head)
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise InputError(f"{path}: empty file (no header line)")
    sep = R.sniff_delimiter(lines[0]) if delimiter == "auto" else delimiter
    header = next(csv.reader(lines[:1], delimiter=sep), [])
    return check_columns(path, header), sep


def check_columns(path: str, header: Sequence[str | None]) -> tuple[str, ...]:
    """Header names stripped, unnamed columns named by position; a repeated name refused."""
    columns = tuple(
        (str(c).strip() if c is not None and str(c).strip() else f"_c{i}")
        for i, c in enumerate(header)
    )
    duplicated = sorted({c for c in columns if columns.count(c) > 1})
    if duplicated:
        raise InputError(f"{path}: column {duplicated[0]!r} appears twice in the header")
    return columns


def workbook_sheets(spark: SparkSession, path: str, *, sheets: list[str]) -> list[SourceFile]:
    """One :class:`SourceFile` per sheet to read (every sheet, or those in ``sheets``), each
    with its first non-empty row as the header. Empty sheets are left out.

    Raises:
        InputError: The file is not a readable workbook, or a sheet named in ``sheets`` is
            missing.
    """
    try:
        content = None if is_local(path) else _remote_bytes(spark, path)
        with R.open_binary(str(_local(path)) if content is None else path, content) as stream:
            names = R.sheet_names(stream)
            wanted = sheets or names
            absent = [s for s in wanted if s not in names]
            if absent:
                raise InputError(
                    f"{path}: no sheet {absent[0]!r} (ingest.sheets); sheets: {', '.join(names)}"
                )
            found = []
            for sheet in wanted:
                first = next(R.sheet_rows(stream, sheet), None)
                if first is not None:
                    found.append(
                        SourceFile(
                            path=str(_local(path)) if content is None else path,
                            source_file=f"{path}#{sheet}",
                            format="xlsx",
                            columns=check_columns(f"{path}#{sheet}", first),
                            sheet=sheet,
                        )
                    )
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{path}: not a readable .xlsx workbook ({cause(exc)})") from exc
    if not found:
        raise InputError(f"{path}: every sheet is empty")
    return found


def _remote_bytes(spark: SparkSession, path: str) -> bytes:
    row = spark.read.format("binaryFile").load(R.literal_path(path)).select("content").first()
    return bytes(row[0]) if row else b""


def cause(exc: BaseException) -> str:
    """The first line of an error's message that says what went wrong (a Spark error's own
    message, not the Java stack trace after it)."""
    text = str(getattr(exc, "desc", None) or exc).strip()
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("at ", "Traceback", "File ")):
            return re.sub(r"^(\w+\.)+\w+(Exception|Error): ", "", line)[:300]
    return exc.__class__.__name__
