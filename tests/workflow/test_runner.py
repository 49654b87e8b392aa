"""The DAG and the local runner: order, failure propagation, retries, timeouts, resume, history,
and the lock that refuses a second run on the same lake."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession

from retailml import schemas as S
from retailml.errors import SettingsError
from retailml.runlog import History, new_run_id
from retailml.settings import Settings
from retailml.workflow import TASK_ORDER, selection
from retailml.workflow.dag import Dag, TaskSpec, load_dag, parse
from retailml.workflow.lock import RunLock, WorkflowBusyError, lock_path, running_run
from retailml.workflow.runner import Runner

# A small DAG with the shape of the real one: a chain, a side branch, and a join.
#   a → b → c ;  a → d ;  {c, d} → e
SMALL = {
    "name": "small",
    "tasks": [
        {"task_key": "a"},
        {"task_key": "b", "depends_on": [{"task_key": "a"}], "max_retries": 1},
        {"task_key": "c", "depends_on": [{"task_key": "b"}]},
        {"task_key": "d", "depends_on": [{"task_key": "a"}]},
        {"task_key": "e", "depends_on": [{"task_key": "c"}, {"task_key": "d"}]},
    ],
}


class Result:
    def __init__(self, name: str) -> None:
        self.name = name

    def summary(self) -> list[str]:
        return [f"{self.name} did its work"]

    def headline(self) -> str:
        return f"{self.name} ok"


def tasks(calls: list[str], fail: dict[str, int] | None = None) -> dict[str, Callable[[], Any]]:
    """Task functions that record their calls; ``fail[k] = n`` makes k fail its first n calls."""
    fail = dict(fail or {})

    def make(key: str) -> Callable[[], Any]:
        def fn() -> Result:
            calls.append(key)
            if fail.get(key, 0) > 0:
                fail[key] -= 1
                raise ValueError(f"{key} broke\nsecond line of detail")
            return Result(key)

        return fn

    return {t["task_key"]: make(t["task_key"]) for t in SMALL["tasks"]}


def runner(dag: Dag, functions: dict, history: History | None, **kw: Any) -> Runner:
    lines: list[str] = []
    return Runner(dag, functions, history=history, echo=lines.append, sleep=lambda s: None, **kw)


# --- the DAG -------------------------------------------------------------------------------


def test_the_workflow_dag_order_and_dependencies() -> None:
    dag = load_dag()
    assert dag.order() == TASK_ORDER
    assert TASK_ORDER == ("ingest", "clean", "features", "train", "score", "recommend", "report")
    deps = {t.key: set(t.depends_on) for t in dag.tasks}
    assert deps["clean"] == {"ingest"}
    assert deps["recommend"] == {"clean"}
    assert deps["report"] == {"score", "recommend"}
    for t in dag.tasks:  # every task has a timeout and at least one retry configured
        assert t.timeout_s > 0
        assert t.max_retries >= 1
    assert dag.select(from_="train") == ("train", "score", "report")
    assert dag.select(from_="clean") == TASK_ORDER[1:]
    assert dag.select(only=["score", "train"]) == ("train", "score")


def test_dag_rejects_cycles_unknown_and_duplicate_tasks() -> None:
    cyc = {"tasks": [{"task_key": "a", "depends_on": [{"task_key": "b"}]},
                     {"task_key": "b", "depends_on": [{"task_key": "a"}]}]}  # fmt: skip
    with pytest.raises(SettingsError, match="cycle"):
        parse(cyc)
    with pytest.raises(SettingsError, match="unknown x"):
        parse({"tasks": [{"task_key": "a", "depends_on": [{"task_key": "x"}]}]})
    with pytest.raises(SettingsError, match="twice: a"):
        parse({"tasks": [{"task_key": "a"}, {"task_key": "a"}]})
    with pytest.raises(SettingsError, match="unknown task 'zz'"):
        parse(SMALL).select(only=["zz"])


def test_retry_settings_are_read_from_the_job_fields() -> None:
    spec = parse(
        {
            "tasks": [
                {
                    "task_key": "a",
                    "max_retries": 2,
                    "min_retry_interval_millis": 1500,
                    "timeout_seconds": 60,
                    "retry_on_timeout": True,
                }
            ]
        }
    ).task("a")
    assert spec == TaskSpec("a", (), "", 2, 1.5, True, 60.0)
    assert spec.attempts == 3


# --- the runner, without history -------------------------------------------------------------


def test_runs_in_dependency_order() -> None:
    calls: list[str] = []
    dag = parse(SMALL)
    outcome = runner(dag, tasks(calls), None).run("r1", dag.order())
    assert calls == ["a", "b", "c", "d", "e"]
    assert outcome.status == S.SUCCEEDED
    assert [t.headline for t in outcome.tasks] == [f"{k} ok" for k in "abcde"]


def test_a_failed_task_stops_its_dependents_but_not_other_branches() -> None:
    calls: list[str] = []
    dag = parse(SMALL)
    outcome = runner(dag, tasks(calls, fail={"c": 5}), None).run("r1", dag.order())
    status = {t.task: t.status for t in outcome.tasks}
    assert status == {
        "a": S.SUCCEEDED,
        "b": S.SUCCEEDED,
        "c": S.FAILED,
        "d": S.SUCCEEDED,  # independent branch still runs
        "e": S.UPSTREAM_FAILED,  # never started
    }
    assert "e" not in calls
    assert outcome.status == S.FAILED
    assert outcome.failed is not None and outcome.failed.task == "c"
    assert outcome.failed.error == "ValueError: c broke"  # one line


def test_a_task_that_runs_when_all_is_done_runs_after_a_failure() -> None:
    spec = {**SMALL, "tasks": [*SMALL["tasks"][:4], {**SMALL["tasks"][4], "run_if": "ALL_DONE"}]}
    dag = parse(spec)
    assert dag.task("e").run_if == "ALL_DONE" and dag.task("d").run_if == "ALL_SUCCESS"
    calls: list[str] = []
    outcome = runner(dag, tasks(calls, fail={"a": 1}), None).run("r1", dag.order())
    status = {t.task: t.status for t in outcome.tasks}
    assert status == {
        "a": S.FAILED,
        "b": S.UPSTREAM_FAILED,
        "c": S.UPSTREAM_FAILED,
        "d": S.UPSTREAM_FAILED,
        "e": S.SUCCEEDED,  # the report of what failed
    }
    assert calls == ["a", "e"] and outcome.status == S.FAILED
    with pytest.raises(
        SettingsError, match="run_if 'SOMETIMES' is not one of ALL_SUCCESS, ALL_DONE"
    ):
        parse({"tasks": [{"task_key": "a", "run_if": "SOMETIMES"}]})


def test_a_failure_is_printed_once() -> None:
    lines: list[str] = []
    dag = parse(SMALL)
    r = Runner(dag, tasks([], fail={"c": 5, "d": 5}), history=None, echo=lines.append,
               sleep=lambda s: None)  # fmt: skip
    outcome = r.run("r1", dag.order())
    table = "\n".join("  ".join(row) for row in outcome.table())
    assert not any("c broke" in line for line in lines)  # live: that it failed, not why
    assert "c broke" not in table and "(error below)" in table  # the final line says it
    assert "ValueError: d broke" in table  # a second failure is shown where it is
    assert outcome.failed is not None and outcome.failed.error == "ValueError: c broke"


def test_a_task_that_fails_once_is_retried() -> None:
    calls: list[str] = []
    dag = parse(SMALL)
    waits: list[float] = []
    r = Runner(dag, tasks(calls, fail={"b": 1}), history=None, echo=lambda s: None,
               sleep=waits.append)  # fmt: skip
    outcome = r.run("r1", dag.order())
    assert calls == ["a", "b", "b", "c", "d", "e"]
    b = next(t for t in outcome.tasks if t.task == "b")
    assert (b.status, b.attempts) == (S.SUCCEEDED, 2)
    assert waits == [0.0]
    # A task without retries fails at once.
    calls.clear()
    outcome = runner(dag, tasks(calls, fail={"a": 1}), None).run("r2", dag.order())
    assert calls == ["a"]
    assert [t.status for t in outcome.tasks][:1] == [S.FAILED]


# --- with the real history tables ----------------------------------------------------------


@pytest.fixture
def history(settings: Settings, spark: SparkSession) -> History:
    return History(settings, spark)


def test_history_records_every_run_and_attempt(history: History) -> None:
    calls: list[str] = []
    dag = parse(SMALL)
    outcome = runner(dag, tasks(calls, fail={"b": 1, "d": 9}), history).run("run-1", dag.order())
    assert outcome.status == S.FAILED
    rows = [(a.task, a.attempt, a.status) for a in history.attempts("run-1")]
    assert rows == [
        ("a", 1, S.SUCCEEDED),
        ("b", 1, S.FAILED),
        ("b", 2, S.SUCCEEDED),
        ("c", 1, S.SUCCEEDED),
        ("d", 1, S.FAILED),
        ("e", 0, S.UPSTREAM_FAILED),
    ]
    first = history.attempts("run-1")[0]
    assert first.outputs == ("a did its work",)
    assert first.started_at is not None and first.ended_at is not None
    assert first.seconds is not None and first.seconds >= 0
    run = history.run("run-1")
    assert (run.status, run.tasks, run.trigger) == (S.FAILED, tuple("abcde"), "run")
    assert run.error == "d: ValueError: d broke"
    assert run.ended_at is not None and run.user and run.host
    assert [r.run_id for r in history.runs()] == ["run-1"]


def test_resume_runs_only_what_did_not_succeed(history: History) -> None:
    dag = parse(SMALL)
    calls: list[str] = []
    runner(dag, tasks(calls, fail={"c": 9}), history).run("first", dag.order())
    assert history.succeeded_tasks("first") == {"a", "b", "d"}

    todo, trigger = selection(dag, resume="first", history=history)
    assert (todo, trigger) == (("c", "e"), "resume first")
    calls.clear()
    outcome = runner(dag, tasks(calls), history).run(
        "second", todo, trigger=trigger, resumed_from="first"
    )
    assert calls == ["c", "e"]
    assert outcome.status == S.SUCCEEDED
    assert history.run("second").resumed_from == "first"
    assert selection(dag, resume="second", history=history)[0] == ()
    assert [r.run_id for r in history.runs()][:2] == ["second", "first"]


def test_from_and_only_selections() -> None:
    dag = parse(SMALL)
    assert selection(dag, from_="b") == (("b", "c", "e"), "from b")
    assert selection(dag, only=("d",)) == (("d",), "only d")
    with pytest.raises(Exception, match="--resume"):
        selection(dag, from_="b", resume="x")


def test_a_timeout_cancels_the_tasks_spark_jobs(spark: SparkSession) -> None:
    dag = parse(
        {
            "tasks": [
                {
                    "task_key": "slow",
                    "timeout_seconds": 2,
                    "max_retries": 1,
                    "retry_on_timeout": False,
                }
            ]
        }
    )

    def slow() -> None:
        # A Spark job that would take a minute; the runner must cancel it.
        spark.range(2).repartition(2).rdd.map(lambda x: time.sleep(60) or x).count()

    started = time.monotonic()
    lines: list[str] = []
    outcome = Runner(
        dag, {"slow": slow}, history=None, spark=spark, echo=lines.append,
        sleep=lambda s: None,
    ).run("t", ("slow",))  # fmt: skip
    took = time.monotonic() - started
    (t,) = outcome.tasks
    assert (t.status, t.attempts) == (S.TIMED_OUT, 1), lines  # no retry on timeout
    assert t.error == "timed out after 2 s"
    assert took < 40, f"the Spark job was not cancelled ({took:.0f} s)"
    assert spark.range(3).count() == 3  # the session is still usable


# --- one run at a time -------------------------------------------------------------------


def test_a_second_run_on_the_same_lake_is_refused(tmp_path: Path, settings: Settings) -> None:
    with RunLock(settings, "first-run"):
        assert running_run(settings) == "first-run"
        with pytest.raises(WorkflowBusyError, match="first-run") as err:
            RunLock(settings, "second-run").acquire()
        assert "another retailml run is writing to this lake" in str(err.value)
    assert running_run(settings) is None
    with RunLock(settings, "third-run"):  # released, so it can be taken again
        pass


def test_the_lock_is_released_when_its_process_dies(settings: Settings) -> None:
    path = lock_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); "
         "fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)",
         str(path)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(WorkflowBusyError):
            RunLock(settings, "mine").acquire()
    finally:
        holder.kill()
        holder.wait()
    with RunLock(settings, "mine"):  # the dead holder's lock is gone
        pass


def test_run_ids_sort_by_time() -> None:
    from datetime import datetime

    a = new_run_id(datetime(2026, 1, 2, 3, 4, 5))
    b = new_run_id(datetime(2026, 1, 2, 3, 4, 6))
    assert a.startswith("20260102-030405-") and a < b


def test_a_users_mistake_is_not_retried() -> None:
    from retailml.errors import InputError

    calls: list[str] = []
    dag = parse(SMALL)

    def bad_input() -> None:
        calls.append("b")
        raise InputError("data.csv: column 'price' is missing")

    functions = {**tasks([]), "b": bad_input}
    outcome = runner(dag, functions, None).run("r", ("b",))
    assert calls == ["b"]  # b has a retry, but a RetailmlError is permanent
    assert outcome.tasks[0].error == "data.csv: column 'price' is missing"


def test_resuming_a_run_that_was_already_resumed_repeats_nothing(history: History) -> None:
    dag = parse(SMALL)
    runner(dag, tasks([], fail={"c": 9}), history).run("A", dag.order())
    todo, trigger = selection(dag, resume="A", history=history)
    runner(dag, tasks([]), history).run("B", todo, trigger=trigger, resumed_from="A")
    assert selection(dag, resume="A", history=history)[0] == ()  # B did it already
    assert history.resume_chain("A") == ["A", "B"]


class RecordingHistory:
    """Stands in for the history tables to watch what the runner records (or to fail)."""

    def __init__(self, broken: bool = False) -> None:
        self.broken = broken
        self.attempts: list[Any] = []
        self.runs: list[Any] = []

    def record_attempt(self, attempt: Any) -> None:
        if self.broken:
            raise RuntimeError("the store is gone\nwith detail")
        self.attempts.append(attempt)

    def record_run(self, run: Any) -> None:
        if self.broken:
            raise RuntimeError("the store is gone")
        self.runs.append(run)


def test_a_failing_history_write_does_not_hide_the_tasks_error() -> None:
    dag = parse(SMALL)
    lines: list[str] = []
    r = Runner(dag, tasks([], fail={"c": 9}), history=RecordingHistory(broken=True),  # type: ignore[arg-type]
               echo=lines.append, sleep=lambda s: None)  # fmt: skip
    outcome = r.run("r", dag.order())
    assert outcome.failed is not None and outcome.failed.error == "ValueError: c broke"
    assert [t.status for t in outcome.tasks].count(S.SUCCEEDED) == 3
    assert any(ln.startswith("warning: could not record") for ln in lines)


def test_ctrl_c_records_the_interrupted_attempt_and_the_run() -> None:
    dag = parse(SMALL)
    recorded = RecordingHistory()

    def interrupted() -> None:
        raise KeyboardInterrupt

    functions = {**tasks([]), "b": interrupted}
    r = Runner(dag, functions, history=recorded, echo=lambda s: None)  # type: ignore[arg-type]
    with pytest.raises(KeyboardInterrupt):
        r.run("r", dag.order())
    assert [(a.task, a.status, a.error) for a in recorded.attempts] == [
        ("a", S.SUCCEEDED, None),
        ("b", S.FAILED, "interrupted"),
    ]
    assert [run.status for run in recorded.runs] == [S.RUNNING, S.FAILED]
