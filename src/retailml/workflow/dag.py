"""The workflow's DAG, read from ``job.yml``: tasks, dependencies, retries and timeouts.

``job.yml`` is written in the Databricks Jobs API's task fields, so the local runner and the
Databricks export read one definition. This module turns it into a validated :class:`Dag` and
answers the questions a runner asks: in what order, what is downstream of a task, which tasks
a ``--from`` or ``--only`` selection means.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from retailml.errors import SettingsError

JOB_FILE = "job.yml"
# The Databricks Jobs API's run_if conditions the local runner implements: run when every
# dependency succeeded (the default), or when every dependency has ended, however it ended
# (a report of what did succeed after a failure).
ALL_SUCCESS = "ALL_SUCCESS"
ALL_DONE = "ALL_DONE"
RUN_IF = (ALL_SUCCESS, ALL_DONE)


@dataclass(frozen=True)
class TaskSpec:
    """One task of the workflow, as ``job.yml`` defines it."""

    key: str
    depends_on: tuple[str, ...] = ()
    description: str = ""
    max_retries: int = 0
    retry_delay_s: float = 0.0
    retry_on_timeout: bool = False
    timeout_s: float = 0.0  # 0: no limit
    run_if: str = ALL_SUCCESS

    @property
    def attempts(self) -> int:
        """How many times the task may run: once, plus its retries."""
        return 1 + self.max_retries


@dataclass(frozen=True)
class Dag:
    """Tasks in definition order; validated to have known, acyclic dependencies."""

    name: str
    tasks: tuple[TaskSpec, ...]

    def __post_init__(self) -> None:
        keys = [t.key for t in self.tasks]
        if len(set(keys)) != len(keys):
            dupes = sorted({k for k in keys if keys.count(k) > 1})
            raise SettingsError(f"workflow {self.name}: task defined twice: {', '.join(dupes)}")
        for t in self.tasks:
            unknown = [d for d in t.depends_on if d not in keys]
            if unknown:
                raise SettingsError(
                    f"workflow {self.name}: task {t.key} depends on unknown {', '.join(unknown)}"
                )
        self.order()  # raises on a cycle

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(t.key for t in self.tasks)

    def task(self, key: str) -> TaskSpec:
        for t in self.tasks:
            if t.key == key:
                return t
        raise SettingsError(f"unknown task {key!r}; the workflow has: {', '.join(self.keys)}")

    def order(self) -> tuple[str, ...]:
        """A topological order; among ready tasks, the one defined first goes first."""
        done: list[str] = []
        pending = list(self.tasks)
        while pending:
            ready = [t for t in pending if set(t.depends_on) <= set(done)]
            if not ready:
                cycle = ", ".join(t.key for t in pending)
                raise SettingsError(f"workflow {self.name}: dependency cycle among {cycle}")
            done.append(ready[0].key)
            pending.remove(ready[0])
        return tuple(done)

    def upstream(self, key: str) -> set[str]:
        """The tasks ``key`` depends on, directly or not."""
        found: set[str] = set()
        pending = list(self.task(key).depends_on)
        while pending:
            dep = pending.pop()
            if dep not in found:
                found.add(dep)
                pending.extend(self.task(dep).depends_on)
        return found

    def downstream(self, keys: Iterable[str]) -> set[str]:
        """``keys`` and every task that depends on them, directly or not."""
        found = {self.task(k).key for k in keys}
        changed = True
        while changed:
            changed = False
            for t in self.tasks:
                if t.key not in found and found.intersection(t.depends_on):
                    found.add(t.key)
                    changed = True
        return found

    def select(self, *, from_: str | None = None, only: Iterable[str] = ()) -> tuple[str, ...]:
        """The tasks a run covers, in run order: all, ``from_`` and its downstream, or ``only``."""
        only = tuple(only)
        if from_ and only:
            raise SettingsError("choose either --from or --only, not both")
        if only:
            chosen = {self.task(k).key for k in only}
        elif from_:
            chosen = self.downstream([from_])
        else:
            chosen = set(self.keys)
        return tuple(k for k in self.order() if k in chosen)


def parse(spec: Mapping[str, Any], *, source: str = JOB_FILE) -> Dag:
    """A :class:`Dag` from a job definition in the Databricks Jobs API's task fields."""
    try:
        tasks = tuple(
            TaskSpec(
                key=str(t["task_key"]),
                depends_on=tuple(str(d["task_key"]) for d in t.get("depends_on", [])),
                description=str(t.get("description", "")),
                max_retries=int(t.get("max_retries", 0)),
                retry_delay_s=int(t.get("min_retry_interval_millis", 0)) / 1000,
                retry_on_timeout=bool(t.get("retry_on_timeout", False)),
                timeout_s=float(t.get("timeout_seconds", 0)),
                run_if=str(t.get("run_if", ALL_SUCCESS)),
            )
            for t in spec["tasks"]
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise SettingsError(f"{source}: not a valid job definition ({exc!r})") from None
    for t in tasks:
        if t.run_if not in RUN_IF:
            raise SettingsError(
                f"{source}: task {t.key}: run_if {t.run_if!r} is not one of {', '.join(RUN_IF)}"
            )
    return Dag(name=str(spec.get("name", "retailml")), tasks=tasks)


def job_spec(path: Path | None = None) -> dict[str, Any]:
    """The raw job definition: ``path``, or the ``job.yml`` that ships with the package."""
    text = (
        path.read_text(encoding="utf-8")
        if path is not None
        else resources.files(__package__).joinpath(JOB_FILE).read_text(encoding="utf-8")
    )
    spec = yaml.safe_load(text)
    if not isinstance(spec, dict):
        raise SettingsError(f"{path or JOB_FILE}: expected a mapping with 'tasks'")
    return spec


def load_dag(path: Path | None = None) -> Dag:
    """The workflow's DAG (the packaged ``job.yml`` unless ``path`` is given)."""
    return parse(job_spec(path), source=str(path or JOB_FILE))
