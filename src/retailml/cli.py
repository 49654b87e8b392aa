"""The ``retailml`` command line: parses options, calls the library, prints one-line errors."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from retailml.errors import RetailmlError
from retailml.settings import Settings, load_settings
from retailml.workflow import TASK_ORDER


@dataclasses.dataclass
class _State:
    config: Path | None = None
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    debug: bool = False

    def settings(self, **extra: Any) -> Settings:
        return load_settings(config_file=self.config, overrides={**self.overrides, **extra})


pass_state = click.make_pass_decorator(_State)


def _parse_set(_ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]) -> dict:
    parsed: dict[str, Any] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}")
        try:
            parsed[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            parsed[key.strip()] = value
    return parsed


def _check_run_id(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    # A run id becomes a folder name and part of MLflow queries: letters, digits, - and _ only.
    if value is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,100}", value):
        raise click.BadParameter(f"{value!r}: use letters, digits, '-' and '_' only")
    return value


class _Cli(click.Group):
    """A group that turns errors into one line: a user's mistake never shows a Java stack trace."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except RetailmlError as exc:
            if isinstance(ctx.obj, _State) and ctx.obj.debug:
                raise
            raise click.ClickException(str(exc)) from exc
        except Exception as exc:
            if isinstance(ctx.obj, _State) and ctx.obj.debug:
                raise
            raise click.ClickException(
                f"{exc.__class__.__name__}: {_one_line(exc)} (run with --debug for the traceback)"
            ) from exc


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Settings file (default: ./retailml.toml if present).",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    callback=_parse_set,
    metavar="KEY=VALUE",
    help="Override a setting, e.g. --set spark.master=local[2] (repeatable).",
)
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.version_option(package_name="retailml")
@click.pass_context
def cli(ctx: click.Context, config: Path | None, overrides: dict, debug: bool) -> None:
    """retailml: retail machine learning on Spark, Delta Lake and MLflow.

    Settings come from defaults, retailml.toml, RETAILML_* environment variables and --set,
    in that order.
    """
    ctx.obj = _State(config=config, overrides=overrides, debug=debug)


@cli.command()
@click.option("--customers", type=int, help="Number of customers.")
@click.option("--products", type=int, help="Number of products.")
@click.option("--days", type=int, help="Days of history.")
@click.option("--seed", type=int, help="Random seed (same seed, same bytes).")
@click.option("--malformed-fraction", type=float, help="Share of deliberately broken lines.")
@click.option(
    "--profile",
    type=click.Choice(["gift", "grocery"]),
    help="The kind of shop: gift (like the UCI data) or grocery (most lines rebuys).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Output folder (default: the data_dir setting).",
)
@pass_state
def generate(state: _State, out: Path | None, seed: int | None, **sizes: Any) -> None:
    """Generate a synthetic retail data set (CSV, UCI Online Retail II layout)."""
    from retailml.generate import generate_data

    overrides = {f"generate.{k}": v for k, v in sizes.items() if v is not None}
    settings = state.settings(**overrides, seed=seed)
    started = time.monotonic()
    summary = generate_data(settings, out=out, force=True)
    click.echo(
        f"wrote {summary.lines:,} lines ({summary.malformed_lines:,} malformed, "
        f"{summary.invoices:,} invoices) in {len(summary.files)} files to "
        f"{summary.files[0].parent} in {time.monotonic() - started:.1f} s; "
        f"ground truth in {summary.ground_truth_dir}"
    )


