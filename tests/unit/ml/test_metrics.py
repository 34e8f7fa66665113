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
