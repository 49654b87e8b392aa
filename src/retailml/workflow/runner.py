"""The local runner: the DAG's tasks in dependency order, in one Spark session.

Each task gets the attempts and timeout ``job.yml`` gives it; a :class:`RetailmlError` (bad
input, a bad setting, a missing table) is not retried, since it would fail the same way. A task
that finally fails marks every task downstream of it ``upstream_failed`` (they never start)
while independent branches go on, as a Databricks job does; a task with ``run_if: ALL_DONE``
(the report) runs once its dependencies have ended, however they ended. Every attempt is
recorded in the run history as it ends.

A timeout cancels the task's Spark jobs: the attempt runs in a worker thread whose jobs carry a
tag, and the runner interrupts that tag. Python code between Spark jobs cannot be interrupted;
the runner waits for the worker to notice its cancelled jobs.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pyspark.sql import SparkSession

from retailml import schemas as S
from retailml.errors import RetailmlError
from retailml.runlog import AttemptRecord, History, RunRecord, utcnow
from retailml.spark import spark_context
from retailml.workflow.dag import ALL_DONE, Dag, TaskSpec

Echo = Callable[[str], Any]
TaskFn = Callable[[], Any]

# How long a timed-out task may take to stop after its Spark jobs were cancelled.
STOP_GRACE_S = 120.0


@dataclass(frozen=True)
class TaskOutcome:
    """How one task of a run ended."""

    task: str
    status: str
    attempts: int
    seconds: float | None = None
    error: str | None = None
    headline: str = ""
    result: Any = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended: its status and every task's outcome, in run order."""

    run_id: str
    status: str
    tasks: tuple[TaskOutcome, ...]
    seconds: float

    @property
    def failed(self) -> TaskOutcome | None:
        """The first task that failed (not merely skipped because of another)."""
        return next((t for t in self.tasks if t.status in (S.FAILED, S.TIMED_OUT)), None)

    def table(self) -> list[tuple[str, ...]]:
        """Rows of the end-of-run summary: task, status, attempts, duration, key outputs.

        The first failed task's error is left to the run's final line (so a failure is
        printed once); other failed tasks show theirs here.
        """
        rows: list[tuple[str, ...]] = [("task", "status", "attempts", "seconds", "outputs")]
        first = self.failed
        for t in self.tasks:
            seconds = f"{t.seconds:.1f}" if t.seconds is not None else "-"
            if t.status == S.SUCCEEDED:
                detail = t.headline
            elif t is first:
                detail = "(error below)"
            else:
                detail = t.error or ""
            rows.append((t.task, t.status, str(t.attempts), seconds, detail))
        return rows


class TaskTimeout(RetailmlError):
    """An attempt ran longer than its task's timeout."""


class TaskWouldNotStop(RetailmlError):
    """A timed-out task kept running after its jobs were cancelled: the run cannot go on."""


class Progress:
    """A live status line on a terminal (task, status, elapsed); plain lines elsewhere.

    Output printed through :meth:`echo` appears above the status line.
    """

    def __init__(self, echo: Echo, *, live: bool | None = None, heartbeat_s: float = 60.0) -> None:
        self._echo = echo
        self._live = sys.stdout.isatty() if live is None else live
        self._heartbeat_s = heartbeat_s
        self._status: tuple[str, str, float] | None = None
        self._last_beat = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def echo(self, line: str) -> None:
        with self._lock:
            self._clear()
            self._echo(line)
            self._draw()

    def start(self, task: str, label: str) -> None:
        with self._lock:
            self._status = (task, label, time.monotonic())
            self._last_beat = time.monotonic()
            if not self._live:
                self._echo(f"▶ {task} {label}")
            self._draw()
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._tick, daemon=True)
            self._thread.start()

    def done(self) -> None:
        with self._lock:
            self._clear()
            self._status = None

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.done()

    def _tick(self) -> None:
        while not self._stop.wait(0.5 if self._live else 1.0):
            with self._lock:
                if self._status is None:
                    continue
                if self._live:
                    self._clear()
                    self._draw()
                elif time.monotonic() - self._last_beat >= self._heartbeat_s:
                    self._last_beat = time.monotonic()
                    task, label, started = self._status
                    self._echo(f"  {task} {label}: {_elapsed(time.monotonic() - started)}")

    def _draw(self) -> None:
        if self._live and self._status is not None:
            task, label, started = self._status
            sys.stdout.write(f"\r▶ {task} {label} {_elapsed(time.monotonic() - started)}")
            sys.stdout.flush()

    def _clear(self) -> None:
        if self._live and self._status is not None:
            sys.stdout.write("\r\x1b[K")
            sys.stdout.flush()


