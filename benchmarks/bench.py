"""The benchmark harness: the whole workflow at one of three data sizes, measured per task.

    make bench SIZE=S|M|L        (or: .venv/bin/python benchmarks/bench.py --size S)

S is the default demo data (2,000 customers over 730 days, about 174k lines), M 100k customers
(about 3.4M lines) and L 1M customers (about 34M lines); M and L keep 240 days of history, the
least the features allow (four training cutoffs 30 days apart, a held-out and a scoring cutoff
30 days apart). The data is generated once into ``benchmarks/data/<size>`` and reused while its
``generated.json`` matches.

Each benchmark runs ``retailml run`` as a subprocess in a fresh folder
``benchmarks/runs/<size>-<timestamp>`` (tables, MLflow store and logs start empty), with Spark's
event log on. While it runs, the resident memory (VmRSS) of the retailml Python process and of
its driver JVM (a separate process, the java child) is sampled every 0.5 s. Afterwards, per task:

- seconds, and the [started_at, ended_at] window that assigns memory samples to the task, come
  from the run history (``ops.task_runs``);
- shuffle read (remote + local bytes) and write bytes are summed over the stages of the Spark
  jobs tagged ``retailml-<run_id>-<task>-<attempt>`` in the event log (all attempts);
- rows in and out are row counts of the tables the task reads and writes, counted after the run
  (rows in of ingest: the generated source lines; train reads the training and held-out rows of
  ``silver.customer_features``, score its scoring rows; report has neither).

The history and the counts are read with a small Spark session of its own. The run's model
quality (the champion challenger's held-out ROC-AUC, the tuned mode's NDCG@k) is read from its
MLflow store with plain sqlite3 and put on each of its rows, like the end-to-end seconds. Results
are printed, appended to ``benchmarks/results.csv`` (one row per task) and ``docs/benchmarks.md``
is rewritten from the whole CSV. Not part of ``make test``. Run one benchmark at a time (on a shared
machine under its Spark lock): a second Spark job would distort the times.

Then, in the same invocation and on the same files, the single-node comparison
(``benchmarks/single_node.py``: pandas, LightGBM and the ``implicit`` library doing the same
propensity and recommendation work) runs in a subprocess of its own, so that it starts from an
empty Python process as retailml's run did; its phase seconds and quality, with the retailml
run's NDCG@k per recommender to set beside them, go to ``benchmarks/single_node.csv`` and the page
prints, per size, both seconds for the same work with the ratio (:func:`_single_node_section`).
Sizes whose ``single_node`` is off (L: pandas holds every line in memory) skip it, as does
``--no-single-node``; ``--single-node-only`` runs only the comparison (no Spark) and sets it
beside the latest recorded retailml run of the size.

The run folder keeps ``run.log``, the event log, and ``bench.json`` + ``memory.csv`` (the
outcome and the memory samples), so ``--from-run FOLDER`` can measure it again without
re-running; ``--docs-only`` runs no Spark: it only brings the CSV up to date (see
:func:`save_results`) and rewrites the page from it and ``benchmarks/single_node.csv``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import sqlite3
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path

# The MLflow names only: a plain module, no mlflow import.
from retailml.ml import names as N

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
RESULTS = BENCH / "results.csv"
SINGLE_NODE = BENCH / "single_node.csv"
DOC = ROOT / "docs" / "benchmarks.md"
DATE = "%Y-%m-%dT%H:%M:%SZ"  # a run's start in the CSV; also names its folder, to the second


@dataclass(frozen=True)
class Quality:
    """A model-quality number of a run: a metric of the workflow's parent run in an experiment."""

    experiment: str
    run_name_prefix: str
    metric: str
    label: str


QUALITY = {
    "holdout_roc_auc": Quality(
        "retailml-propensity",
        "propensity ",
        N.CHALLENGER_HOLDOUT_ROC_AUC,
        "held-out ROC-AUC of the champion challenger",
    ),
    "ndcg_at_k": Quality(
        "retailml-recommendations",
        "recommend ",
        N.TUNED_NDCG,
        "NDCG@k of the judged list (discover on new products by default)",
    ),
}
# From the event log (benchmarks/sparkprofile.py): per task, its Spark jobs, the seconds some
# job was running, and the executor core-seconds spent running tasks, of which GC.
PROFILE = ("spark_jobs", "busy_seconds", "core_seconds", "gc_seconds")
COLUMNS = (
    "date",
    "size",
    "git_commit",
    "task",
    "seconds",
    "rows_in",
    "rows_out",
    "shuffle_read_mb",
    "shuffle_write_mb",
    "jvm_peak_mb",
    "python_peak_mb",
    "cores",
    "total_seconds",
    *QUALITY,
    *PROFILE,
)
SAMPLE_S = 0.5
MB = 1024 * 1024
SEED = 42  # the settings' default seed; the data of every size is generated with it

# Spark's names of the stage-level shuffle metrics in the event log (SparkListenerStageCompleted
# → "Stage Info" → "Accumulables").
SHUFFLE_READ = (
    "internal.metrics.shuffle.read.remoteBytesRead",
    "internal.metrics.shuffle.read.localBytesRead",
)
SHUFFLE_WRITE = ("internal.metrics.shuffle.write.bytesWritten",)


@dataclass(frozen=True)
class Size:
    """A benchmark size: the generator's parameters and what the run needs beyond defaults."""

    customers: int
    products: int
    days: int
    expected_lines: str
    settings: tuple[str, ...] = ()
    single_node: bool = True  # run the single-node comparison after the retailml run


SIZES = {
    # The demo default (the generator's own defaults).
    "S": Size(customers=2_000, products=400, days=730, expected_lines="174,484"),
    # About 34 lines per customer over 240 days (measured with 1k and 100k customers).
    "M": Size(customers=100_000, products=2_000, days=240, expected_lines="3,374,303"),
    # The same density, ten times the customers. The driver JVM gets a 10 GiB heap, so that
    # with its off-heap memory it stays within 12 GiB; 16 shuffle partitions keep each reduce
    # task's share of the largest shuffles (de-duplication, features) a few hundred MB.
    "L": Size(
        customers=1_000_000,
        products=5_000,
        days=240,
        expected_lines="33,814,158",
        settings=("spark.driver_memory=10g", "spark.shuffle_partitions=16"),
        # pandas holds all 34M lines (as Python strings) in memory: not measured; ask for it
        # with --single-node-only when the machine has the room.
        single_node=False,
    ),
}

