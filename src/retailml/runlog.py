"""The run history: every workflow run and every task attempt, in two append-only Delta tables.

``ops.workflow_runs`` gets a row when a run starts (status ``running``) and one when it ends;
``ops.task_runs`` gets a row when an attempt ends. The latest row of a run wins, so no row is
ever updated and a crash leaves the history readable: a run whose process died stays
``running`` in the table and is shown as ``interrupted`` once nobody holds the run lock.

It sits below the stages (the report reads it) and below the workflow (the runner writes
it); :func:`timeline` is the one account of a run that both the report and ``retailml runs``
show.
"""

from __future__ import annotations

import getpass
import os
import secrets
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType
from pyspark.sql.window import Window

from retailml import schemas as S
from retailml.errors import RetailmlError
from retailml.lakehouse import Lakehouse
from retailml.settings import Settings

RUNS = "ops.workflow_runs"
ATTEMPTS = "ops.task_runs"


def new_run_id(now: datetime | None = None) -> str:
    """A sortable, readable, unique run id: ``20261127-053612-3f2a``."""
    at = now or datetime.now(UTC)
    return f"{at:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def utcnow() -> datetime:
    """Now, in UTC, without tzinfo: every time in the history is UTC."""
    return datetime.now(UTC).replace(tzinfo=None)


def _to_store(value: datetime | None) -> datetime | None:
    # PySpark reads a naive datetime as the machine's local time; say it is UTC.
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def _from_store(value: datetime | None) -> datetime | None:
    # PySpark returns local naive datetimes; turn them back into naive UTC.
    return value.astimezone(UTC).replace(tzinfo=None) if value is not None else None


@dataclass(frozen=True)
class RunRecord:
    """A workflow run, as its latest history row says."""

    run_id: str
    status: str
    tasks: tuple[str, ...]
    trigger: str
    started_at: datetime
    ended_at: datetime | None = None
    resumed_from: str | None = None
    error: str | None = None
    user: str | None = field(default_factory=lambda: _user())
    host: str | None = field(default_factory=socket.gethostname)


@dataclass(frozen=True)
class AttemptRecord:
    """One attempt of one task in one run."""

    run_id: str
    task: str
    attempt: int
    status: str
    started_at: datetime | None
    ended_at: datetime | None
    seconds: float | None
    error: str | None = None
    outputs: tuple[str, ...] = ()


class History:
    """Reads and appends the run history tables of one lake."""

    def __init__(self, settings: Settings, spark: SparkSession) -> None:
        self.lake = Lakehouse(settings, spark)
        self.spark = spark

    def record_run(self, run: RunRecord) -> None:
        """Append the run's current state (the latest row of a run is its state)."""
        row = (
            run.run_id,
            run.status,
            list(run.tasks),
            run.trigger,
            run.resumed_from,
            _to_store(run.started_at),
            _to_store(run.ended_at),
            run.error,
            run.user,
            run.host,
            _to_store(utcnow()),
        )
        columns = [
            S.RUN_ID,
            S.STATUS,
            "tasks",
            "trigger",
            "resumed_from",
            S.STARTED_AT,
            S.ENDED_AT,
            S.ERROR,
            "user",
            "host",
            S.RECORDED_AT,
        ]
        df = self.spark.createDataFrame([row], schema=_schema_of(S.WORKFLOW_RUNS, columns))
        self.lake.append(RUNS, df)

    def record_attempt(self, attempt: AttemptRecord) -> None:
        """Append one finished (or never started) task attempt."""
        row = (
            attempt.run_id,
            attempt.task,
            attempt.attempt,
            attempt.status,
            _to_store(attempt.started_at),
            _to_store(attempt.ended_at),
            attempt.seconds,
            attempt.error,
            list(attempt.outputs),
            _to_store(utcnow()),
        )
        df = self.spark.createDataFrame([row], schema=S.TASK_RUNS)
        self.lake.append(ATTEMPTS, df)

    def runs(self, limit: int = 20) -> list[RunRecord]:
        """The latest ``limit`` runs, newest first, each in its latest state."""
        if not self.lake.exists(RUNS):
            return []
        latest = Window.partitionBy(S.RUN_ID).orderBy(F.col(S.RECORDED_AT).desc())
        rows = (
            self.lake.read(RUNS)
            .withColumn("_n", F.row_number().over(latest))
            .where(F.col("_n") == 1)
            .orderBy(F.col(S.STARTED_AT).desc(), F.col(S.RUN_ID).desc())
            .limit(limit)
            .collect()
        )
        return [_run(r) for r in rows]

    def run(self, run_id: str) -> RunRecord:
        """One run in its latest state.

        Raises:
            RetailmlError: No run has that id.
        """
        if self.lake.exists(RUNS):
            latest = (
                self.lake.read(RUNS)
                .where(F.col(S.RUN_ID) == run_id)
                .orderBy(F.col(S.RECORDED_AT).desc())
                .limit(1)
                .collect()
            )
            if latest:
                return _run(latest[0])
        raise RetailmlError(f"no workflow run {run_id!r}; `retailml runs` lists the recent ones")

    def attempts(self, run_id: str) -> list[AttemptRecord]:
        """Every recorded attempt of a run, in the order they were recorded."""
        if not self.lake.exists(ATTEMPTS):
            return []
        rows = (
            self.lake.read(ATTEMPTS)
            .where(F.col(S.RUN_ID) == run_id)
            .orderBy(S.RECORDED_AT, S.TASK, S.ATTEMPT)
            .collect()
        )
        return [
            AttemptRecord(
                run_id=r[S.RUN_ID],
                task=r[S.TASK],
                attempt=int(r[S.ATTEMPT]),
                status=r[S.STATUS],
                started_at=_from_store(r[S.STARTED_AT]),
                ended_at=_from_store(r[S.ENDED_AT]),
                seconds=r[S.SECONDS],
                error=r[S.ERROR],
                outputs=tuple(r["outputs"] or ()),
            )
            for r in rows
        ]

    def has_run(self, run_id: str) -> bool:
        """Whether the run has a row in ``ops.workflow_runs``."""
        if not self.lake.exists(RUNS):
            return False
        return bool(self.lake.read(RUNS).where(F.col(S.RUN_ID) == run_id).limit(1).collect())

    def resume_chain(self, run_id: str) -> list[str]:
        """The run and every run that resumed it, directly or through another resume."""
        if not self.lake.exists(RUNS):
            return [run_id]
        pairs = (
            self.lake.read(RUNS)
            .where(F.col("resumed_from").isNotNull())
            .select(S.RUN_ID, "resumed_from")
            .distinct()
            .collect()
        )
        chain, frontier = [run_id], {run_id}
        while frontier:
            children = {r[S.RUN_ID] for r in pairs if r["resumed_from"] in frontier}
            frontier = children - set(chain)
            chain.extend(sorted(frontier))
        return chain

    def succeeded_tasks(self, run_id: str) -> set[str]:
        """The tasks of a run with a succeeded attempt."""
        return {a.task for a in self.attempts(run_id) if a.status == S.SUCCEEDED}

    def next_attempt(self, run_id: str, task: str) -> int:
        """The number the next attempt of ``task`` in ``run_id`` gets (1 for the first)."""
        done = [a.attempt for a in self.attempts(run_id) if a.task == task]
        return max(done, default=0) + 1


