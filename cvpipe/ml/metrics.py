"""Classification metrics from predicted probabilities, in NumPy: no model, no scikit-learn.

The figures therefore do not depend on a backend's metric implementations; ``loss`` clips as Keras does, so it
matches ``model.evaluate``, and ``accuracy`` thresholds as Keras's binary accuracy does, so it matches the
training logs.

Uncertainty and calibration (issue 13): accuracy carries a Wilson score interval (:func:`wilson_interval`, exact
enough at 2,000 test images and never outside [0, 1]), ROC AUC a seeded percentile bootstrap
(:func:`bootstrap_auc_interval`); the Brier score and the expected calibration error are of the top-label
confidence, the probability of the predicted class, binned as in Guo et al. (2017), so the same figures hold for
two classes and for ten.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
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
    labels: np.ndarray,
    probabilities: np.ndarray,
    class_names: Sequence[str],
    threshold: float = 0.5,
    uncertainty: Uncertainty | None = None,
) -> dict[str, Any]:
    """Return accuracy, loss, ROC AUC, macro and per-class precision/recall/F1, and the confusion matrix.

    ROC AUC is the positive class's for two classes, the macro average of one-vs-rest AUCs otherwise.
    Precision, recall or F1 with a zero denominator count as 0. With ``uncertainty``, also ``accuracy_ci``
    (Wilson), ``roc_auc_ci`` (seeded bootstrap), ``brier``, ``ece`` and ``calibration`` (the reliability bins).

    Args:
        labels: integer labels.
        probabilities: N x K, e.g. from ``cvpipe.stages.evaluate.predict_probabilities``.
        class_names: names by label index.
        threshold: decision threshold on the positive class (two classes only).
        uncertainty: how the intervals and calibration bins are drawn; None leaves them out.

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
    if uncertainty is not None:
        metrics.update(uncertainty_metrics(labels, probabilities, predicted, uncertainty))
    metrics["per_class"] = per_class
    metrics["confusion_matrix"] = matrix.tolist()
    return metrics


@dataclass(frozen=True)
class Uncertainty:
    """How intervals and calibration are computed (the ``evaluate`` params)."""

    level: float = 0.95
    """Two-sided confidence level of both intervals."""
    bootstrap_resamples: int = 1000
    bootstrap_seed: int = 0
    calibration_bins: int = 10


