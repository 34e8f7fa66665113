from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from cvpipe.report.html import image_grid
from cvpipe.report.sections import metrics_table


def _write(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))


@pytest.fixture
def outputs(tmp_path: Path) -> Path:
    return write_outputs(tmp_path)


def write_outputs(tmp_path: Path) -> Path:
    """A project folder with what the stages write, small and made up."""
    for name, accuracy in (("scratch", 0.61), ("fine_tuning", 0.9345678)):
        _write(
            tmp_path / f"reports/metrics/{name}.json",
            {"accuracy": accuracy, "loss": 0.5, "roc_auc": 0.7, "n_samples": 20, "f1_macro": 0.6},
        )
        _write(
            tmp_path / f"reports/plots/{name}/confusion_matrix.json",
            {"labels": ["cat", "dog"], "matrix": [[7, 3], [2, 8]]},
        )
        (tmp_path / f"reports/plots/{name}/roc.csv").write_text("fpr,tpr,threshold\n0,0,inf\n0.2,0.7,0.6\n1,1,0.1\n")
        history = {"loss": [0.7, 0.6], "val_loss": [0.72, 0.65], "accuracy": [0.5, 0.6], "val_accuracy": [0.5, 0.55]}
        _write(tmp_path / f"reports/train/{name}/history.json", {"history": history})
    _write(tmp_path / "data/raw/SOURCE.json", {"source": "synthetic", "archive": {"sha256": "ab" * 32, "bytes": 9}})
    _write(
        tmp_path / "data/manifest/report.json",
        {
            "summary": {"members": 5, "ok": 4, "quarantined": 1, "ok_per_class": {"cat": 2, "dog": 2}},
            "quarantine": [{"member": "train/cat.9.jpg", "reason": "empty file (0 bytes)"}],
        },
    )
    pd.DataFrame(
        {
            "status": ["ok", "ok", "ok", "ok", "quarantined"],
            "width": [300, 400, 350, 500, 0],
            "height": [280, 300, 400, 333, 0],
        }
    ).to_parquet(tmp_path / "data/manifest/images.parquet")
    _write(
        tmp_path / "data/splits/report.json",
        {
            "counts": {"train": {"cat": 1, "dog": 1}, "test": {"cat": 1, "dog": 1}},
            "policy": {"seed": 42},
            "exact_duplicates": [{"kept": "a", "dropped": ["b"]}],
            "near_duplicate_groups": [["c", "d"]],
        },
    )
    thumbnail = image_grid([[np.zeros((8, 8, 3), np.uint8)]])
    (tmp_path / "reports/audit/thumbnails").mkdir(parents=True)
    (tmp_path / "reports/audit/thumbnails/pair-0001.jpg").write_bytes(thumbnail)
    pair = {
        "a": "train/cat.1.jpg",
        "b": "train/cat.7.jpg",
        "a_split": "train",
        "b_split": "train",
        "distance": 2,
        "kind": "within_split",
        "mirrored": False,
        "thumbnail": "thumbnails/pair-0001.jpg",
    }
    summary = {"passed": True, "method": "imagehash.phash", "threshold": 10, "cross_split_pairs": 0}
    _write(tmp_path / "reports/audit/report.json", {"summary": summary, "pairs": [pair]})
    record = {
        "stage": "split",
        "finished_at": "2025-01-01T00:00:00Z",
        "seconds": 1.5,
        "inputs": [],
        "orchestrator": {"kind": "dvc"},
        "git": {"commit": "c" * 40, "dirty": True},
        "outputs": [{"path": "data/splits/splits.parquet", "md5": "d" * 32}],
    }
    _write(tmp_path / "reports/lineage/split/record.json", record)
    return tmp_path


def test_metrics_table_lists_the_seed_next_to_each_variant(outputs: Path) -> None:
    table = metrics_table(outputs / "reports/metrics").splitlines()
    assert table[2] == "| scratch | 0.610 | - | 0.500 | 0.700 | - | 20 | 0.697 |"
    assert table[3].startswith("| fine_tuning | 0.935 |") and table[3].endswith("| 0.977 |")


