"""Where a benchmark run's time went, per workflow task, from its Spark event log.

    .venv/bin/python benchmarks/sparkprofile.py benchmarks/runs/M-<timestamp> [--top 8]
    .venv/bin/python benchmarks/sparkprofile.py benchmarks/runs/M-daily-<timestamp>/events-daily

For every task (jobs carry the job tag ``retailml-<run_id>-<task>-<attempt>``) it prints the
number of Spark jobs, stages and Spark tasks, the seconds some job was running (the union of job
intervals), the core-seconds the executors spent running tasks (and of that, GC), so that
``busy`` against the task's wall time shows driver-side time (planning, Python, MLflow) and
``run core-s`` against ``busy × cores`` shows how well the cores were used. Then the job call
sites that cost the most (PySpark's ``callSite.short`` when it set one — the Python line —, else
the job's description or its last stage's name), and the slowest stages with their shuffle and
spill. Reading the log costs seconds; it needs no Spark.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import _event_files, _task_of

MB = 1024 * 1024


@dataclass
class Job:
    task: str | None
    label: str
    start: int
    end: int = 0
    stages: list[int] = field(default_factory=list)


@dataclass
class Stage:
    name: str
    tasks: int
    seconds: float
    run_s: float = 0.0
    gc_s: float = 0.0
    shuffle_read: int = 0
    shuffle_write: int = 0
    spill: int = 0


def read(folder: Path) -> tuple[str, dict[int, Job], dict[int, Stage]]:
    """The run id and the event log's jobs and completed stages."""
    run_id = _run_id_from_log(folder)
    jobs: dict[int, Job] = {}
    stages: dict[int, Stage] = {}
    task_metrics: dict[int, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for path in _event_files(_events(folder)):
        with path.open() as lines:
            for line in lines:
                if not line.endswith("\n"):
                    break  # the last line of a log that is still being written
                head = line[:60]
                if '"SparkListenerJobStart"' in head:
                    e = json.loads(line)
                    props = e.get("Properties") or {}
                    last = e["Stage Infos"][-1]["Stage Name"] if e["Stage Infos"] else ""
                    label = (
                        props.get("callSite.short") or props.get("spark.job.description") or last
                    )
                    jobs[e["Job ID"]] = Job(
                        _task_of(props.get("spark.job.tags", ""), run_id),
                        label.replace(str(Path.cwd()) + "/", ""),
                        e["Submission Time"],
                        stages=list(e["Stage IDs"]),
                    )
                elif '"SparkListenerJobEnd"' in head:
                    e = json.loads(line)
                    if e["Job ID"] in jobs:
                        jobs[e["Job ID"]].end = e["Completion Time"]
                elif '"SparkListenerTaskEnd"' in head:
                    e = json.loads(line)
                    m = e.get("Task Metrics") or {}
                    acc = task_metrics[e["Stage ID"]]
                    acc[0] += m.get("Executor Run Time", 0) / 1000
                    acc[1] += m.get("JVM GC Time", 0) / 1000
                elif '"SparkListenerStageCompleted"' in head:
                    info = json.loads(line)["Stage Info"]
                    acc = {a["Name"]: a.get("Value") for a in info.get("Accumulables", ())}

                    def metric(*names: str, acc: dict = acc) -> int:
                        return sum(int(acc.get(f"internal.metrics.{n}") or 0) for n in names)

                    stages[info["Stage ID"]] = Stage(
                        info["Stage Name"],
                        info["Number of Tasks"],
                        (info.get("Completion Time", 0) - info.get("Submission Time", 0)) / 1000,
                        shuffle_read=metric(
                            "shuffle.read.remoteBytesRead", "shuffle.read.localBytesRead"
                        ),
                        shuffle_write=metric("shuffle.write.bytesWritten"),
                        spill=metric("diskBytesSpilled"),
                    )
    for sid, (run_s, gc_s) in task_metrics.items():
        if sid in stages:
            stages[sid].run_s, stages[sid].gc_s = run_s, gc_s
    return run_id, jobs, stages


def _events(folder: Path) -> Path:
    """A run folder's event log folder, or the folder itself when it is one (the daily
    benchmark keeps ``events-full`` and ``events-daily``)."""
    return folder / "events" if (folder / "events").is_dir() else folder


def _run_id_from_log(folder: Path) -> str:
    """The workflow run's id: from the first job tag that names one (run.log may be unflushed
    while the run is going)."""
    for path in _event_files(_events(folder)):
        with path.open() as lines:
            for line in lines:
                found = re.search(r"retailml-(\d{8}-\d{6}-[0-9a-f]+)-[a-z_]+-\d+", line)
                if found:
                    return found.group(1)
    raise SystemExit(f"{folder}: no retailml job tag in the event log")


def _union_seconds(intervals: list[tuple[int, int]]) -> float:
    total, end = 0, None
    for lo, hi in sorted(intervals):
        if end is None or lo > end:
            total += hi - lo
            end = hi
        elif hi > end:
            total += hi - end
            end = hi
    return total / 1000


@dataclass(frozen=True)
class Profile:
    """One workflow task's Spark work: jobs, completed stages and Spark tasks; the seconds some
    job was running (``busy_s``); executor core-seconds running tasks, and of that GC."""

    jobs: int
    stages: int
    tasks: int
    busy_s: float
    core_s: float
    gc_s: float
    shuffle_mb: float
    spill_mb: float


def _by_task(jobs: dict[int, Job]) -> dict[str | None, list[Job]]:
    by_task: dict[str | None, list[Job]] = defaultdict(list)
    for job in jobs.values():
        by_task[job.task].append(job)
    return dict(sorted(by_task.items(), key=lambda kv: min(j.start for j in kv[1])))


def _profile(task_jobs: list[Job], stages: dict[int, Stage]) -> Profile:
    st = [stages[s] for s in {s for j in task_jobs for s in j.stages if s in stages}]
    return Profile(
        jobs=len(task_jobs),
        stages=len(st),
        tasks=sum(s.tasks for s in st),
        busy_s=_union_seconds([(j.start, j.end or j.start) for j in task_jobs]),
        core_s=sum(s.run_s for s in st),
        gc_s=sum(s.gc_s for s in st),
        shuffle_mb=sum(s.shuffle_read + s.shuffle_write for s in st) / MB,
        spill_mb=sum(s.spill for s in st) / MB,
    )


def task_profiles(folder: Path) -> dict[str | None, Profile]:
    """Each workflow task's :class:`Profile` (None: jobs no task tag names), in run order."""
    _, jobs, stages = read(folder)
    return {task: _profile(task_jobs, stages) for task, task_jobs in _by_task(jobs).items()}


def report(folder: Path, *, top: int) -> str:
    run_id, jobs, stages = read(folder)
    by_task = _by_task(jobs)
    out = [f"run {run_id}: {len(jobs)} jobs, {len(stages)} completed stages"]
    header = (
        f"{'task':<10} {'jobs':>5} {'stages':>6} {'tasks':>6} {'busy s':>7} {'run core-s':>10} "
        f"{'gc s':>6} {'shuffle MB':>10} {'spill MB':>8}"
    )
    out.append(header)
    ordered = list(by_task)
    for task in ordered:
        p = _profile(by_task[task], stages)
        out.append(
            f"{task or '(untagged)':<10} {p.jobs:>5} {p.stages:>6} {p.tasks:>6} {p.busy_s:>7.1f} "
            f"{p.core_s:>10.1f} {p.gc_s:>6.1f} {p.shuffle_mb:>10.1f} {p.spill_mb:>8.1f}"
        )
    for task in ordered:
        task_jobs = by_task[task]
        out.append(f"\n== {task or '(untagged)'}: job call sites by seconds")
        groups: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
        for j in task_jobs:
            g = groups[j.label]
            g[0] += 1
            g[1] += ((j.end or j.start) - j.start) / 1000
        for label, (n, secs) in sorted(groups.items(), key=lambda kv: -kv[1][1])[:top]:
            out.append(f"  {secs:>7.1f} s {int(n):>5} jobs  {label[:110]}")
        seen = sorted(
            {s for j in task_jobs for s in j.stages if s in stages},
            key=lambda s: -stages[s].seconds,
        )
        out.append(f"   slowest stages of {task or '(untagged)'}:")
        for sid in seen[: max(3, top // 2)]:
            s = stages[sid]
            out.append(
                f"  {s.seconds:>7.1f} s stage {sid:>5} {s.tasks:>4} tasks run {s.run_s:>6.1f} "
                f"gc {s.gc_s:>5.1f} shuffle r/w {s.shuffle_read / MB:>6.1f}/"
                f"{s.shuffle_write / MB:>6.1f} MB spill {s.spill / MB:>6.1f}  {s.name[:60]}"
            )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "folder",
        type=Path,
        help="a benchmarks/runs/<size>-<timestamp> folder, or an events folder of one",
    )
    parser.add_argument("--top", type=int, default=8, help="call sites shown per task")
    args = parser.parse_args(argv)
    print(report(args.folder, top=args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
