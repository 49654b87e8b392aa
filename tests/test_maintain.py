from __future__ import annotations

import re
from datetime import date
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from retailml import schemas as S
from retailml.errors import RetailmlError
from retailml.lakehouse import Lakehouse
from retailml.maintain import maintain
from tests.conftest import make_settings


def _recommendations(spark: SparkSession, customers: range, as_of: date):  # type: ignore[no-untyped-def]
    rows = [
        (f"c{c}", S.FOR_YOU, r, f"p{r}", f"product {r}", 0.5, S.SOURCE_POPULAR, None, as_of, as_of)
        for c in customers
        for r in (1, 2)
    ]
    return spark.createDataFrame(rows, S.RECOMMENDATIONS)


def test_optimize_compacts_vacuum_deletes_old_files_and_rows_stay(
    tmp_path: Path, spark: SparkSession
) -> None:
    settings = make_settings(
        tmp_path,
        **{
            "maintain.vacuum_retention_hours": 0,
            "maintain.zorder_by": {"gold.recommendations": [S.CUSTOMER_ID]},
        },
    )
    lake = Lakehouse(settings, spark)
    for day in (1, 2, 3):  # three as-of dates, each its own files
        as_of = date(2011, 12, day)
        lake.replace_where(
            "gold.recommendations",
            _recommendations(spark, range(50), as_of).repartition(2),
            f"{S.AS_OF_DATE} = '{as_of}'",
        )
    lake.replace_where(  # and one date written again: its first files are no longer needed
        "gold.recommendations",
        _recommendations(spark, range(50), date(2011, 12, 3)).repartition(2),
        f"{S.AS_OF_DATE} = '2011-12-03'",
    )
    folder = Path(lake.location("gold.recommendations"))
    on_disk = len(list(folder.glob("*.parquet")))
    before = sorted(lake.read("gold.recommendations").collect())

    (done,) = maintain(settings, spark)

    assert (done.table, done.zorder_by) == ("gold.recommendations", (S.CUSTOMER_ID,))
    assert done.files_before == 6 and done.files_after == 1
    assert sorted(lake.read("gold.recommendations").collect()) == before
    # VACUUM left only the optimized file (the rewritten date's first files were on disk too).
    assert on_disk > done.files_before and len(list(folder.glob("*.parquet"))) == 1
    operations = [h.operation for h in lake.history("gold.recommendations")]
    assert operations[:3] == ["VACUUM END", "VACUUM START", "OPTIMIZE"]


def test_unknown_tables_and_columns_are_named(tmp_path: Path, spark: SparkSession) -> None:
    settings = make_settings(tmp_path)
    with pytest.raises(
        RetailmlError, match=re.escape("'gold.nope' is not a table; the tables: bronze")
    ):
        maintain(settings, spark, ["gold.nope"])
    bad = make_settings(tmp_path, **{"maintain.zorder_by": {"silver.customers": ["shoe_size"]}})
    with pytest.raises(
        RetailmlError, match=re.escape("silver.customers has no column 'shoe_size'")
    ):
        maintain(bad, spark)
