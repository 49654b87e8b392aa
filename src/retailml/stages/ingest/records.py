"""Source files → records: one row per data record, the text of each canonical column and the
record's exact raw form.

Text files and workbooks are read in Spark's Python workers, one file (or sheet) per task,
streaming, so memory stays bounded by a batch of records whatever the file's size:

- **CSV** with Python's :mod:`csv` module, which implements RFC 4180: fields may be quoted,
  quotes inside are doubled (``"PHOTO FRAME 7"" SQUARE"``), and a quoted field may hold the
  delimiter and line breaks. ``raw`` is the record's exact text, all its lines included. A
  quote that never closes would swallow the rest of the file: a record spanning more than
  :data:`MAX_RECORD_LINES` lines is cut back to its first line, which is quarantined as
  malformed, and reading resumes on the next line.
- **Encodings**: UTF-8 (a byte-order mark is dropped), UTF-16 with a mark, or, when a file is not
  valid UTF-8, the single-byte code page in which ``charset-normalizer`` finds the lines that
  are not ASCII least messy (ties go to the most common Windows code page, cp1252 first); or
  the ``ingest.encoding`` setting. A record with bytes the chosen encoding cannot decode is
  quarantined, never stored with replacement characters.
- **Excel workbooks** (``.xlsx``) with openpyxl in read-only mode, which streams a sheet's XML
  instead of loading the sheet (measured on a 1M-row workbook: 87 MB peak against 327 MB for
  python-calamine, which is 12× faster but holds whole sheets). Cells become text: dates in
  ISO-8601, whole floats without ``.0``; ``raw`` is the row as JSON, header → value.

Parquet is read by Spark itself (columnar and typed), then brought to the same shape
(:func:`parquet_records`). Everything downstream sees :data:`RECORDS_SCHEMA`: each canonical
column's text, taken from the source column the file's layout names (or the layout's
constant), trimmed, and null when empty or one of the missing-value tokens.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import datetime as dt
import gc
import gzip
import io
import itertools
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any, NamedTuple

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from retailml import schemas as S

# The shape every source is brought to before parsing into the canonical columns.
PROBLEM = "problem"
ENCODING = "encoding"


def text_column(canonical: str) -> str:
    """The records' column with the text of a canonical column."""
    return f"_t_{canonical}"


RECORDS_SCHEMA = ", ".join(
    [f"{c} string" for c in (S.SOURCE_FILE, S.RAW, PROBLEM, ENCODING)]
    + [f"{text_column(c)} string" for c in S.CANONICAL_COLUMNS]
)

