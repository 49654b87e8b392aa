"""Records → the canonical columns, each value parsed or the row given a reason.

Every source's records (:data:`~retailml.stages.ingest.records.RECORDS_SCHEMA`: each
canonical column's text, already trimmed, with the missing-value tokens of
``ingest.null_values`` — ``nan``, ``None``, ``NULL``, ``N/A``…, what pandas and spreadsheets
write for nothing — as null) are parsed in one plan, whatever the number of files: what
differs per file — its layout's name and column names, and the formats decided from its
values — is a row of a small *facts* table joined to the records (:func:`file_facts`,
:func:`decide_formats`).

Values:

- ids (customer, invoice, product) written as floats are integers as text: ``17850.0`` →
  ``17850``, ``1.2345678E7`` → ``12345678``;
- numbers follow the file's decimal mark (``ingest.decimal``, or decided per file: a value
  ending in a comma and one, two or four-plus digits votes for ``,``, likewise for ``.``;
  three digits could be a thousands group and do not vote). Thousands separators (the other
  mark, spaces, apostrophes) are accepted only in groups of three, so ``2,55`` in a file with
  decimal points is refused, never read as 255. A currency sign is dropped;
- times: ISO-8601 with a ``T`` or a space, a fraction, ``Z``, an offset or a zone name,
  stored in UTC; numeric dates with ``/``, ``.`` or ``-`` whose day and month order is decided
  per file from its values (a first field above 12 anywhere means day-first, a second above
  12 month-first; a file with neither is refused in one line naming
  ``ingest.timestamp_formats``), two-digit years (``yy`` < 70 → 20yy), 12-hour clocks with
  AM/PM; ``yyyy/MM/dd``; epoch seconds, milliseconds, microseconds or nanoseconds (by
  magnitude, as pandas writes nanosecond timestamps to Parquet). Patterns in
  ``ingest.timestamp_formats`` are tried first when set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from retailml import schemas as S
from retailml.errors import InputError
from retailml.stages.ingest.layouts import Layout
from retailml.stages.ingest.records import ENCODING, PROBLEM, text_column

EVENT_TYPES = (S.PURCHASE, S.VIEW, S.CART, S.REMOVE_FROM_CART)

# Per-file facts (joined to every record of the file).
_LAYOUT = "_layout"
DAY_FIRST = "_day_first"
DECIMAL = "_decimal"


def _name(column: str) -> str:
    return f"_n_{column}"


# A numeric date: day and month (in either order), year, optional time and AM/PM.
_NUMERIC_DATE = (
    r"^(\d{1,2})[/.\-](\d{1,2})[/.\-](\d{4}|\d{2})"
    r"(?:[ T,]+(\d{1,2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,9}))?)?(?:\s*([AaPp])\.?[Mm]\.?)?)?$"
)
_YEAR_FIRST_DATE = (
    r"^(\d{4})[/.](\d{1,2})[/.](\d{1,2})"
    r"(?:[ T]+(\d{1,2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,9}))?)?)?$"
)
_ISO_DATE = r"^\d{4}-\d{1,2}-\d{1,2}([ T].*)?$"
_EPOCH = r"^\d{9,19}$"
# A value whose last separator is followed by 1-2 or 4+ digits shows the decimal mark.
_VOTES_COMMA = r",(\d{1,2}|\d{4,})$"
_VOTES_POINT = r"\.(\d{1,2}|\d{4,})$"


@dataclass(frozen=True)
class FormatDecision:
    """What was decided for one file's values, from the values themselves."""

    source_file: str
    day_first: bool | None
    decimal: str
    encoding: str | None
    numeric_dates: int

    def describe(self) -> str:
        parts = []
        if self.encoding and self.encoding != "utf-8":
            parts.append(f"encoding {self.encoding}")
        if self.numeric_dates:
            parts.append("dates day-first" if self.day_first else "dates month-first")
        if self.decimal == ",":
            parts.append("decimal comma")
        return ", ".join(parts)


