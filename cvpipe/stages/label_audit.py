"""The label_audit stage: suspected mislabels among train+val by confident learning (:mod:`cvpipe.ml.confident`).

The cheap model is a multinomial logistic regression on the VGG16 features cache, global-average-pooled to one
512-vector per image: k-fold over train+val, so every image is scored by a model that never saw it. It is not
the model being audited on purpose: its out-of-fold probabilities depend on no training run, take seconds, and
are deterministic. On scikit-learn's digits (pixels) with 1-2% of labels flipped it finds 0.81 of the flips at
precision 0.72 (``bench/label_issues.py``, ``bench/results/label-issues-2026-12-04.md``).

Outputs: ``reports/audit/label_issues.parquet`` (rank, member, sha256, split, row, given and suggested label,
self-confidence, the suggested class's probability) and ``reports/audit/label_metrics.json``. It never changes a
label; ``split.exclude`` (:mod:`cvpipe.exclude`) is the opt-in that leaves listed images out of the next split.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cvpipe import layout
from cvpipe.config import Params
from cvpipe.errors import DataError
from cvpipe.io import write_json_atomic, write_parquet
from cvpipe.ml.confident import find_label_issues, out_of_fold_probabilities, pooled_features
from cvpipe.ml.embeddings import features_weights
from cvpipe.ml.predictions import split_rows

logger = logging.getLogger(__name__)

AUDITED_SPLITS = ("train", "val")
MODEL = "multinomial logistic regression on global-average-pooled VGG16 features"


@dataclass(frozen=True)
class LabelAuditPaths:
    """Where ``label_audit`` reads and writes (defaults: :mod:`cvpipe.layout`)."""

    features: Path = layout.FEATURES_CACHE
    splits: Path = layout.SPLITS
    issues: Path = layout.LABEL_ISSUES
    metrics: Path = layout.LABEL_AUDIT_METRICS


@dataclass(frozen=True)
class LabelAuditSummary:
    """What the label audit found: ``label_metrics.json``."""

    images: int
    issues: int
    issue_fraction: float
    folds: int
    model: str
    out_of_fold_accuracy: float
    """Agreement of the cheap model with the given labels: low means its verdicts are weak evidence."""
    per_class_thresholds: dict[str, float]
    per_class_issues: dict[str, int]
    weights: str | None


def run(
    params: Params, paths: LabelAuditPaths = LabelAuditPaths(), progress: Callable[[int], None] | None = None
) -> LabelAuditSummary:
    """The ``label_audit`` stage: write the ranked suspects and their summary.

    Raises:
        DataError: a features split is missing or empty, a class has fewer images than folds, or the cache
            and the split table disagree.
    """
    cfg, classes = params.audit, params.data.classes
    features, labels, rows = [], [], []
    for split in AUDITED_SPLITS:
        array, label = _load(paths.features, split)
        names = split_rows(paths.splits, split, len(label))
        names.insert(0, "split", split)
        features.append(pooled_features(array))
        labels.append(label)
        rows.append(names)
    x, y = np.concatenate(features), np.concatenate(labels).astype(np.int64)
    table = pd.concat(rows, ignore_index=True)
    probabilities = out_of_fold_probabilities(
        x, y, len(classes), cfg.label_folds, cfg.label_seed, cfg.label_l2, cfg.label_steps
    )
    found = find_label_issues(y, probabilities)
    picked = table.iloc[found.indices].reset_index(drop=True)
    issues = pd.DataFrame(
        {
            "rank": np.arange(1, len(picked) + 1, dtype=np.int64),
            "member": picked["member"].astype(str),
            "sha256": picked["sha256"].astype(str),
            "split": picked["split"].astype(str),
            "row": picked["row"].astype(np.int64),
            "given_label": [classes[i] for i in y[found.indices]],
            "suggested_label": [classes[i] for i in found.suggested],
            "self_confidence": found.self_confidence.astype(np.float64),
            "suggested_confidence": probabilities[found.indices, found.suggested].astype(np.float64),
        }
    )
    write_parquet(issues, paths.issues)
    summary = LabelAuditSummary(
        images=len(y),
        issues=len(issues),
        issue_fraction=len(issues) / len(y),
        folds=cfg.label_folds,
        model=MODEL,
        out_of_fold_accuracy=float(np.mean(probabilities.argmax(axis=1) == y)),
        per_class_thresholds={name: float(t) for name, t in zip(classes, found.thresholds, strict=True)},
        per_class_issues={name: int((issues["given_label"] == name).sum()) for name in classes},
        weights=features_weights(paths.features),
    )
    write_json_atomic(paths.metrics, asdict(summary))
    if progress is not None:
        progress(len(y))
    logger.info("label audit: %d of %d train+val images look mislabelled", summary.issues, summary.images)
    return summary


def _load(cache: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    path, labels_path = layout.split_file(cache, split), layout.labels_file(cache, split)
    if not path.is_file() or not labels_path.is_file():
        raise DataError(f"label audit: {path} or {labels_path} is missing; run the features stage (dvc repro features)")
    array, labels = np.load(path, mmap_mode="r"), np.load(labels_path)
    if len(array) == 0 or len(array) != len(labels):
        raise DataError(f"label audit: {path} has {len(array)} rows and {len(labels)} labels (need as many, > 0)")
    return array, labels