# What each task reads, for rows in; what it writes is every table the lakehouse says it produces.
SOURCE_LINES = "source lines"
TRAIN_ROWS = "silver.customer_features[train, holdout]"
SCORE_ROWS = "silver.customer_features[score]"
TASK_INPUTS = {
    "ingest": (SOURCE_LINES,),
    "clean": ("bronze.transactions",),
    "features": ("silver.transactions",),
    "train": (TRAIN_ROWS,),
    "score": (SCORE_ROWS,),
    "recommend": ("silver.transactions",),
    "report": (),
}


@dataclass
class Sample:
    """One memory sample: UTC time (naive), RSS in bytes of the Python process and its JVM."""

    at: datetime
    python: int
    jvm: int


@dataclass
class TaskResult:
    """One row of the results."""

    task: str
    status: str
    attempts: int
    seconds: float | None
    rows_in: int | None
    rows_out: int | None
    shuffle_read: int
    shuffle_write: int
    jvm_peak: int | None
    python_peak: int | None


@dataclass
class Run:
    """What the subprocess left behind."""

    folder: Path
    size: str
    started: datetime
    commit: str
    returncode: int
    seconds: float
    samples: list[Sample] = field(default_factory=list)

    def save(self) -> None:
        """Keep the outcome and the memory samples in the folder, for ``--from-run``."""
        (self.folder / "bench.json").write_text(
            json.dumps(
                {
                    "size": self.size,
                    "started": self.started.isoformat(),
                    "commit": self.commit,
                    "returncode": self.returncode,
                    "seconds": self.seconds,
                }
            )
        )
        with (self.folder / "memory.csv").open("w", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(("at_utc", "python_rss_bytes", "jvm_rss_bytes"))
            writer.writerows((s.at.isoformat(), s.python, s.jvm) for s in self.samples)


def load_run(folder: Path) -> Run:
    """A run saved by :meth:`Run.save`."""
    meta = json.loads((folder / "bench.json").read_text())
    with (folder / "memory.csv").open(newline="") as rows:
        samples = [
            Sample(
                datetime.fromisoformat(r["at_utc"]),
                int(r["python_rss_bytes"]),
                int(r["jvm_rss_bytes"]),
            )
            for r in csv.DictReader(rows)
        ]
    started = datetime.fromisoformat(meta["started"])
    commit = meta.get("commit") or _git_commit()
    return Run(folder, meta["size"], started, commit, meta["returncode"], meta["seconds"], samples)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="S")
    parser.add_argument(
        "--docs-only",
        action="store_true",
        help="Only bring the CSV up to date and rewrite docs/benchmarks.md from it (no Spark).",
    )
    parser.add_argument(
        "--from-run",
        type=Path,
        metavar="FOLDER",
        help="Measure an earlier run folder again instead of running (its size, not --size).",
    )
    single = parser.add_mutually_exclusive_group()
    single.add_argument(
        "--no-single-node",
        action="store_true",
        help="Skip the single-node comparison after the run.",
    )
    single.add_argument(
        "--single-node-only",
        action="store_true",
        help="Only the single-node comparison of --size (no Spark), beside the latest recorded "
        "retailml run of the size.",
    )
    args = parser.parse_args(argv)
    if args.docs_only:
        save_results(RESULTS, [])
        write_docs(read_results(RESULTS), DOC, single=read_single_node(SINGLE_NODE))
        print(f"wrote {DOC.relative_to(ROOT)}")
        return 0
    if args.single_node_only:
        data = ensure_data(args.size, SIZES[args.size])[0]
        if run_single_node(args.size, data, retailml=None) is None:
            return 1
        write_docs(read_results(RESULTS), DOC, single=read_single_node(SINGLE_NODE))
        print(f"wrote {DOC.relative_to(ROOT)}")
        return 0

    if args.from_run:
        run = load_run(args.from_run.resolve())
        data, lines = ensure_data(run.size, SIZES[run.size])
        folder = run.folder
    else:
        size = SIZES[args.size]
        data, lines = ensure_data(args.size, size)
        stamp = datetime.now(UTC)
        folder = run_folder(args.size, stamp)
        print(f"benchmark {args.size}: {lines:,} source lines in {data}; run folder {folder}")
        run = run_workflow(data, folder, size.settings, size=args.size, started=stamp)
    if run.returncode != 0:
        print(f"retailml run failed (exit {run.returncode}) after {run.seconds:.0f} s; "
              f"see {folder / 'run.log'}")  # fmt: skip
        return 1

    run_id, attempts, counts = read_lake(folder)
    counts[SOURCE_LINES] = lines
    shuffle = shuffle_by_task(folder / "events", run_id)
    results = per_task(attempts, counts, shuffle, run.samples)
    quality = read_quality(folder)
    rows = [result_row(r, run, quality) for r in results]
    print_results(results, run, shuffle.get(None, (0, 0)), quality)
    save_results(RESULTS, rows)
    print(f"appended {len(rows)} rows to {RESULTS.relative_to(ROOT)}")
    # A re-measured run keeps the comparison it had; a new one gets its own, on the same files.
    compared = True
    if not args.from_run and SIZES[run.size].single_node and not args.no_single_node:
        compared = run_single_node(run.size, data, retailml=run) is not None
    write_docs(read_results(RESULTS), DOC, single=read_single_node(SINGLE_NODE))
    print(f"wrote {DOC.relative_to(ROOT)}")
    return 0 if compared else 1


# --- data ---------------------------------------------------------------------------------


def ensure_data(name: str, size: Size) -> tuple[Path, int]:
    """Generate the size's data set unless an identical one is there; its folder and lines."""
    folder = BENCH / "data" / name
    wanted = {"customers": size.customers, "products": size.products, "days": size.days}
    marker = folder / "generated.json"
    if not _matches(marker, wanted):
        print(f"generating {name}: {size.customers:,} customers, {size.products:,} products, "
              f"{size.days} days ...")  # fmt: skip
        subprocess.run(
            [
                _retailml(),
                f"--set=seed={SEED}",
                "generate",
                *(f"--{k}={v}" for k, v in wanted.items()),
                f"--out={folder}",
            ],
            cwd=ROOT,
            env=_clean_env(),
            check=True,
        )
    summary = json.loads(marker.read_text())["summary"]
    return folder / "transactions", int(summary["lines"])


