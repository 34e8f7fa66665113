from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from cvpipe.config import ReportConfig
from cvpipe.report.html import SEED_ACCURACY, build_report, histogram, image_grid, line_chart, metrics_table


class Page(HTMLParser):
    """Every start tag with its attributes, and the page's text."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {name: value or "" for name, value in attrs}))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def cells(self, **wanted: str) -> list[dict[str, str]]:
        return [
            attrs
            for tag, attrs in self.tags
            if tag == "td" and all(attrs.get(f"data-{k}") == v for k, v in wanted.items())
        ]


def check_offline(text: str) -> Page:
    """A page that loads nothing from anywhere: a strict CSP, and no URL but data: in src/href."""
    page = Page(text)
    csp = [attrs for tag, attrs in page.tags if tag == "meta" and attrs.get("http-equiv") == "Content-Security-Policy"]
    assert csp and "default-src 'none'" in csp[0]["content"]
    assert not [tag for tag, _ in page.tags if tag in ("script", "link", "iframe", "object", "embed")]
    for _, attrs in page.tags:
        for name in ("src", "href"):
            value = attrs.get(name, "")
            assert not value or value.startswith(("data:", "#")), value
    for svg in re.findall(r"<svg.*?</svg>", text, flags=re.S):
        ET.fromstring(svg)  # well-formed
    return page


def _write(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))


@pytest.fixture
def outputs(tmp_path: Path) -> Path:
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


def test_the_report_is_offline_and_its_figures_equal_the_files(outputs: Path) -> None:
    out = outputs / "reports/index.html"
    summary = build_report(outputs, out, ReportConfig(augmented_images=0))
    assert summary["variants"] == ["scratch", "fine_tuning"]
    text = out.read_text()
    page = check_offline(text)
    for name in ("scratch", "fine_tuning"):
        metrics = json.loads((outputs / f"reports/metrics/{name}.json").read_text())
        for key in ("accuracy", "loss", "roc_auc", "n_samples", "f1_macro"):
            (cell,) = page.cells(variant=name, metric=key)
            assert json.loads(cell["data-value"]) == metrics[key]
        (seed,) = page.cells(variant=name, metric="seed_accuracy")
        assert json.loads(seed["data-value"]) == SEED_ACCURACY[name]
        matrix = json.loads((outputs / f"reports/plots/{name}/confusion_matrix.json").read_text())
        for i, actual in enumerate(matrix["labels"]):
            for j, predicted in enumerate(matrix["labels"]):
                (cell,) = page.cells(variant=name, actual=actual, predicted=predicted)
                assert int(cell["data-value"]) == matrix["matrix"][i][j]
    words = " ".join(page.text)
    assert "0.935" in words and "train/cat.9.jpg" in words and "empty file (0 bytes)" in words
    assert "Leakage audit passed." in words and "(dirty)" in words
    assert text.count("data:image/jpeg;base64,") == 1  # the pair's thumbnail
    assert text.count("<svg") == 2 * 2 + 2 + 1 + 1  # curves, ROC per variant, accuracy bars, size histogram


def test_missing_outputs_give_a_partial_report_not_an_error(tmp_path: Path) -> None:
    build_report(tmp_path, tmp_path / "index.html", ReportConfig(augmented_images=0))
    text = (tmp_path / "index.html").read_text()
    check_offline(text)
    assert "No evaluation yet" in text and "No audit yet" in text and "No lineage records yet" in text


def test_charts_are_valid_svg_and_skip_non_finite_points() -> None:
    chart = line_chart({"train": [(1, 0.5), (2, float("nan")), (3, 0.4)]}, "loss", "epoch", "loss")
    root = ET.fromstring(chart)
    assert root.tag.endswith("svg") and chart.count("<polyline") == 1
    assert ET.fromstring(histogram({"w": [1.0, 2.0, 2.0, 9.0]}, "sizes", "px", bins=4)).tag.endswith("svg")


def test_image_grid_is_a_jpeg_with_enlarged_tiles() -> None:
    import io

    from PIL import Image

    data = image_grid([[np.full((32, 32, 3), 200, np.uint8)] * 3, [np.zeros((32, 32, 3), np.uint8)]])
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "JPEG" and image.size == (3 * 100 + 4, 2 * 100 + 4)


def test_metrics_table_lists_the_seed_next_to_each_variant(outputs: Path) -> None:
    table = metrics_table(outputs / "reports/metrics").splitlines()
    assert table[2] == "| scratch | 0.610 | 0.500 | 0.700 | 20 | 0.697 |"
    assert table[3].startswith("| fine_tuning | 0.935 |") and table[3].endswith("| 0.977 |")
