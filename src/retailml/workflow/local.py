"""Running the workflow here: a selection of the DAG with the local runner, or one task the way
a Databricks job task runs it. Nothing here prints a summary: the outcome goes back to the
command line, which prints it."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from retailml import schemas as S
from retailml.errors import RetailmlError
from retailml.lakehouse import TABLES, Lakehouse
from retailml.runlog import AttemptRecord, History, RunRecord, new_run_id, utcnow
from retailml.settings import Settings
from retailml.spark import session
from retailml.workflow.dag import Dag, load_dag
from retailml.workflow.lock import RunLock
from retailml.workflow.runner import Runner, RunOutcome, TaskWouldNotStop
from retailml.workflow.tasks import bind, bind_all

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

Echo = Callable[[str], Any]

TASK_ORDER = load_dag().order()


@dataclass(frozen=True)
class TableLocation:
    """A table the run left behind: its rows and where it is."""

    name: str
    rows: int
    location: str


@dataclass(frozen=True)
class WorkflowResult:
    """A finished run and what a person wants to look at afterwards."""

    outcome: RunOutcome
    tables: tuple[TableLocation, ...] = ()  # when the run succeeded
    tracking_uri: str = ""

    @property
    def report_path(self) -> Any:
        """The report's index.html, when the report task ran."""
        found = (t.result for t in self.outcome.tasks if t.task == "report" and t.result)
        report = next(found, None)
        return getattr(report, "path", None)


def selection(
    dag: Dag,
    *,
    from_: str | None = None,
    only: tuple[str, ...] = (),
    resume: str | None = None,
    history: History | None = None,
) -> tuple[tuple[str, ...], str]:
    """The tasks a run covers and how it was triggered (``run``, ``from X``, ``resume ID``…).

    A resumed run covers the tasks of that run that did not succeed, in run order.
    """
    if resume:
        if from_ or only:
            raise RetailmlError("--resume re-runs what did not succeed; drop --from / --only")
        assert history is not None
        original = history.run(resume)
        # What succeeded in that run, or in any run that already resumed it (or resumed those).
        done = set().union(*(history.succeeded_tasks(r) for r in history.resume_chain(resume)))
        return tuple(k for k in dag.order() if k in original.tasks and k not in done), (
            f"resume {resume}"
        )
    tasks = dag.select(from_=from_, only=only)
    trigger = f"from {from_}" if from_ else f"only {','.join(tasks)}" if only else "run"
    return tasks, trigger


def run_workflow(
    settings: Settings,
    *,
    from_: str | None = None,
    only: tuple[str, ...] = (),
    resume: str | None = None,
    echo: Echo = print,
    live: bool | None = None,
    debug: bool = False,
) -> WorkflowResult | None:
    """Run the workflow (or a selection of it) with the local runner, holding the lake's lock.

    ``echo`` receives the live progress (task starts, what each task did, failures as they
    happen); the caller prints the outcome.

    Returns:
        The run's :class:`WorkflowResult` (its ``outcome.status`` says whether every task
        succeeded), or None when a resumed run had nothing left to do.

    Raises:
        WorkflowBusyError: Another run is writing to the same lake.
    """
    dag = load_dag()
    run_id = new_run_id()
    with RunLock(settings, run_id) as lock, session(settings) as spark:
        history = History(settings, spark)
        tasks, trigger = selection(dag, from_=from_, only=only, resume=resume, history=history)
        if not tasks:
            echo(f"nothing to run: every task of run {resume} succeeded")
            return None
        echo(f"run {run_id}: {' → '.join(tasks)}")

        runner = Runner(
            dag,
            bind_all(settings, spark, run_id=run_id),
            history=history,
            spark=spark,
            echo=echo,
            live=live,
            debug=debug,
        )
        try:
            outcome = runner.run(run_id, tasks, trigger=trigger, resumed_from=resume)
        except TaskWouldNotStop:
            lock.keep_until_exit()
            raise
        tables = _locations(settings, spark) if outcome.status == S.SUCCEEDED else ()
    return WorkflowResult(outcome, tables, settings.tracking_uri)


def _locations(settings: Settings, spark: SparkSession) -> tuple[TableLocation, ...]:
    lake = Lakehouse(settings, spark)
    return tuple(
        TableLocation(name, lake.read(name).count(), lake.location(name))
        for name in TABLES
        if lake.exists(name)
    )


def run_task(
    name: str,
    settings: Settings,
    spark: SparkSession,
    *,
    run_id: str,
    attempt: int = 1,
    echo: Echo = print,
) -> Any:
    """Run one task once as part of an externally orchestrated run, record the attempt under
    ``run_id``, print what it did.

    This is what each task of the Databricks job runs (the platform does the retries, and the
    run id is the job run's). The run gets an ``external`` row in the history the first time
    one of its tasks records an attempt.

    Returns:
        The task's result object.
    """
    if name not in TASK_ORDER:
        raise RetailmlError(f"unknown task {name!r}; known: {', '.join(TASK_ORDER)}")
    fn = bind(name, settings, spark, run_id=run_id)
    history = History(settings, spark)

    def record(write: Callable[[], Any]) -> None:
        try:
            write()
        except Exception as exc:  # the task's own outcome matters more than its history row
            echo(f"warning: could not record {name} in the run history: {exc}".splitlines()[0])

    started, started_at = time.monotonic(), utcnow()
    if not history.has_run(run_id):
        record(
            lambda: history.record_run(
                RunRecord(run_id, S.EXTERNAL, TASK_ORDER, "external", started_at)
            )
        )
    echo(f"{name} ...")
    try:
        result = fn()
    except Exception as exc:
        error = f"{exc.__class__.__name__}: {exc}".splitlines()[0]
        seconds = time.monotonic() - started
        record(
            lambda: history.record_attempt(
                AttemptRecord(run_id, name, attempt, S.FAILED, started_at, utcnow(), seconds, error)
            )
        )
        raise
    seconds = time.monotonic() - started
    lines = tuple(result.summary())
    for line in lines:
        echo(f"  {line}")
    record(
        lambda: history.record_attempt(
            AttemptRecord(
                run_id, name, attempt, S.SUCCEEDED, started_at, utcnow(), seconds, None, lines
            )
        )
    )
    echo(f"{name} done in {seconds:.1f} s")
    return result