def _matches(marker: Path, wanted: dict[str, int]) -> bool:
    if not marker.is_file():
        return False
    params = json.loads(marker.read_text()).get("params", {})
    return params.get("seed") == SEED and all(params.get(k) == v for k, v in wanted.items())


# --- the run and its memory -----------------------------------------------------------------


def run_folder(size: str, started: datetime) -> Path:
    """Where a run of ``size`` started at ``started`` keeps its tables, stores and logs."""
    return BENCH / "runs" / f"{size}-{started:%Y%m%d-%H%M%S}"


def event_log_setting(events: Path) -> str:
    """The ``--set`` that has ``retailml`` write Spark's event log into ``events``."""
    conf = {
        "spark.eventLog.enabled": "true",
        "spark.eventLog.dir": str(events),
        # Plain JSON lines (Spark 4 compresses event logs by default).
        "spark.eventLog.compress": "false",
    }
    return f"--set=spark.conf={json.dumps(conf)}"


def run_workflow(
    data: Path, folder: Path, settings: Sequence[str], *, size: str, started: datetime
) -> Run:
    """Run ``retailml run`` in ``folder`` on ``data``, sampling memory until it ends."""
    events = folder / "events"
    events.mkdir(parents=True)
    command = [
        _retailml(),
        f"--set=ingest.source={data}",
        event_log_setting(events),
        *(f"--set={s}" for s in settings),
        "run",
    ]
    log = folder / "run.log"
    commit, clock = _git_commit(), time.monotonic()
    with log.open("w") as out:
        proc = subprocess.Popen(
            command,
            cwd=folder,
            env={**_clean_env(), "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        echo = threading.Thread(target=_tee, args=(proc.stdout, out), daemon=True)
        echo.start()
        samples = []
        jvm: int | None = None
        while proc.poll() is None:
            if jvm is None or _rss(jvm) is None:
                jvm = _java_child(proc.pid)
            samples.append(Sample(_utcnow(), _rss(proc.pid) or 0, (_rss(jvm) or 0) if jvm else 0))
            time.sleep(SAMPLE_S)
        echo.join()
    run = Run(folder, size, started, commit, proc.returncode, time.monotonic() - clock, samples)
    run.save()
    return run


def _tee(stream: Iterable[str], out: object) -> None:
    for line in stream:
        sys.stdout.write(line)
        sys.stdout.flush()
        out.write(line)  # type: ignore[attr-defined]


def _rss(pid: int) -> int | None:
    """The process's resident set size in bytes; None once it has gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return 0  # a zombie has no VmRSS line


def _java_child(parent: int) -> int | None:
    """The driver JVM: the ``java`` child of the Python process (spark-submit execs into it)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so split after its last ')'.
        comm = text[text.index("(") + 1 : text.rindex(")")]
        ppid = int(text[text.rindex(")") + 2 :].split()[1])
        if ppid == parent and comm == "java":
            return int(stat.parent.name)
    return None


# --- reading the results --------------------------------------------------------------------


def read_lake(folder: Path) -> tuple[str, list, dict[str, int]]:
    """The run's id and attempts from the run history, and every table's row count."""
    from retailml import schemas as S
    from retailml.lakehouse import TABLES, Lakehouse
    from retailml.runlog import History
    from retailml.settings import load_settings
    from retailml.spark import session

    settings = load_settings(
        project_dir=folder,
        environ=_clean_env(),
        overrides={
            "spark.master": "local[1]",
            "spark.ui": False,
            "spark.driver_memory": "1g",
            "log_dir": "logs/bench-reader",  # keep the run's own driver log
        },
    )
    with session(settings) as spark:
        history = History(settings, spark)
        run_id = history.runs(limit=1)[0].run_id
        attempts = history.attempts(run_id)
        lake = Lakehouse(settings, spark)
        counts = {name: lake.read(name).count() for name in TABLES if lake.exists(name)}
        by_split = {
            r[S.SPLIT]: r["count"]
            for r in lake.read("silver.customer_features").groupBy(S.SPLIT).count().collect()
        }
    counts[TRAIN_ROWS] = by_split.get("train", 0) + by_split.get("holdout", 0)
    counts[SCORE_ROWS] = by_split.get("score", 0)
    return run_id, attempts, counts


def shuffle_by_task(events: Path, run_id: str) -> dict[str | None, tuple[int, int]]:
    """Shuffle (read, write) bytes per task from the event log; None holds untagged jobs.

    A stage belongs to the first job that lists it; later jobs that list it again skip it (its
    shuffle output exists), so every completed stage is counted once.
    """
    stage_task: dict[int, str | None] = {}
    totals: dict[str | None, list[int]] = defaultdict(lambda: [0, 0])
    for path in _event_files(events):
        with path.open() as lines:
            for line in lines:
                if '"SparkListenerJobStart"' in line[:60]:
                    event = json.loads(line)
                    tags = (event.get("Properties") or {}).get("spark.job.tags", "")
                    task = _task_of(tags, run_id)
                    for stage in event["Stage IDs"]:
                        stage_task.setdefault(stage, task)
                elif '"SparkListenerStageCompleted"' in line[:60]:
                    info = json.loads(line)["Stage Info"]
                    metrics = {a["Name"]: a.get("Value") for a in info.get("Accumulables", ())}
                    total = totals[stage_task.get(info["Stage ID"])]
                    total[0] += sum(int(metrics.get(n) or 0) for n in SHUFFLE_READ)
                    total[1] += sum(int(metrics.get(n) or 0) for n in SHUFFLE_WRITE)
    return {task: (r, w) for task, (r, w) in totals.items()}


def _event_files(events: Path) -> list[Path]:
    """The event log's files in order: Spark 4 rolls it into ``eventlog_v2_<app>/events_<n>_<app>``
    (a single file when rolling is off)."""

    def number(path: Path) -> tuple[str, int]:
        match = re.match(r"events_(\d+)_", path.name)
        return (str(path.parent), int(match.group(1)) if match else 0)

    files = [
        p
        for p in events.rglob("*")
        if p.is_file() and not p.name.startswith((".", "appstatus_")) and p.suffix != ".crc"
    ]
    return sorted(files, key=number)


def _task_of(tags: str, run_id: str) -> str | None:
    prefix = f"retailml-{run_id}-"
    for tag in tags.split(","):
        if tag.startswith(prefix):
            return tag[len(prefix) :].rsplit("-", 1)[0]
    return None


def read_quality(folder: Path) -> dict[str, str]:
    """The run's model quality per :data:`QUALITY` column, '' where its MLflow store lacks it.

    Plain sqlite3, read-only: importing mlflow takes seconds, and ``--docs-only`` reads the
    stores of earlier runs too.
    """
    db = folder / "mlflow" / "mlflow.db"
    if not db.is_file():
        return dict.fromkeys(QUALITY, "")
    with closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)) as con:
        return {column: _fmt(_parent_metric(con, q), 4) for column, q in QUALITY.items()}


