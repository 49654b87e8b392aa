"""The Databricks Asset Bundle export: the job equals job.yml task for task, loads as the
Databricks SDK's JobSettings, and its task command lines are ones the real CLI parses into valid
settings. No Spark: nothing here starts a session."""

from __future__ import annotations

import copy
import re
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from retailml.cli import cli
from retailml.errors import SettingsError
from retailml.settings import Settings, load_settings
from retailml.workflow import bundle
from retailml.workflow.bundle import (
    JOB_RESOURCE_FILE,
    TASK_FIELDS,
    bundle_files,
    job_resource,
    validate_job,
    write_bundle,
)
from retailml.workflow.dag import job_spec

REF = re.compile(r"\{\{([^}]*)\}\}")


def make(tmp_path: Path, **overrides: Any) -> Settings:
    return load_settings(environ={}, project_dir=tmp_path, overrides=overrides)


def tasks_by_key(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["task_key"]: t for t in job["tasks"]}


# --- the tasks are job.yml's ---------------------------------------------------------------------


def test_tasks_dependencies_retries_and_timeouts_equal_job_yml(tmp_path: Path) -> None:
    spec = job_spec()
    job = job_resource(make(tmp_path))
    assert [t["task_key"] for t in job["tasks"]] == [t["task_key"] for t in spec["tasks"]]
    exported = tasks_by_key(job)
    for defined in spec["tasks"]:
        task = exported[defined["task_key"]]
        copied = {field: task[field] for field in TASK_FIELDS if field in task}
        assert copied == defined, defined["task_key"]
    # Spot-check against the file itself, so a change to both sides cannot hide.
    assert exported["report"]["depends_on"] == [{"task_key": "score"}, {"task_key": "recommend"}]
    assert exported["score"]["max_retries"] == 2 and exported["score"]["retry_on_timeout"] is True
    assert exported["train"]["timeout_seconds"] == 7200
    assert "depends_on" not in exported["ingest"]


def test_every_task_runs_its_retailml_task_from_the_wheel_on_the_shared_cluster(
    tmp_path: Path,
) -> None:
    job = job_resource(make(tmp_path))
    (cluster,) = job["job_clusters"]
    for task in job["tasks"]:
        wheel = task["python_wheel_task"]
        assert wheel["package_name"] == "retailml" and wheel["entry_point"] == "retailml"
        assert wheel["parameters"][-4:] == ["task", task["task_key"], "--run-id", "{{job.run_id}}"]
        assert task["job_cluster_key"] == cluster["job_cluster_key"]
        assert task["libraries"] == [{"whl": "../dist/*.whl"}]


def test_entry_point_is_the_retailml_command() -> None:
    # python_wheel_task looks the entry point up in the wheel's metadata.
    (script,) = entry_points(group="console_scripts", name=bundle.ENTRY_POINT)
    assert script.value == "retailml.cli:main"


def test_job_yml_fields_the_export_does_not_know_are_refused(tmp_path: Path) -> None:
    spec = copy.deepcopy(job_spec())
    spec["tasks"][1]["max_retry"] = 3  # a typo would otherwise vanish from the export
    with pytest.raises(SettingsError, match=r"task clean has fields .*: max_retry"):
        job_resource(make(tmp_path), spec)


def test_job_yml_with_an_unknown_dependency_is_refused(tmp_path: Path) -> None:
    spec = {"name": "x", "tasks": [{"task_key": "a", "depends_on": [{"task_key": "b"}]}]}
    with pytest.raises(SettingsError, match="depends on unknown b"):
        job_resource(make(tmp_path), spec)


# --- validation against the Databricks SDK --------------------------------------------------------


def test_export_loads_as_sdk_job_settings(tmp_path: Path) -> None:
    validate_job(job_resource(make(tmp_path)))
    validate_job(job_resource(make(tmp_path, **{"workflow.databricks_workers": 0})))


def test_misspelt_task_field_fails_naming_it(tmp_path: Path) -> None:
    job = job_resource(make(tmp_path))
    job["tasks"][0]["max_retry"] = 1
    with pytest.raises(ValueError, match=r"tasks\[ingest\]\.max_retry: unknown field"):
        validate_job(job)