def file_facts(
    spark: SparkSession,
    layouts: dict[str, Layout],
    decisions: Sequence[FormatDecision],
) -> DataFrame:
    """The facts table: per source file, its layout, its column names and the formats decided
    for it (one row per file, broadcast to its records).

    Args:
        spark: The session.
        layouts: Source file → its layout.
        decisions: The formats decided per file (:func:`decide_formats`).
    """
    fields = [
        T.StructField(S.SOURCE_FILE, T.StringType(), False),
        T.StructField(_LAYOUT, T.StringType(), False),
        T.StructField(DAY_FIRST, T.BooleanType(), True),
        T.StructField(DECIMAL, T.StringType(), False),
        *[T.StructField(_name(c), T.StringType(), False) for c in S.CANONICAL_COLUMNS],
    ]
    rows = [
        (
            d.source_file,
            layouts[d.source_file].name,
            d.day_first,
            d.decimal,
            *[layouts[d.source_file].columns.get(c, c) for c in S.CANONICAL_COLUMNS],
        )
        for d in decisions
    ]
    return spark.createDataFrame(rows, T.StructType(fields))


def identifier(value: Column) -> Column:
    """An id written as a float as integer text: ``17850.0`` → ``17850``, ``1.2345678E7`` →
    ``12345678``; anything else unchanged."""
    as_decimal = value.try_cast("decimal(38,6)")
    whole = F.floor(as_decimal)
    return (
        F.when(value.rlike(r"^[+-]?\d+\.0*$"), F.regexp_replace(value, r"\.0*$", ""))
        .when(
            value.rlike(r"^[+-]?\d+(\.\d+)?[eE]\+?\d+$") & (as_decimal == whole),
            whole.cast("decimal(38,0)").cast("string"),
        )
        .otherwise(value)
    )


def number(value: Column, decimal: Column) -> Column:
    """A decimal number in the file's notation (see the module docstring), as a double."""
    compact = F.regexp_replace(value, "[\\s\u00a0\u202f'’£$€¥]", "")
    comma = decimal == F.lit(",")
    comma_ok = compact.rlike(r"^[+-]?(\d{1,3}(\.\d{3})+|\d+)?(,\d+)?$")
    point_ok = compact.rlike(r"^[+-]?(\d{1,3}(,\d{3})+|\d+)?(\.\d+)?([eE][+-]?\d+)?$")
    digits = compact.rlike(r"\d")
    normal = F.when(
        comma & comma_ok & digits,
        F.translate(F.regexp_replace(compact, r"\.", ""), ",", "."),
    ).when(~comma & point_ok & digits, F.regexp_replace(compact, ",", ""))
    return normal.try_cast("double")


def _group(value: Column, pattern: str, n: int) -> Column:
    found = F.regexp_extract(value, pattern, n)
    return F.when(found != "", found)


def _seconds(value: Column, pattern: str, second: int, fraction: int) -> Column:
    whole = F.coalesce(_group(value, pattern, second).cast("int"), F.lit(0))
    frac = F.coalesce(
        F.concat(F.lit("0."), _group(value, pattern, fraction)).try_cast("decimal(16,9)"),
        F.lit(0).cast("decimal(16,9)"),
    )
    return (whole + frac).cast("decimal(16,6)")