def _parent_metric(con: sqlite3.Connection, q: Quality) -> float | None:
    """The metric of the latest parent run (no ``mlflow.parentRunId`` tag) named with the prefix:
    the parent holds the stage's summary, its children the candidates it tried."""
    row = con.execute(
        """
        SELECT m.value, m.is_nan
        FROM runs r
        JOIN experiments e ON e.experiment_id = r.experiment_id
        JOIN latest_metrics m ON m.run_uuid = r.run_uuid AND m.key = ?
        WHERE e.name = ? AND r.name LIKE ? AND r.lifecycle_stage = 'active'
          AND NOT EXISTS (
            SELECT 1 FROM tags t WHERE t.run_uuid = r.run_uuid AND t.key = ?
          )
        ORDER BY r.start_time DESC
        LIMIT 1
        """,
        (q.metric, q.experiment, f"{q.run_name_prefix}%", N.PARENT_RUN),
    ).fetchone()
    return None if row is None or row[1] else float(row[0])


def per_task(
    attempts: Sequence,
    counts: dict[str, int],
    shuffle: dict[str | None, tuple[int, int]],
    samples: Sequence[Sample],
) -> list[TaskResult]:
    """One result per task, in run order: its last attempt's status and seconds, rows, shuffle
    and memory peaks over all its attempts' windows."""
    from retailml.lakehouse import TABLES

    results: dict[str, TaskResult] = {}
    windows: dict[str, list[tuple[datetime, datetime]]] = defaultdict(list)
    for a in attempts:
        if a.started_at is not None and a.ended_at is not None:
            windows[a.task].append((a.started_at, a.ended_at))
        inputs = TASK_INPUTS.get(a.task, ())
        outputs = [t for t, spec in TABLES.items() if spec.producer == a.task]
        inside = [s for s in samples if any(lo <= s.at <= hi for lo, hi in windows[a.task])]
        read, write = shuffle.get(a.task, (0, 0))
        results[a.task] = TaskResult(
            task=a.task,
            status=a.status,
            attempts=a.attempt,
            seconds=a.seconds,
            rows_in=sum(counts.get(t, 0) for t in inputs) if inputs else None,
            rows_out=sum(counts.get(t, 0) for t in outputs) if outputs else None,
            shuffle_read=read,
            shuffle_write=write,
            jvm_peak=max((s.jvm for s in inside), default=None),
            python_peak=max((s.python for s in inside), default=None),
        )
    return list(results.values())


def result_row(r: TaskResult, run: Run, quality: dict[str, str]) -> dict:
    """The CSV row of one task; the run's model quality goes on every row, as its total does."""
    return {
        "date": run.started.strftime(DATE),
        "size": run.size,
        "git_commit": run.commit,
        "task": r.task,
        "seconds": _fmt(r.seconds, 1),
        "rows_in": "" if r.rows_in is None else r.rows_in,
        "rows_out": "" if r.rows_out is None else r.rows_out,
        "shuffle_read_mb": _fmt(r.shuffle_read / MB, 1),
        "shuffle_write_mb": _fmt(r.shuffle_write / MB, 1),
        "jvm_peak_mb": _fmt(r.jvm_peak / MB if r.jvm_peak is not None else None, 0),
        "python_peak_mb": _fmt(r.python_peak / MB if r.python_peak is not None else None, 0),
        "cores": os.cpu_count() or "",
        "total_seconds": _fmt(run.seconds, 0),
        **quality,
    }


def print_results(
    results: Sequence[TaskResult], run: Run, untagged: tuple[int, int], quality: dict[str, str]
) -> None:
    header = ("task", "status", "seconds", "rows in", "rows out", "shuffle read MB",
              "shuffle write MB", "JVM peak MB", "Python peak MB")  # fmt: skip
    rows = [header] + [
        (
            r.task,
            r.status,
            _fmt(r.seconds, 1),
            _count(r.rows_in),
            _count(r.rows_out),
            _fmt(r.shuffle_read / MB, 1),
            _fmt(r.shuffle_write / MB, 1),
            _fmt(r.jvm_peak / MB if r.jvm_peak is not None else None, 0),
            _fmt(r.python_peak / MB if r.python_peak is not None else None, 0),
        )
        for r in results
    ]
    print()
    for line in _aligned(rows):
        print(line)
    jvm = max((s.jvm for s in run.samples), default=0) / MB
    python = max((s.python for s in run.samples), default=0) / MB
    print(f"end to end {run.seconds:.0f} s (JVM start and summary included); peaks over the "
          f"whole run: JVM {jvm:,.0f} MB, Python {python:,.0f} MB; shuffle outside the tasks' "
          f"jobs: read {untagged[0] / MB:.1f} MB, write {untagged[1] / MB:.1f} MB")  # fmt: skip
    print(
        "model quality: " + "; ".join(f"{q.label} {quality[c] or '-'}" for c, q in QUALITY.items())
    )


# --- the single-node comparison ------------------------------------------------------------

# benchmarks/single_node.py's phases and recommenders, and the retailml recommenders whose
# NDCG@k the comparison records beside them (from the run's MLflow store).
SINGLE_NODE_PHASES = ("load", "features", "train", "recommend")
SINGLE_NODE_MODELS = ("als", "bm25_knn", "cosine_knn", "repeat", "popular")
RETAILML_MODELS = tuple(N.RANKING_MODEL_PREFIX)
SINGLE_NODE_COLUMNS = (
    "date",
    "size",
    "git_commit",
    "retailml_date",  # the retailml run it is compared with
    "together",  # 1: run right after that retailml run, in the same invocation
    "threads",
    "source_lines",
    *(f"{phase}_seconds" for phase in SINGLE_NODE_PHASES),
    "total_seconds",
    "python_peak_mb",
    "holdout_roc_auc",
    "k",
    "eval_customers",
    *(f"ndcg_{model}_{mode}" for model in SINGLE_NODE_MODELS for mode in N.MODES),
    *(f"retailml_ndcg_{model}_{mode}" for model in RETAILML_MODELS for mode in N.MODES),
)


