from __future__ import annotations

import json
from pathlib import Path

import pytest

from cvpipe.config import Params, ReportConfig
from cvpipe.report.sections import SEED_ACCURACY
from cvpipe.stages.report import ReportPaths, ReportSummary, run
from tests.unit.report.test_html import check_offline
from tests.unit.report.test_sections import write_outputs


@pytest.fixture
def outputs(tmp_path: Path) -> Path:
    return write_outputs(tmp_path)


def build(root: Path, out: Path, cfg: ReportConfig) -> ReportSummary:
    return run(Params(report=cfg), ReportPaths(out=out, root=root))


def test_the_report_is_offline_and_its_figures_equal_the_files(outputs: Path) -> None:
    out = outputs / "reports/index.html"
    summary = build(outputs, out, ReportConfig(augmented_images=0))
    assert summary.variants == ["scratch", "fine_tuning"]
    assert summary.bytes == len(out.read_bytes())
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
    build(tmp_path, tmp_path / "index.html", ReportConfig(augmented_images=0))
    text = (tmp_path / "index.html").read_text()
    check_offline(text)
    assert "No evaluation yet" in text and "No audit yet" in text and "No lineage records yet" in text