def test_scratch_aug_shows_the_books_augmented_figure_beside_the_seeds(tmp_path: Path) -> None:
    from cvpipe.report.sections import ReportInputs, metrics_section
    from cvpipe.report.verdicts import BOOK_AUGMENTED_ACCURACY, SCRATCH_AUG_NOTE

    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "scratch_aug.json").write_text(json.dumps({"accuracy": 0.8, "n_samples": 2000}))
    html = metrics_section(ReportInputs(metrics=tmp_path / "metrics"))
    # The seed's 0.744 ran without its augmentation layers: the note says so, the chart has the book's bar.
    assert "never applied" in SCRATCH_AUG_NOTE and "0.744" in SCRATCH_AUG_NOTE
    assert f"scratch_aug book (augmented): {BOOK_AUGMENTED_ACCURACY:.3f}" in html
    assert "dropout only" in html


def test_mnist_mistakes_are_drawn_from_the_mnist_cache(tmp_path: Path) -> None:
    """mnist.parquet's rows index MNIST's grey test digits, not the dogs-vs-cats cache."""
    from cvpipe import layout
    from cvpipe.config import ReportConfig
    from cvpipe.ml.predictions import array_rows, predictions_frame
    from cvpipe.report.sections import ReportInputs, verdict_sections

    digits = np.full((2, 28, 28), 200, np.uint8)
    mnist = tmp_path / "data/cache/mnist"
    mnist.mkdir(parents=True)
    np.save(layout.split_file(mnist, "test"), digits)
    frame = predictions_frame(
        array_rows(digits, np.array([3, 5]), "mnist/test"), np.eye(10)[[3, 8]], [3, 8], "0123456789"
    )
    (tmp_path / "predictions").mkdir()
    frame.to_parquet(tmp_path / "predictions" / "mnist.parquet")
    inputs = ReportInputs(predictions=tmp_path / "predictions", images=tmp_path / "none", mnist=mnist)
    html = dict((key, body) for key, _, body in verdict_sections(inputs, ReportConfig(), 4))["mistakes"]
    assert "mnist: 1 of 2 test images wrong" in html and "mnist/test/1" in html
    assert 'src="data:image/jpeg;base64,' in html


def test_split_section_shows_the_largest_groups_as_thumbnails_when_the_guard_stopped_it(tmp_path: Path) -> None:
    from cvpipe.report.sections import _split_summary

    members = [f"train/cat.{n}.jpg" for n in range(30)]
    (tmp_path / "thumbnails").mkdir()
    (tmp_path / "thumbnails/group-01.jpg").write_bytes(image_grid([[np.zeros((8, 8, 3), np.uint8)]]))
    group = {
        "size": 30,
        "members": members,
        "labels": ["cat"],
        "thumbnail": "thumbnails/group-01.jpg",
        "thumbnail_members": members[:8],
    }
    unthumbnailed = {"size": 2, "members": ["a<b", "c"], "labels": ["dog"]}
    report = {"counts": {}, "error": "the largest group holds 30 images", "policy": {"seed": 1}}
    report["near_duplicates"] = {"largest_groups": [group, unthumbnailed]}
    _write(tmp_path / "report.json", report)
    html = _split_summary(tmp_path / "report.json")
    assert "Split stopped: the largest group holds 30 images" in html
    assert html.count('<img src="data:image/jpeg;base64,') == 1  # offline: a data URI, the CSP allows no other
    assert "group 1 (30 images, cat): train/cat.0.jpg, " in html and "train/cat.7.jpg and 22 more" in html
    assert "a&lt;b" in html  # the second group is listed as text (no strip)
    assert _split_summary(tmp_path / "missing.json") == "<p>No split yet.</p>"


def test_split_section_names_the_whole_near_duplicate_rule(tmp_path: Path) -> None:
    from cvpipe.report.sections import _split_summary

    rule = {"hash_bits": 10, "shift_bits": 2, "threshold": 0.993, "thumbnail": 48, "max_shift": 1}
    report = {"counts": {"train": {"cat": 1}}, "policy": {"near_duplicate": rule}}
    (tmp_path / "report.json").write_text(json.dumps(report))
    html = _split_summary(tmp_path / "report.json")
    assert "phash within 10 bits or Fourier hash within 2 bits, then NCC &gt;= 0.993" in html
    (tmp_path / "report.json").write_text(
        json.dumps({**report, "policy": {"near_duplicate": {**rule, "shift_bits": 0}}})
    )
    assert "Fourier" not in _split_summary(tmp_path / "report.json")
