"""The evaluate stage: score a saved model on the test cache and write DVC metrics and plot data.

Outputs (all written atomically):

* ``metrics.json``: flat keys for ``dvc metrics show`` (``accuracy``, ``loss``, ``roc_auc``, macro
  precision/recall/F1, ``n_samples``) plus a nested ``per_class`` block.
* ``<plots dir>/confusion.csv``: one ``actual,predicted`` row per test sample, for DVC's ``confusion``
  template; ``confusion_matrix.json``: the counts, rows actual and columns predicted.
* ``<plots dir>/roc.csv``: ``fpr,tpr,threshold`` rows for DVC's ``simple``/``linear`` templates (with more
  than two classes, one one-vs-rest curve per class and a leading ``class`` column).

Everything is computed with NumPy from the predicted probabilities, so no scikit-learn is needed and the
figures do not depend on the backend's metric implementations.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from cvpipe.config import EvaluateConfig
from cvpipe.errors import DataError
from cvpipe.io import write_bytes_atomic, write_json_atomic
from cvpipe.ml.models import load_model
from cvpipe.stages.train import IN_MEMORY_BYTES, ArrayBatches, fits_in_memory

logger = logging.getLogger(__name__)

EPSILON = 1e-7
"""Keras's clipping of probabilities in cross-entropy, so ``loss`` matches ``model.evaluate``."""

CONFUSION_FILE = "confusion.csv"
CONFUSION_MATRIX_FILE = "confusion_matrix.json"
ROC_FILE = "roc.csv"


def evaluate_model(
    model_path: Path,
    inputs: np.ndarray,
    labels: np.ndarray,
    cfg: EvaluateConfig,
    class_names: Sequence[str],
    out_metrics: Path,
    out_plots_dir: Path,
) -> dict[str, Any]:
    """Score ``model_path`` on ``inputs`` and write metrics, confusion and ROC data.

    Args:
        model_path: a ``.keras`` file written by the train stage.
        inputs: test images (uint8) or VGG16 features, as the model was trained on; memmaps welcome.
        labels: integer labels, ``0 .. len(class_names) - 1``.
        cfg: the ``evaluate`` section (batch size, decision threshold for two classes).
        class_names: names by label index, e.g. ``["cat", "dog"]``; label 1 is the positive class.
        out_metrics: the metrics JSON to write.
        out_plots_dir: folder for ``confusion.csv``, ``confusion_matrix.json`` and ``roc.csv``.

    Returns:
        The metrics written to ``out_metrics`` plus ``confusion_matrix``.

    Raises:
        DataError: inputs and labels disagree, labels are out of range, or the class names do not fit the
            model's output.
    """
    labels = np.asarray(labels)
    if len(inputs) != len(labels) or len(labels) == 0:
        raise DataError(f"evaluate: {len(inputs)} inputs and {len(labels)} labels (need as many, at least one)")
    model = load_model(model_path, compile=False)
    probabilities = predict_probabilities(model, inputs, cfg.batch_size)
    if probabilities.shape[1] != len(class_names):
        raise DataError(
            f"{model_path} predicts {probabilities.shape[1]} classes but {len(class_names)} class names were given"
        )
    metrics = classification_metrics(labels, probabilities, class_names, cfg.threshold)
    _write_outputs(metrics, labels, probabilities, class_names, cfg.threshold, Path(out_metrics), Path(out_plots_dir))
    logger.info(
        "evaluated %s on %d samples: accuracy %.4f, loss %.4f, roc_auc %s",
        Path(model_path).name,
        len(labels),
        metrics["accuracy"],
        metrics["loss"],
        metrics["roc_auc"],
    )
    return metrics