# How far back a chain of resumed runs is followed.
MAX_RESUMES = 10


@dataclass(frozen=True)
class TimelineEntry:
    """One task of a run as the run's account shows it: its last attempt.

    Attributes:
        task: The task.
        status: The last attempt's status; ``running`` for the report task that is writing
            the account, ``not run`` for a task of the run without any attempt.
        attempts: How many attempts were recorded.
        last: The last attempt, if any.
        run_id: The run the attempt belongs to: this run, or for a run that resumed another,
            the earlier run that did the task.
    """

    task: str
    status: str
    attempts: int
    last: AttemptRecord | None
    run_id: str


def timeline(
    history: History, run_id: str, *, current: str | None = None
) -> tuple[list[TimelineEntry], str | None]:
    """Each task of a run with its last attempt, in the run's task order, and the run status.

    A run that resumed another re-ran only what had not succeeded there, so the tasks it did
    not cover are taken from the run it resumed (and so on back). A task of the run without a
    recorded attempt is ``running`` if it is ``current`` (the task asking, whose own attempt is
    recorded when it ends) and ``not run`` otherwise.

    Raises:
        RetailmlError: Nothing of the run is recorded.
    """
    chain: list[tuple[str, tuple[str, ...], dict[str, list[AttemptRecord]]]] = []
    status: str | None = None
    at: str | None = run_id
    while at is not None and len(chain) < MAX_RESUMES:
        try:
            record: RunRecord | None = history.run(at)
        except RetailmlError:
            record = None
        attempts: dict[str, list[AttemptRecord]] = {}
        for a in history.attempts(at):
            attempts.setdefault(a.task, []).append(a)
        chain.append((at, record.tasks if record else (), attempts))
        if at == run_id:
            status = record.status if record else None
        at = record.resumed_from if record else None
        if any(at == seen for seen, _, _ in chain):
            break
    if not chain[0][1] and not chain[0][2]:
        raise RetailmlError(f"no task of run {run_id} is recorded; run `retailml run`")

    # The first run's task order, then tasks later runs added (a dict keeps the first place).
    order = dict.fromkeys(t for _, tasks, attempts in reversed(chain) for t in (*tasks, *attempts))
    entries = []
    for task in order:
        # The newest run of the chain that covered the task decides what is shown.
        rid, _, attempts = next(link for link in chain if task in link[1] or task in link[2])
        mine = attempts.get(task, [])
        if mine:
            entries.append(TimelineEntry(task, mine[-1].status, len(mine), mine[-1], rid))
        else:
            waiting = "running" if task == current and rid == run_id else "not run"
            entries.append(TimelineEntry(task, waiting, 0, None, rid))
    return entries, status


def final_attempts(attempts: Sequence[AttemptRecord]) -> dict[str, AttemptRecord]:
    """Each task's last attempt, in the order tasks were first seen."""
    last: dict[str, AttemptRecord] = {}
    for a in attempts:
        last[a.task] = a
    return last


def _run(r: object) -> RunRecord:
    row = r.asDict()  # type: ignore[attr-defined]
    return RunRecord(
        run_id=row[S.RUN_ID],
        status=row[S.STATUS],
        tasks=tuple(row["tasks"] or ()),
        trigger=row["trigger"],
        started_at=_from_store(row[S.STARTED_AT]) or row[S.STARTED_AT],
        ended_at=_from_store(row[S.ENDED_AT]),
        resumed_from=row["resumed_from"],
        error=row[S.ERROR],
        user=row["user"],
        host=row["host"],
    )


def _schema_of(schema: StructType, columns: Sequence[str]) -> StructType:
    return StructType([schema[c] for c in columns])


def _user() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return os.environ.get("USER")