def wilson_interval(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Return the Wilson score interval of a binomial proportion ``successes / n``.

    Unlike the normal approximation it stays inside [0, 1] and keeps its coverage near 0 and 1, where the
    transfer-learning variants' accuracies sit (0.97: about +-0.008 on 2,000 images).

    Raises:
        DataError: ``n`` is not positive or ``successes`` is outside ``0 .. n``.
    """
    if n <= 0 or not 0 <= successes <= n:
        raise DataError(f"Wilson interval: {successes} successes of {n} trials")
    z = _normal_quantile(0.5 + level / 2)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def bootstrap_auc_interval(
    labels: np.ndarray, probabilities: np.ndarray, resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float] | None:
    """Return a percentile bootstrap interval of the ROC AUC (as :func:`classification_metrics` defines it).

    Test rows are resampled with replacement from ``numpy.random.default_rng(seed)``, so the interval is the
    same on every run; resamples that lose a class are skipped. None when fewer than 10 resamples are usable.
    """
    labels = np.asarray(labels).astype(np.int64)
    rng = np.random.default_rng(seed)
    n = len(labels)
    values = []
    for _ in range(resamples):
        picked = rng.integers(0, n, size=n)
        value = _auc_of(labels[picked], probabilities[picked])
        if value is not None:
            values.append(value)
    if len(values) < 10:
        return None
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def brier_score(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Return the mean squared error of the probabilities against the one-hot labels.

    For two classes it is the usual ``mean((p(class 1) - y)^2)`` (0 perfect, 0.25 a coin flip); for K classes
    the sum over classes, averaged over rows, halved so that two classes give the same figure.
    """
    labels = np.asarray(labels).astype(np.int64)
    onehot = np.eye(probabilities.shape[1])[labels]
    return float(np.mean(np.sum((probabilities - onehot) ** 2, axis=1)) / 2)


def reliability_bins(
    labels: np.ndarray, probabilities: np.ndarray, predicted: np.ndarray, bins: int = 10
) -> list[dict[str, Any]]:
    """Return the reliability diagram: per equal-width bin of top-label confidence, its count, mean and accuracy.

    The confidence of a row is the probability the model gave its predicted class (``1 - p`` for a two-class
    row predicted 0). Empty bins are listed with ``count: 0`` and null means, so every plot has the same axis.
    """
    labels, predicted = np.asarray(labels).astype(np.int64), np.asarray(predicted).astype(np.int64)
    confidence = probabilities[np.arange(len(predicted)), predicted]
    # Bin i holds (i/bins, (i+1)/bins]; a confidence of exactly 0 (possible only with >2 classes) joins bin 0.
    index = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    correct = predicted == labels
    rows = []
    for b in range(bins):
        members = index == b
        count = int(members.sum())
        rows.append(
            {
                "bin": b,
                "lower": b / bins,
                "upper": (b + 1) / bins,
                "count": count,
                "confidence": float(confidence[members].mean()) if count else None,
                "accuracy": float(correct[members].mean()) if count else None,
            }
        )
    return rows


def expected_calibration_error(bins: Sequence[dict[str, Any]]) -> float:
    """Return the ECE of :func:`reliability_bins`: the count-weighted mean of ``|accuracy - confidence|``."""
    total = sum(row["count"] for row in bins)
    if not total:
        return 0.0
    return float(sum(row["count"] * abs(row["accuracy"] - row["confidence"]) for row in bins if row["count"]) / total)


def uncertainty_metrics(
    labels: np.ndarray, probabilities: np.ndarray, predicted: np.ndarray, cfg: Uncertainty
) -> dict[str, Any]:
    """Return ``accuracy_ci``, ``roc_auc_ci``, ``ci_level``, ``brier``, ``ece`` and ``calibration`` (the bins)."""
    labels = np.asarray(labels).astype(np.int64)
    hits = int(np.sum(predicted == labels))
    auc_ci = bootstrap_auc_interval(labels, probabilities, cfg.bootstrap_resamples, cfg.bootstrap_seed, cfg.level)
    bins = reliability_bins(labels, probabilities, predicted, cfg.calibration_bins)
    return {
        "accuracy_ci": list(wilson_interval(hits, len(labels), cfg.level)),
        "roc_auc_ci": list(auc_ci) if auc_ci is not None else None,
        "ci_level": cfg.level,
        "brier": brier_score(labels, probabilities),
        "ece": expected_calibration_error(bins),
        "calibration": bins,
    }


def _auc_of(labels: np.ndarray, probabilities: np.ndarray) -> float | None:
    """The AUC :func:`classification_metrics` reports, without its per-class table or its logging."""
    if probabilities.shape[1] == 2:
        return roc_auc(labels == 1, probabilities[:, 1])
    aucs = [roc_auc(labels == k, probabilities[:, k]) for k in range(probabilities.shape[1])]
    defined = [auc for auc in aucs if auc is not None]
    return float(np.mean(defined)) if len(defined) == len(aucs) else None


def _normal_quantile(q: float) -> float:
    """The standard normal quantile (Acklam's rational approximation, |error| < 1.2e-9): no SciPy needed."""
    a = (
        -3.969683028665376e01,
        2.209460984245205e02,
        -2.759285104469687e02,
        1.383577518672690e02,
        -3.066479806614716e01,
        2.506628277459239e00,
    )
    b = (
        -5.447609879822406e01,
        1.615858368580409e02,
        -1.556989798598866e02,
        6.680131188771972e01,
        -1.328068155288572e01,
    )
    c = (
        -7.784894002430293e-03,
        -3.223964580411365e-01,
        -2.400758277161838e00,
        -2.549732539343734e00,
        4.374664141464968e00,
        2.938163982698783e00,
    )
    d = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00)
    if not 0 < q < 1:
        raise DataError(f"normal quantile of {q}: expected 0 < q < 1")
    if q < 0.02425 or q > 1 - 0.02425:
        t = np.sqrt(-2 * np.log(min(q, 1 - q)))
        x = (((((c[0] * t + c[1]) * t + c[2]) * t + c[3]) * t + c[4]) * t + c[5]) / (
            (((d[0] * t + d[1]) * t + d[2]) * t + d[3]) * t + 1
        )
        return float(x if q < 0.5 else -x)
    r = q - 0.5
    t = r * r
    return float(
        (((((a[0] * t + a[1]) * t + a[2]) * t + a[3]) * t + a[4]) * t + a[5])
        * r
        / (((((b[0] * t + b[1]) * t + b[2]) * t + b[3]) * t + b[4]) * t + 1)
    )


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