def predict_probabilities(
    model: keras.Model, inputs: np.ndarray, batch_size: int, in_memory_bytes: int = IN_MEMORY_BYTES
) -> np.ndarray:
    """Return class probabilities N x K (K >= 2; a sigmoid output p becomes columns ``1 - p, p``).

    Inputs that fit in ``in_memory_bytes`` go to ``predict`` as one array (the fast path on TensorFlow, see
    :data:`cvpipe.stages.train.IN_MEMORY_BYTES`); larger ones a batch at a time.
    """
    if fits_in_memory(inputs, limit=in_memory_bytes):
        predicted = model.predict(np.asarray(inputs), batch_size=batch_size, verbose=0)
    else:
        predicted = model.predict(ArrayBatches(inputs, None, batch_size), verbose=0)
    raw = np.asarray(predicted, dtype=np.float64)
    if raw.ndim == 1 or raw.shape[1] == 1:
        positive = raw.reshape(-1)
        return np.stack([1.0 - positive, positive], axis=1)
    return raw


def predicted_labels(probabilities: np.ndarray, threshold: float) -> np.ndarray:
    """Return the predicted label per row: ``p(class 1) > threshold`` for two classes, argmax otherwise.

    Strictly greater, as Keras's binary accuracy counts it, so ``accuracy`` here matches training logs.
    """
    if probabilities.shape[1] == 2:
        return (probabilities[:, 1] > threshold).astype(np.int64)
    return np.argmax(probabilities, axis=1)


