"""The Databricks export: ``job.yml`` and the settings as a Databricks Asset Bundle.

``retailml bundle --out DIR`` writes two files:

- ``databricks.yml``: the bundle (name, targets ``dev`` and ``prod``, no workspace host: the
  Databricks CLI takes it from the profile or ``DATABRICKS_HOST``) and an artifact that builds
  this project's wheel into the bundle's ``dist/`` folder on every deploy.
- ``resources/retailml.job.yml``: the job. Its tasks are the tasks of ``job.yml`` with the same
  keys, dependencies, retries and timeouts; each runs ``retailml task NAME --run-id
  {{job.run_id}}`` from the wheel (``python_wheel_task``) on one shared job cluster. Beside it,
  a weekly maintenance job runs ``retailml maintain`` (OPTIMIZE and VACUUM) on the same
  catalog and schema.

What differs on Databricks is passed as ``--set`` options before the subcommand, filled in from
job parameters when a run starts (dynamic value references): tables go to the Unity Catalog
``catalog.schema``, models to the Unity Catalog registry under three-level names, experiments to
absolute workspace paths, and generated data and reports to a Unity Catalog volume (the driver's
local disk is neither shared with the executors nor kept after the run). Spark, Delta Lake and
the MLflow tracking URI need no option: ``DATABRICKS_RUNTIME_VERSION`` is set on the cluster,
and the settings then use the platform's.

The job is checked against the Databricks SDK's ``JobSettings`` before anything is written
(:func:`validate_job`), so a misspelt field or an unknown enum value never reaches a deploy.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import os
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from retailml.errors import SettingsError
from retailml.settings import Settings
from retailml.workflow.dag import JOB_FILE, job_spec, parse

BUNDLE_NAME = "retailml"
JOB_KEY = "retailml"  # the job's key under resources.jobs (`databricks bundle run retailml`)
MAINTENANCE_KEY = "retailml_maintenance"  # the weekly `retailml maintain` job
CLUSTER_KEY = "retailml"
PACKAGE_NAME = "retailml"  # the distribution in pyproject.toml
ENTRY_POINT = "retailml"  # [project.scripts] retailml = "retailml.cli:main"
ARTIFACT_KEY = "retailml_wheel"
WHEEL_DIR = "dist"
BUNDLE_FILE = "databricks.yml"
JOB_RESOURCE_FILE = "resources/retailml.job.yml"

# The task fields of job.yml, copied unchanged; anything else in job.yml is refused rather than
# silently left out of the export.
TASK_FIELDS = (
    "task_key",
    "description",
    "depends_on",
    "max_retries",
    "min_retry_interval_millis",
    "retry_on_timeout",
    "timeout_seconds",
    "run_if",
)

# Job parameters: name → default. Experiments must be absolute workspace paths whose folder
# already exists (MLflow does not create it), hence /Shared. The volume must exist in the
# catalog and schema (CREATE VOLUME); `source` empty means "generate the demo data".
EXPERIMENT_DIR = "/Shared"
VOLUME_NAME = "retailml"

HEADER = (
    "# Written by `retailml bundle` from retailml/workflow/job.yml and the settings.\n"
    "# Change those and export again rather than editing this file.\n"
)


def _ref(name: str) -> str:
    """A dynamic value reference to job parameter ``name``, replaced when a run starts."""
    return "{{job.parameters." + name + "}}"


RUN_ID_REF = "{{job.run_id}}"


def job_parameters(settings: Settings) -> dict[str, str]:
    """The job's parameters and their defaults (overridable per run)."""
    wf = settings.workflow
    return {
        "catalog": wf.job_catalog,
        "schema": wf.job_schema,
        "experiment_dir": EXPERIMENT_DIR,
        "volume_dir": f"/Volumes/{wf.job_catalog}/{wf.job_schema}/{VOLUME_NAME}",
        "source": "",
        # `retailml run --full` / `--retrain` for one run: `--params full=true`.
        "full": "false",
        "retrain": "false",
    }


def _uc_model_name(model_name: str) -> str:
    """The last part of a model name as a Unity Catalog identifier (letters, digits, _)."""
    leaf = model_name.rsplit(".", 1)[-1]
    return re.sub(r"[^0-9A-Za-z_]", "_", leaf).lower()