def run_single_node(size: str, data: Path, *, retailml: Run | None) -> dict[str, str] | None:
    """Run ``benchmarks/single_node.py`` on the size's source files and append its row to
    ``benchmarks/single_node.csv``; None (and a message) when it failed.

    A subprocess, like the retailml run: it starts from an empty Python process, and its memory
    peak is its own. It uses every core, as Spark's ``local[*]`` does.

    Args:
        size: The benchmark size.
        data: The folder of its source files.
        retailml: The run it follows in this invocation; None: set it beside the latest
            recorded retailml run of the size instead.
    """
    started = datetime.now(UTC)
    folder: Path | None = None
    if retailml is not None:
        paired, folder = retailml.started.strftime(DATE), retailml.folder
    else:
        latest = _latest_run([r for r in read_results(RESULTS) if r["size"] == size])
        paired = latest[0]["date"] if latest else ""
        folder = run_folder(size, datetime.strptime(paired, DATE)) if paired else None
    # Kept in the run's folder when there is one, like the run's own outcome.
    out = (
        retailml.folder / "single_node.json"
        if retailml is not None
        else BENCH / "runs" / f"{size}-{started:%Y%m%d-%H%M%S}-single-node.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"single-node comparison {size} on {data} ...")
    done = subprocess.run(
        [sys.executable, str(BENCH / "single_node.py"), f"--data={data}", f"--json={out}"],
        cwd=ROOT,
        env=_clean_env(),
        check=False,
    )
    if done.returncode != 0:
        print(f"the single-node comparison failed (exit {done.returncode}); it needs the bench "
              f"extra: .venv/bin/pip install -e '.[bench]'")  # fmt: skip
        return None
    row = comparison_row(
        json.loads(out.read_text()),
        size=size,
        started=started,
        paired=paired,
        together=retailml is not None,
        retailml=read_recommender_ndcg(folder),
    )
    save_single_node(SINGLE_NODE, [row])
    print(f"appended a row to {SINGLE_NODE.relative_to(ROOT)}")
    return row


def comparison_row(
    result: dict,
    *,
    size: str,
    started: datetime,
    paired: str,
    together: bool,
    retailml: dict[str, str],
) -> dict[str, str]:
    """The CSV row of one comparison: the single-node result (``single_node.py --json``), the
    retailml run it is set beside (``paired``, its date) and that run's NDCG@k per recommender
    (:func:`read_recommender_ndcg`)."""
    return {
        "date": started.strftime(DATE),
        "size": size,
        "git_commit": _git_commit(),
        "retailml_date": paired,
        "together": "1" if together else "",
        "threads": str(result["threads"]),
        "source_lines": str(result["source_lines"]),
        **{f"{p}_seconds": _fmt(result["seconds"][p], 1) for p in SINGLE_NODE_PHASES},
        "total_seconds": _fmt(result["total_seconds"], 1),
        "python_peak_mb": _fmt(result["python_peak_mb"], 0),
        "holdout_roc_auc": _fmt(result["roc_auc"], 4),
        "k": str(result["k"]),
        "eval_customers": str(result["eval_customers"]),
        **{
            f"ndcg_{model}_{mode}": _fmt(result["ndcg"].get(model, {}).get(mode), 4)
            for model in SINGLE_NODE_MODELS
            for mode in N.MODES
        },
        **retailml,
    }


def read_recommender_ndcg(folder: Path | None) -> dict[str, str]:
    """NDCG@k of every retailml recommender in both modes from a run's MLflow store (the
    recommend task's parent run), '' where the store or the metric is missing."""
    found = {f"retailml_ndcg_{m}_{mode}": "" for m in RETAILML_MODELS for mode in N.MODES}
    db = folder / "mlflow" / "mlflow.db" if folder is not None else None
    if db is None or not db.is_file():
        return found
    source = QUALITY["ndcg_at_k"]
    with closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)) as con:
        for model in RETAILML_MODELS:
            for mode in N.MODES:
                metric = f"{N.ranking_prefix(model, mode)}ndcg_at_k"
                q = Quality(source.experiment, source.run_name_prefix, metric, metric)
                found[f"retailml_ndcg_{model}_{mode}"] = _fmt(_parent_metric(con, q), 4)
    return found


def read_single_node(path: Path) -> list[dict[str, str]]:
    """``benchmarks/single_node.csv``'s rows with every current column ('' for cells a row
    lacks)."""
    return _read_csv(path, SINGLE_NODE_COLUMNS)


def save_single_node(path: Path, new: Sequence[dict[str, str]]) -> None:
    """Rewrite the comparison's CSV with the current columns: its rows, then ``new``."""
    _write_csv(path, SINGLE_NODE_COLUMNS, [*read_single_node(path), *new])


