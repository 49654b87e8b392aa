"""Data-quality gates on a new batch, checked before it reaches silver (``ops.quality``).

Each gate is one figure of the batch against a threshold in ``settings.quality``. A breached
gate fails the task with one line naming the gate, its value, its threshold and the worst file,
unless the gate is listed in ``quality.warn``, when it is printed and recorded only. Every
figure is recorded, passed or not, before the task goes on or stops.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from retailml import schemas as S
from retailml.errors import QualityGateError
from retailml.lakehouse import Lakehouse
from retailml.settings import Gate, QualitySettings

TABLE = "ops.quality"
FAIL, WARN = "fail", "warn"


@dataclass(frozen=True)
class Check:
    """One gate's figure on one batch. ``value`` None: not measurable (no earlier batch)."""

    gate: Gate
    value: float | None
    threshold: str
    passed: bool
    action: str
    detail: str = ""

    def line(self) -> str:
        value = "-" if self.value is None else f"{self.value:.4g}"
        mark = "ok" if self.passed else ("FAILED" if self.action == FAIL else "warning")
        detail = f" ({self.detail})" if self.detail else ""
        return f"gate {self.gate} {value} (limit {self.threshold}): {mark}{detail}"


def share(
    cfg: QualitySettings, gate: Gate, part: float, whole: float, limit: float, worst: str = ""
) -> Check:
    """The gate ``part / whole <= limit``; passed when there is nothing to measure."""
    value = part / whole if whole else None
    passed = value is None or value <= limit
    return Check(gate, value, f"≤ {limit:g}", passed, _action(cfg, gate), worst)


def ratio(cfg: QualitySettings, gate: Gate, value: float | None, bounds: Sequence[float]) -> Check:
    """The gate ``low <= value <= high``; passed when there is nothing to measure."""
    low, high = bounds
    passed = value is None or low <= value <= high
    return Check(gate, value, f"{low:g}–{high:g}", passed, _action(cfg, gate))


def worst_file(shares: Mapping[str, float]) -> str:
    """``file: share`` of the file with the highest share, for the error line."""
    if not shares:
        return ""
    path, value = max(shares.items(), key=lambda kv: kv[1])
    return f"worst file {path}: {value:.4g}"


def enforce(lake: Lakehouse, batch_id: str, stage: str, checks: Sequence[Check]) -> list[str]:
    """Record ``checks`` in ``ops.quality``, then fail on the first breached failing gate.

    Returns:
        One line per check, for the task's summary.

    Raises:
        QualityGateError: A gate whose action is ``fail`` was breached.
    """
    rows = [
        (batch_id, stage, c.gate, c.value, c.threshold, c.action, c.passed, c.detail or None)
        for c in checks
    ]
    written = StructType([f for f in S.QUALITY_CHECKS.fields if f.name != S.RECORDED_AT])
    frame = lake.spark.createDataFrame(rows, schema=written).withColumn(
        S.RECORDED_AT, F.current_timestamp()
    )
    lake.append(TABLE, frame)
    failed = [c for c in checks if not c.passed and c.action == FAIL]
    if failed:
        first = failed[0]
        raise QualityGateError(
            f"batch {batch_id[:8]} refused before silver: {first.line()}; fix the file, or "
            f"raise quality.{_setting(first.gate)} or add {first.gate} to quality.warn"
        )
    return [c.line() for c in checks]


def _setting(gate: Gate) -> str:
    return gate if gate == "batch_rows_ratio" else f"max_{gate}"


def _action(cfg: QualitySettings, gate: Gate) -> str:
    return WARN if gate in cfg.warn else FAIL
