"""The workflow: the tasks of ``job.yml`` bound to their functions, and the commands that run them.

Each task is a plain function of (settings, SparkSession) that reads and writes tables, so any
task can be re-run alone and maps one-to-one onto a Databricks job task. ``run_workflow`` runs
a selection of the DAG with the local runner; ``run_task`` runs one task the way a Databricks
job task does.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retailml.errors import RetailmlError
from retailml.settings import Settings
from retailml.workflow.dag import Dag, load_dag

if TYPE_CHECKING:  # Spark is imported where a session is needed: `retailml bundle` needs none.
    from pyspark.sql import SparkSession

Echo = Callable[[str], Any]

# The tasks in run order, from the one definition in job.yml.
TASK_ORDER = load_dag().order()


@contextmanager
def session(settings: Settings) -> Iterator[SparkSession]:
    """A SparkSession for the duration of a command, stopped afterwards."""
    from pyspark.sql import SparkSession

    from retailml.spark import build_session

    # A session that was already running (a notebook's, a test suite's) belongs to its owner.
    owned = SparkSession.getActiveSession() is None and settings.spark.master != "existing"
    spark = build_session(settings)
    try:
        yield spark
    finally:
        if owned:
            spark.stop()


def generate_data(settings: Settings, *, out: Path | None = None, force: bool = False) -> Any:
    """Generate the synthetic data set described by ``settings.generate``.

    Without ``force`` an existing data set made with the same parameters is reused (the
    generator is deterministic, so it would be byte-identical).

    Returns:
        The generator's summary, or the stored one when reused.
    """
    from retailml.generate import GENERATOR_VERSION, GenerateSummary, generate

    folder = out or Path(settings.path(settings.data_dir))
    params = {
        **settings.generate.model_dump(mode="json"),
        "seed": settings.seed,
        "generator": GENERATOR_VERSION,
    }
    marker = folder / "generated.json"
    if not force and marker.is_file():
        stored = json.loads(marker.read_text())
        if stored.get("params") == params:
            s = stored["summary"]
            return GenerateSummary(
                **{
                    **s,
                    "out_dir": Path(s["out_dir"]),
                    "files": tuple(Path(f) for f in s["files"]),
                    "ground_truth_dir": Path(s["ground_truth_dir"]),
                }
            )
    g = settings.generate
    summary = generate(
        folder,
        customers=g.customers,
        products=g.products,
        days=g.days,
        start_date=g.start_date,
        seed=settings.seed,
        malformed_fraction=g.malformed_fraction,
        guest_fraction=g.guest_fraction,
        return_fraction=g.return_fraction,
    )
    # Paths become strings; everything else in the summary is already JSON.
    stored_summary = json.loads(json.dumps(dataclasses.asdict(summary), default=str))
    marker.write_text(json.dumps({"params": params, "summary": stored_summary}, indent=2))
    return summary


def task_functions(
    settings: Settings, spark: SparkSession, *, run_id: str, echo: Echo = print
) -> dict[str, Callable[[], Any]]:
    """Every task of the workflow as a callable bound to the settings, session and run."""

    def stage(name: str) -> Any:
        # Imported when the task runs, so a command needs only the stages it runs.
        return importlib.import_module(f"retailml.stages.{name}")

    def ingest_task() -> Any:
        if not settings.ingest.source:
            started = time.monotonic()
            summary = generate_data(settings)
            echo(
                f"  data: {summary.lines:,} generated lines in {len(summary.files)} files under "
                f"{summary.out_dir} ({time.monotonic() - started:.1f} s)"
            )
        return stage("ingest").run(settings, spark)

    return {
        "ingest": ingest_task,
        "clean": lambda: stage("clean").run(settings, spark),
        "features": lambda: stage("features").run(settings, spark),
        "train": lambda: stage("train").run(settings, spark),
        "score": lambda: stage("score").run(settings, spark),
        "recommend": lambda: stage("recommend").run(settings, spark),
        "report": lambda: stage("report").run(settings, spark, run_id=run_id),
    }


def selection(
    dag: Dag,
    *,
    from_: str | None = None,
    only: tuple[str, ...] = (),
    resume: str | None = None,
    history: Any = None,
) -> tuple[tuple[str, ...], str]:
    """The tasks a run covers and how it was triggered (``run``, ``from X``, ``resume ID``…).

    A resumed run covers the tasks of that run that did not succeed, in run order.
    """
    if resume:
        if from_ or only:
            raise RetailmlError("--resume re-runs what did not succeed; drop --from / --only")
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
    functions: Callable[..., dict[str, Callable[[], Any]]] | None = None,
) -> Any:
    """Run the workflow (or a selection of it) with the local runner, holding the lake's lock.

    Returns:
        The :class:`~retailml.workflow.runner.RunOutcome`; its ``status`` says whether every
        task succeeded.

    Raises:
        WorkflowBusyError: Another run is writing to the same lake.
    """
    from retailml import schemas as S
    from retailml.workflow.history import History, new_run_id
    from retailml.workflow.lock import RunLock
    from retailml.workflow.runner import Runner, TaskWouldNotStop

    dag = load_dag()
    run_id = new_run_id()
    with RunLock(settings, run_id) as lock, session(settings) as spark:
        history = History(settings, spark)
        tasks, trigger = selection(dag, from_=from_, only=only, resume=resume, history=history)
        if not tasks:
            echo(f"nothing to run: every task of run {resume} succeeded")
            return None
        echo(f"run {run_id}: {' → '.join(tasks)}")

        # Task output goes through the runner's progress display (late-bound: it exists below).
        def task_echo(line: str) -> None:
            runner.progress.echo(line)

        runner = Runner(
            dag,
            (functions or task_functions)(settings, spark, run_id=run_id, echo=task_echo),
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
        echo_table(outcome.table(), echo)
        if outcome.status == S.SUCCEEDED:
            _echo_locations(settings, spark, outcome, echo)
        echo(f"run {run_id} {outcome.status} in {outcome.seconds:.0f} s")
    return outcome


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
    from retailml import schemas as S
    from retailml.workflow.history import AttemptRecord, History, RunRecord, utcnow

    if name not in TASK_ORDER:
        raise RetailmlError(f"unknown task {name!r}; known: {', '.join(TASK_ORDER)}")
    fn = task_functions(settings, spark, run_id=run_id, echo=echo)[name]
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


def _echo_locations(settings: Settings, spark: SparkSession, outcome: Any, echo: Echo) -> None:
    from retailml.lakehouse import TABLES, Lakehouse

    lake = Lakehouse(settings, spark)
    echo("tables:")
    for name in TABLES:
        if lake.exists(name):
            echo(f"  {name:<25} {lake.read(name).count():>10,} rows  {lake.location(name)}")
    uri = settings.tracking_uri
    echo(f"MLflow: {uri} (browse with `mlflow ui --backend-store-uri {uri}`)")
    report = next((t.result for t in outcome.tasks if t.task == "report" and t.result), None)
    if report is not None:
        echo(f"report: {report.path}")


def echo_table(rows: Sequence[Sequence[str]], echo: Echo = print) -> None:
    """Print rows as aligned columns, the first row as a header with a rule under it."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            echo("  ".join("-" * w for w in widths))
