"""``retailml maintain``: Delta table care — OPTIMIZE (compaction, or Z-order clustering where
``maintain.zorder_by`` asks for it), then VACUUM, for every table that exists.

Every write of a task replaces files instead of editing them, so a lake that runs daily keeps
every version's files until VACUUM removes those no version within the retention needs (see
Delta Lake's "Table utility commands" and "Optimizations" documentation).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from pyspark.sql import SparkSession

from retailml.errors import RetailmlError
from retailml.lakehouse import TABLES, Lakehouse
from retailml.settings import Settings


@dataclass(frozen=True)
class Maintained:
    """One table's maintenance: its current version's data files before and after."""

    table: str
    files_before: int
    files_after: int
    zorder_by: tuple[str, ...]
    seconds: float


def maintain(
    settings: Settings, spark: SparkSession, tables: Sequence[str] = ()
) -> list[Maintained]:
    """OPTIMIZE then VACUUM ``tables`` in their order (default: every table written so far,
    in :data:`~retailml.lakehouse.TABLES` order). The caller holds the lake's lock (the
    command line takes it, as a run does).

    Raises:
        RetailmlError: A table named in ``tables`` or ``maintain.zorder_by`` is not one of the
            project's tables, or a Z-order column is not one of the table's columns.
    """
    cfg = settings.maintain
    for name in (*tables, *cfg.zorder_by):
        if name not in TABLES:
            raise RetailmlError(f"{name!r} is not a table; the tables: {', '.join(TABLES)}")
    for name, columns in cfg.zorder_by.items():
        missing = [c for c in columns if c not in TABLES[name].schema.fieldNames()]
        if missing:
            raise RetailmlError(
                f"maintain.zorder_by: {name} has no column {', '.join(map(repr, missing))}"
            )
    lake = Lakehouse(settings, spark)
    done = []
    for name in tables or TABLES:
        if not lake.exists(name):
            continue
        started = time.monotonic()
        zorder = tuple(cfg.zorder_by.get(name, ()))
        before = lake.files(name)
        lake.optimize(name, zorder)
        lake.vacuum(name, cfg.vacuum_retention_hours)
        after = lake.files(name)
        done.append(Maintained(name, before, after, zorder, time.monotonic() - started))
    return done
