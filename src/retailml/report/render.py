"""RENDER: :class:`~retailml.report.data.ReportData` → one self-contained HTML page (no Spark).

Plots are PNGs embedded as ``data:`` URIs and the CSS is inline, so the page is one file that
opens anywhere, offline, and can be attached to an MLflow run as it is.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from retailml.report import data as D
from retailml.report import plots

TEMPLATE = "report.html.j2"


@dataclass(frozen=True)
class Plot:
    """One embedded image."""

    title: str
    uri: str  # data:image/png;base64,…


@dataclass(frozen=True)
class Rendered:
    """The page and what is on it."""

    html: str
    images: int
    sections: tuple[str, ...]  # sections with content, in page order
    missing: tuple[str, ...]  # sections shown as "not available"


def data_uri(png: bytes) -> str:
    """A PNG as a ``data:`` URI."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _plots(data: D.ReportData) -> dict[str, list[Plot]]:
    """Every section's images; a section without data has none."""
    out: dict[str, list[Plot]] = {s: [] for s in D.SECTIONS}

    def add(section: str, title: str, make: Callable[[], bytes]) -> None:
        out[section].append(Plot(title, data_uri(make())))

    if data.tables:
        written = [(t.name, t.layer, t.rows) for t in data.tables if t.rows is not None]
        if written:
            add(D.TABLES, "Rows per table", lambda: plots.table_rows(written))
    if data.quarantine:
        quarantine = data.quarantine
        add(D.QUARANTINE, "Quarantine reasons", lambda: plots.quarantine_reasons(quarantine))
    if data.monitoring and data.monitoring.feature_psi:
        m = data.monitoring
        add(
            D.MONITORING,
            "Feature drift",
            lambda: plots.psi_bars(m.feature_psi, threshold=m.psi_threshold, ignored=m.ignored),
        )
    if data.sales:
        weeks = data.sales
        add(
            D.SALES,
            "Weekly revenue and orders",
            lambda: plots.weekly_sales(
                [w.start for w in weeks],
                [w.revenue for w in weeks],
                [w.orders for w in weeks],
                [w.returned for w in weeks],
            ),
        )
    if data.models and data.models.families:
        _model_plots(data.models, add)
    if data.scores and data.scores.customers:
        s = data.scores
        add(
            D.SCORES,
            "Score distribution",
            lambda: plots.score_histogram(s.edges, s.counts, as_of=s.as_of),
        )
    if data.ranking and data.ranking.metrics:
        r = data.ranking
        # In the order gather found them (recommend's MODES; the rankers, then the generators).
        models = list(dict.fromkeys(model for model, _ in r.metrics))
        modes = list(dict.fromkeys(mode for _, mode in r.metrics))
        add(
            D.RANKING,
            "Ranking metrics",
            lambda: plots.ranking_comparison(r.metrics, models=models, modes=modes, k=r.k),
        )
    if data.tasks:
        timed = [(t.task, t.seconds, t.status) for t in data.tasks if t.seconds is not None]
        if timed:
            add(D.TASKS, "Task durations", lambda: plots.task_durations(timed))
    return out


def _model_plots(
    models: D.ModelsSummary, add: Callable[[str, str, Callable[[], bytes]], None]
) -> None:
    families = models.families
    with_curves = [f for f in families if f.curves]
    base_rate = next((f.metrics["base_rate"] for f in families if "base_rate" in f.metrics), None)
    if with_curves:
        add(
            D.MODELS,
            "ROC and precision-recall curves",
            lambda: plots.roc_pr({f.label: f.curves for f in with_curves}, base_rate=base_rate),  # type: ignore[misc]
        )
    champion = next((f.label for f in families if f.is_champion), None)
    add(
        D.MODELS,
        "Model comparison",
        lambda: plots.model_comparison({f.label: f.metrics for f in families}, champion=champion),
    )
    featured = models.featured
    if featured is not None and featured.importances:
        signed = featured.family == "logistic_regression"
        importances = featured.importances
        title = f"{'Coefficients' if signed else 'Feature importance'} — {featured.label}"
        add(
            D.MODELS,
            "Feature importance",
            lambda: plots.feature_importance(importances, title=title, signed=signed),
        )
    if featured is not None and featured.curves and featured.curves.get("decile_rate"):
        curves = featured.curves
        gains = {
            f.label: (f.curves["population"], f.curves["gain"])
            for f in with_curves
            if f.curves and f.curves.get("population")
        }
        add(
            D.MODELS,
            "Lift and gain",
            lambda: plots.gain_chart(
                gains, curves["decile_rate"], featured=featured.label, base_rate=base_rate
            ),
        )
    bins = {
        f.label: (f.curves["bin_probability"], f.curves["bin_rate"], f.curves["bin_rows"])
        for f in with_curves
        if f.curves and f.curves.get("bin_probability")
    }
    if bins:
        add(D.MODELS, "Calibration", lambda: plots.reliability(bins))
    if featured is not None and featured.curves and featured.curves.get("decile_expected"):
        decile = featured.curves
        add(
            D.MODELS,
            "Expected and actual buyers",
            lambda: plots.expected_vs_actual(
                decile["decile_expected"], decile["decile_actual"], featured=featured.label
            ),
        )


def _num(value: float | int | None, digits: int = 0) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


def _pct(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}%}"


def environment() -> Environment:
    """The Jinja environment of the report templates (autoescaped: values are data)."""
    env = Environment(
        loader=PackageLoader("retailml", "report/templates"),
        # The template is report.html.j2: the default extensions alone would not escape it.
        autoescape=select_autoescape(enabled_extensions=("html", "htm", "xml", "j2")),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = _num
    env.filters["pct"] = _pct
    return env


def render_html(data: D.ReportData) -> Rendered:
    """The report page for ``data``.

    Returns:
        The HTML, how many images it embeds, and which sections have content.
    """
    images = _plots(data)
    sections = tuple(s for s in D.SECTIONS if data.available(s))
    missing = tuple(s for s in D.SECTIONS if not data.available(s))
    html = (
        environment()
        .get_template(TEMPLATE)
        .render(
            data=data,
            plots=images,
            sections=D.SECTIONS,
            titles=D.TITLES,
            missing={s: data.missing.get(s, "no data") for s in missing},
            ranking_metrics=plots.RANKING_METRICS,
            comparison_metrics=plots.COMPARISON_METRICS,
        )
    )
    return Rendered(html, sum(len(v) for v in images.values()), sections, missing)