@cli.command()
@click.argument("name", type=click.Choice(list(TASK_ORDER)))
@click.option(
    "--source", help="ingest: a file or folder of CSV / Parquet (default: generated data)."
)
@click.option(
    "--run-id",
    callback=_check_run_id,
    help="Record the attempt under this workflow run (a Databricks job passes its run id); "
    "without it the task runs as a one-task workflow run, with retries, lock and history.",
)
@pass_state
def task(state: _State, name: str, source: str | None, run_id: str | None) -> None:
    """Run one workflow task (what each task of the Databricks job calls)."""
    from retailml.runlog import History
    from retailml.spark import session
    from retailml.workflow import run_task, run_workflow
    from retailml.workflow.lock import RunLock

    settings = state.settings(**({"ingest.source": source} if source else {}))
    if run_id is None:
        result = run_workflow(settings, only=(name,), echo=click.echo, debug=state.debug)
        _print_result(result)
        if result is not None and result.outcome.failed is not None:
            failed = result.outcome.failed
            raise click.ClickException(f"task {name} {failed.status}: {failed.error}")
        return
    # On Databricks the job owns concurrency (its tasks may run side by side on one driver);
    # anywhere else the task holds the lake's lock like any run.
    with contextlib.ExitStack() as stack:
        if settings.spark.master != "existing":
            stack.enter_context(RunLock(settings, run_id))
        spark = stack.enter_context(session(settings))
        attempt = History(settings, spark).next_attempt(run_id, name)
        run_task(name, settings, spark, run_id=run_id, attempt=attempt, echo=click.echo)


@cli.command()
@click.option("--source", help="A file or folder of CSV / Parquet (default: generate data).")
@click.option(
    "--from",
    "from_",
    type=click.Choice(list(TASK_ORDER)),
    help="Start at this task and run everything downstream of it.",
)
@click.option(
    "--only",
    type=click.Choice(list(TASK_ORDER)),
    multiple=True,
    help="Run just this task (repeatable); its inputs must exist.",
)
@click.option(
    "--resume",
    metavar="RUN_ID",
    callback=_check_run_id,
    help="Re-run only the tasks of that run that did not succeed (as a new run).",
)
@click.option(
    "--full",
    is_flag=True,
    help="Re-read every source file and redo every task, even where nothing changed.",
)
@click.option("--retrain", is_flag=True, help="Retrain the models even if nothing asks for it.")
@pass_state
def run(
    state: _State,
    source: str | None,
    from_: str | None,
    only: tuple[str, ...],
    resume: str | None,
    full: bool,
    retrain: bool,
) -> None:
    """Run the workflow's DAG: ingest → clean → features → train → score, clean → recommend,
    then the report. Generates demo data when no source is set.

    A run does only new work: files not seen before (or changed), and the tasks whose inputs
    changed; the propensity models are retrained only when a rule asks for it."""
    from retailml.workflow import run_workflow

    flags = {"workflow.full": True} if full else {}
    flags |= {"workflow.retrain": True} if retrain else {}
    settings = state.settings(**({"ingest.source": source} if source else {}), **flags)
    result = run_workflow(
        settings, from_=from_, only=only, resume=resume, echo=click.echo, debug=state.debug
    )
    _print_result(result)
    _check_outcome(result.outcome if result is not None else None)


@cli.command()
@click.argument("run_id", required=False)
@click.option("--limit", default=20, show_default=True, help="How many recent runs to list.")
@pass_state
def runs(state: _State, run_id: str | None, limit: int) -> None:
    """List recent workflow runs, or show each task of one run with its last attempt."""
    from retailml import schemas as S
    from retailml.runlog import History, timeline
    from retailml.spark import session
    from retailml.workflow.lock import running_run

    settings = state.settings()
    with session(settings) as spark:
        history = History(settings, spark)
        if run_id is None:
            active = running_run(settings)
            rows = [("run", "status", "trigger", "started (UTC)", "seconds", "tasks")]
            for r in history.runs(limit):
                status = r.status
                if status == S.RUNNING and r.run_id != active:
                    status = S.INTERRUPTED
                seconds = (
                    f"{(r.ended_at - r.started_at).total_seconds():.0f}" if r.ended_at else "-"
                )
                rows.append(
                    (
                        r.run_id,
                        status,
                        r.trigger,
                        f"{r.started_at:%Y-%m-%d %H:%M:%S}",
                        seconds,
                        ",".join(r.tasks),
                    )
                )
            if len(rows) == 1:
                click.echo("no workflow runs yet; `retailml run` starts one")
                return
            echo_table(rows, click.echo)
            return
        history.run(run_id)  # raises the one-line "no workflow run" error
        entries, _ = timeline(history, run_id)
        rows = [("task", "attempts", "status", "started (UTC)", "seconds", "error / output")]
        for e in entries:
            a = e.last
            started = f"{a.started_at:%H:%M:%S}" if a and a.started_at else "-"
            seconds = f"{a.seconds:.1f}" if a and a.seconds is not None else "-"
            detail = (a.error or (a.outputs[0] if a.outputs else "")) if a else ""
            if e.run_id != run_id:
                detail = f"(in run {e.run_id}) {detail}".rstrip()
            rows.append((e.task, str(e.attempts), e.status, started, seconds, detail))
        echo_table(rows, click.echo)


