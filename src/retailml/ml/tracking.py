"""MLflow set-up: one place that points MLflow at the configured store and experiments."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
from mlflow.data.spark_dataset import SparkDataset, from_spark
from mlflow.tracking import MlflowClient

from retailml.settings import Settings

if TYPE_CHECKING:
    from retailml.lakehouse import Lakehouse


def configure(settings: Settings) -> MlflowClient:
    """Point MLflow at the settings' tracking and registry store; returns a client for it."""
    # The sqlite store runs its schema migrations through alembic, which logs every step, and
    # mlflow.spark announces at INFO that a registry URI is not a DFS path on every load.
    for name in (
        "alembic",
        "mlflow.store.db.utils",
        "mlflow.utils.requirements_utils",
        "mlflow.spark",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)
    uri = settings.tracking_uri
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    registry = settings.mlflow.registry_uri or uri
    mlflow.set_registry_uri(registry)
    return MlflowClient(tracking_uri=uri, registry_uri=registry)


def experiment(settings: Settings, name: str) -> str:
    """The id of experiment ``name``, created with the configured artifact root if new."""
    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    root = settings.mlflow.artifact_root
    if root is None and settings.tracking_uri.startswith("sqlite:"):
        root = Path(settings.path("mlflow")).joinpath("artifacts").as_uri()
    location = f"{root.rstrip('/')}/{name}" if root else None
    return str(mlflow.create_experiment(name, artifact_location=location))


def log_table_inputs(lake: Lakehouse, names: list[str], *, context: str) -> None:
    """Log each table, as read now, as an input dataset of the active run
    (``mlflow.log_input``): a Delta source with its path or catalog name and version, so the
    run's page says which data it learned from and ``mlflow.data`` can load that version again.

    Args:
        names: Logical table names (``silver.transactions``); the dataset takes that name.
        context: The inputs' role, e.g. ``training``.
    """
    by_name = bool(lake.settings.catalog)
    for name in names:
        location, version = lake.location(name), lake.version(name)
        where = {"table_name": location} if by_name else {"path": location}
        table = lake.read(name)
        with warnings.catch_warnings():
            # The schema MLflow infers (when logging) warns that integer columns cannot hold
            # missing values: a hint for model signatures, not for a logged input.
            warnings.filterwarnings("ignore", category=UserWarning, module="mlflow.types")
            dataset = from_spark(table, version=str(version), name=name, **where)
            mlflow.log_input(_Counted(dataset, rows=table.count()), context=context)


class _Counted(SparkDataset):
    """A ``SparkDataset`` whose profile is the table's row count.

    MLflow's own profile sends every row through a Python worker (``rdd.countApprox`` with a
    5 s timeout, and the job goes on after it): at M, 35 s of both cores for
    silver.transactions alone, beside the task's own work. Delta answers ``count()`` from
    its log's file statistics.
    """

    def __init__(self, dataset: SparkDataset, *, rows: int) -> None:
        super().__init__(
            df=dataset.df, source=dataset.source, name=dataset.name, digest=dataset.digest
        )
        self.rows = rows

    @property
    def profile(self) -> dict[str, int]:
        # MLflow's key, which its UI shows; the count is exact.
        return {"approx_count": self.rows}
