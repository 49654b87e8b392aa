"""RENDER: a page from hand-made ReportData (no Spark), and the page in a real browser."""

from __future__ import annotations

import base64
from datetime import date, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest

from retailml.report import data as D
from retailml.report.render import Rendered, render_html
from tests.browser import check_page, chromium_path

PNG = b"\x89PNG\r\n\x1a\n"
HOSTILE = '<script>alert("x")</script> & Co'


def curves(shift: float) -> dict[str, list[float]]:
    xs = [i / 10 for i in range(11)]
    return {
        "fpr": xs,
        "tpr": [min(1.0, x + shift) for x in xs],
        "recall": xs[1:],
        "precision": [max(0.3, 1 - x * shift) for x in xs[1:]],
        "population": xs,
        "gain": [min(1.0, x * (1 + shift)) for x in xs],
        "decile_rate": [0.9 - i * 0.08 for i in range(10)],
    }


def family(name: str, *, auc: float, champion: bool = False) -> D.FamilyEvaluation:
    return D.FamilyEvaluation(
        family=name,
        implementation="mllib",
        run_id=f"run-{name}",
        metrics={
            "roc_auc": auc,
            "pr_auc": auc - 0.05,
            "lift_at_10": 2.5,
            "brier": 0.18,
            "base_rate": 0.3,
            "rows": 400,
        },
        curves=curves(auc - 0.5),
        importances={"recency_days": -0.8, "frequency_all": 0.5, "monetary_all": 0.1},
        is_champion=champion,
        is_challenger=champion,
    )


def full_data() -> D.ReportData:
    """Every section filled, with a few values that must be escaped."""
    start = date(2011, 1, 3)
    ranking = {
        (model, mode): {
            "precision_at_k": p,
            "recall_at_k": p / 2,
            "ndcg_at_k": p * 1.1,
            "map_at_k": p * 0.8,
            "hit_rate": p * 2,
            "coverage": 0.2,
            "users": 120,
        }
        for (model, mode), p in {
            ("als", "all"): 0.40,
            ("popular", "all"): 0.38,
            ("als", "new"): 0.15,
            ("popular", "new"): 0.14,
        }.items()
    }
    return D.ReportData(
        run_id="20111210-060000-ab12",
        generated_at=datetime(2011, 12, 10, 6, 5),
        as_of=date(2011, 12, 10),
        champions={"propensity model": "retailml-propensity version 2 (logistic_regression)"},
        tables=[
            D.TableCount("bronze.transactions", "ingest", "every valid row", 5000),
            D.TableCount("bronze.quarantine", "ingest", "bad rows", 12),
            D.TableCount("silver.transactions", "clean", "typed rows", 4990),
            D.TableCount("gold.recommendations", "recommend", "top-k lists", None),
        ],
        quarantine={HOSTILE: 7, "Price: negative": 5},
        line_kinds=[
            D.LineKind("product", 9_000, 52_000.0, 180),
            D.LineKind("postage", 206, 3_708.0, 31),
            D.LineKind("discount", 3, -42.5, 3),
        ],
        sales=[
            D.Week(start + timedelta(days=7 * i), 1000.0 + 50 * i, 40 + i, 20.0, 2)
            for i in range(30)
        ],
        models=D.ModelsSummary(
            run_id="parent-1",
            holdout_cutoff="2011-11-10",
            challenger="logistic_regression",
            gate_decision="promoted",
            gate_reason="no champion yet",
            families=[
                family("logistic_regression", auc=0.81, champion=True),
                family("random_forest", auc=0.79),
            ],
        ),
        scores=D.ScoreHistogram(
            as_of=date(2011, 12, 10),
            customers=100,
            edges=[i / 20 for i in range(21)],
            counts=[5] * 20,
            mean=0.48,
            model_version="2",
        ),
        top_buyers=[
            D.Buyer(1, "C001", 0.97, 3.0, 40.0, 5123.4, "United Kingdom"),
            D.Buyer(2, HOSTILE, 0.95, 5.0, 22.0, 980.0, None),
        ],
        monitoring=D.Monitoring(
            gates=[
                D.GateCheck("ingest", "quarantine_share", 0.002, "≤ 0.1", "fail", True, None),
                D.GateCheck("clean", "bad_price_share", 0.3, "≤ 0.05", "fail", False, "a.csv"),
            ],
            feature_psi={"recency_days": 0.31, "tenure_days": 0.7, "frequency_30": 0.02},
            feature_psi_dates=(date(2011, 10, 10), date(2011, 12, 9)),
            score_psi=0.04,
            psi_threshold=0.2,
            ignored=["tenure_days"],
            decisions=["train: retrained: feature drift: recency_days PSI 0.310 > 0.2"],
        ),
        ranking=D.RankingSummary(
            run_id="rec-1",
            k=5,
            tuned_mode="new",
            repeat_share=0.45,
            as_of="2011-12-10",
            eval_cutoff="2011-11-10",
            metrics=ranking,
        ),
        recommendations=[
            D.CustomerRecommendations(
                "C001",
                1,
                [
                    D.Recommendation("for_you", 1, "P1", "WHITE MUG", "repeat", 0.91),
                    D.Recommendation("discover", 1, "P2", HOSTILE, "popular", 0.12),
                ],
            ),
            D.CustomerRecommendations("C002", 2, []),
        ],
        tasks=[
            D.TaskTiming("ingest", "succeeded", 1, 12.5, None, run_id="20111209-060000-cd34"),
            D.TaskTiming("train", "failed", 2, 30.0, f"ValueError: {HOSTILE}"),
            D.TaskTiming("report", "running", 0, None, None),
        ],
        run_status="running",
    )