def cross_entropy(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Return the mean cross-entropy, probabilities clipped to ``[EPSILON, 1 - EPSILON]`` as Keras does."""
    if probabilities.shape[1] == 2:
        p = np.clip(probabilities[:, 1], EPSILON, 1.0 - EPSILON)
        return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1.0 - p)))
    normalised = probabilities / probabilities.sum(axis=1, keepdims=True)
    picked = np.clip(normalised[np.arange(len(labels)), labels], EPSILON, 1.0 - EPSILON)
    return float(-np.mean(np.log(picked)))


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Return counts K x K: rows are actual classes, columns predicted ones."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    return matrix


def roc_auc(positive: np.ndarray, scores: np.ndarray) -> float | None:
    """Return the area under the ROC curve, or None when only one class is present.

    It is the probability that a random positive scores above a random negative, ties counting one half
    (Mann-Whitney U from average ranks), which equals the trapezoidal area under :func:`roc_curve`.

    Args:
        positive: boolean, True for the positive class.
        scores: higher means more likely positive.
    """
    positive = np.asarray(positive, dtype=bool)
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = _average_ranks(np.asarray(scores, dtype=np.float64))
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_curve(positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (fpr, tpr, thresholds), one point per distinct score from the highest down, from (0, 0).

    A sample counts as positive at a threshold t when its score is >= t; the first threshold is +inf.
    """
    positive = np.asarray(positive, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    sorted_scores, sorted_positive = scores[order], positive[order]
    # The last index of each run of equal scores: every tie enters the curve at once.
    last = np.r_[np.flatnonzero(np.diff(sorted_scores)), len(scores) - 1]
    true_pos = np.cumsum(sorted_positive)[last]
    false_pos = (last + 1) - true_pos
    n_pos, n_neg = max(int(positive.sum()), 1), max(len(positive) - int(positive.sum()), 1)
    fpr = np.r_[0.0, false_pos / n_neg]
    tpr = np.r_[0.0, true_pos / n_pos]
    return fpr, tpr, np.r_[np.inf, sorted_scores[last]]


def classification_metrics(
    labels: np.ndarray, probabilities: np.ndarray, class_names: Sequence[str], threshold: float = 0.5
) -> dict[str, Any]:
    """Return accuracy, loss, ROC AUC, macro and per-class precision/recall/F1, and the confusion matrix.

    ROC AUC is the positive class's for two classes, the macro average of one-vs-rest AUCs otherwise.
    Precision, recall or F1 with a zero denominator count as 0.

    Args:
        labels: integer labels.
        probabilities: N x K from :func:`predict_probabilities`.
        class_names: names by label index.
        threshold: decision threshold on the positive class (two classes only).

    Raises:
        DataError: labels outside ``0 .. K - 1``.
    """
    labels = np.asarray(labels).astype(np.int64)
    num_classes = probabilities.shape[1]
    if labels.min() < 0 or labels.max() >= num_classes:
        raise DataError(f"labels span {labels.min()}..{labels.max()}, expected 0..{num_classes - 1}")
    predicted = predicted_labels(probabilities, threshold)
    matrix = confusion_matrix(labels, predicted, num_classes)
    per_class = _per_class(matrix, labels, probabilities, class_names)
    metrics: dict[str, Any] = {
        "accuracy": float(np.trace(matrix) / len(labels)),
        "loss": cross_entropy(labels, probabilities),
        "roc_auc": _overall_auc(labels, probabilities, per_class, class_names),
        "n_samples": len(labels),
        "threshold": threshold if num_classes == 2 else None,
    }
    for name in ("precision", "recall", "f1"):
        metrics[f"{name}_macro"] = float(np.mean([per_class[cls][name] for cls in class_names]))
    metrics["per_class"] = per_class
    metrics["confusion_matrix"] = matrix.tolist()
    return metrics


def _per_class(
    matrix: np.ndarray, labels: np.ndarray, probabilities: np.ndarray, class_names: Sequence[str]
) -> dict[str, dict[str, Any]]:
    result = {}
    for index, name in enumerate(class_names):
        hits = int(matrix[index, index])
        precision = _ratio(hits, int(matrix[:, index].sum()))
        recall = _ratio(hits, int(matrix[index, :].sum()))
        result[name] = {
            "precision": precision,
            "recall": recall,
            "f1": _ratio(2 * precision * recall, precision + recall),
            "support": int(matrix[index, :].sum()),
            "roc_auc": roc_auc(labels == index, probabilities[:, index]),
        }
    return result


def _overall_auc(
    labels: np.ndarray, probabilities: np.ndarray, per_class: dict[str, dict[str, Any]], class_names: Sequence[str]
) -> float | None:
    if probabilities.shape[1] == 2:
        return roc_auc(labels == 1, probabilities[:, 1])
    aucs = [per_class[name]["roc_auc"] for name in class_names]
    defined = [auc for auc in aucs if auc is not None]
    if len(defined) < len(aucs):
        logger.warning("ROC AUC: %d class(es) absent from the labels; averaging the others", len(aucs) - len(defined))
    return float(np.mean(defined)) if defined else None


def _write_outputs(
    metrics: dict[str, Any],
    labels: np.ndarray,
    probabilities: np.ndarray,
    class_names: Sequence[str],
    threshold: float,
    out_metrics: Path,
    out_plots_dir: Path,
) -> None:
    predicted = predicted_labels(probabilities, threshold)
    write_json_atomic(out_metrics, {key: value for key, value in metrics.items() if key != "confusion_matrix"})
    rows = [(class_names[a], class_names[p]) for a, p in zip(labels.tolist(), predicted.tolist(), strict=True)]
    write_bytes_atomic(out_plots_dir / CONFUSION_FILE, _csv(("actual", "predicted"), rows))
    write_json_atomic(
        out_plots_dir / CONFUSION_MATRIX_FILE, {"labels": list(class_names), "matrix": metrics["confusion_matrix"]}
    )
    write_bytes_atomic(out_plots_dir / ROC_FILE, _roc_csv(labels, probabilities, class_names))


def _roc_csv(labels: np.ndarray, probabilities: np.ndarray, class_names: Sequence[str]) -> bytes:
    if probabilities.shape[1] == 2:
        fpr, tpr, thresholds = roc_curve(labels == 1, probabilities[:, 1])
        return _csv(("fpr", "tpr", "threshold"), zip(fpr, tpr, thresholds, strict=True))
    rows = []
    for index, name in enumerate(class_names):
        fpr, tpr, thresholds = roc_curve(labels == index, probabilities[:, index])
        rows.extend((name, *point) for point in zip(fpr, tpr, thresholds, strict=True))
    return _csv(("class", "fpr", "tpr", "threshold"), rows)


def _csv(header: Sequence[str], rows: Any) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([_cell(value) for value in row])
    return buffer.getvalue().encode("utf-8")


def _cell(value: Any) -> Any:
    if isinstance(value, (float, np.floating)):
        return "inf" if math.isinf(value) else repr(float(value))
    return value


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else 0.0


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..N, ties sharing the mean of the ranks they span."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_values)) + 1]
    ends = np.r_[starts[1:], len(values)]
    mean_rank = (starts + ends + 1) / 2.0  # mean of the 1-based ranks start+1 .. end
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks
