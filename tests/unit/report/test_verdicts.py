"""Issue 13's report sections: intervals, reliability diagrams, confident mistakes, embedding and label audits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from cvpipe import layout
from cvpipe.report import verdicts
from cvpipe.report.sections import metrics_table


def _images(folder: Path, split: str, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    np.save(layout.split_file(folder, split), np.full((count, 8, 8, 3), 100, np.uint8))


def test_intervals_sit_next_to_the_figures_in_cvpipe_metrics(tmp_path: Path) -> None:
    metrics = {"accuracy": 0.7, "accuracy_ci": [0.68, 0.72], "roc_auc": 0.8, "roc_auc_ci": [0.77, 0.83]}
    (tmp_path / "scratch.json").write_text(json.dumps({**metrics, "loss": 0.5, "n_samples": 2000}))
    row = metrics_table(tmp_path).splitlines()[2]
    assert row == "| scratch | 0.700 | [0.680, 0.720] | 0.500 | 0.800 | [0.770, 0.830] | 2000 | 0.697 |"
    assert verdicts.interval({}, "accuracy") == "-"


def test_calibration_section_draws_a_reliability_diagram() -> None:
    bins = [{"bin": 0, "count": 3, "confidence": 0.55, "accuracy": 0.5}, {"bin": 1, "count": 0}]
    html = verdicts.calibration_section({"scratch": {"calibration": bins, "brier": 0.2, "ece": 0.05}})
    assert "<svg" in html and "ECE" in html and "perfect calibration" in html
    assert "No calibration" in verdicts.calibration_section({"scratch": {"accuracy": 0.5}})


def test_mistakes_are_the_most_confident_wrong_rows_with_thumbnails(tmp_path: Path) -> None:
    _images(tmp_path / "images", "test", 3)
    (tmp_path / "predictions").mkdir()
    pd.DataFrame(
        {
            "row": [0, 1, 2],
            "member": ["a.jpg", "b.jpg", "c.jpg"],
            "sha256": ["a" * 64, "b" * 64, "c" * 64],
            "label": ["cat", "dog", "cat"],
            "predicted": ["dog", "dog", "dog"],
            "confidence": [0.6, 0.9, 0.99],
            "correct": [False, True, False],
        }
    ).to_parquet(tmp_path / "predictions/scratch.parquet")
    html = verdicts.mistakes_section(tmp_path / "predictions", tmp_path / "images", 8)
    assert "2 of 3 test images wrong" in html and "data:image/jpeg" in html
    assert html.index("c.jpg") < html.index("a.jpg") and "b.jpg" not in html
    assert "No per-image" in verdicts.mistakes_section(tmp_path / "none", tmp_path / "images", 8)


def test_embedding_section_says_when_random_weights_make_it_meaningless(tmp_path: Path) -> None:
    _images(tmp_path / "images", "train", 2)
    _images(tmp_path / "images", "test", 2)
    pair = {"a": "x.jpg", "a_split": "train", "a_row": 1, "b": "y.jpg", "b_split": "test", "b_row": 0}
    report = {"summary": {"passed": False, "meaningful": False}, "pairs": [{**pair, "similarity": 0.99}]}
    (tmp_path / "embedding.json").write_text(json.dumps(report))
    html = verdicts.embedding_section(tmp_path / "embedding.json", tmp_path / "images", 4)
    assert "Not meaningful" in html and "FAILED" in html and "data:image/jpeg" in html and "0.9900" in html


def test_label_issues_section_lists_the_ranked_suspects(tmp_path: Path) -> None:
    _images(tmp_path / "images", "val", 4)
    pd.DataFrame(
        {
            "rank": [1],
            "member": ["v/cat.3.jpg"],
            "sha256": ["e" * 64],
            "split": ["val"],
            "row": [3],
            "given_label": ["cat"],
            "suggested_label": ["dog"],
            "self_confidence": [0.02],
        }
    ).to_parquet(tmp_path / "label_issues.parquet")
    (tmp_path / "label_metrics.json").write_text(json.dumps({"model": "logistic regression", "folds": 5}))
    html = verdicts.label_issues_section(
        tmp_path / "label_issues.parquet", tmp_path / "label_metrics.json", tmp_path / "images", 4
    )
    assert "v/cat.3.jpg" in html and "split.exclude" in html and "data:image/jpeg" in html
    assert "Not meaningful" not in html
    (tmp_path / "label_metrics.json").write_text(json.dumps({"model": "logistic regression", "weights": "none"}))
    html = verdicts.label_issues_section(
        tmp_path / "label_issues.parquet", tmp_path / "label_metrics.json", tmp_path / "images", 4
    )
    assert "Not meaningful" in html and "v/cat.3.jpg" in html