def timestamp(value: Column, day_first: Column, *, formats: Sequence[str] = ()) -> Column:
    """A time text as a UTC timestamp, null when it is none of the notations of the module
    docstring. ``day_first`` says how this row's file orders day and month."""
    tried: list[Column] = [F.try_to_timestamp(value, F.lit(fmt)) for fmt in formats]
    tried.append(F.when(value.rlike(_ISO_DATE), value.try_cast("timestamp")))

    numeric = value.rlike(_NUMERIC_DATE)
    first = _group(value, _NUMERIC_DATE, 1).cast("int")
    second = _group(value, _NUMERIC_DATE, 2).cast("int")
    year_text = _group(value, _NUMERIC_DATE, 3)
    year = year_text.cast("int")
    year = F.when(F.length(year_text) == 2, F.when(year < 70, year + 2000).otherwise(year + 1900))
    year = year.otherwise(year_text.cast("int"))
    hour = F.coalesce(_group(value, _NUMERIC_DATE, 4).cast("int"), F.lit(0))
    meridiem = F.upper(_group(value, _NUMERIC_DATE, 8))
    hour = (
        F.when((meridiem == "P") & (hour < 12), hour + 12)
        .when((meridiem == "A") & (hour == 12), F.lit(0))
        .otherwise(hour)
    )
    tried.append(
        F.when(
            numeric & day_first.isNotNull(),
            F.try_make_timestamp(
                year,
                F.when(day_first, second).otherwise(first),
                F.when(day_first, first).otherwise(second),
                hour,
                F.coalesce(_group(value, _NUMERIC_DATE, 5).cast("int"), F.lit(0)),
                _seconds(value, _NUMERIC_DATE, 6, 7),
            ),
        )
    )
    tried.append(
        F.when(
            value.rlike(_YEAR_FIRST_DATE),
            F.try_make_timestamp(
                _group(value, _YEAR_FIRST_DATE, 1).cast("int"),
                _group(value, _YEAR_FIRST_DATE, 2).cast("int"),
                _group(value, _YEAR_FIRST_DATE, 3).cast("int"),
                F.coalesce(_group(value, _YEAR_FIRST_DATE, 4).cast("int"), F.lit(0)),
                F.coalesce(_group(value, _YEAR_FIRST_DATE, 5).cast("int"), F.lit(0)),
                _seconds(value, _YEAR_FIRST_DATE, 6, 7),
            ),
        )
    )
    epoch = value.try_cast("long")
    micros = (
        F.when(epoch < 100_000_000_000, epoch * 1_000_000)
        .when(epoch < 100_000_000_000_000, epoch * 1_000)
        .when(epoch < 100_000_000_000_000_000, epoch)
        .otherwise((epoch.cast("decimal(20,0)") / 1_000).cast("long"))
    )
    tried.append(F.when(value.rlike(_EPOCH), F.timestamp_micros(micros)))
    return F.coalesce(*tried)


def format_stats(records: DataFrame) -> DataFrame:
    """Per file, the facts its formats are decided from (one row per file: bounded).

    Columns: ``source_file``,
    ``numeric_dates``, ``max_first``, ``max_second`` (of numeric dates' first two fields),
    ``comma_votes``, ``point_votes``, ``encoding``.
    """
    when = F.col(text_column(S.EVENT_TIME))
    price = F.regexp_replace(F.col(text_column(S.UNIT_PRICE)), r"\s", "")
    numeric = when.rlike(_NUMERIC_DATE)
    return records.groupBy(S.SOURCE_FILE).agg(
        F.count(F.when(numeric, 1)).alias("numeric_dates"),
        F.max(F.when(numeric, _group(when, _NUMERIC_DATE, 1).cast("int"))).alias("max_first"),
        F.max(F.when(numeric, _group(when, _NUMERIC_DATE, 2).cast("int"))).alias("max_second"),
        F.count(F.when(price.rlike(_VOTES_COMMA), 1)).alias("comma_votes"),
        F.count(F.when(price.rlike(_VOTES_POINT), 1)).alias("point_votes"),
        F.max(ENCODING).alias(ENCODING),
    )


def decide_formats(
    stats: Sequence[dict], *, names: dict[str, str], decimal: str, explicit_formats: bool
) -> list[FormatDecision]:
    """Each file's day/month order and decimal mark, from :func:`format_stats`.

    Args:
        stats: Rows of :func:`format_stats` as dicts.
        names: Source file → the name of its time column, for messages.
        decimal: ``ingest.decimal``: ``auto``, ``.`` or ``,``.
        explicit_formats: Whether ``ingest.timestamp_formats`` is set (then an undecided file
            is read with those patterns instead of refused).

    Raises:
        InputError: A file whose numeric dates never show a field above 12, so day and month
            cannot be told apart (unless ``ingest.timestamp_formats`` is set).
    """
    decisions = []
    for row in stats:
        numeric, first, second = row["numeric_dates"], row["max_first"], row["max_second"]
        day_first: bool | None = None
        if numeric:
            if first is not None and first > 12:
                day_first = True
            elif second is not None and second > 12:
                day_first = False
            elif not explicit_formats:
                raise InputError(
                    f"{row[S.SOURCE_FILE]}: cannot tell day from month in "
                    f"{names.get(row[S.SOURCE_FILE], 'the dates')} (no value above 12 in either "
                    f'place); set ingest.timestamp_formats, e.g. ["dd/MM/yyyy HH:mm"] for '
                    f'day-first or ["MM/dd/yyyy HH:mm"] for month-first'
                )
        if decimal != "auto":
            mark = decimal
        else:
            mark = "," if row["comma_votes"] > row["point_votes"] else "."
        decisions.append(
            FormatDecision(row[S.SOURCE_FILE], day_first, mark, row[ENCODING], numeric)
        )
    return decisions


