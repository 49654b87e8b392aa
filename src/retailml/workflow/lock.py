"""One run at a time per lake: an exclusive OS file lock held for the whole run.

The lock is ``flock(2)`` on a file next to the tables (``<lake_root>/_retailml_run.lock``), so
the operating system releases it when the process ends, however it ends: a crashed run never
leaves a stale lock behind. Where the lake is not a local folder (a catalog, an object-store
URI) the lock file lives in the project's log folder, which protects runs started from this
machine; a Databricks job has ``max_concurrent_runs: 1`` instead.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from retailml.errors import RetailmlError
from retailml.settings import Settings

LOCK_NAME = "_retailml_run.lock"


class WorkflowBusyError(RetailmlError):
    """Another run holds the lake's run lock."""


def lock_path(settings: Settings) -> Path:
    """Where the lake's run lock lives (see the module docstring)."""
    root = settings.path(settings.lake_root)
    if not settings.catalog and "://" not in root and not root.startswith("dbfs:"):
        return Path(root) / LOCK_NAME
    where = f"{settings.catalog}.{settings.db_schema}" if settings.catalog else root
    digest = hashlib.sha1(where.encode()).hexdigest()[:12]
    return Path(settings.path(settings.log_dir)) / f"run-{digest}.lock"


class RunLock:
    """Exclusive, non-blocking lock on the lake for one run; a context manager.

    Args:
        settings: Which lake.
        run_id: Written into the lock file so a refused run can say who holds it.
    """

    def __init__(self, settings: Settings, run_id: str) -> None:
        self.path = lock_path(settings)
        self.run_id = run_id
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        """Take the lock.

        Raises:
            WorkflowBusyError: Another run holds it; the message names that run.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("a+", encoding="utf-8")
        if not _try_lock(handle, patience_s=1.0):
            holder = _describe(read_holder(self.path))
            handle.close()
            raise WorkflowBusyError(
                f"another retailml run is writing to this lake ({holder}); wait for it to "
                f"finish or stop it, then try again (lock: {self.path})"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(
            json.dumps({"run_id": self.run_id, "pid": os.getpid(), "host": socket.gethostname()})
        )
        handle.flush()
        self._file = handle

    def release(self) -> None:
        """Let go of the lock (closing the file releases it)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def keep_until_exit(self) -> None:
        """Hold the lock until the process ends (a task that would not stop is still running:
        no other run may start while it can write)."""
        if self._file is not None:
            _KEPT.append(self._file)
            self._file = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


_KEPT: list[IO[str]] = []


def _try_lock(handle: IO[str], *, patience_s: float) -> bool:
    """Take the exclusive lock, trying for a moment: `retailml runs` holds it for an instant
    to see whether a run is going on."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)


def read_holder(path: Path) -> dict[str, Any]:
    """What the lock file says about the run holding (or last holding) it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def running_run(settings: Settings) -> str | None:
    """The run id holding the lake's lock now, or None when no run is going on."""
    path = lock_path(settings)
    if not path.exists():
        return None
    with path.open("a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return str(read_holder(path).get("run_id") or "?")
    return None


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "holder unknown"
    return f"run {holder.get('run_id', '?')}, pid {holder.get('pid', '?')} on {holder.get('host')}"