def task_parameters(settings: Settings, task_key: str) -> list[str]:
    """The command line of one task, after the entry point: options, then ``task NAME``.

    Global options go before the subcommand because they belong to the ``retailml`` group.
    """
    catalog, schema = _ref("catalog"), _ref("schema")
    experiments, volume = _ref("experiment_dir"), _ref("volume_dir")
    overrides = {
        "catalog": catalog,
        "schema": schema,
        # The cluster's MLflow tracking is the workspace; models go to Unity Catalog, whose
        # names are catalog.schema.model (the default registry would be the workspace's).
        "mlflow.registry_uri": "databricks-uc",
        "train.model_name": f"{catalog}.{schema}.{_uc_model_name(settings.train.model_name)}",
        "recommend.model_name": (
            f"{catalog}.{schema}.{_uc_model_name(settings.recommend.model_name)}"
        ),
        "train.experiment": f"{experiments}/{PurePosixPath(settings.train.experiment).name}",
        "recommend.experiment": (
            f"{experiments}/{PurePosixPath(settings.recommend.experiment).name}"
        ),
        "report.experiment": f"{experiments}/{PurePosixPath(settings.report.experiment).name}",
        "data_dir": f"{volume}/data",
        "report.dir": f"{volume}/reports",
        "ingest.source": _ref("source"),
        "workflow.full": _ref("full"),
        "workflow.retrain": _ref("retrain"),
    }
    args: list[str] = []
    for key, value in overrides.items():
        args += ["--set", f"{key}={value}"]
    return [*args, "task", task_key, "--run-id", RUN_ID_REF]


def _job_cluster(settings: Settings) -> dict[str, Any]:
    wf = settings.workflow
    cluster: dict[str, Any] = {
        "spark_version": wf.databricks_spark_version,
        "node_type_id": wf.databricks_node_type,
        "num_workers": wf.databricks_workers,
        # Unity Catalog needs an access mode; single user is what ML runtimes support fully.
        "data_security_mode": "SINGLE_USER",
    }
    if wf.databricks_workers == 0:
        # No workers is a single-node cluster: Spark runs on the driver.
        cluster["spark_conf"] = {
            "spark.master": "local[*, 4]",
            "spark.databricks.cluster.profile": "singleNode",
        }
        cluster["custom_tags"] = {"ResourceClass": "SingleNode"}
    return cluster