def _single_node_section(
    name: str, rows: Sequence[dict[str, str]], single: Sequence[dict[str, str]]
) -> list[str]:
    """The size's latest single-node comparison beside its retailml run: seconds of the same
    work, their ratio, and the quality of each, per recommender too; [] when there is none."""
    mine = [r for r in single if r["size"] == name]
    if not mine:
        return []
    s = max(mine, key=lambda r: r["date"])
    spark = [r for r in rows if r["date"] == s["retailml_date"]]
    seconds = {r["task"]: float(r["seconds"]) for r in spark if r["seconds"]}

    def retailml(*tasks: str) -> float | None:
        return sum(seconds[t] for t in tasks) if all(t in seconds for t in tasks) else None

    def single_node(*phases: str) -> float | None:
        cells = [s[f"{p}_seconds"] for p in phases]
        return sum(float(c) for c in cells) if all(cells) else None

    k = s["k"] or "k"
    best_new = max(
        ((m, float(s[f"ndcg_{m}_new"])) for m in SINGLE_NODE_MODELS if s[f"ndcg_{m}_new"]),
        key=lambda pair: pair[1],
        default=None,
    )
    judged = spark[0]["ndcg_at_k"] if spark else ""
    auc = spark[0]["holdout_roc_auc"] if spark else ""
    work = [
        ("propensity (features + train)", retailml("features", "train"),
         single_node("features", "train"), f"ROC-AUC {auc or '-'}",
         f"ROC-AUC {s['holdout_roc_auc'] or '-'} (LightGBM)"),
        ("recommendations (recommend)", retailml("recommend"), single_node("recommend"),
         f"NDCG@{k} new {judged or '-'} (the judged list)",
         f"NDCG@{k} new {best_new[1]:.4f} ({best_new[0]})" if best_new else "-"),
        ("reading and cleaning (ingest + clean)", retailml("ingest", "clean"),
         single_node("load"), "", ""),
        ("all of the above", retailml("ingest", "clean", "features", "train", "recommend"),
         single_node(*SINGLE_NODE_PHASES), "", ""),
    ]  # fmt: skip
    when = (
        f"right after the retailml run of {s['retailml_date']}, in the same invocation"
        if s["together"]
        else f"on its own, beside the latest retailml run recorded then ({s['retailml_date']}): "
        "the machine's load may have differed"
        if spark
        else "with no retailml run of the size recorded"
    )
    lines = [
        f"### Single node ({name})",
        "",
        f"`benchmarks/single_node.py` at `{s['git_commit']}` on the same source files "
        f"({int(s['source_lines'] or 0):,} lines): pandas for reading, cleaning and features, "
        f"LightGBM for the propensity model, the `implicit` library's ALS and item-kNN for "
        f"recommendations, on {s['threads']} thread(s), run {s['date']} {when}; "
        f"Python peak {s['python_peak_mb'] or '-'} MB. The same targets: cutoffs, label, "
        f"held-out cutoff, evaluation window and customers ({s['eval_customers'] or '-'}), "
        f"NDCG@{k} definition; its docstring lists what is approximated (no learned ranker, "
        "no Platt scaling, implicit's ALS solver). Seconds are the tasks' for retailml "
        "(JVM start, score and report not included) and the phases' for the single node.",
        "",
        "| work | retailml s | single node s | ratio | retailml quality | single-node quality |",
        "| --- | ---: | ---: | ---: | --- | --- |",
    ]
    for label, spark_s, node_s, spark_q, node_q in work:
        ratio = _ratio(spark_s, node_s)
        lines.append(
            f"| {label} | {_fmt(spark_s, 1) or '-'} | {_fmt(node_s, 1) or '-'} | {ratio} | "
            f"{spark_q} | {node_q} |"
        )
    recommenders = [
        ("for_you (two-stage ranker)", "for_you", None),
        ("discover (two-stage ranker)", "discover", None),
        ("ALS (Spark MLlib; implicit)", "als", "als"),
        ("item-kNN, cosine", "item_knn", "cosine_knn"),
        ("item-kNN, BM25 weights (implicit)", None, "bm25_knn"),
        ("repeat (own products, time decay)", "repeat", "repeat"),
        ("popular", "popular", "popular"),
    ]
    lines += [
        "",
        f"| recommender | retailml NDCG@{k} all | retailml NDCG@{k} new | "
        f"single node NDCG@{k} all | single node NDCG@{k} new |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for label, ours, theirs in recommenders:
        cells = [(s[f"retailml_ndcg_{ours}_{mode}"] if ours else "") or "-" for mode in N.MODES] + [
            (s[f"ndcg_{theirs}_{mode}"] if theirs else "") or "-" for mode in N.MODES
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if not any(s[f"retailml_ndcg_{m}_{mode}"] for m in RETAILML_MODELS for mode in N.MODES):
        lines += [
            "",
            "The retailml run's MLflow store was gone when the comparison was recorded, so of "
            "its recommenders only the judged list's NDCG is known (above).",
        ]
    return [*lines, ""]


def _ratio(spark: float | None, node: float | None) -> str:
    """How many times longer retailml took: ``12×``, ``3.4×``."""
    if spark is None or not node:
        return "-"
    ratio = spark / node
    return f"{ratio:.0f}×" if ratio >= 10 else f"{ratio:.1f}×"


# --- the CSV and the page -------------------------------------------------------------------


def save_results(path: Path, new: Sequence[dict]) -> None:
    """Rewrite the CSV with the current columns: its rows, then ``new``.

    Rewriting rather than appending migrates a file with an older header, and fills in the
    model quality of runs recorded without it (before the quality columns, or by an older
    bench.py) from their run folders while those are still there. Written to a temporary file
    first, so a failure cannot truncate the only record of earlier runs.
    """
    rows = backfill_profile(backfill_quality(read_results(path)))
    new = backfill_profile([{**dict.fromkeys(PROFILE, ""), **r} for r in new])
    _write_csv(path, COLUMNS, [*rows, *new])


def backfill_quality(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """Fill the model quality of rows that have none from their run's folder, found by size and
    start (the row's date); rows whose folder is gone keep empty cells."""
    found: dict[tuple[str, str], dict[str, str]] = {}
    for r in rows:
        if any(r[c] for c in QUALITY):
            continue
        key = (r["size"], r["date"])
        if key not in found:
            folder = run_folder(r["size"], datetime.strptime(r["date"], DATE))
            found[key] = read_quality(folder)
        r.update(found[key])
    return rows


def backfill_profile(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """Fill the Spark profile of rows that have none from their run folder's event log (found
    by size and start); rows whose folder or log is gone keep empty cells."""
    from sparkprofile import task_profiles

    found: dict[tuple[str, str], dict] = {}
    for r in rows:
        if r["busy_seconds"]:
            continue
        key = (r["size"], r["date"])
        if key not in found:
            events = run_folder(r["size"], datetime.strptime(r["date"], DATE)) / "events"
            found[key] = {}
            if events.is_dir() and _event_files(events):
                try:
                    found[key] = task_profiles(events)
                except (SystemExit, ValueError, KeyError) as error:  # a log cut short, or none
                    print(f"no Spark profile from {events}: {error}", file=sys.stderr)
        profile = found[key].get(r["task"])
        if profile is not None:
            r.update(
                spark_jobs=str(profile.jobs),
                busy_seconds=_fmt(profile.busy_s, 1),
                core_seconds=_fmt(profile.core_s, 1),
                gc_seconds=_fmt(profile.gc_s, 1),
            )
    return rows


def read_results(path: Path) -> list[dict[str, str]]:
    """The CSV's rows with every current column: '' for cells a row lacks (rows written under an
    older header, or appended by an older bench.py with fewer columns)."""
    return _read_csv(path, COLUMNS)


def _read_csv(path: Path, columns: Sequence[str]) -> list[dict[str, str]]:
    """A results CSV's rows with exactly ``columns`` ('' for cells a row lacks); [] without
    the file."""
    if not path.is_file():
        return []
    with path.open(newline="") as rows:
        return [{c: r.get(c) or "" for c in columns} for r in csv.DictReader(rows)]


def _write_csv(path: Path, columns: Sequence[str], rows: Sequence[dict]) -> None:
    """Write ``rows`` under ``columns`` to a temporary file, then move it over ``path``, so a
    failure cannot truncate the only record of earlier runs."""
    temporary = path.with_suffix(".tmp")
    with temporary.open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    temporary.replace(path)


def write_docs(
    rows: Sequence[dict[str, str]], path: Path, *, single: Sequence[dict[str, str]] = ()
) -> None:
    """Rewrite the benchmarks page: the machine, per size the latest run of each task and its
    model quality and the latest single-node comparison (``single``: rows of
    ``benchmarks/single_node.csv``), then how time scales across the sizes."""
    out = [
        "# Benchmarks",
        "",
        "Generated by `benchmarks/bench.py` from `benchmarks/results.csv`; do not edit by hand.",
        "",
        "## Machine",
        "",
        *(f"- {line}" for line in machine()),
        "",
        "## How to run",
        "",
        "`make bench SIZE=S` (or `M`, `L`) generates the data set once into "
        "`benchmarks/data/<size>` (reused while its parameters match), runs the whole workflow "
        "with `retailml run` in a fresh folder `benchmarks/runs/<size>-<timestamp>` (empty "
        "tables and MLflow store, Spark's event log on) and appends one row per task to "
        "`benchmarks/results.csv`, then rewrites this page. Seconds come from the run history "
        "(`ops.task_runs`); rows in / out are row counts of the tables a task reads and writes; "
        "shuffle read / write are summed over the stages of the Spark jobs tagged with the "
        "task's attempts in the event log; the JVM and Python peaks are the highest resident "
        "memory (RSS) of the driver JVM and of the retailml Python process sampled every "
        "0.5 s during the task (the JVM's heap seldom shrinks, so its peak carries over into "
        "later tasks). Total is the end-to-end time of the command, JVM start included. "
        "Model quality comes from the run's MLflow store: the held-out ROC-AUC of the "
        "challenger the train task picked (metric `challenger_holdout_roc_auc`) and the "
        "NDCG@k of the list the recommend task's gate judged (`tuned_ndcg_at_k`; ALS alone "
        "before the two-stage recommender). "
        "After the run, on the same files, `benchmarks/single_node.py` does the same "
        "propensity and recommendation work with pandas, LightGBM and the `implicit` library "
        "(`pip install -e '.[bench]'`, which `make bench` does); its seconds and quality go to "
        "`benchmarks/single_node.csv` and stand beside retailml's in each size's *Single node* "
        "table, with the ratio (`bench.py --single-node-only` runs the comparison alone). "
        "Run one benchmark at a time on a machine; the run folders can be deleted afterwards.",
        "",
        "| size | customers | products | days | source lines |",
        "| --- | ---: | ---: | ---: | ---: |",
        *(
            f"| {name} | {s.customers:,} | {s.products:,} | {s.days} | {_lines_of(name, rows)} |"
            for name, s in SIZES.items()
        ),
        "",
    ]
    for name in SIZES:
        runs = [r for r in rows if r["size"] == name]
        if runs:
            out += _size_section(name, runs)
            out += _single_node_section(name, runs, single)
        else:
            out += [
                f"## {name}",
                "",
                "No complete run recorded (a run that fails or is stopped appends nothing); "
                "see the README's *Performance and scale* for what is known.",
                "",
            ]
    out += _scaling_section(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(out).rstrip() + "\n")


def _size_section(name: str, rows: Sequence[dict[str, str]]) -> list[str]:
    """The size's latest run per task beside the first run recorded for the size (the baseline,
    when it is another commit's), the model quality of both, and every run's total."""
    latest = _latest_run(rows)
    latest_date, commit = latest[0]["date"], latest[0]["git_commit"]
    before_rows = _earliest_run([r for r in rows if r["git_commit"] != commit])
    before = {r["task"]: r["seconds"] for r in before_rows}
    before_commit = before_rows[0]["git_commit"] if before_rows else ""
    seconds = (
        [f"seconds before ({before_commit})", f"seconds after ({commit})"]
        if before
        else ["seconds"]
    )
    header = ["task", *seconds, "rows in", "rows out", "shuffle read MB", "shuffle write MB",
              "JVM peak MB", "Python peak MB"]  # fmt: skip
    lines = [
        f"## {name}",
        "",
        f"Run of {latest_date} at commit `{commit}` on {latest[0]['cores']} cores: "
        f"{float(latest[0]['total_seconds']):,.0f} s end to end.",
        "",
        _quality_line(latest[0], before_rows[0] if before_rows else None),
        "",
        _history_line(rows),
        "",
        "| " + " | ".join(header) + " |",
        "| --- | " + " | ".join("---:" for _ in header[1:]) + " |",
    ]
    for r in latest:
        cells = [r["task"]]
        if before:
            cells.append(before.get(r["task"], "-"))
        cells += [
            r["seconds"] or "-",
            _count(int(r["rows_in"])) if r["rows_in"] else "-",
            _count(int(r["rows_out"])) if r["rows_out"] else "-",
            r["shuffle_read_mb"],
            r["shuffle_write_mb"],
            r["jvm_peak_mb"] or "-",
            r["python_peak_mb"] or "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, "", *_profile_table(latest)]


def _profile_table(latest: Sequence[dict[str, str]]) -> list[str]:
    """Where each task's time went in the latest run, from its event log (none when the run's
    folder was gone before its profile was recorded)."""
    if not any(r["busy_seconds"] for r in latest):
        return []
    cores = int(latest[0]["cores"] or 1)
    lines = [
        "Where the time went (`benchmarks/sparkprofile.py` on the run's event log): *busy* is "
        "the seconds some Spark job of the task was running, the rest of the task's seconds "
        "the driver alone (planning, Python, MLflow, Delta commits); *core use* is the "
        f"executor core-seconds running Spark tasks over busy × {cores} cores.",
        "",
        "| task | seconds | Spark jobs | busy s | driver-only s | executor core-s | core use "
        "| GC s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in latest:
        if not r["busy_seconds"] or not r["seconds"]:
            continue
        busy, core = float(r["busy_seconds"]), float(r["core_seconds"])
        use = f"{core / (busy * cores):.0%}" if busy else "-"
        lines.append(
            f"| {r['task']} | {r['seconds']} | {int(r['spark_jobs']):,} | {busy:.1f} | "
            f"{max(float(r['seconds']) - busy, 0):.1f} | {core:.1f} | {use} | {r['gc_seconds']} |"
        )
    return [*lines, ""]


def _quality_line(after: dict[str, str], before: dict[str, str] | None) -> str:
    """The model quality of the shown runs, so that a speed-up which costs accuracy shows:
    ``before → after (after − before)`` when the section compares two commits."""
    parts = []
    for column, q in QUALITY.items():
        new = after[column]
        if before is None:
            parts.append(f"{q.label} {new or '-'}")
            continue
        old = before[column]
        change = f" ({float(new) - float(old):+.4f})" if old and new else ""
        parts.append(f"{q.label} {old or '-'} → {new or '-'}{change}")
    heading = "Model quality" if before is None else "Model quality, before → after"
    return f"{heading}: " + "; ".join(parts) + "."


def _scaling_section(rows: Sequence[dict[str, str]]) -> list[str]:
    """Time against data for the latest run of each size that has one, and each size against the
    one below it: a time ratio near the lines ratio means the workflow scales linearly."""
    latest = {
        name: run for name in SIZES if (run := _latest_run([r for r in rows if r["size"] == name]))
    }
    if not latest:
        return []
    seconds = {name: float(run[0]["total_seconds"]) for name, run in latest.items()}
    source = {name: _source_lines(run) for name, run in latest.items()}
    out = [
        "## Scaling",
        "",
        "The latest run of each size (their commits may differ). The driver JVM peak is the "
        "highest of the run's tasks.",
        "",
        "| size | commit | source lines | total seconds | seconds per million lines | "
        "driver JVM peak MB |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for name, run in latest.items():
        lines = source[name]
        per_million = f"{seconds[name] / lines * 1e6:.1f}" if lines else "-"
        jvm = max((r["jvm_peak_mb"] for r in run if r["jvm_peak_mb"]), key=int, default="-")
        out.append(f"| {name} | `{run[0]['git_commit']}` | {_count(lines)} | "
                   f"{seconds[name]:.0f} | {per_million} | {jvm} |")  # fmt: skip
    pairs = [(small, big) for small, big in pairwise(SIZES) if small in latest and big in latest]
    if pairs:
        out += ["", "| sizes | time ratio | data ratio (lines) |", "| --- | ---: | ---: |"]
    for small, big in pairs:
        small_lines, big_lines = source[small], source[big]
        data_ratio = f"{big_lines / small_lines:.2f}" if small_lines and big_lines else "-"
        out.append(f"| {big}/{small} | {seconds[big] / seconds[small]:.2f} | {data_ratio} |")
    return [*out, ""]


def _latest_run(rows: Sequence[dict[str, str]]) -> list[dict[str, str]]:
    """The rows of the latest run among ``rows`` (a run is known by its start date); [] if none."""
    if not rows:
        return []
    date = max(r["date"] for r in rows)
    return [r for r in rows if r["date"] == date]


def _earliest_run(rows: Sequence[dict[str, str]]) -> list[dict[str, str]]:
    """The rows of the first run among ``rows``; [] if none."""
    if not rows:
        return []
    date = min(r["date"] for r in rows)
    return [r for r in rows if r["date"] == date]


def _history_line(rows: Sequence[dict[str, str]]) -> str:
    """Every recorded run of a size, oldest first: commit and end-to-end seconds."""
    totals = {r["date"]: (r["git_commit"], float(r["total_seconds"])) for r in rows}
    runs = ", ".join(f"`{c}` {s:,.0f} s" for _, (c, s) in sorted(totals.items()))
    return f"Every recorded run, oldest first (commit, end to end): {runs}."


def _source_lines(run: Sequence[dict[str, str]]) -> int | None:
    """A run's source lines: the rows in of its ingest task."""
    return next((int(r["rows_in"]) for r in run if r["task"] == "ingest" and r["rows_in"]), None)


def _lines_of(name: str, rows: Sequence[dict[str, str]]) -> str:
    """The source lines of the size's latest run, else what the generator is expected to give."""
    source = _source_lines(_latest_run([r for r in rows if r["size"] == name]))
    return f"{source:,}" if source else f"{SIZES[name].expected_lines} (expected)"


def machine() -> list[str]:
    """CPU model, cores, RAM, OS, Java, Python and Spark versions of this machine, and the Spark
    settings of the runs."""
    from retailml.settings import SparkSettings

    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    cpu = next(
        (line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if "model name" in line),
        platform.processor() or "unknown CPU",
    )
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").is_file() else ""
    match = re.search(r"MemTotal:\s+(\d+) kB", meminfo)
    ram = f"{int(match.group(1)) / 1024 / 1024:.1f} GiB RAM" if match else "RAM unknown"
    try:
        java = subprocess.run(
            ["java", "-version"], capture_output=True, text=True, check=False
        ).stderr.splitlines()[0]
    except (OSError, IndexError):
        java = "java not found"
    try:
        import pyspark

        spark = f"PySpark {pyspark.__version__}"
    except ImportError:
        spark = "PySpark not installed"
    default_memory = SparkSettings().driver_memory
    return [
        f"{cpu}, {os.cpu_count()} cores, {ram}",
        f"{platform.system()} {platform.release()}",
        java,
        f"Python {platform.python_version()}, {spark}",
        f"Spark local[*] with the default settings (driver memory {default_memory})"
        + "".join(f"; {name}: {', '.join(s.settings)}" for name, s in SIZES.items() if s.settings),
    ]


# --- helpers --------------------------------------------------------------------------------


def _retailml() -> str:
    return str(Path(sys.executable).with_name("retailml"))


def _clean_env() -> dict[str, str]:
    """This environment without retailml or MLflow settings, so every run sees the defaults."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("RETAILML_") and k != "MLFLOW_TRACKING_URI"
    }


def _git_commit() -> str:
    """The short commit; ``+`` when src/ has uncommitted changes."""

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)

    head = git("rev-parse", "--short", "HEAD").stdout.strip() or "unknown"
    dirty = git("status", "--porcelain", "--", "src").stdout.strip()
    return f"{head}+" if dirty else head


def _utcnow() -> datetime:
    # Naive UTC, as the run history returns its times.
    return datetime.now(UTC).replace(tzinfo=None)


def _fmt(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _aligned(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = zip(row, widths, strict=True)
        lines.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(cells)))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


if __name__ == "__main__":
    sys.exit(main())