class Runner:
    """Runs a selection of a :class:`Dag`'s tasks and records what happens.

    Args:
        dag: The workflow.
        functions: Task key → a callable that runs the task and returns its result (an object
            with ``summary()`` and optionally ``headline()``).
        history: Where attempts and runs are recorded (None: nowhere, for a dry test).
        spark: The session whose jobs a timeout cancels (None: timeouts cannot cancel).
        echo: Where progress and task output go.
        sleep: The wait between attempts (tests pass a fake to avoid waiting).
        live: Force the terminal status line on or off (default: when stdout is a terminal).
        debug: Print the traceback of every failed attempt.
    """

    def __init__(
        self,
        dag: Dag,
        functions: Mapping[str, TaskFn],
        *,
        history: History | None,
        spark: SparkSession | None = None,
        echo: Echo = print,
        sleep: Callable[[float], Any] = time.sleep,
        live: bool | None = None,
        debug: bool = False,
    ) -> None:
        missing = [k for k in dag.keys if k not in functions]
        if missing:
            raise ValueError(f"no function for task(s) {', '.join(missing)}")
        self.dag = dag
        self.functions = functions
        self.history = history
        self.spark = spark
        self.sleep = sleep
        self.debug = debug
        self.progress = Progress(echo, live=live)

    def run(
        self,
        run_id: str,
        tasks: Sequence[str],
        *,
        trigger: str = "run",
        resumed_from: str | None = None,
    ) -> RunOutcome:
        """Run ``tasks`` (a selection of the DAG, in run order) as run ``run_id``."""
        started, started_at = time.monotonic(), utcnow()
        run = RunRecord(
            run_id=run_id,
            status=S.RUNNING,
            tasks=tuple(tasks),
            trigger=trigger,
            started_at=started_at,
            resumed_from=resumed_from,
        )
        self._record_run(run)
        outcomes: dict[str, TaskOutcome] = {}
        try:
            for key in tasks:
                spec = self.dag.task(key)
                blocked = [
                    d
                    for d in spec.depends_on
                    if d in outcomes and outcomes[d].status != S.SUCCEEDED
                ]
                if blocked and spec.run_if != ALL_DONE:
                    outcomes[key] = self._skip(run_id, key, blocked)
                else:
                    outcomes[key] = self._run_task(run_id, spec)
        except BaseException as exc:  # Ctrl-C or a task that would not stop: record, re-raise
            self.progress.close()
            self._record_run(_ended(run, S.FAILED, f"{exc.__class__.__name__}: {_one_line(exc)}"))
            raise
        finally:
            self.progress.close()
        failed = next((o for o in outcomes.values() if o.status != S.SUCCEEDED), None)
        status = S.SUCCEEDED if failed is None else S.FAILED
        error = None if failed is None else f"{failed.task}: {failed.error}"
        self._record_run(_ended(run, status, error))
        return RunOutcome(run_id, status, tuple(outcomes.values()), time.monotonic() - started)

    def _run_task(self, run_id: str, spec: TaskSpec) -> TaskOutcome:
        error: str | None = None
        status = S.FAILED
        for attempt in range(1, spec.attempts + 1):
            label = f"(attempt {attempt}/{spec.attempts})" if spec.attempts > 1 else ""
            self.progress.start(spec.key, label or "running")
            started, started_at = time.monotonic(), utcnow()
            permanent = False
            try:
                result = self._call(run_id, spec, attempt)
            except TaskTimeout as exc:
                status, error = S.TIMED_OUT, str(exc)
            except TaskWouldNotStop as exc:
                seconds = time.monotonic() - started
                self._record_attempt(
                    run_id, spec.key, attempt, S.TIMED_OUT, started_at, seconds, str(exc)
                )
                raise
            except KeyboardInterrupt:
                seconds = time.monotonic() - started
                self.progress.done()
                self._record_attempt(
                    run_id, spec.key, attempt, S.FAILED, started_at, seconds, "interrupted"
                )
                raise
            except Exception as exc:
                status, error = S.FAILED, _describe_error(exc)
                # A user's mistake (bad input, a setting, a missing table) fails the same way
                # every time; anything else (a lost executor, a flaky store) may not.
                permanent = isinstance(exc, RetailmlError)
                if self.debug:
                    self.progress.echo(traceback.format_exc().rstrip())
            else:
                seconds = time.monotonic() - started
                self.progress.done()
                lines = _lines(result)
                for line in lines:
                    self.progress.echo(f"  {line}")
                headline = _headline(result)
                self.progress.echo(f"✔ {spec.key} succeeded in {_elapsed(seconds)}")
                self._record_attempt(
                    run_id, spec.key, attempt, S.SUCCEEDED, started_at, seconds, None, lines
                )
                return TaskOutcome(
                    spec.key, S.SUCCEEDED, attempt, seconds, None, headline, result=result
                )
            seconds = time.monotonic() - started
            self.progress.done()
            self._record_attempt(run_id, spec.key, attempt, status, started_at, seconds, error)
            retry = (
                attempt < spec.attempts
                and not permanent
                and (status != S.TIMED_OUT or spec.retry_on_timeout)
            )
            if retry:
                self.progress.echo(
                    f"✘ {spec.key} {status} (attempt {attempt}/{spec.attempts}): {error}; "
                    f"retrying in {spec.retry_delay_s:g} s"
                )
                self.sleep(spec.retry_delay_s)
                continue
            # The error itself is printed once, at the end of the run (see RunOutcome.table).
            self.progress.echo(f"✘ {spec.key} {status} after {attempt} attempt(s)")
            return TaskOutcome(spec.key, status, attempt, seconds, error)
        raise AssertionError("unreachable: the last attempt returns")

    def _call(self, run_id: str, spec: TaskSpec, attempt: int) -> Any:
        """Run one attempt; with a timeout, in a worker thread whose Spark jobs can be cancelled."""
        fn = self.functions[spec.key]
        if spec.timeout_s <= 0:
            return fn()
        tag = f"retailml-{run_id}-{spec.key}-{attempt}"
        box: dict[str, Any] = {}

        def work() -> None:
            try:
                _tag_jobs(self.spark, tag, add=True)
                box["result"] = fn()
            except BaseException as exc:
                box["error"] = exc
            finally:
                _tag_jobs(self.spark, tag, add=False)

        worker = threading.Thread(target=work, name=f"task-{spec.key}", daemon=True)
        worker.start()
        try:
            worker.join(spec.timeout_s)
        except KeyboardInterrupt:
            # Ctrl-C: stop the task's Spark jobs before the run gives up its lock.
            self.progress.echo(f"interrupted: cancelling the Spark jobs of {spec.key} ...")
            _stop(worker, self.spark, tag, grace_s=30.0)
            raise
        if worker.is_alive():
            if _stop(worker, self.spark, tag, grace_s=STOP_GRACE_S):
                raise TaskWouldNotStop(
                    f"task {spec.key} did not stop within {STOP_GRACE_S:g} s of its timeout; "
                    "the run stops here"
                )
            raise TaskTimeout(f"timed out after {spec.timeout_s:g} s")
        if "error" in box:
            raise box["error"]
        return box.get("result")

    def _skip(self, run_id: str, key: str, blocked: Sequence[str]) -> TaskOutcome:
        error = f"not started: {', '.join(blocked)} did not succeed"
        self.progress.echo(f"- {key} {S.UPSTREAM_FAILED}: {error}")
        self._record_attempt(run_id, key, 0, S.UPSTREAM_FAILED, None, None, error)
        return TaskOutcome(key, S.UPSTREAM_FAILED, 0, None, error)

    def _record_attempt(
        self,
        run_id: str,
        task: str,
        attempt: int,
        status: str,
        started_at: datetime | None,
        seconds: float | None,
        error: str | None,
        outputs: Sequence[str] = (),
    ) -> None:
        history = self.history
        if history is None:
            return
        record = AttemptRecord(
            run_id=run_id,
            task=task,
            attempt=attempt,
            status=status,
            started_at=started_at,
            ended_at=utcnow() if started_at is not None else None,
            seconds=seconds,
            error=error,
            outputs=tuple(outputs),
        )
        self._best_effort(lambda: history.record_attempt(record), f"{task} attempt {attempt}")

    def _record_run(self, run: RunRecord) -> None:
        history = self.history
        if history is not None:
            self._best_effort(lambda: history.record_run(run), f"run {run.run_id}")

    def _best_effort(self, write: Callable[[], Any], what: str) -> None:
        """A history write that fails (the session died with the task) must not hide the task's
        own error or stop the run: warn and go on."""
        try:
            write()
        except Exception as exc:
            self.progress.echo(f"warning: could not record {what} in the run history: "
                               f"{_describe_error(exc)}")  # fmt: skip


