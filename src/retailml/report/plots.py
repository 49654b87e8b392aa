"""The report's plots: plain data in, PNG bytes out.

Figures are built with :class:`matplotlib.figure.Figure` on an Agg canvas rather than through
``pyplot``, so no global figure registry or backend is touched (nothing to close, safe next to
other code that plots) and every plot has the same Seaborn style, applied per figure.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import date
from typing import Any

import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, PercentFormatter

DPI = 100
WIDTH = 10.0  # inches; 1000 px at DPI
PALETTE = "deep"
LAYER_COLORS = {"bronze": "#b07d48", "silver": "#8e9aa8", "gold": "#d4a62a", "ops": "#6b7b8c"}
CHAMPION_COLOR = "#d4a62a"
OTHER_COLOR = "#8e9aa8"
_STYLE = {"axes.titleweight": "bold", "axes.titlesize": 11, "axes.labelsize": 9}


def colors(n: int) -> list[Any]:
    """``n`` distinct colours of the report's palette."""
    return list(sns.color_palette(PALETTE, max(n, 1)))


@contextmanager
def _figure(
    rows: int = 1, cols: int = 1, *, height: float = 4.0, width: float = WIDTH, **kwargs: Any
) -> Iterator[tuple[Figure, Any]]:
    """A styled figure and its axes (one Axes, or an array for several)."""
    with sns.axes_style("whitegrid", _STYLE), sns.plotting_context("notebook", font_scale=0.85):
        fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(rows, cols, **kwargs)
        yield fig, axes


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _thousands(value: float, _pos: object = None) -> str:
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:.3g}{suffix}"
    return f"{value:.3g}"


def table_rows(tables: Sequence[tuple[str, str, int]]) -> bytes:
    """Horizontal bars of rows per table (log scale), coloured by layer.

    Args:
        tables: ``(table, layer, rows)`` in display order.
    """
    height = 1.2 + 0.32 * len(tables)
    with _figure(height=height) as (fig, ax):
        names = [t for t, _, _ in tables]
        rows = [max(n, 0) for _, _, n in tables]
        bar_colors = [LAYER_COLORS.get(layer, OTHER_COLOR) for _, layer, _ in tables]
        ax.barh(names, [max(n, 0.8) for n in rows], color=bar_colors)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(_thousands))
        for y, n in enumerate(rows):
            ax.text(max(n, 0.8) * 1.08, y, f"{n:,}", va="center", fontsize=8)
        ax.set_xlim(0.7, max([*rows, 1]) * 6)
        ax.set(title="Rows per table", xlabel="rows (log scale)")
        layers = list(dict.fromkeys(layer for _, layer, _ in tables))
        handles = [
            ax.bar(0, 0, color=LAYER_COLORS.get(layer, OTHER_COLOR), label=layer)
            for layer in layers
        ]
        ax.legend(handles=handles, loc="lower right", fontsize=8, title="layer")
        return _png(fig)


def quarantine_reasons(reasons: Mapping[str, int]) -> bytes:
    """Horizontal bars of quarantined rows per reason, largest first."""
    items = sorted(reasons.items(), key=lambda kv: -kv[1])
    with _figure(height=1.2 + 0.32 * len(items)) as (fig, ax):
        ax.barh([r for r, _ in items], [n for _, n in items], color=colors(1)[0])
        ax.invert_yaxis()
        for y, (_, n) in enumerate(items):
            ax.text(n, y, f" {n:,}", va="center", fontsize=8)
        ax.set_xlim(0, max(n for _, n in items) * 1.15)
        ax.set(title="Quarantined rows by reason", xlabel="rows")
        return _png(fig)