class Page(HTMLParser):
    """The attributes of interest and the text of one page."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []
        self.sections: list[str] = []
        self.tags: set[str] = set()
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.add(tag)
        if tag == "img":
            self.images.append(a.get("src") or "")
        if "href" in a:
            self.links.append(a["href"] or "")
        if tag == "section":
            self.sections.append(a.get("id") or "")


@pytest.fixture(scope="module")
def rendered() -> Rendered:
    return render_html(full_data())


def test_every_section_is_rendered_with_its_plots(rendered: Rendered) -> None:
    page = Page(rendered.html)
    assert page.sections == list(D.SECTIONS)
    assert rendered.sections == D.SECTIONS
    assert rendered.missing == ()
    assert "Not available" not in rendered.html
    # tables, quarantine, sales, ROC/PR, comparison, importances, gain, scores, drift, ranking,
    # tasks
    assert rendered.images == 11
    assert len(page.images) == rendered.images


def test_images_are_embedded_pngs_and_nothing_is_fetched(rendered: Rendered) -> None:
    page = Page(rendered.html)
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG)
    # Only in-page anchors and the empty data: favicon (which stops a favicon request).
    assert all(link.startswith("#") or link == "data:," for link in page.links)
    assert "http://" not in rendered.html and "https://" not in rendered.html
    assert "script" not in page.tags and "link" in page.tags


def test_values_are_escaped(rendered: Rendered) -> None:
    assert "<script>" not in rendered.html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; Co" in rendered.html


def test_content_of_the_sections(rendered: Rendered) -> None:
    html = rendered.html
    # Gates, drift and the retraining decision.
    assert "<code>bad_price_share</code>" in html and "breached" in html and "a.csv" in html
    assert "scoring cutoff 2011-12-09 against training cutoff 2011-10-10" in html
    assert "tenure_days: recorded only" in html and "previous scoring: 0.040" in html
    assert "retrained: feature drift: recency_days PSI 0.310 &gt; 0.2" in html
    assert "20111210-060000-ab12" in html and "2011-12-10" in html
    assert "retailml-propensity version 2 (logistic_regression)" in html
    # The champion's row is marked, and only one.
    assert html.count('<tr class="champion">') == 1
    assert 'logistic_regression <span class="badge">champion</span>' in html
    assert "not written" in html  # gold.recommendations has no row count
    assert "5,000" in html and "P@5" in html and "NDCG@5" in html
    assert "WHITE MUG" in html and "No recommendations for this customer." in html
    assert 'class="status-failed"' in html and "ValueError: " in html
    assert "in run 20111209-060000-cd34" in html  # a task of the run this one resumed
    assert "the 209 lines of other kinds (postage, fees, discounts…) were set aside" in html
    assert '<td>postage</td><td class="n">206</td><td class="n">3,708.00</td>' in html


def test_plotting_leaves_no_pyplot_figures_open() -> None:
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    render_html(full_data())
    assert plt.get_fignums() == before


def test_missing_sections_say_which_task_to_run() -> None:
    notes = {s: f"{s} is not there yet; run `retailml task thing_{s}`" for s in D.SECTIONS}
    data = D.ReportData(run_id="r1", generated_at=datetime(2011, 1, 1), missing=notes)
    rendered = render_html(data)
    page = Page(rendered.html)
    assert page.sections == list(D.SECTIONS)
    assert rendered.images == 0 and page.images == []
    assert rendered.sections == () and rendered.missing == D.SECTIONS
    for s in D.SECTIONS:
        assert (
            f"Not available: {s} is not there yet; run <code>retailml task thing_{s}</code>"
            in rendered.html
        )
    assert "none registered yet" in rendered.html


def test_one_missing_section_among_others() -> None:
    full = full_data()
    data = D.ReportData(
        **{
            **{f: getattr(full, f) for f in full.__dataclass_fields__},
            "models": None,
            "missing": {D.MODELS: "no finished run; run `retailml task train`"},
        }
    )
    rendered = render_html(data)
    assert rendered.missing == (D.MODELS,)
    assert rendered.images == 7  # ROC/PR, comparison, importances and gain are gone
    assert "Not available: no finished run; run <code>retailml task train</code>" in rendered.html


def test_the_page_in_headless_chromium(tmp_path: Path, rendered: Rendered) -> None:
    if chromium_path() is None:
        pytest.fail("chromium is not installed; run `make test`, which installs it")
    page = tmp_path / "index.html"
    page.write_text(rendered.html, encoding="utf-8")
    shot = tmp_path / "screen.png"
    result = check_page(page, shot)
    assert result.images == rendered.images > 0
    assert result.images_loaded == result.images
    assert result.console_errors == []
    assert result.title == "retailml report — run 20111210-060000-ab12"
    assert shot.read_bytes().startswith(PNG)


def test_the_browser_check_sees_broken_images_and_errors(tmp_path: Path) -> None:
    """The check itself: a missing image and a script error must be reported."""
    if chromium_path() is None:
        pytest.fail("chromium is not installed; run `make test`, which installs it")
    page = tmp_path / "broken.html"
    truncated_png = base64.b64encode(PNG).decode()  # the signature alone: does not decode
    page.write_text(
        "<!DOCTYPE html><html><head><title>broken</title><link rel='icon' href='data:,'></head>"
        f"<body><img src='missing.png'><img src='data:image/png;base64,{truncated_png}'>"
        "<script>console.error('boom'); undefinedFunction();</script></body></html>",
        encoding="utf-8",
    )
    result = check_page(page)
    assert result.images == 2 and result.images_loaded == 0
    text = "\n".join(result.console_errors)
    assert "boom" in text and "undefinedFunction" in text and "missing.png" in text