def to_canonical(
    records: DataFrame, facts: DataFrame, *, timestamp_formats: Sequence[str] = ()
) -> DataFrame:
    """Parse and validate records into the canonical columns plus ``reason``.

    ``reason`` is null for a valid row and otherwise names the first check it failed, with the
    source column and value: ``Quantity: not an integer ('12O')``. Pure: no I/O.

    Args:
        records: Rows of :data:`~retailml.stages.ingest.records.RECORDS_SCHEMA`.
        facts: The facts of their files (:func:`file_facts`).
        timestamp_formats: Spark datetime patterns tried before the automatic notations.
    """

    def txt(canonical: str) -> Column:
        return F.col(text_column(canonical))

    # Parsed values first, then the reasons, which read them by name (one projection would
    # inline each parse into every branch of the reason).
    decimal = F.col(DECIMAL)
    amount = number(txt(S.QUANTITY), decimal)
    whole = (amount == F.floor(amount)) & (F.abs(amount) < 2_147_483_647)
    parsed = records.join(F.broadcast(facts), S.SOURCE_FILE).select(
        "*",
        timestamp(txt(S.EVENT_TIME), F.col(DAY_FIRST), formats=timestamp_formats).alias(
            S.EVENT_TIME
        ),
        F.when(whole, amount.cast("int")).alias(S.QUANTITY),
        number(txt(S.UNIT_PRICE), decimal).alias(S.UNIT_PRICE),
        F.lower(txt(S.EVENT_TYPE)).alias(S.EVENT_TYPE),
        *[identifier(txt(c)).alias(c) for c in (S.INVOICE_ID, S.CUSTOMER_ID, S.PRODUCT_ID)],
    )

    def says(canonical: str, what: str, value: bool = True) -> Column:
        parts = [F.col(_name(canonical)), F.lit(f": {what}")]
        if value:
            parts += [F.lit(" ('"), F.coalesce(txt(canonical), F.lit("")), F.lit("')")]
        return F.concat(*parts)

    event_time, quantity = F.col(S.EVENT_TIME), F.col(S.QUANTITY)
    price, event_type = F.col(S.UNIT_PRICE), F.col(S.EVENT_TYPE)
    reason = (
        F.when(F.col(PROBLEM).isNotNull(), F.col(PROBLEM))
        .when(txt(S.PRODUCT_ID).isNull(), says(S.PRODUCT_ID, "missing", value=False))
        .when(txt(S.EVENT_TIME).isNull(), says(S.EVENT_TIME, "missing", value=False))
        .when(event_time.isNull(), says(S.EVENT_TIME, "not a date"))
        .when(txt(S.QUANTITY).isNull(), says(S.QUANTITY, "missing", value=False))
        .when(quantity.isNull(), says(S.QUANTITY, "not an integer"))
        .when(quantity == 0, says(S.QUANTITY, "zero", value=False))
        .when(txt(S.UNIT_PRICE).isNull(), says(S.UNIT_PRICE, "missing", value=False))
        .when(price.isNull(), says(S.UNIT_PRICE, "not a number"))
        .when(price < 0, says(S.UNIT_PRICE, "negative"))
        .when(
            ~event_type.isin(*EVENT_TYPES) | event_type.isNull(),
            says(S.EVENT_TYPE, "unknown event type"),
        )
    )
    return parsed.select(
        S.INVOICE_ID,
        S.CUSTOMER_ID,
        S.PRODUCT_ID,
        txt(S.PRODUCT_NAME).alias(S.PRODUCT_NAME),
        txt(S.CATEGORY).alias(S.CATEGORY),
        S.QUANTITY,
        S.UNIT_PRICE,
        S.EVENT_TIME,
        S.EVENT_TYPE,
        txt(S.COUNTRY).alias(S.COUNTRY),
        S.RAW,
        S.SOURCE_FILE,
        F.col(_LAYOUT).alias(S.SOURCE_LAYOUT),
        reason.alias(S.REASON),
    )