def psi_bars(
    values: Mapping[str, float], *, threshold: float, ignored: Sequence[str] = ()
) -> bytes:
    """Horizontal bars of each feature's population stability index, largest first, with the
    retraining threshold as a line; features that never trigger are grey."""
    items = sorted(values.items(), key=lambda kv: -kv[1])
    with _figure(height=1.2 + 0.28 * len(items)) as (fig, ax):
        bar_colors = [
            OTHER_COLOR if name in ignored else ("#b03a3e" if v > threshold else colors(1)[0])
            for name, v in items
        ]
        ax.barh([n for n, _ in items], [v for _, v in items], color=bar_colors)
        ax.invert_yaxis()
        ax.axvline(threshold, color="#b03a3e", linestyle="--", linewidth=1)
        for y, (_, v) in enumerate(items):
            ax.text(v, y, f" {v:.3f}", va="center", fontsize=8)
        ax.set_xlim(0, max([threshold, *(v for _, v in items)]) * 1.2)
        ax.set(title="Feature drift: PSI, scoring cutoff against training cutoff", xlabel="PSI")
        return _png(fig)


def weekly_sales(
    weeks: Sequence[date],
    revenue: Sequence[float],
    orders: Sequence[int],
    returned: Sequence[float],
) -> bytes:
    """Weekly revenue with returns below the axis, and weekly orders underneath."""
    with _figure(2, 1, height=5.5, sharex=True, height_ratios=[3, 2]) as (fig, (top, bottom)):
        c = colors(4)
        top.fill_between(weeks, revenue, step="post", alpha=0.25, color=c[0])
        top.step(weeks, revenue, where="post", color=c[0], label="revenue (purchases)")
        top.bar(
            weeks,
            [-r for r in returned],
            width=5,
            align="edge",
            color=c[3],
            label="returns",
        )
        top.axhline(0, color="black", linewidth=0.6)
        top.yaxis.set_major_formatter(FuncFormatter(_thousands))
        top.set(title="Weekly revenue and orders", ylabel="amount")
        top.legend(loc="upper left", fontsize=8)
        bottom.step(weeks, orders, where="post", color=c[1])
        bottom.set(ylabel="orders (invoices)", xlabel="week")
        bottom.set_ylim(bottom=0)
        return _png(fig)


def roc_pr(
    curves: Mapping[str, Mapping[str, Sequence[float]]], *, base_rate: float | None
) -> bytes:
    """ROC and precision-recall curves, one line per model.

    Args:
        curves: Model label → ``fpr``, ``tpr``, ``recall``, ``precision``.
        base_rate: The held-out positive rate (a random model's precision), if known.
    """
    with _figure(1, 2, height=4.2) as (fig, (roc, pr)):
        for (label, c), color in zip(curves.items(), colors(len(curves)), strict=False):
            roc.plot(c["fpr"], c["tpr"], label=label, color=color)
            pr.plot(c["recall"], c["precision"], label=label, color=color)
        roc.plot([0, 1], [0, 1], "--", color="grey", linewidth=1, label="random")
        roc.set(
            title="ROC (held-out cutoff)",
            xlabel="false positive rate",
            ylabel="true positive rate",
            xlim=(0, 1),
            ylim=(0, 1.01),
        )
        if base_rate is not None:
            pr.axhline(base_rate, linestyle="--", color="grey", linewidth=1, label="random")
        pr.set(
            title="Precision-recall (held-out cutoff)",
            xlabel="recall",
            ylabel="precision",
            xlim=(0, 1),
            ylim=(0, 1.01),
        )
        roc.legend(loc="lower right", fontsize=8)
        pr.legend(loc="upper right", fontsize=8)
        return _png(fig)


COMPARISON_METRICS = (
    ("roc_auc", "ROC-AUC", True),
    ("pr_auc", "PR-AUC", True),
    ("lift_at_10", "lift@10%", True),
    ("brier", "Brier (lower is better)", False),
    ("ece", "ECE (lower is better)", False),
)


def model_comparison(
    metrics: Mapping[str, Mapping[str, float]], *, champion: str | None = None
) -> bytes:
    """One small bar chart per held-out metric, a bar per model; the champion in gold."""
    labels = list(metrics)
    with _figure(1, len(COMPARISON_METRICS), height=3.4) as (fig, axes):
        bar_colors = [CHAMPION_COLOR if m == champion else OTHER_COLOR for m in labels]
        for ax, (key, title, _) in zip(axes, COMPARISON_METRICS, strict=True):
            values = [metrics[m].get(key, float("nan")) for m in labels]
            ax.bar(range(len(labels)), values, color=bar_colors)
            ax.set_xticks(range(len(labels)), labels, rotation=25, ha="right", fontsize=8)
            for x, v in enumerate(values):
                ax.text(x, v, f"{v:.3f}", ha="center", va="bottom", fontsize=7)
            top = max([v for v in values if v == v] or [1.0])
            ax.set_ylim(0, top * 1.18)
            ax.set_title(title, fontsize=10)
        if champion in labels:
            fig.suptitle(f"Held-out comparison (gold: champion, {champion})", fontsize=11)
        else:
            fig.suptitle("Held-out comparison", fontsize=11)
        return _png(fig)