def _stop(
    worker: threading.Thread, spark: SparkSession | None, tag: str, *, grace_s: float
) -> bool:
    """Cancel the tagged jobs until the worker ends; True if it is still running after grace_s.

    Cancelling again every second also catches a job the task starts after the first cancel
    (or one that was not submitted yet).
    """
    deadline = time.monotonic() + grace_s
    while worker.is_alive() and time.monotonic() < deadline:
        _cancel_jobs(spark, tag)
        worker.join(1.0)
    return worker.is_alive()


def _tag_jobs(spark: SparkSession | None, tag: str, *, add: bool) -> None:
    """Tag (or untag) every Spark job this thread starts, DataFrame and RDD alike.

    In classic Spark the tag goes on the SparkContext's thread-local job tags, which cover RDD
    actions too (a session tag only reaches SQL executions); Spark Connect has session tags.
    """
    if spark is None:
        return
    sc = spark_context(spark)
    if sc is not None:
        sc.addJobTag(tag) if add else sc.removeJobTag(tag)
    else:
        spark.addTag(tag) if add else spark.removeTag(tag)


def _cancel_jobs(spark: SparkSession | None, tag: str) -> None:
    if spark is None:
        return
    sc = spark_context(spark)
    if sc is not None:
        sc.cancelJobsWithTag(tag)
    else:
        spark.interruptTag(tag)


def _lines(result: Any) -> tuple[str, ...]:
    """The task's summary lines; a summary that fails does not undo the task's work."""
    try:
        return tuple(result.summary()) if hasattr(result, "summary") else ()
    except Exception as exc:
        return (f"(no summary: {_describe_error(exc)})",)


def _headline(result: Any) -> str:
    try:
        return str(result.headline()) if hasattr(result, "headline") else ""
    except Exception as exc:
        return f"(no headline: {_describe_error(exc)})"


def _ended(run: RunRecord, status: str, error: str | None) -> RunRecord:
    from dataclasses import replace

    return replace(run, status=status, ended_at=utcnow(), error=error)


def _describe_error(exc: BaseException) -> str:
    if isinstance(exc, RetailmlError):
        return _one_line(exc)
    return f"{exc.__class__.__name__}: {_one_line(exc)}"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else exc.__class__.__name__


def _elapsed(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}" if minutes else f"{seconds:.1f} s"
