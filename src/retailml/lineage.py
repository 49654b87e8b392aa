"""What each task last built from (``ops.lineage``), so that a task whose inputs did not change
does no work.

A task's inputs are the data versions of the tables it reads (:meth:`Lakehouse.data_version`:
OPTIMIZE and VACUUM do not count), any model version it loads, and a hash of the settings it
reads. When all three equal the task's row in ``ops.lineage`` and its outputs exist, the task
is up to date and skips; ``workflow.full`` (``retailml run --full``) redoes it anyway. Every
task goes through :func:`unless_up_to_date`; the work it runs gets the inputs, and through
``Inputs.previous`` what the task last built from (clean's files since then, the retraining
rules' settings check). The row is written after the task's own tables, so a task that fails
half-way is not recorded and runs again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel
from pyspark.sql import functions as F

from retailml import schemas as S
from retailml.lakehouse import Lakehouse

TABLE = "ops.lineage"
R = TypeVar("R")


def settings_hash(*sections: BaseModel | Any) -> str:
    """A short hash of settings sections (or plain values): equal settings, equal hash."""
    parts = [s.model_dump(mode="json") if isinstance(s, BaseModel) else s for s in sections]
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Inputs:
    """What a task builds from: input name → version, and the hash of its settings.

    ``previous`` is what it last built from (``ops.lineage``; None if it never finished),
    read once with the current inputs and not part of their equality."""

    task: str
    versions: dict[str, int]
    settings_hash: str
    previous: Inputs | None = field(default=None, compare=False, repr=False)

    def describe(self) -> str:
        return ", ".join(f"{name} v{version}" for name, version in sorted(self.versions.items()))


def _inputs(
    lake: Lakehouse,
    task: str,
    tables: Sequence[str],
    *,
    config: Sequence[Any] = (),
    models: Mapping[str, int] | None = None,
) -> Inputs:
    """The task's inputs as they are now (a table that does not exist has version -1), with
    what it last built from."""
    versions = {name: lake.data_version(name) for name in tables}
    return Inputs(
        task,
        {**{k: (-1 if v is None else v) for k, v in versions.items()}, **(models or {})},
        settings_hash(*config),
        previous=_last(lake, task),
    )


def _last(lake: Lakehouse, task: str) -> Inputs | None:
    if not lake.exists(TABLE):
        return None
    row = lake.read(TABLE).where(F.col(S.TASK) == task).first()
    if row is None:
        return None
    return Inputs(task, dict(row[S.INPUTS]), str(row[S.SETTINGS_HASH]))


def _up_to_date(lake: Lakehouse, now: Inputs, outputs: Sequence[str]) -> bool:
    """True when the task last built from exactly ``now`` and its outputs still exist, and the
    run does not ask for everything (``workflow.full``)."""
    if lake.settings.workflow.full:
        return False
    return now.previous == now and all(lake.exists(name) for name in outputs)


def _record(lake: Lakehouse, built: Inputs) -> None:
    """Record that the task built its outputs from ``built`` (call after its last write)."""
    row = lake.spark.createDataFrame(
        [(built.task, built.versions, built.settings_hash)],
        "task string, inputs map<string,bigint>, settings_hash string",
    ).withColumn(S.RECORDED_AT, F.current_timestamp())
    lake.merge(TABLE, row, [S.TASK])


@dataclass(frozen=True)
class UpToDate:
    """A task's result when it skipped: what it found unchanged."""

    task: str
    inputs: str

    def headline(self) -> str:
        return "up to date: nothing new"

    def summary(self) -> list[str]:
        return [f"{self.task}: up to date, nothing new since it last ran ({self.inputs}); "
                "`retailml run --full` redoes it"]  # fmt: skip


def unless_up_to_date(
    lake: Lakehouse,
    task: str,
    work: Callable[[Inputs], R],
    *,
    tables: Sequence[str],
    outputs: Sequence[str],
    config: Sequence[Any] = (),
    models: Mapping[str, int] | None = None,
    force: bool = False,
) -> R | UpToDate:
    """Run ``work`` (given the inputs, and through them what the task last built from) and
    record what it built from, unless the task is up to date (``force``: run it anyway). This
    is every task's skip-or-run, so a task that fails half-way is not recorded."""
    now = _inputs(lake, task, tables, config=config, models=models)
    if not force and _up_to_date(lake, now, outputs):
        return UpToDate(task, now.describe())
    result = work(now)
    _record(lake, now)
    return result
