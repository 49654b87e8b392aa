"""Ingest: source files → ``bronze.transactions`` and ``bronze.quarantine``.

Every data record of every file ends up in exactly one of the two tables: valid rows in the
canonical schema, the others with their raw record and the reason. Only new or changed files
are read (:func:`plan_batch` against ``ops.ingested_files``; ``workflow.full`` reads all), and
re-ingesting a file replaces that file's rows (Delta ``replaceWhere`` on ``source_file``), so
running twice adds nothing. A batch whose quarantine share breaches its gate
(:mod:`retailml.quality`) is refused before anything is written.

The steps, each in its own module: find the data files and read their headers
(:mod:`.sources`), match each header to a layout (:mod:`.layouts`), read every record as text
with its exact raw form (:mod:`.records`: CSV and workbooks in Spark's Python workers, Parquet
by Spark), decide each file's formats from its values and parse into the canonical columns
(:mod:`.canonical`).
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import reduce

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from retailml import quality as Q
from retailml import schemas as S
from retailml.errors import InputError
from retailml.generate import generate_data
from retailml.lakehouse import Lakehouse
from retailml.lineage import settings_hash
from retailml.settings import IngestSettings, QualitySettings, Settings
from retailml.stages.ingest import canonical as C
from retailml.stages.ingest import records as R
from retailml.stages.ingest.layouts import (
    CANONICAL,
    KNOWN_LAYOUTS,
    ONLINE_RETAIL,
    ONLINE_RETAIL_II,
    REES46,
    Layout,
    detect_layout,
    normalise,
)
from retailml.stages.ingest.sources import (
    FileStamp,
    SourceFile,
    SourceListing,
    cause,
    content_hash,
    csv_header,
    file_format,
    file_stamps,
    is_local,
    list_source_files,
    workbook_sheets,
)

__all__ = [
    "CANONICAL",
    "KNOWN_LAYOUTS",
    "ONLINE_RETAIL",
    "ONLINE_RETAIL_II",
    "REES46",
    "IngestResult",
    "Layout",
    "SourceFile",
    "detect_layout",
    "inspect",
    "list_source_files",
    "normalise",
    "read_records",
    "run",
]

# pandas writes nanosecond timestamps to Parquet, which Spark refuses ("Illegal Parquet type:
# INT64 (TIMESTAMP(NANOS,false))") unless told to read them as longs; they are then epoch
# nanoseconds, which the canonical parse reads by magnitude.
_NANOS_AS_LONG = "spark.sql.legacy.parquet.nanosAsLong"


@dataclass(frozen=True)
class IngestResult:
    """What one ingest run did; ``input_rows == bronze_rows + quarantine_rows`` always."""

    files: int
    input_rows: int
    bronze_rows: int
    quarantine_rows: int
    reasons: dict[str, int]
    batch_id: str
    skipped: list[str] = field(default_factory=list)
    decided: dict[str, str] = field(default_factory=dict)
    generated: str | None = None  # what was generated when no source was given
    unchanged: int = 0  # files left alone: read before, and neither they nor the settings changed
    gates: list[str] = field(default_factory=list)

    def headline(self) -> str:
        if not self.files:
            return f"nothing new ({self.unchanged} files unchanged)"
        return f"{self.bronze_rows:,} bronze rows, {self.quarantine_rows:,} quarantined"

    def summary(self) -> list[str]:
        lines = [self.generated] if self.generated else []
        if not self.files:
            return [
                *lines,
                f"nothing new: {self.unchanged} files unchanged since their last ingest; "
                "`retailml run --full` reads them again",
            ]
        if self.unchanged:
            lines.append(f"{self.unchanged} files unchanged since their last ingest: not read")
        lines.append(
            f"{self.files} files, {self.input_rows:,} input rows → bronze.transactions "
            f"{self.bronze_rows:,} + bronze.quarantine {self.quarantine_rows:,}"
        )
        if self.skipped:
            names = ", ".join(p.rsplit("/", 1)[-1] for p in self.skipped[:5])
            more = f" and {len(self.skipped) - 5} more" if len(self.skipped) > 5 else ""
            what = "file that is" if len(self.skipped) == 1 else "files that are"
            lines.append(f"  skipped {len(self.skipped)} {what} not data: {names}{more}")
        lines += [f"  read {path} with {how}" for path, how in self.decided.items()]
        lines += [f"  quarantined {n:>8,}  {reason}" for reason, n in self.reasons.items()]
        return lines + [f"  {gate}" for gate in self.gates]


def inspect(spark: SparkSession, path: str, cfg: IngestSettings) -> list[SourceFile]:
    """The sources of one file (a workbook has one per sheet) with their column names, read
    without reading the data.

    Raises:
        InputError: The file is empty or unreadable; the message names it and the cause.
    """
    fmt = file_format(path, cfg.format)
    if fmt == "xlsx":
        return workbook_sheets(spark, path, sheets=cfg.sheets)
    if fmt == "parquet":
        try:
            columns = tuple(R.parquet_frame(spark, path).columns)
        except Exception as exc:
            raise InputError(f"{path}: not a readable Parquet file ({cause(exc)})") from exc
        return [SourceFile(path, path, "parquet", columns)]
    columns, delimiter = csv_header(spark, path, delimiter=cfg.delimiter)
    return [SourceFile(path, path, "csv", columns, delimiter)]


def read_records(
    spark: SparkSession,
    sources: list[SourceFile],
    layouts: list[Layout],
    *,
    encoding: str,
    null_values: list[str],
) -> DataFrame:
    """Every record of every source as :data:`~.records.RECORDS_SCHEMA`, in one plan.

    Args:
        spark: The session.
        sources: The sources, with their columns.
        layouts: Each source's layout.
        encoding: ``ingest.encoding``.
        null_values: ``ingest.null_values``.
    """
    parts: list[DataFrame] = []
    specs = [
        (s.read_spec(lay, encoding=encoding, null_values=null_values), is_local(s.path))
        for s, lay in zip(sources, layouts, strict=True)
        if s.format != "parquet"
    ]
    for local in (True, False):
        chosen = [spec for spec, here in specs if here == local]
        if chosen:
            parts.append(R.text_records(spark, chosen, local=local))
    for s, lay in zip(sources, layouts, strict=True):
        if s.format == "parquet":
            parts.append(
                R.parquet_records(
                    R.parquet_frame(spark, s.path),
                    s.source_file,
                    sources=[lay.columns.get(c) for c in S.CANONICAL_COLUMNS],
                    constants=[lay.constants.get(c) for c in S.CANONICAL_COLUMNS],
                    null_values=null_values,
                )
            )
    return reduce(DataFrame.unionByName, parts)


@contextmanager
def _nanosecond_parquet(spark: SparkSession) -> Iterator[None]:
    before = spark.conf.get(_NANOS_AS_LONG, "false")
    spark.conf.set(_NANOS_AS_LONG, "true")
    try:
        yield
    finally:
        spark.conf.set(_NANOS_AS_LONG, before or "false")


def _replace_condition(sources: list[SourceFile]) -> str:
    """Rows of these files: each path, and every sheet of each workbook (even one since
    removed from it)."""

    def sql(value: str) -> str:
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"

    paths = sorted({s.path for s in sources if s.format != "xlsx"})
    books = sorted({s.source_file.rsplit("#", 1)[0] for s in sources if s.format == "xlsx"})
    terms = [f"{S.SOURCE_FILE} IN ({', '.join(sql(p) for p in paths)})"] if paths else []
    terms += [f"startswith({S.SOURCE_FILE}, {sql(b + '#')})" for b in books]
    return " OR ".join(terms)


def run(settings: Settings, spark: SparkSession, *, source: str | None = None) -> IngestResult:
    """Ingest a file or folder into bronze; see the module docstring.

    Args:
        settings: ``settings.ingest`` says how to read. Without a source (here or in
            ``ingest.source``) the data set of ``settings.generate`` is generated first (or
            reused when already there) and read.
        spark: The session.
        source: A file or folder; overrides ``settings.ingest.source``.

    Raises:
        InputError: No files, an unsupported or unreadable file, a file missing a column of
            its layout, a file whose day/month order cannot be decided. Nothing is written
            in that case.
    """
    cfg = settings.ingest
    generated = None
    location = source or cfg.source
    if not location:
        started = time.monotonic()
        data = generate_data(settings)
        location = str(data.out_dir)
        generated = (
            f"data: {data.lines:,} generated lines in {len(data.files)} files under "
            f"{data.out_dir} ({time.monotonic() - started:.1f} s)"
        )
    location = settings.path(location)
    lake = Lakehouse(settings, spark)
    with _nanosecond_parquet(spark):
        listing = list_source_files(spark, location)
        plan = plan_batch(lake, listing.files, cfg, full=settings.workflow.full)
        if not plan.read:
            return IngestResult(
                files=0,
                input_rows=0,
                bronze_rows=0,
                quarantine_rows=0,
                reasons={},
                batch_id="",
                skipped=listing.skipped,
                generated=generated,
                unchanged=len(listing.files),
            )
        result = _ingest(lake, listing, plan, location, cfg=cfg, quality=settings.quality)
    return dataclasses.replace(result, generated=generated)


@dataclass(frozen=True)
class BatchPlan:
    """Which files of a source this ingest reads, and what it knows of them.

    Attributes:
        read: The files to read: new, changed (size or content hash), or read under other
            ingest settings; all of them with ``workflow.full``.
        unchanged: The files left alone.
        stamps: Size and modification time of every file to read.
        hashes: Content hash of every file to read (None off the local file system).
        settings_hash: The hash of the ingest settings the batch is read with.
        previous_rows_per_file: Input rows per file of the last batch (None: first batch).
    """

    read: list[str]
    unchanged: list[str]
    stamps: dict[str, FileStamp]
    hashes: dict[str, str | None]
    settings_hash: str
    previous_rows_per_file: float | None


def plan_batch(
    lake: Lakehouse, files: list[str], cfg: IngestSettings, *, full: bool = False
) -> BatchPlan:
    """Compare the source's files with ``ops.ingested_files``. A file whose size and
    modification time are as recorded is unchanged without being read; one whose time alone
    changed (copied, touched) is hashed, and unchanged if its content hash is as recorded."""
    how = settings_hash(cfg.model_copy(update={"source": None}))
    known = {}
    if lake.exists("ops.ingested_files"):  # one row per file ever ingested, not per data row
        known = {r[S.PATH]: r for r in lake.read("ops.ingested_files").collect()}
    stamps = file_stamps(lake.spark, files)
    read, unchanged, hashes = [], [], {}
    for path in files:
        before, stamp = known.get(path), stamps[path]
        if not full and before is not None and before[S.SETTINGS_HASH] == how:
            if (before[S.SIZE_BYTES], before[S.MODIFIED_AT]) == (stamp.size, stamp.modified):
                unchanged.append(path)
                continue
            digest = content_hash(path)
            if digest is not None and (before[S.SIZE_BYTES], before[S.SHA256]) == (
                stamp.size,
                digest,
            ):
                unchanged.append(path)
                continue
            hashes[path] = digest
        read.append(path)
    hashes.update({p: content_hash(p) for p in read if p not in hashes})
    previous = None
    if known:
        last = max(known.values(), key=lambda r: r[S.INGESTED_AT])[S.BATCH_ID]
        batch = [r for r in known.values() if r[S.BATCH_ID] == last]
        previous = sum(int(r["input_rows"]) for r in batch) / len(batch)
    return BatchPlan(read, unchanged, {p: stamps[p] for p in read}, hashes, how, previous)


def _ingest(
    lake: Lakehouse,
    listing: SourceListing,
    plan: BatchPlan,
    location: str,
    *,
    cfg: IngestSettings,
    quality: QualitySettings,
) -> IngestResult:
    spark = lake.spark
    # Check every file before writing anything, so a bad file leaves the tables untouched.
    sources = [s for path in plan.read for s in inspect(spark, path, cfg)]
    mapping = cfg.column_mapping or None
    layouts = [detect_layout(s.columns, source=s.source_file, mapping=mapping) for s in sources]

    # Read once: the format statistics, the counts and both writes all use these records.
    records = read_records(
        spark, sources, layouts, encoding=cfg.encoding, null_values=cfg.null_values
    ).persist()
    rows: DataFrame | None = None
    try:
        decisions = C.decide_formats(
            [r.asDict() for r in C.format_stats(records).collect()],
            names={
                s.source_file: lay.columns.get(S.EVENT_TIME, S.EVENT_TIME)
                for s, lay in zip(sources, layouts, strict=True)
            },
            decimal=cfg.decimal,
            explicit_formats=bool(cfg.timestamp_formats),
        )
        batch_id = uuid.uuid4().hex
        rows = (
            C.to_canonical(
                records,
                C.file_facts(
                    spark,
                    {s.source_file: lay for s, lay in zip(sources, layouts, strict=True)},
                    decisions,
                ),
                timestamp_formats=cfg.timestamp_formats,
            )
            .withColumn(S.INGESTED_AT, F.current_timestamp())
            .withColumn(S.BATCH_ID, F.lit(batch_id))
            .persist()
        )
        reason_head = F.regexp_extract(F.col(S.REASON), r"^([^(]*?)\s*(\(|$)", 1)
        path_of = {s.source_file: s.path for s in sources}
        counts: dict[str, int] = {}
        per_file: dict[str, list[int]] = {p: [0, 0] for p in plan.read}  # [input, quarantined]
        for r in rows.groupBy(S.SOURCE_FILE, reason_head.alias("reason")).count().collect():
            reason, n = r["reason"] or "", int(r["count"])
            counts[reason] = counts.get(reason, 0) + n
            tally = per_file[path_of[r[S.SOURCE_FILE]]]
            tally[0] += n
            tally[1] += n if reason else 0
        records.unpersist()
        input_rows = sum(counts.values())
        if input_rows == 0:
            raise InputError(f"{location}: no data rows (only headers or blank lines)")
        gates = Q.enforce(lake, batch_id, "ingest", _gates(quality, plan, per_file))
        condition = _replace_condition(sources)
        good = rows.where(F.col(S.REASON).isNull()).drop(S.REASON, S.RAW)
        bad = rows.where(F.col(S.REASON).isNotNull()).select(
            S.RAW, S.REASON, S.SOURCE_FILE, S.SOURCE_LAYOUT, S.INGESTED_AT, S.BATCH_ID
        )
        lake.replace_where("bronze.transactions", good, condition)
        lake.replace_where("bronze.quarantine", bad, condition)
        _record_files(lake, plan, per_file, batch_id)
    finally:
        records.unpersist()
        if rows is not None:
            rows.unpersist()
    quarantined = {k: v for k, v in counts.items() if k}
    return IngestResult(
        files=len(plan.read),
        input_rows=input_rows,
        bronze_rows=counts.get("", 0),
        quarantine_rows=sum(quarantined.values()),
        reasons=dict(sorted(quarantined.items(), key=lambda kv: -kv[1])),
        batch_id=batch_id,
        skipped=listing.skipped,
        decided={d.source_file: d.describe() for d in decisions if d.describe()},
        unchanged=len(plan.unchanged),
        gates=gates,
    )


def _gates(cfg: QualitySettings, plan: BatchPlan, per_file: dict[str, list[int]]) -> list[Q.Check]:
    """The ingest gates of a batch: its quarantine share, and its rows per file against the
    previous batch's."""
    rows = sum(t[0] for t in per_file.values())
    quarantined = sum(t[1] for t in per_file.values())
    shares = {p: t[1] / t[0] for p, t in per_file.items() if t[0]}
    per = rows / len(per_file) if per_file else 0.0
    previous = plan.previous_rows_per_file
    limit, bounds = cfg.max_quarantine_share, cfg.batch_rows_ratio
    return [
        Q.share(cfg, "quarantine_share", quarantined, rows, limit, Q.worst_file(shares)),
        Q.ratio(cfg, "batch_rows_ratio", per / previous if previous else None, bounds),
    ]


def _record_files(
    lake: Lakehouse, plan: BatchPlan, per_file: dict[str, list[int]], batch_id: str
) -> None:
    """Upsert the batch's files into ``ops.ingested_files``, after bronze is written."""
    version = lake.version("bronze.transactions")
    rows = [
        (path, plan.stamps[path].size, plan.stamps[path].modified, plan.hashes.get(path),
         tally[0], tally[0] - tally[1], tally[1], batch_id, version, plan.settings_hash)
        for path, tally in per_file.items()
    ]  # fmt: skip
    written = StructType([f for f in S.INGESTED_FILES.fields if f.name != S.INGESTED_AT])
    frame = lake.spark.createDataFrame(rows, written).withColumn(
        S.INGESTED_AT, F.current_timestamp()
    )
    lake.merge("ops.ingested_files", frame, [S.PATH])
