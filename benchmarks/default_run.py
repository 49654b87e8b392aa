"""How long `make run` takes on the default demo data, per task (the installation excluded).

Runs `retailml run` in a fresh project folder (so nothing is reused: data, tables and the MLflow
store all start empty), times the whole command, and reads each task's seconds from the
summary table the runner prints at the end. The target is the workflow issue's: about five
minutes or less on a 2-core machine.

    .venv/bin/python benchmarks/default_run.py [--keep DIR] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_S = 300.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="Run in this folder and keep it.")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    folder = args.keep or Path(tempfile.mkdtemp(prefix="retailml-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    retailml = Path(sys.executable).with_name("retailml")
    command = [str(retailml), *[f"--set={s}" for s in args.set], "run"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETAILML_")}
    env.pop("MLFLOW_TRACKING_URI", None)
    started = time.monotonic()
    proc = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
    wall = time.monotonic() - started
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
        print(f"retailml run failed after {wall:.0f} s (exit {proc.returncode})")
        return 1

    print(f"machine: {platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"folder: {folder}")
    print(f"{'task':<10} {'status':<10} {'seconds':>8}")
    for line in _summary(proc.stdout):
        task, status, _attempts, seconds, *_ = line.split()
        print(f"{task:<10} {status:<10} {float(seconds):>8.1f}")
    verdict = "within" if wall <= TARGET_S else "over"
    print(f"end to end: {wall:.0f} s ({verdict} the {TARGET_S:.0f} s target); "
          f"largest child process RSS {peak_mb:,.0f} MB")  # fmt: skip
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


def _summary(stdout: str) -> list[str]:
    """The rows of the runner's summary table (between its header rule and the next line)."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("task ") and "status" in line)
    rows = []
    for line in lines[start + 2 :]:
        if not line.strip() or line.startswith(("tables:", "run ")):
            break
        rows.append(line)
    return rows


if __name__ == "__main__":
    sys.exit(main())
