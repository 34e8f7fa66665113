"""Classification metrics from predicted probabilities, in NumPy: no model, no scikit-learn.

The figures therefore do not depend on a backend's metric implementations; ``loss`` clips as Keras does, so it
matches ``model.evaluate``, and ``accuracy`` thresholds as Keras's binary accuracy does, so it matches the
training logs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from cvpipe.errors import DataError

logger = logging.getLogger(__name__)

EPSILON = 1e-7
"""Keras's clipping of probabilities in cross-entropy, so ``loss`` matches ``model.evaluate``."""


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
        probabilities: N x K, e.g. from ``cvpipe.stages.evaluate.predict_probabilities``.
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
