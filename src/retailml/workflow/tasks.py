"""The task registry: each task of ``job.yml`` → the function that runs it, imported when run.

This is the one place that binds task names to code; ``job.yml`` is the one place that lists
the tasks and their order (a test holds the two equal). A task function takes the settings and
the session, and the report also the workflow run it writes about; it returns an object with
``summary()`` (lines to print) and ``headline()`` (one line for the run's table).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from retailml.errors import RetailmlError
from retailml.settings import Settings

if TYPE_CHECKING:  # Spark is imported where a session is needed: `retailml bundle` needs none.
    from pyspark.sql import SparkSession

TASKS: dict[str, str] = {
    "ingest": "retailml.stages.ingest:run",
    "clean": "retailml.stages.clean:run",
    "features": "retailml.stages.features:run",
    "train": "retailml.stages.train:run",
    "score": "retailml.stages.score:run",
    "recommend": "retailml.stages.recommend:run",
    "report": "retailml.stages.report:run",
}


def task_function(name: str) -> Callable[..., Any]:
    """The function of task ``name``, imported now (a command imports only what it runs).

    Raises:
        RetailmlError: No such task.
    """
    if name not in TASKS:
        raise RetailmlError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
    module, _, function = TASKS[name].partition(":")
    return getattr(importlib.import_module(module), function)


def bind(name: str, settings: Settings, spark: SparkSession, *, run_id: str) -> Callable[[], Any]:
    """Task ``name`` as a callable of no arguments, for a runner to call (and retry); the
    task's module is imported when it is first called."""

    def call() -> Any:
        function = task_function(name)
        # Only the report asks which run it belongs to.
        wants_run = "run_id" in inspect.signature(function).parameters
        return function(settings, spark, **({"run_id": run_id} if wants_run else {}))

    return call


def bind_all(
    settings: Settings, spark: SparkSession, *, run_id: str
) -> dict[str, Callable[[], Any]]:
    """Every task bound to the settings, session and run."""
    return {name: bind(name, settings, spark, run_id=run_id) for name in TASKS}