@cli.command()
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("bundle"),
    show_default=True,
    help="Folder to write the Databricks Asset Bundle to.",
)
@pass_state
def bundle(state: _State, out: Path) -> None:
    """Export the workflow as a Databricks Asset Bundle (databricks.yml + the job)."""
    from retailml.workflow.bundle import write_bundle

    settings = state.settings()
    for path in write_bundle(settings, out):
        click.echo(f"wrote {path}")
    click.echo(f"deploy with: cd {out} && databricks bundle deploy -t dev")


def echo_table(rows: Sequence[Sequence[str]], echo: Callable[[str], Any] = click.echo) -> None:
    """Print rows as aligned columns, the first row as a header with a rule under it."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            echo("  ".join("-" * w for w in widths))


def _print_result(result: Any) -> None:
    """The end of a run: the task table; the tables, MLflow store and report when it succeeded;
    how it ended. A failure's error is left to the one-line error after this."""
    if result is None:
        return
    outcome = result.outcome
    echo_table(outcome.table())
    if result.tables:
        click.echo("tables:")
        for t in result.tables:
            click.echo(f"  {t.name:<25} {t.rows:>10,} rows  {t.location}")
        uri = result.tracking_uri
        click.echo(f"MLflow: {uri} (browse with `mlflow ui --backend-store-uri {uri}`)")
        if result.report_path is not None:
            click.echo(f"report: {result.report_path}")
    click.echo(f"run {outcome.run_id} {outcome.status} in {outcome.seconds:.0f} s")


def _check_outcome(outcome: Any) -> None:
    """Exit non-zero with the failed task and its reason when a run did not succeed."""
    from retailml import schemas as S

    if outcome is None or outcome.status == S.SUCCEEDED:
        return
    failed = outcome.failed
    where = f"task {failed.task} {failed.status}: {failed.error}" if failed else outcome.status
    raise click.ClickException(
        f"run {outcome.run_id} failed: {where} (resume with `retailml run --resume "
        f"{outcome.run_id}`)"
    )


@cli.command()
@click.option(
    "--history",
    "history_of",
    metavar="TABLE",
    help="Show one table's Delta history instead (e.g. silver.transactions).",
)
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@pass_state
def tables(state: _State, history_of: str | None, limit: int) -> None:
    """List the tables: location, Delta version and row count; or one table's history."""
    from retailml.lakehouse import TABLES, Lakehouse
    from retailml.spark import session

    if history_of is not None and history_of not in TABLES:
        raise click.BadParameter(
            f"{history_of!r} is not a table; the tables: {', '.join(TABLES)}",
            param_hint="--history",
        )
    settings = state.settings()
    with session(settings) as spark:
        lake = Lakehouse(settings, spark)
        if history_of is not None:
            echo_table(_history_rows(lake, history_of, limit), click.echo)
            return
        rows = [("table", "version", "rows", "location")]
        for name in TABLES:
            if lake.exists(name):
                rows.append(
                    (
                        name,
                        str(lake.version(name)),
                        f"{lake.read(name).count():,}",
                        lake.location(name),
                    )
                )
            else:
                rows.append((name, "-", "-", "not written yet"))
        echo_table(rows, click.echo)