def test_bad_enum_value_fails_naming_it(tmp_path: Path) -> None:
    job = job_resource(make(tmp_path))
    job["schedule"]["pause_status"] = "SOMETIMES"
    with pytest.raises(ValueError, match=r"schedule\.pause_status: 'SOMETIMES' is not one of"):
        validate_job(job)


def test_every_problem_is_named_at_once(tmp_path: Path) -> None:
    job = job_resource(make(tmp_path))
    job["max_concurrent_run"] = 1
    job["tasks"][3]["max_retries"] = "1"  # survives from_dict/as_dict unchanged
    job["job_clusters"][0]["new_cluster"]["data_security_mode"] = "SINGLE"
    job["tasks"][6]["python_wheel_task"]["entrypoint"] = "retailml"
    with pytest.raises(ValueError) as err:
        validate_job(job)
    message = str(err.value)
    for where in (
        "max_concurrent_run: unknown field",
        "tasks[train].max_retries: expected int, got '1'",
        "job_clusters[retailml].new_cluster.data_security_mode: 'SINGLE' is not one of",
        "tasks[report].python_wheel_task.entrypoint: unknown field",
    ):
        assert where in message


def test_wrong_structure_fails_naming_it() -> None:
    with pytest.raises(ValueError, match="tasks: expected a list"):
        validate_job({"name": "x", "tasks": "ingest"})


# --- schedule, concurrency, cluster, parameters ---------------------------------------------------


def test_schedule_from_settings_paused_by_default(tmp_path: Path) -> None:
    schedule = job_resource(make(tmp_path))["schedule"]
    assert schedule == {
        "quartz_cron_expression": "0 0 6 * * ?",
        "timezone_id": "UTC",
        "pause_status": "PAUSED",
    }
    settings = make(
        tmp_path,
        **{
            "workflow.schedule_paused": False,
            "workflow.schedule_cron": "0 30 2 ? * MON-FRI",
            "workflow.schedule_timezone": "Europe/Berlin",
        },
    )
    assert job_resource(settings)["schedule"] == {
        "quartz_cron_expression": "0 30 2 ? * MON-FRI",
        "timezone_id": "Europe/Berlin",
        "pause_status": "UNPAUSED",
    }


def test_one_run_at_a_time_and_the_cluster_from_settings(tmp_path: Path) -> None:
    settings = make(
        tmp_path,
        **{
            "workflow.databricks_spark_version": "17.3.x-cpu-ml-scala2.13",
            "workflow.databricks_node_type": "Standard_D4ds_v5",
            "workflow.databricks_workers": 3,
        },
    )
    job = job_resource(settings)
    assert job["max_concurrent_runs"] == 1
    assert job["job_clusters"] == [
        {
            "job_cluster_key": "retailml",
            "new_cluster": {
                "spark_version": "17.3.x-cpu-ml-scala2.13",
                "node_type_id": "Standard_D4ds_v5",
                "num_workers": 3,
                "data_security_mode": "SINGLE_USER",
            },
        }
    ]


def test_no_workers_is_a_single_node_cluster(tmp_path: Path) -> None:
    job = job_resource(make(tmp_path, **{"workflow.databricks_workers": 0}))
    cluster = job["job_clusters"][0]["new_cluster"]
    assert cluster["num_workers"] == 0
    assert cluster["spark_conf"]["spark.databricks.cluster.profile"] == "singleNode"
    assert cluster["custom_tags"] == {"ResourceClass": "SingleNode"}


def test_job_parameters_default_from_settings(tmp_path: Path) -> None:
    settings = make(tmp_path, **{"workflow.job_catalog": "prod", "workflow.job_schema": "sales"})
    parameters = {p["name"]: p["default"] for p in job_resource(settings)["parameters"]}
    assert parameters == {
        "catalog": "prod",
        "schema": "sales",
        "experiment_dir": "/Shared",
        "volume_dir": "/Volumes/prod/sales/retailml",
        "source": "",
        "full": "false",
        "retrain": "false",
    }


def test_every_reference_is_a_job_parameter_or_the_run_id(tmp_path: Path) -> None:
    job = job_resource(make(tmp_path))
    defined = {f"job.parameters.{p['name']}" for p in job["parameters"]}
    used = set(REF.findall(yaml.safe_dump(job)))
    assert used - defined == {"job.run_id"}
    assert defined <= used  # no parameter is left unused