def feature_importance(importances: Mapping[str, float], *, title: str, signed: bool) -> bytes:
    """Horizontal bars of feature importances (or signed coefficients), largest first."""
    items = sorted(importances.items(), key=lambda kv: -abs(kv[1]))
    with _figure(height=1.2 + 0.26 * len(items)) as (fig, ax):
        c = colors(4)
        bar_colors = [c[0] if v >= 0 or not signed else c[3] for _, v in items]
        ax.barh([k for k, _ in items], [v for _, v in items], color=bar_colors)
        ax.invert_yaxis()
        if signed:
            ax.axvline(0, color="black", linewidth=0.6)
        ax.tick_params(axis="y", labelsize=8)
        ax.set(title=title, xlabel="coefficient (scaled features)" if signed else "importance")
        return _png(fig)


def gain_chart(
    gains: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    decile_rate: Sequence[float],
    *,
    featured: str,
    base_rate: float | None,
) -> bytes:
    """Cumulative gain per model (left) and the featured model's purchase rate by decile."""
    with _figure(1, 2, height=4.2) as (fig, (gain, deciles)):
        for (label, (population, captured)), color in zip(
            gains.items(), colors(len(gains)), strict=False
        ):
            gain.plot(population, captured, label=label, color=color)
        gain.plot([0, 1], [0, 1], "--", color="grey", linewidth=1, label="random")
        gain.xaxis.set_major_formatter(PercentFormatter(1.0))
        gain.yaxis.set_major_formatter(PercentFormatter(1.0))
        gain.set(
            title="Cumulative gain",
            xlabel="customers targeted (highest scores first)",
            ylabel="buyers captured",
            xlim=(0, 1),
            ylim=(0, 1.01),
        )
        gain.legend(loc="lower right", fontsize=8)
        deciles.bar(range(1, len(decile_rate) + 1), decile_rate, color=colors(1)[0])
        if base_rate is not None:
            deciles.axhline(base_rate, linestyle="--", color="grey", linewidth=1, label="overall")
            deciles.legend(loc="upper right", fontsize=8)
        deciles.yaxis.set_major_formatter(PercentFormatter(1.0))
        deciles.set_xticks(range(1, len(decile_rate) + 1))
        deciles.set(
            title=f"Purchase rate by score decile — {featured}",
            xlabel="decile (1 = highest scores)",
            ylabel="share who bought",
        )
        return _png(fig)


def reliability(
    bins: Mapping[str, tuple[Sequence[float], Sequence[float], Sequence[float]]],
) -> bytes:
    """The reliability diagram: per probability bin, the positive rate against the mean
    probability, one line per model (marker size: the bin's rows); the diagonal is perfect
    calibration.

    Args:
        bins: Model label → (mean probability, positive rate, rows) per non-empty bin.
    """
    with _figure(height=4.4, width=WIDTH * 0.55) as (fig, ax):
        ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1, label="perfectly calibrated")
        for (label, (p, rate, rows)), color in zip(bins.items(), colors(len(bins)), strict=False):
            largest = max(rows) if rows else 1
            ax.plot(p, rate, "-", color=color, linewidth=1.2, label=label)
            ax.scatter(p, rate, s=[12 + 60 * n / largest for n in rows], color=color)
        ax.xaxis.set_major_formatter(PercentFormatter(1.0))
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.set(
            title="Reliability (held-out cutoff)",
            xlabel="predicted probability (bin mean)",
            ylabel="share who bought",
            xlim=(0, 1),
            ylim=(0, 1.01),
        )
        ax.legend(loc="upper left", fontsize=8)
        return _png(fig)


