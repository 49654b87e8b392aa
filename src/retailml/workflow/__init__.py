"""The workflow: the DAG of ``job.yml``, its task registry, the local runner, the lock and the
Databricks export. This package only re-exports what the command line uses.

Each task is a plain function of (settings, SparkSession) that reads and writes tables
(:mod:`retailml.workflow.tasks`), so any task can be re-run alone and maps one-to-one onto a
Databricks job task. :func:`run_workflow` runs a selection of the DAG with the local runner;
:func:`run_task` runs one task the way a Databricks job task does.

The runner needs Spark and is imported on first use, so that ``retailml --help`` and ``retailml
bundle`` start without it.
"""

from __future__ import annotations

from typing import Any

from retailml.workflow.dag import load_dag

# The tasks in run order, from the one definition in job.yml.
TASK_ORDER = load_dag().order()

_FROM_LOCAL = ("TableLocation", "WorkflowResult", "run_task", "run_workflow", "selection")


def __getattr__(name: str) -> Any:
    if name in _FROM_LOCAL:
        from retailml.workflow import local

        return getattr(local, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["TASK_ORDER", *_FROM_LOCAL]