# --- the command lines parse into valid settings --------------------------------------------------


def substitute(args: list[str], values: dict[str, str], run_id: str) -> list[str]:
    """What the Jobs service does when a run starts: references become their values."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        return run_id if name == "job.run_id" else values[name.removeprefix("job.parameters.")]

    return [REF.sub(value, arg) for arg in args]


def parse_task_command(args: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Parse with the real CLI, without running it: the group's options, then `task`'s."""
    group = cli.make_context("retailml", list(args))
    split = args.index("task")
    task_cmd = cli.get_command(group, "task")
    assert isinstance(task_cmd, click.Command)
    task = task_cmd.make_context("task", args[split + 1 :], parent=group)
    return group.params, task.params


@pytest.mark.parametrize(
    "values",
    [
        {
            "catalog": "main",
            "schema": "retailml",
            "experiment_dir": "/Shared",
            "volume_dir": "/Volumes/main/retailml/retailml",
            "source": "",
            "full": "false",
            "retrain": "false",
        },
        {
            "catalog": "prod",
            "schema": "sales_2024",
            "experiment_dir": "/Workspace/Shared/retail",
            "volume_dir": "/Volumes/prod/sales_2024/landing",
            "source": "/Volumes/prod/sales_2024/landing/online_retail_II.csv",
            "full": "true",
            "retrain": "true",
        },
    ],
)
def test_task_parameters_parse_into_databricks_settings(
    tmp_path: Path, values: dict[str, str]
) -> None:
    job = job_resource(make(tmp_path))
    for task in job["tasks"]:
        args = substitute(task["python_wheel_task"]["parameters"], values, run_id="731902")
        group, sub = parse_task_command(args)
        assert sub == {"name": task["task_key"], "run_id": "731902", "source": None}
        # As on a job cluster, where the runtime sets DATABRICKS_RUNTIME_VERSION.
        s = load_settings(
            environ={"DATABRICKS_RUNTIME_VERSION": "17.3"},
            overrides=group["overrides"],
            project_dir=tmp_path,
        )
        catalog, schema = values["catalog"], values["schema"]
        assert (s.catalog, s.db_schema) == (catalog, schema)
        assert s.spark.master == "existing" and s.spark.delta_package == ""
        assert s.tracking_uri == "databricks" and s.mlflow.registry_uri == "databricks-uc"
        # Unity Catalog model names: catalog.schema.model, no hyphens.
        assert s.train.model_name == f"{catalog}.{schema}.retailml_propensity"
        assert s.recommend.model_name == f"{catalog}.{schema}.retailml_recommender"
        for name in (s.train.model_name, s.recommend.model_name):
            assert re.fullmatch(r"\w+\.\w+\.\w+", name)
        # Workspace experiments are absolute paths.
        experiments = values["experiment_dir"]
        assert s.train.experiment == f"{experiments}/retailml-propensity"
        assert s.recommend.experiment == f"{experiments}/retailml-recommendations"
        assert s.report.experiment == f"{experiments}/retailml-workflow"
        # Generated data and reports on the volume, which every node sees.
        assert s.path(s.data_dir) == f"{values['volume_dir']}/data"
        assert s.path(s.report.dir) == f"{values['volume_dir']}/reports"
        assert s.ingest.source == values["source"]
        # A run started with full=true or retrain=true is `retailml run --full` / `--retrain`.
        assert s.workflow.full is (values["full"] == "true")
        assert s.workflow.retrain is (values["retrain"] == "true")


def test_model_and_experiment_names_follow_the_settings(tmp_path: Path) -> None:
    settings = make(
        tmp_path,
        **{"train.model_name": "Shop-Propensity v2", "recommend.experiment": "/Users/a@b.c/recs"},
    )
    params = job_resource(settings)["tasks"][0]["python_wheel_task"]["parameters"]
    assert (
        "train.model_name={{job.parameters.catalog}}.{{job.parameters.schema}}.shop_propensity_v2"
        in params
    )
    assert "recommend.experiment={{job.parameters.experiment_dir}}/recs" in params


# --- the files ------------------------------------------------------------------------------------


def test_write_bundle_writes_parseable_yaml(tmp_path: Path) -> None:
    settings = make(tmp_path)
    out = tmp_path / "bundle"
    written = write_bundle(settings, out)
    assert written == [out / "databricks.yml", out / "resources" / "retailml.job.yml"]
    databricks_yml, job_yml = (yaml.safe_load(p.read_text(encoding="utf-8")) for p in written)

    assert databricks_yml["bundle"] == {"name": "retailml"}
    assert databricks_yml["include"] == ["resources/*.yml"]
    (artifact,) = databricks_yml["artifacts"].values()
    assert artifact["type"] == "whl" and artifact["path"] == "."
    assert artifact["build"] == "python3 -m pip wheel --no-deps --wheel-dir dist .."
    targets = databricks_yml["targets"]
    assert targets["dev"] == {"mode": "development", "default": True}
    assert targets["prod"]["mode"] == "production"
    assert "host" not in yaml.safe_dump(databricks_yml)  # the CLI profile provides it

    assert list(job_yml["resources"]["jobs"]) == ["retailml", "retailml_maintenance"]
    assert job_yml["resources"]["jobs"]["retailml_maintenance"] == bundle.maintenance_job(settings)
    job = job_yml["resources"]["jobs"]["retailml"]
    assert job == job_resource(settings)
    validate_job(job)
    # The library path, relative to the resource file, is where the artifact is built.
    library = job["tasks"][0]["libraries"][0]["whl"]
    assert (out / "resources" / library).parent.resolve() == (out / "dist").resolve()


def test_build_command_finds_the_project_from_anywhere(tmp_path: Path) -> None:
    project, out = tmp_path / "project", tmp_path / "exports" / "databricks"
    project.mkdir()
    files = bundle_files(make(project), project_dir=project, out=out)
    build = files["databricks.yml"]["artifacts"]["retailml_wheel"]["build"]
    assert build.endswith(" ../../project")
    assert set(files) == {"databricks.yml", JOB_RESOURCE_FILE}


def test_bundle_in_the_project_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="folder of its own"):
        write_bundle(make(tmp_path), tmp_path)
    assert not (tmp_path / "databricks.yml").exists()


def test_a_bad_export_is_never_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = bundle._job_cluster

    def broken(settings: Settings) -> dict[str, Any]:
        return {**real(settings), "num_worker": 2}

    monkeypatch.setattr(bundle, "_job_cluster", broken)
    out = tmp_path / "bundle"
    with pytest.raises(ValueError, match=r"new_cluster\.num_worker: unknown field"):
        write_bundle(make(tmp_path), out)
    assert not out.exists()


# --- the weekly maintenance job ------------------------------------------------------------------


def test_the_maintenance_job_runs_retailml_maintain_weekly_on_the_job_catalog(
    tmp_path: Path,
) -> None:
    settings = make(tmp_path, **{"workflow.schedule_timezone": "Europe/Berlin"})
    job = bundle.maintenance_job(settings)
    validate_job(job)
    assert job["schedule"] == {
        "quartz_cron_expression": "0 0 3 ? * SUN",
        "timezone_id": "Europe/Berlin",
        "pause_status": "PAUSED",
    }
    assert job["max_concurrent_runs"] == 1 and job["queue"] == {"enabled": True}
    (task,) = job["tasks"]
    assert task["job_cluster_key"] == job["job_clusters"][0]["job_cluster_key"]
    assert task["libraries"] == job_resource(settings)["tasks"][0]["libraries"]
    # Every reference is one of its parameters, and the command parses with the real CLI.
    defined = {f"job.parameters.{p['name']}" for p in job["parameters"]}
    assert set(REF.findall(yaml.safe_dump(job))) == defined
    args = substitute(
        task["python_wheel_task"]["parameters"], {"catalog": "prod", "schema": "sales"}, "7"
    )
    assert args[-1] == "maintain"
    group = cli.make_context("retailml", args)
    overrides = group.params["overrides"]
    assert overrides == {"catalog": "prod", "schema": "sales"}
    loaded = load_settings(environ={}, project_dir=tmp_path, overrides=overrides)
    assert (loaded.catalog, loaded.db_schema) == ("prod", "sales")