def expected_vs_actual(
    expected: Sequence[float], actual: Sequence[float], *, featured: str
) -> bytes:
    """Buyers expected (the sum of the probabilities) and actual, per score decile."""
    with _figure(height=3.8) as (fig, ax):
        x = list(range(1, len(expected) + 1))
        c = colors(2)
        ax.bar([i - 0.2 for i in x], expected, width=0.4, color=c[0], label="expected")
        ax.bar([i + 0.2 for i in x], actual, width=0.4, color=c[1], label="actual")
        ax.set_xticks(x)
        ax.yaxis.set_major_formatter(FuncFormatter(_thousands))
        ax.set(
            title=f"Expected and actual buyers by score decile — {featured} (held-out cutoff)",
            xlabel="decile (1 = highest scores)",
            ylabel="buyers",
        )
        ax.legend(loc="upper right", fontsize=8)
        return _png(fig)


def score_histogram(edges: Sequence[float], counts: Sequence[int], *, as_of: date) -> bytes:
    """Bars of customers per probability bin."""
    with _figure(height=3.6) as (fig, ax):
        widths = [b - a for a, b in itertools.pairwise(edges)]
        ax.bar(
            edges[:-1], counts, width=widths, align="edge", color=colors(1)[0], edgecolor="white"
        )
        ax.set(
            title=f"Purchase probability, gold.purchase_propensity as of {as_of}",
            xlabel="probability",
            ylabel="customers",
            xlim=(edges[0], edges[-1]),
        )
        return _png(fig)


RANKING_METRICS = (
    ("precision_at_k", "P@k"),
    ("recall_at_k", "R@k"),
    ("ndcg_at_k", "NDCG@k"),
    ("map_at_k", "MAP@k"),
    ("hit_rate", "hit rate"),
    ("coverage", "coverage"),
)


def ranking_comparison(
    metrics: Mapping[tuple[str, str], Mapping[str, float]],
    *,
    models: Sequence[str],
    modes: Sequence[str],
    k: int | None,
) -> bytes:
    """Grouped bars of the ranking metrics, one panel per mode, a bar per model."""
    with _figure(1, len(modes), height=3.8, sharey=True, squeeze=False) as (fig, axes):
        palette = colors(len(models))
        width = 0.8 / max(len(models), 1)
        for ax, mode in zip(axes[0], modes, strict=True):
            for i, (model, color) in enumerate(zip(models, palette, strict=True)):
                values = [
                    metrics.get((model, mode), {}).get(key, 0.0) for key, _ in RANKING_METRICS
                ]
                xs = [x + (i - (len(models) - 1) / 2) * width for x in range(len(values))]
                ax.bar(xs, values, width=width, color=color, label=model)
            names = [n.replace("@k", f"@{k}") if k else n for _, n in RANKING_METRICS]
            ax.set_xticks(range(len(RANKING_METRICS)), names, fontsize=8)
            ax.set_title(f"mode: {mode}")
        axes[0][0].legend(fontsize=8, loc="upper left")
        return _png(fig)


STATUS_COLORS = {"succeeded": "#55a868", "failed": "#c44e52", "timed_out": "#dd8452"}


def task_durations(tasks: Sequence[tuple[str, float, str]]) -> bytes:
    """Horizontal bars of each task's seconds (its last attempt), coloured by status.

    Args:
        tasks: ``(task, seconds, status)`` in run order.
    """
    with _figure(height=1.2 + 0.34 * len(tasks)) as (fig, ax):
        names = [t for t, _, _ in tasks]
        seconds = [s for _, s, _ in tasks]
        ax.barh(names, seconds, color=[STATUS_COLORS.get(st, OTHER_COLOR) for *_, st in tasks])
        ax.invert_yaxis()
        for y, s in enumerate(seconds):
            ax.text(s, y, f" {s:,.1f} s", va="center", fontsize=8)
        ax.set_xlim(0, max([*seconds, 1.0]) * 1.15)
        ax.set(title="Task durations (last attempt)", xlabel="seconds")
        return _png(fig)
