"""Reports a person reads: the metrics table of the trained variants next to the seed's figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cvpipe.config import VARIANTS

# Test accuracy the walkthrough reports for each variant (DESIGN.md): the anchors to beat on Kaggle data.
SEED_ACCURACY: dict[str, float] = {
    "scratch": 0.697,
    "scratch_aug": 0.744,
    "feature_extraction": 0.973,
    "feature_extraction_aug": 0.977,
    "fine_tuning": 0.977,
}


def read_metrics(metrics_dir: Path) -> dict[str, dict[str, Any]]:
    """Every ``<variant>.json`` in ``metrics_dir``, in the seed's variant order."""
    found = {path.stem: json.loads(path.read_text(encoding="utf-8")) for path in Path(metrics_dir).glob("*.json")}
    ordered = [name for name in VARIANTS if name in found] + sorted(set(found) - set(VARIANTS))
    return {name: found[name] for name in ordered}


def _cell(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "-"


def metrics_table(metrics_dir: Path) -> str:
    """A Markdown table: variant, test accuracy, loss, ROC AUC, test images, the seed's accuracy."""
    rows = [
        "| variant | test accuracy | test loss | ROC AUC | test images | seed accuracy |",
        "|---|---|---|---|---|---|",
    ]
    for name, metrics in read_metrics(metrics_dir).items():
        rows.append(
            f"| {name} | {_cell(metrics.get('accuracy'))} | {_cell(metrics.get('loss'))} | "
            f"{_cell(metrics.get('roc_auc'))} | {metrics.get('n_samples', '-')} | {_cell(SEED_ACCURACY.get(name))} |"
        )
    return "\n".join(rows)