# A quoted field may span lines, but not this many: beyond, the quote is taken as unclosed.
MAX_RECORD_LINES = 100
# Records per Arrow batch a worker hands back to Spark.
BATCH_RECORDS = 8192
# Bytes of non-ASCII lines given to the encoding detector.
DETECT_SAMPLE_BYTES = 256 * 1024
# Among encodings the detector finds equally plausible, the most common first.
PREFERRED_ENCODINGS = (
    "cp1252",
    "cp1250",
    "cp1251",
    "cp1253",
    "cp1254",
    "cp1257",
    "iso8859_15",
    "latin_1",
)
_BOMS = (
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_CHUNK = 1 << 20


@dataclass(frozen=True)
class ReadSpec:
    """What a worker needs to read one source: a text file, or one sheet of a workbook.

    Attributes:
        path: Where to open it: a local path, or the key of a file Spark read as binary.
        source_file: The lineage name of its rows (the path, plus ``#sheet`` for a sheet).
        kind: ``csv`` or ``xlsx``.
        columns: The header's column names; a record with another number of fields is
            malformed.
        positions: For each canonical column (in ``schemas.CANONICAL_COLUMNS`` order), its
            position in the header, or None when the layout has no such column.
        constants: For each canonical column, the layout's constant (used where the position
            is None).
        delimiter: CSV field delimiter.
        encoding: ``auto`` or a Python codec name.
        sheet: The sheet of a workbook.
        null_values: Texts that mean a missing value.
    """

    path: str
    source_file: str
    kind: str
    columns: tuple[str, ...]
    positions: tuple[int | None, ...]
    constants: tuple[str | None, ...]
    delimiter: str = ","
    encoding: str = "auto"
    sheet: str | None = None
    null_values: tuple[str, ...] = ()


class Record(NamedTuple):
    """One data record of a source, before any parsing of its values (a tuple: millions are
    made, and a tuple is the cheapest object Python makes)."""

    fields: list[str] | list[str | None] | None
    raw: str
    problem: str | None = None


# --- opening and decoding ------------------------------------------------------------------


def open_binary(path: str, content: bytes | None = None) -> IO[bytes]:
    """A seekable binary stream of a source: ``content`` when Spark read the file, else the
    local file; ``.gz`` files are decompressed (a gzip stream seeks back to its start by
    reading it again, which is all :func:`decide_encoding` needs)."""
    gz = path.lower().endswith(".gz")
    stream: IO[bytes]
    if content is not None:
        stream = io.BytesIO(content)
        return gzip.GzipFile(fileobj=stream) if gz else stream  # type: ignore[return-value]
    return gzip.open(path, "rb") if gz else open(path, "rb")  # type: ignore[return-value]


def decide_encoding(stream: IO[bytes], setting: str = "auto") -> str:
    """The encoding to read a text source with, leaving the stream at its start.

    Args:
        stream: A seekable binary stream.
        setting: ``auto`` or a Python codec name (used as given).

    Returns:
        A Python codec name: ``utf-8-sig`` / ``utf-16`` for a byte-order mark, ``utf-8`` for
        valid UTF-8, else the detected single-byte code page (see the module docstring).
    """
    stream.seek(0)
    if setting != "auto":
        return setting
    head = stream.read(4)
    stream.seek(0)
    for bom, name in _BOMS:
        if head.startswith(bom):
            return name
    decoder = codecs.getincrementaldecoder("utf-8")()
    sample, size, valid = [], 0, True
    while chunk := stream.read(_CHUNK):
        if valid:
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError:
                valid = False
        if not chunk.isascii() and size < DETECT_SAMPLE_BYTES:
            for line in chunk.split(b"\n"):
                if not line.isascii():
                    sample.append(line)
                    size += len(line) + 1
    stream.seek(0)
    if valid:
        return "utf-8"
    return detect_single_byte(b"\n".join(sample)[:DETECT_SAMPLE_BYTES])


def detect_single_byte(sample: bytes) -> str:
    """The single-byte code page that best explains ``sample`` (bytes that are not UTF-8).

    charset-normalizer measures how messy the text is in every code page that decodes it; the
    code pages with the least mess are kept. Its coherence score (letter frequencies of a
    language) is left out: on the few accented names of a retail file it is noise (``ŒUF £5
    CAFÉ, Réunion`` scores higher as cp1250, with Ś and Ł). Among the least messy, the most
    common Windows code page wins (:data:`PREFERRED_ENCODINGS`, cp1252 first). Text that is
    messy in cp1252 — Polish in cp1250, Russian in cp1251 — leaves cp1252 out and is read
    right. See https://charset-normalizer.readthedocs.io (``from_bytes``).
    """
    from charset_normalizer import from_bytes

    matches = [m for m in from_bytes(sample) if not m.encoding.startswith("utf")]
    if not matches:
        return "cp1252" if _decoded(sample, "cp1252") is not None else "latin_1"
    least = min(m.chaos for m in matches)
    tied = [m for m in matches if m.chaos == least]
    # charset-normalizer lists one of several code pages that decode a sample identically
    # (German umlauts are the same bytes in cp1250 and cp1252): compare the texts.
    texts = {str(m) for m in tied}
    for encoding in PREFERRED_ENCODINGS:
        if _decoded(sample, encoding) in texts:
            return encoding
    return str(tied[0].encoding)


def _decoded(data: bytes, encoding: str) -> str | None:
    try:
        return data.decode(encoding)
    except UnicodeDecodeError:
        return None


def head_text(data: bytes) -> str:
    """The first bytes of a text file as text, for reading its header (BOM dropped)."""
    for bom, name in _BOMS:
        if data.startswith(bom):
            return data.decode(name, errors="replace")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A cut multi-byte character at the end of the head is not an encoding problem.
        if exc.start >= len(data) - 3:
            return data[: exc.start].decode("utf-8")
        return data.decode("cp1252", errors="replace")


def sniff_delimiter(header: str, candidates: str = ",;\t|") -> str:
    """The delimiter that splits a header line into the most fields (``,`` when none does)."""
    counts = {d: len(next(csv.reader([header], delimiter=d), [])) for d in candidates}
    best = max(candidates, key=lambda d: counts[d])
    return best if counts[best] > 1 else ","


# --- CSV -----------------------------------------------------------------------------------


class _RunawayQuote(Exception):
    """A record grew past MAX_RECORD_LINES lines: its opening quote is taken as unclosed."""


_SURROGATE = re.compile("[\udc80-\udcff]")


def _escape_undecodable(text: str) -> str:
    return _SURROGATE.sub(lambda m: f"\\x{ord(m.group()) - 0xDC00:02x}", text)


def csv_records(
    lines: Iterable[str], *, delimiter: str, fields: int, encoding: str = "utf-8"
) -> Iterator[Record]:
    """The data records of a CSV text (its header line included in ``lines``, and skipped).

    Args:
        lines: The text's lines, with their line endings (``newline=""`` when opening), decoded
            with ``errors="surrogateescape"`` so undecodable bytes show up instead of failing.
        delimiter: The field delimiter.
        fields: How many fields a record must have (the header's).
        encoding: The encoding the text was decoded with, for the problem text.

    Yields:
        One :class:`Record` per record: blank records (no field with a value) are not records.
        ``raw`` is the record's exact text without its final line ending.
    """
    pending: Iterator[str] = iter(lines)
    header_done = False
    while True:
        consumed: list[str] = []

        def feed(source: Iterator[str], consumed: list[str] = consumed) -> Iterator[str]:
            for line in source:
                consumed.append(line)
                if len(consumed) > MAX_RECORD_LINES:
                    raise _RunawayQuote
                yield line

        # strict: a quote left open at the end of the file, or text after a closing quote, is
        # an error rather than a field that silently swallows what follows.
        reader = csv.reader(feed(pending), delimiter=delimiter, strict=True)
        try:
            for values in reader:
                raw = "".join(consumed).rstrip("\r\n")
                consumed.clear()
                # The common record, checked with C-level calls only: the right number of
                # fields, something in them, nothing undecodable.
                if (
                    header_done
                    and len(values) == fields
                    and raw.isascii()
                    and "".join(values).strip()
                ):
                    yield Record(values, raw)
                    continue
                if not any(v.strip() for v in values):
                    continue
                if not header_done:
                    header_done = True
                    continue
                yield _record(values, raw, fields=fields, encoding=encoding)
            return
        except (_RunawayQuote, csv.Error) as exc:
            first, rest = consumed[0], consumed[1:]
            if header_done:
                unclosed = isinstance(exc, _RunawayQuote) or "end of data" in str(exc)
                reason = "unclosed quote" if unclosed else str(exc)
                yield Record(
                    None, _escape_undecodable(first.rstrip("\r\n")), f"malformed line: {reason}"
                )
            header_done = True
            pending = itertools.chain(rest, pending)


def _record(values: list[str], raw: str, *, fields: int, encoding: str) -> Record:
    if _SURROGATE.search(raw):
        return Record(None, _escape_undecodable(raw), f"not valid {encoding} text")
    if len(values) != fields:
        # Excel pads short rows with empty trailing fields; anything else is malformed.
        extra = values[fields:]
        if len(values) > fields and not any(v.strip() for v in extra):
            values = values[:fields]
        else:
            return Record(
                None, raw, f"malformed line: expected {fields} fields (found {len(values)})"
            )
    return Record(list(values), raw)


def read_csv(stream: IO[bytes], spec: ReadSpec) -> tuple[str, Iterator[Record]]:
    """The encoding used and the records of a CSV stream (see :func:`csv_records`)."""
    encoding = decide_encoding(stream, spec.encoding)
    text = io.TextIOWrapper(stream, encoding=encoding, errors="surrogateescape", newline="")
    shown = "utf-8" if encoding == "utf-8-sig" else encoding
    return shown, csv_records(
        text, delimiter=spec.delimiter, fields=len(spec.columns), encoding=shown
    )


# --- Excel ---------------------------------------------------------------------------------


def cell_text(value: Any) -> str | None:
    """A workbook cell as text: ISO-8601 dates, whole numbers without a fraction."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    return str(value)


def sheet_names(stream: IO[bytes]) -> list[str]:
    """The sheets of a workbook, in order (reads only the workbook's index)."""
    from openpyxl import load_workbook

    book = load_workbook(stream, read_only=True, data_only=True)
    try:
        return list(book.sheetnames)
    finally:
        book.close()


def sheet_rows(stream: IO[bytes], sheet: str) -> Iterator[list[str | None]]:
    """A sheet's non-empty rows as cell texts, streamed (openpyxl read-only mode)."""
    from openpyxl import load_workbook

    book = load_workbook(stream, read_only=True, data_only=True)
    try:
        for row in book[sheet].iter_rows(values_only=True):
            texts = [cell_text(v) for v in row]
            if any(t is not None and t.strip() for t in texts):
                yield texts
    finally:
        book.close()


def read_sheet(stream: IO[bytes], spec: ReadSpec) -> Iterator[Record]:
    """The data records of one sheet: the first non-empty row is the header."""
    rows = sheet_rows(stream, spec.sheet or "")
    header = next(rows, None)
    if header is None:
        return
    width = len(spec.columns)
    for texts in rows:
        extra = texts[width:]
        values = texts[:width] + [None] * (width - len(texts))
        raw = json.dumps(
            {c: v for c, v in zip(spec.columns, values, strict=True)}
            | ({f"_extra{i}": v for i, v in enumerate(extra) if v is not None}),
            ensure_ascii=False,
        )
        if any(v is not None and v.strip() for v in extra):
            yield Record(None, raw, f"malformed row: expected {width} cells (found {len(texts)})")
        else:
            yield Record(values, raw)


# --- in Spark's Python workers -------------------------------------------------------------


def records_of(spec: ReadSpec, content: bytes | None = None) -> tuple[str, Iterator[Record]]:
    """The encoding (``""`` for a workbook) and records of one source."""
    stream = open_binary(spec.path, content)
    if spec.kind == "xlsx":
        return "", _closing(read_sheet(stream, spec), stream)
    encoding, records = read_csv(stream, spec)
    return encoding, _closing(records, stream)


def _closing(records: Iterator[Record], stream: IO[bytes]) -> Iterator[Record]:
    try:
        yield from records
    finally:
        stream.close()


def record_batches(specs: list[ReadSpec], content: bytes | None = None) -> Iterator[Any]:
    """Arrow record batches of :data:`RECORDS_SCHEMA` for some sources (run in a worker)."""
    for spec in specs:
        encoding, records = records_of(spec, content)
        with _cycle_collector(on=spec.kind == "xlsx"):
            while batch := list(itertools.islice(records, BATCH_RECORDS)):
                yield _batch(batch, spec, encoding or None)


@contextlib.contextmanager
def _cycle_collector(*, on: bool) -> Iterator[None]:
    """CSV records hold no reference cycles: reference counting frees them, and the automatic
    cycle collector would only re-scan the millions of young lists (40% of CSV reading time).
    openpyxl leaves cycles behind, so for a workbook it stays on (measured on a 500k-row sheet:
    292 MB peak without it, 207 MB with; collecting once a batch instead: 239 MB)."""
    was = gc.isenabled()
    gc.enable() if on else gc.disable()
    try:
        yield
    finally:
        gc.enable() if was else gc.disable()


def _batch(batch: list[Record], spec: ReadSpec, encoding: str | None) -> Any:
    """One Arrow batch: the canonical columns' texts are cut column by column (a list
    comprehension per column is far cheaper than a Python loop per record)."""
    import pyarrow as pa

    n = len(batch)
    values, raws, problems = zip(*batch, strict=True)
    width = len(spec.columns)
    empty = [None] * width
    fields = list(zip(*[v if v is not None else empty for v in values], strict=True))
    missing = frozenset(spec.null_values) | {""}
    texts = []
    for position, constant in zip(spec.positions, spec.constants, strict=True):
        if position is None:
            texts.append(pa.array([constant] * n, pa.string()))
            continue
        cleaned = [
            None if v is None or (t := v.strip()) in missing else t for v in fields[position]
        ]
        texts.append(pa.array(cleaned, pa.string()))
    return pa.RecordBatch.from_arrays(
        [
            pa.array([spec.source_file] * n, pa.string()),
            pa.array(raws, pa.string()),
            pa.array(problems, pa.string()),
            pa.array([encoding] * n, pa.string()),
            *texts,
        ],
        names=[S.SOURCE_FILE, S.RAW, PROBLEM, ENCODING, *map(text_column, S.CANONICAL_COLUMNS)],
    )


# --- on the driver: the Spark jobs that run the readers -----------------------------------


def literal_path(path: str) -> str:
    """A path Spark reads literally: Hadoop globbing would take ``[``, ``*``, ``?``, ``{`` in a
    file name (an exported sheet name, say) as a pattern, so they are escaped."""
    return re.sub(r"([\\\[\]{}*?])", r"\\\1", path)


def text_records(spark: SparkSession, specs: list[ReadSpec], *, local: bool) -> DataFrame:
    """:data:`RECORDS_SCHEMA` rows of text files and sheets, read in the Python workers.

    Args:
        spark: The session.
        specs: What to read. Local files are opened by the workers themselves, one source per
            task; other URIs (``s3a://``, ``dbfs:/``…) are read by Spark as whole binary files
            first (so one file must fit in a task's memory).
        local: Whether the specs' paths are local files.
    """
    schema = RECORDS_SCHEMA
    if local:
        ordered = list(specs)

        def read_local(batches: Iterator[Any]) -> Iterator[Any]:
            for batch in batches:
                for i in batch.column("id").to_pylist():
                    yield from record_batches([ordered[i]])

        # range() puts exactly one id in each partition: one source per task.
        return spark.range(len(ordered), numPartitions=len(ordered)).mapInArrow(read_local, schema)
    by_path: dict[str, list[ReadSpec]] = {}
    for spec in specs:
        by_path.setdefault(spec.path, []).append(spec)

    def read_remote(batches: Iterator[Any]) -> Iterator[Any]:
        for batch in batches:
            paths = batch.column("path").to_pylist()
            for path, content in zip(paths, batch.column("content").to_pylist(), strict=True):
                yield from record_batches(by_path[path], content)

    files = spark.read.format("binaryFile").load([literal_path(p) for p in by_path])
    return files.select("path", "content").mapInArrow(read_remote, schema)


def parquet_frame(spark: SparkSession, path: str) -> DataFrame:
    """A Parquet file as Spark reads it (glob characters in its name taken literally)."""
    return spark.read.parquet(literal_path(path))


def parquet_records(
    df: DataFrame,
    source_file: str,
    *,
    sources: Sequence[str | None],
    constants: Sequence[str | None],
    null_values: Sequence[str],
) -> DataFrame:
    """A Parquet file's rows as :data:`RECORDS_SCHEMA`, ``raw`` the row as JSON.

    Args:
        df: The file as Spark reads it.
        source_file: Its lineage name.
        sources: For each canonical column, the source column holding it, or None.
        constants: For each canonical column, the layout's constant where it has no column.
        null_values: Texts that mean a missing value.
    """

    def text(name: str | None, constant: str | None) -> Column:
        if name is None:
            return F.lit(constant).cast("string")
        column = F.col(f"`{name}`")
        kind = df.schema[name].dataType
        if isinstance(kind, (T.TimestampType, T.TimestampNTZType)):
            value = F.date_format(column, "yyyy-MM-dd HH:mm:ss.SSSSSS")
        elif isinstance(kind, (T.StructType, T.ArrayType, T.MapType)):
            value = F.to_json(column)
        else:
            value = F.trim(column.cast("string"))
        return (
            F.when((value != "") & ~value.isin(*null_values), value)
            if null_values
            else (F.when(value != "", value))
        )

    return df.select(
        F.lit(source_file).alias(S.SOURCE_FILE),
        F.to_json(F.struct(*[F.col(f"`{c}`") for c in df.columns])).alias(S.RAW),
        F.lit(None).cast("string").alias(PROBLEM),
        F.lit(None).cast("string").alias(ENCODING),
        *[
            text(name, constant).alias(text_column(c))
            for c, name, constant in zip(S.CANONICAL_COLUMNS, sources, constants, strict=True)
        ],
    )
