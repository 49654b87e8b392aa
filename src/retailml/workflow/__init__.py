"""The workflow: which tasks exist, in what order, and how one is run and reported.

Each task is a plain function of (settings, SparkSession) that reads and writes tables, so any
task can be re-run alone and maps one-to-one onto a Databricks job task.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pyspark.sql import SparkSession

from retailml.settings import Settings

Echo = Callable[[str], Any]

# The tasks in dependency order (the DAG and the report come with the workflow issue).
TASK_ORDER = ("ingest", "clean", "features", "train", "score", "recommend")


@contextmanager
def session(settings: Settings) -> Iterator[SparkSession]:
    """A SparkSession for the duration of a command, stopped afterwards."""
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
    from retailml.generate import GenerateSummary, generate

    folder = out or Path(settings.path(settings.data_dir))
    params = {**settings.generate.model_dump(mode="json"), "seed": settings.seed}
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


def _tasks() -> dict[str, Callable[[Settings, SparkSession], Any]]:
    from retailml.stages import clean, features, ingest, recommend, score, train

    return {
        "ingest": ingest.run,
        "clean": clean.run,
        "features": features.run,
        "train": train.run,
        "score": score.run,
        "recommend": recommend.run,
    }


def run_task(name: str, settings: Settings, spark: SparkSession, *, echo: Echo = print) -> Any:
    """Run one task by name and print what it did (each result knows its own summary lines).

    Returns:
        The task's result object.
    """
    tasks = _tasks()
    if name not in tasks:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(TASK_ORDER)}")
    started = time.monotonic()
    echo(f"{name} ...")
    result = tasks[name](settings, spark)
    for line in result.summary():
        echo(f"  {line}")
    echo(f"{name} done in {time.monotonic() - started:.1f} s")
    return result


def run_all(settings: Settings, spark: SparkSession, *, echo: Echo = print) -> dict[str, Any]:
    """Run every task in order; generate the default data first when no source is set."""
    results: dict[str, Any] = {}
    if not settings.ingest.source:
        started = time.monotonic()
        summary = generate_data(settings)
        echo(
            f"data: {summary.lines:,} generated lines in {len(summary.files)} files under "
            f"{summary.out_dir} ({time.monotonic() - started:.1f} s)"
        )
    for name in TASK_ORDER:
        results[name] = run_task(name, settings, spark, echo=echo)
    from retailml.lakehouse import TABLES, Lakehouse

    lake = Lakehouse(settings, spark)
    echo("tables:")
    for name in TABLES:
        if lake.exists(name):
            echo(f"  {name:<25} {lake.read(name).count():>10,} rows  {lake.location(name)}")
    uri = settings.tracking_uri
    echo(f"MLflow: {uri} (browse with `mlflow ui --backend-store-uri {uri}`)")
    return results
