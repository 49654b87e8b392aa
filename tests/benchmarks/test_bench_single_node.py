"""The benchmark page's single-node table (benchmarks/bench.py): seconds of the same work side by
side with the ratio, from a literal retailml run and comparison row. No Spark, no subprocess."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import bench  # noqa: E402

RUN = "2026-12-01T07:16:36Z"
TASK_SECONDS = {"ingest": 18.3, "clean": 18.3, "features": 10.8, "train": 66.9,
                "score": 10.3, "recommend": 148.9, "report": 15.3}  # fmt: skip


def retailml_rows() -> list[dict[str, str]]:
    return [
        {**dict.fromkeys(bench.COLUMNS, ""), "date": RUN, "size": "S", "git_commit": "0e46d30",
         "task": task, "seconds": str(s), "holdout_roc_auc": "0.9082", "ndcg_at_k": "0.1544"}
        for task, s in TASK_SECONDS.items()
    ]  # fmt: skip


def comparison(**cells: str) -> dict[str, str]:
    row = {
        **dict.fromkeys(bench.SINGLE_NODE_COLUMNS, ""),
        "date": "2026-12-01T07:30:00Z",
        "size": "S",
        "git_commit": "abc1234",
        "retailml_date": RUN,
        "together": "1",
        "threads": "2",
        "source_lines": "180513",
        "load_seconds": "1.2",
        "features_seconds": "0.2",
        "train_seconds": "4.2",
        "recommend_seconds": "3.3",
        "total_seconds": "8.9",
        "holdout_roc_auc": "0.9082",
        "k": "5",
        "eval_customers": "561",
        "ndcg_als_all": "0.2644",
        "ndcg_als_new": "0.1409",
        "ndcg_bm25_knn_new": "0.1277",
        "retailml_ndcg_discover_new": "0.1544",
    }
    return row | cells


def test_the_section_sets_the_same_work_side_by_side_with_the_ratio() -> None:
    lines = bench._single_node_section("S", retailml_rows(), [comparison()])
    text = "\n".join(lines)
    assert lines[0] == "### Single node (S)"
    assert "in the same invocation" in text
    # features + train: 77.7 s against 4.4 s; recommend 148.9 s against 3.3 s.
    assert (
        "| propensity (features + train) | 77.7 | 4.4 | 18× | ROC-AUC 0.9082 | "
        "ROC-AUC 0.9082 (LightGBM) |" in lines
    )
    assert (
        "| recommendations (recommend) | 148.9 | 3.3 | 45× | NDCG@5 new 0.1544 (the judged list) "
        "| NDCG@5 new 0.1409 (als) |" in lines
    )
    assert "| reading and cleaning (ingest + clean) | 36.6 | 1.2 | 31× |  |  |" in lines
    assert "| all of the above | 263.2 | 8.9 | 30× |  |  |" in lines
    assert "| discover (two-stage ranker) | - | 0.1544 | - | - |" in lines
    assert "| item-kNN, BM25 weights (implicit) | - | - | - | 0.1277 |" in lines


def test_the_latest_comparison_of_the_size_and_none_without_one() -> None:
    older = comparison(date="2026-12-01T07:20:00Z", recommend_seconds="9.9")
    other_size = comparison(size="M")
    lines = bench._single_node_section("S", retailml_rows(), [older, comparison(), other_size])
    assert any(line.startswith("| recommendations (recommend) | 148.9 | 3.3 |") for line in lines)
    assert bench._single_node_section("M", [], []) == []


def test_ratio() -> None:
    assert (bench._ratio(148.9, 3.3), bench._ratio(10.0, 4.0)) == ("45×", "2.5×")
    assert (bench._ratio(None, 3.0), bench._ratio(3.0, 0.0)) == ("-", "-")


def test_the_csv_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "single_node.csv"
    bench.save_single_node(path, [comparison()])
    bench.save_single_node(path, [comparison(size="M")])
    rows = bench.read_single_node(path)
    assert [r["size"] for r in rows] == ["S", "M"]
    assert rows[0] == comparison()


def test_a_comparison_row_from_single_node_json() -> None:
    result = {
        "threads": 2,
        "source_lines": 180513,
        "seconds": {"load": 1.234, "features": 0.21, "train": 4.16, "recommend": 3.31},
        "total_seconds": 8.94,
        "python_peak_mb": 455.2,
        "roc_auc": 0.9082,
        "k": 5,
        "eval_customers": 561,
        "ndcg": {"als": {"all": 0.26441, "new": 0.1409}, "repeat": {"all": 0.574, "new": 0.0}},
    }
    retailml = dict.fromkeys(
        (c for c in bench.SINGLE_NODE_COLUMNS if c.startswith("retailml_ndcg_")), ""
    )
    started = bench.datetime(2026, 12, 1, 7, 30, tzinfo=bench.UTC)
    row = bench.comparison_row(
        result, size="S", started=started, paired=RUN, together=True, retailml=retailml
    )
    assert set(row) == set(bench.SINGLE_NODE_COLUMNS)
    assert (row["date"], row["retailml_date"], row["together"]) == (
        "2026-12-01T07:30:00Z",
        RUN,
        "1",
    )
    assert (row["load_seconds"], row["total_seconds"], row["python_peak_mb"]) == (
        "1.2",
        "8.9",
        "455",
    )
    assert (row["ndcg_als_all"], row["ndcg_repeat_new"], row["ndcg_bm25_knn_all"]) == (
        "0.2644",
        "0.0000",
        "",
    )