# The operation metrics worth a column: rows and files written, removed and kept.
_HISTORY_METRICS = (
    "numOutputRows",
    "numTargetRowsInserted",
    "numTargetRowsUpdated",
    "numTargetRowsDeleted",
    "numDeletedRows",
    "numAddedFiles",
    "numRemovedFiles",
    "numFilesAdded",
    "numFilesRemoved",
    "numDeletedFiles",
)


def _history_rows(lake: Any, name: str, limit: int) -> list[tuple[str, ...]]:
    """``retailml tables --history``: a row per commit, newest first."""
    rows: list[tuple[str, ...]] = [
        ("version", "timestamp (UTC)", "operation", "parameters", "metrics")
    ]
    for entry in lake.history(name, limit):
        params = ", ".join(f"{k}={v}" for k, v in sorted(entry.parameters.items()) if v != "[]")
        metrics = ", ".join(
            f"{k}={entry.metrics[k]}" for k in _HISTORY_METRICS if k in entry.metrics
        )
        rows.append(
            (
                str(entry.version),
                entry.timestamp.strftime("%Y-%m-%d %H:%M:%S"),
                entry.operation,
                params[:80],
                metrics,
            )
        )
    return rows


@cli.command()
@click.option(
    "--table",
    "names",
    multiple=True,
    metavar="TABLE",
    help="Only this table (repeatable; default: every table written so far).",
)
@pass_state
def maintain(state: _State, names: tuple[str, ...]) -> None:
    """Delta table care: OPTIMIZE (compact, or Z-order per maintain.zorder_by), then VACUUM
    (files older than maintain.vacuum_retention_hours that no version needs)."""
    from retailml.maintain import maintain as run_maintenance
    from retailml.spark import session
    from retailml.workflow.lock import RunLock

    settings = state.settings()
    # Like a run, it holds the lake's lock: a VACUUM with a short retention would delete files
    # a running task still reads. On Databricks the job's queue keeps them apart.
    with contextlib.ExitStack() as stack:
        if settings.spark.master != "existing":
            stack.enter_context(RunLock(settings, "maintain"))
        spark = stack.enter_context(session(settings))
        done = run_maintenance(settings, spark, names)
    rows = [("table", "files before", "files after", "z-order by", "seconds")]
    for m in done:
        rows.append(
            (
                m.table,
                str(m.files_before),
                str(m.files_after),
                ", ".join(m.zorder_by) or "-",
                f"{m.seconds:.1f}",
            )
        )
    echo_table(rows, click.echo)
    hours = settings.maintain.vacuum_retention_hours
    click.echo(f"vacuumed: files older than {hours} h that no version needs are deleted")


@cli.command()
@click.argument("customer_id")
@pass_state
def customer(state: _State, customer_id: str) -> None:
    """Show a customer's purchase propensity and recommendations (from the gold tables)."""
    from retailml.lookup import customer_card
    from retailml.spark import session

    settings = state.settings()
    with session(settings) as spark:
        for line in customer_card(settings, spark, customer_id):
            click.echo(line)


@cli.command("fetch-jars")
@pass_state
def fetch_jars(state: _State) -> None:
    """Fetch the Delta Lake jars into the local Ivy cache (once; needs the network)."""
    from retailml.spark import delta_jars_cached, fetch_delta_jars

    settings = state.settings()
    if delta_jars_cached(settings):
        click.echo(f"Delta Lake jars already cached ({settings.spark.delta_package})")
        return
    folder = fetch_delta_jars(settings)
    click.echo(f"fetched {settings.spark.delta_package} into {folder}")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else exc.__class__.__name__


def main() -> None:
    """The console script. Databricks runs a wheel's entry point inside an IPython process,
    where click's standalone mode (which always ends in ``sys.exit``) is not wanted: there an
    error propagates and fails the task, and success simply returns."""
    cli(standalone_mode=not hasattr(sys, "ps1"))