def job_resource(settings: Settings, spec: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The Databricks job's settings (Jobs API fields) from ``job.yml`` and ``settings.workflow``.

    Args:
        settings: The settings; ``workflow`` gives the cluster, schedule and parameter defaults,
            ``train`` / ``recommend`` / ``report`` the model and experiment names.
        spec: A job definition in ``job.yml``'s form; the packaged ``job.yml`` when None.

    Returns:
        The job's settings, ready for ``resources.jobs`` of a bundle.

    Raises:
        SettingsError: ``spec`` is not a valid job definition, or has task fields the export
            does not know.
    """
    spec = job_spec() if spec is None else spec
    dag = parse(spec)  # known, acyclic dependencies, unique keys
    tasks = []
    for raw in spec["tasks"]:
        unknown = sorted(set(raw) - set(TASK_FIELDS))
        if unknown:
            raise SettingsError(
                f"{JOB_FILE}: task {raw['task_key']} has fields the Databricks export does not "
                f"copy: {', '.join(unknown)} (known: {', '.join(TASK_FIELDS)})"
            )
        task = {field: raw[field] for field in TASK_FIELDS if field in raw}
        task |= _wheel_task(task_parameters(settings, str(raw["task_key"])))
        tasks.append(task)

    return {
        "name": dag.name,
        "description": "Retail ML workflow: ingest, clean, features, train, score, recommend, "
        "report (exported from job.yml by `retailml bundle`).",
        **_one_run_at_a_time(settings, cron=settings.workflow.schedule_cron),
        "parameters": [
            {"name": name, "default": default} for name, default in job_parameters(settings).items()
        ],
        "job_clusters": [{"job_cluster_key": CLUSTER_KEY, "new_cluster": _job_cluster(settings)}],
        "tasks": tasks,
    }


def _wheel_task(parameters: list[str]) -> dict[str, Any]:
    """A task's fields that run ``retailml`` from the bundle's wheel on the job cluster."""
    # Relative to the resource file: the bundle's dist/, where the artifact is built.
    depth = len(PurePosixPath(JOB_RESOURCE_FILE).parent.parts)
    return {
        "job_cluster_key": CLUSTER_KEY,
        "python_wheel_task": {
            "package_name": PACKAGE_NAME,
            "entry_point": ENTRY_POINT,
            "parameters": parameters,
        },
        "libraries": [{"whl": "../" * depth + f"{WHEEL_DIR}/*.whl"}],
    }


def _one_run_at_a_time(settings: Settings, *, cron: str) -> dict[str, Any]:
    """A job's concurrency and schedule: one run at a time, like the local runner, which
    refuses a second run on the same lake; a scheduled run that finds one running waits in the
    queue instead of being skipped. Time zone and pause state are the workflow's."""
    wf = settings.workflow
    return {
        "max_concurrent_runs": 1,
        "queue": {"enabled": True},
        "schedule": {
            "quartz_cron_expression": cron,
            "timezone_id": wf.schedule_timezone,
            "pause_status": "PAUSED" if wf.schedule_paused else "UNPAUSED",
        },
    }


def maintenance_job(settings: Settings) -> dict[str, Any]:
    """The weekly Delta table care job: one task, ``retailml maintain`` on the workflow's
    catalog and schema (job parameters, as in :func:`job_resource`), on its own cluster of the
    same shape, at ``workflow.maintenance_cron`` (time zone and pause state as the workflow's).
    It queues behind a running workflow rather than racing its writes."""
    names = ("catalog", "schema")
    args: list[str] = []
    for name in names:
        args += ["--set", f"{name}={_ref(name)}"]
    defaults = job_parameters(settings)
    return {
        "name": f"{BUNDLE_NAME} maintenance",
        "description": "Delta table care for the retailml tables: OPTIMIZE, then VACUUM "
        "(`retailml maintain`, exported by `retailml bundle`).",
        **_one_run_at_a_time(settings, cron=settings.workflow.maintenance_cron),
        "parameters": [{"name": name, "default": defaults[name]} for name in names],
        "job_clusters": [{"job_cluster_key": CLUSTER_KEY, "new_cluster": _job_cluster(settings)}],
        "tasks": [
            {
                "task_key": "maintain",
                "description": "OPTIMIZE and VACUUM every retailml table.",
                "max_retries": 1,
                "min_retry_interval_millis": 10000,
                "retry_on_timeout": False,
                "timeout_seconds": 7200,
                **_wheel_task([*args, "maintain"]),
            }
        ],
    }


def bundle_files(settings: Settings, *, project_dir: Path, out: Path) -> dict[str, dict[str, Any]]:
    """The bundle's files: path relative to ``out`` → YAML content.

    Args:
        settings: The settings (see :func:`job_resource`).
        project_dir: The folder with ``pyproject.toml``, whose wheel the bundle builds.
        out: The bundle's folder; the wheel's build command refers to ``project_dir``
            relative to it, so the two can move together.

    Returns:
        ``databricks.yml`` and ``resources/retailml.job.yml``.

    Raises:
        SettingsError: ``out`` is the project folder (a bundle's folder is uploaded to the
            workspace, and the project's holds the local lake and MLflow store).
    """
    project, bundle_dir = project_dir.resolve(), out.resolve()
    if project == bundle_dir:
        raise SettingsError(
            f"{out}: write the bundle to a folder of its own (e.g. {project / 'bundle'}): a "
            "bundle's folder is uploaded to the workspace on deploy"
        )
    source = Path(os.path.relpath(project, bundle_dir)).as_posix()
    databricks_yml = {
        "bundle": {"name": BUNDLE_NAME},
        "include": [f"{PurePosixPath(JOB_RESOURCE_FILE).parent}/*.yml"],
        "artifacts": {
            ARTIFACT_KEY: {
                "type": "whl",
                # Built from the project into the bundle's own dist/ (which the CLI empties
                # before a build), so the wheel and the job's library path stay inside the
                # bundle. Needs Python with pip; the build backend comes from pyproject.toml.
                "path": ".",
                "build": f"python3 -m pip wheel --no-deps --wheel-dir {WHEEL_DIR} {source}",
            }
        },
        # No workspace host: the Databricks CLI takes it from the profile or DATABRICKS_HOST.
        "targets": {
            "dev": {"mode": "development", "default": True},
            "prod": {
                "mode": "production",
                "workspace": {
                    # One copy per workspace user, whoever deploys.
                    "root_path": "/Workspace/Users/${workspace.current_user.userName}"
                    "/.bundle/${bundle.name}/${bundle.target}"
                },
            },
        },
    }
    jobs = {JOB_KEY: job_resource(settings), MAINTENANCE_KEY: maintenance_job(settings)}
    job_yml = {"resources": {"jobs": jobs}}
    return {BUNDLE_FILE: databricks_yml, JOB_RESOURCE_FILE: job_yml}


def write_bundle(settings: Settings, out: Path) -> list[Path]:
    """Write the Databricks Asset Bundle to ``out`` (see :func:`bundle_files`).

    The job is validated first, so an export the Jobs API would not accept is never written.

    Returns:
        The files written.

    Raises:
        SettingsError: A bad ``job.yml`` or ``out`` (see :func:`bundle_files`).
        ValueError: The job does not load as the Databricks SDK's ``JobSettings``.
    """
    files = bundle_files(settings, project_dir=settings.project_dir, out=out)
    for job in files[JOB_RESOURCE_FILE]["resources"]["jobs"].values():
        validate_job(job)
    written = []
    for relative, content in files.items():
        path = out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        text = yaml.safe_dump(content, sort_keys=False, default_flow_style=False, width=100)
        path.write_text(HEADER + text, encoding="utf-8")
        written.append(path)
    return written


# --- validation against the Databricks SDK -----------------------------------------------------

_MISSING = object()


def validate_job(job: Mapping[str, Any]) -> None:
    """Check a job's settings against the Databricks SDK's ``JobSettings``.

    ``JobSettings.from_dict`` ignores unknown keys and unknown enum values without a word, so
    the job is loaded and serialised back (``as_dict``) and compared with the input: a field
    that did not survive the round trip is misspelt or has a value the API does not know. The
    kept values are also checked against the SDK's field types (an int given as a string
    survives a round trip unchanged).

    Raises:
        ValueError: Naming every field that was dropped, changed or of the wrong type.
    """
    from databricks.sdk.service.jobs import JobSettings

    if not isinstance(job, Mapping):
        raise ValueError(f"job settings must be a mapping, got {type(job).__name__}")
    given = _normalise(job)
    try:
        kept: Any = JobSettings.from_dict(given).as_dict()
    except (AttributeError, TypeError, ValueError, KeyError):
        kept = {}  # a structural mistake; the typed walk below names it
    problems: list[str] = []
    _check(given, kept, JobSettings, "", problems)
    if problems:
        raise ValueError("not valid Databricks job settings: " + "; ".join(problems))


def _normalise(value: Any) -> Any:
    """Drop what ``as_dict`` never writes back: None, empty lists and empty mappings."""
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            item = _normalise(item)
            if item is None or (isinstance(item, list | dict) and not item):
                continue
            out[key] = item
        return out
    if isinstance(value, list | tuple):
        return [_normalise(item) for item in value]
    return value


@functools.cache
def _fields(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(hint: Any) -> Any:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def _label(item: Any, index: int) -> str:
    if isinstance(item, Mapping):
        for key in ("task_key", "job_cluster_key", "name"):
            if isinstance(item.get(key), str):
                return item[key]
    return str(index)


def _check(value: Any, kept: Any, hint: Any, path: str, problems: list[str]) -> None:
    """Walk ``value`` with its SDK type and what survived the round trip (``kept``)."""
    hint = _unwrap_optional(hint)
    where = path or "job"
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            problems.append(f"{where}: expected a mapping, got {value!r}")
            return
        fields = _fields(hint)
        kept_map = kept if isinstance(kept, Mapping) else {}
        for key, item in value.items():
            at = f"{path}.{key}" if path else str(key)
            if key not in fields:
                problems.append(f"{at}: unknown field of {hint.__name__}")
                continue
            _check(item, kept_map.get(key, _MISSING), fields[key], at, problems)
        return
    origin = typing.get_origin(hint)
    if origin is list:
        if not isinstance(value, list):
            problems.append(f"{where}: expected a list, got {value!r}")
            return
        (item_hint,) = typing.get_args(hint)
        kept_list = kept if isinstance(kept, list) else []
        for i, item in enumerate(value):
            kept_item = kept_list[i] if i < len(kept_list) else _MISSING
            _check(item, kept_item, item_hint, f"{path}[{_label(item, i)}]", problems)
        return
    if origin is dict:
        if not isinstance(value, Mapping):
            problems.append(f"{where}: expected a mapping, got {value!r}")
            return
        _, item_hint = typing.get_args(hint)
        kept_map = kept if isinstance(kept, Mapping) else {}
        for key, item in value.items():
            _check(item, kept_map.get(key, _MISSING), item_hint, f"{path}.{key}", problems)
        return
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        allowed = sorted(str(e.value) for e in hint)
        if value not in allowed:
            problems.append(f"{where}: {value!r} is not one of {', '.join(allowed)}")
            return
    elif hint in (bool, int, float, str):
        # bool is an int in Python, but not in the API; an int is a fine float.
        accepted: tuple[type, ...] = (int, float) if hint is float else (hint,)
        if not isinstance(value, accepted) or (hint is not bool and isinstance(value, bool)):
            problems.append(f"{where}: expected {hint.__name__}, got {value!r}")
            return
    if kept is _MISSING:
        problems.append(f"{where}: dropped by the SDK ({value!r} is not accepted)")
    elif kept != value:
        problems.append(f"{where}: {value!r} came back as {kept!r}")
