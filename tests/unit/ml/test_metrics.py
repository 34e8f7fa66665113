"""Metric maths from probabilities: ROC AUC with ties, the ROC curve, cross-entropy as Keras clips it."""

from __future__ import annotations

import numpy as np
import pytest

from cvpipe.errors import DataError
from cvpipe.ml import metrics


def test_roc_auc_counts_ties_as_half_and_needs_both_classes() -> None:
    assert metrics.roc_auc(np.array([True, False]), np.array([0.5, 0.5])) == 0.5
    assert metrics.roc_auc(np.array([True, True, False]), np.array([0.3, 0.9, 0.3])) == pytest.approx(0.75)
    assert metrics.roc_auc(np.array([True, True]), np.array([0.1, 0.2])) is None


def test_roc_curve_enters_ties_at_once_from_the_origin() -> None:
    fpr, tpr, thresholds = metrics.roc_curve(np.array([True, False, True]), np.array([0.9, 0.5, 0.5]))
    np.testing.assert_allclose(fpr, [0, 0, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 1])
    assert thresholds[0] == np.inf and list(thresholds[1:]) == [0.9, 0.5]


def test_threshold_is_strict_and_labels_out_of_range_fail() -> None:
    probabilities = np.array([[0.5, 0.5], [0.2, 0.8]])
    assert metrics.predicted_labels(probabilities, 0.5).tolist() == [0, 1]
    assert metrics.cross_entropy(np.array([1, 1]), np.array([[0.0, 1.0], [0.0, 1.0]])) == pytest.approx(1e-7)
    with pytest.raises(DataError, match="labels span"):
        metrics.classification_metrics(np.array([0, 2]), probabilities, ["cat", "dog"])


def test_wilson_interval_matches_the_closed_form_and_stays_in_range() -> None:
    # Figures from the closed form at z = 1.959964 (two-sided 95%).
    low, high = metrics.wilson_interval(1400, 2000)
    assert (low, high) == pytest.approx((0.67955, 0.71968), abs=1e-5)
    low, high = metrics.wilson_interval(1940, 2000)
    assert (low, high) == pytest.approx((0.96158, 0.97662), abs=1e-5)
    assert metrics.wilson_interval(10, 10)[1] == 1.0 and metrics.wilson_interval(0, 10)[0] == 0.0
    assert metrics.wilson_interval(5, 10, level=0.99)[0] < metrics.wilson_interval(5, 10)[0]
    with pytest.raises(DataError, match="Wilson"):
        metrics.wilson_interval(3, 0)


def _noisy_binary(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    positive = np.clip(0.5 + (labels - 0.5) * 0.4 + rng.normal(0, 0.25, n), 0.0, 1.0)
    return labels, np.stack([1 - positive, positive], axis=1)


def test_bootstrap_interval_is_seeded_and_holds_the_point_estimate() -> None:
    labels, probabilities = _noisy_binary()
    auc = metrics.roc_auc(labels == 1, probabilities[:, 1])
    first = metrics.bootstrap_auc_interval(labels, probabilities, resamples=200, seed=3)
    assert first == metrics.bootstrap_auc_interval(labels, probabilities, resamples=200, seed=3)
    assert first != metrics.bootstrap_auc_interval(labels, probabilities, resamples=200, seed=4)
    assert first[0] < auc < first[1] and first[1] - first[0] < 0.1
    assert metrics.bootstrap_auc_interval(np.ones(5, int), np.full((5, 2), 0.5), resamples=50) is None


def test_brier_and_calibration_of_known_probabilities() -> None:
    labels = np.array([1, 0, 1, 0])
    probabilities = np.array([[0.2, 0.8], [0.7, 0.3], [0.4, 0.6], [0.9, 0.1]])
    assert metrics.brier_score(labels, probabilities) == pytest.approx((0.04 + 0.09 + 0.16 + 0.01) / 4)
    # Three classes: the halved sum over classes, so a certain miss scores 1 as with two classes.
    assert metrics.brier_score(np.array([0]), np.array([[0.0, 1.0, 0.0]])) == pytest.approx(1.0)
    predicted = metrics.predicted_labels(probabilities, 0.5)
    bins = metrics.reliability_bins(labels, probabilities, predicted, bins=5)
    assert [row["count"] for row in bins] == [0, 0, 1, 2, 1]  # confidences 0.8, 0.7, 0.6, 0.9
    assert bins[0]["confidence"] is None and bins[3]["accuracy"] == 1.0
    assert metrics.expected_calibration_error(bins) == pytest.approx((0.4 + 0.2 + 0.3 + 0.1) / 4)


def test_uncertainty_joins_the_metrics_only_when_asked() -> None:
    labels, probabilities = _noisy_binary(200)
    plain = metrics.classification_metrics(labels, probabilities, ["cat", "dog"])
    assert "accuracy_ci" not in plain
    full = metrics.classification_metrics(
        labels, probabilities, ["cat", "dog"], uncertainty=metrics.Uncertainty(bootstrap_resamples=100)
    )
    low, high = full["accuracy_ci"]
    assert low < full["accuracy"] < high and full["ci_level"] == 0.95
    assert full["roc_auc_ci"][0] < full["roc_auc"] < full["roc_auc_ci"][1]
    assert 0 <= full["ece"] < 1 and len(full["calibration"]) == 10
    assert {key: full[key] for key in plain} == plain
