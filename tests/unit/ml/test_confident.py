"""Confident learning on real data: scikit-learn's scanned digits with planted label flips."""

from __future__ import annotations

import numpy as np
import pytest

from cvpipe.errors import DataError
from cvpipe.ml import confident


def flipped_digits(fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Digits pixels, their labels with ``fraction`` flipped to another class, and the flipped rows."""
    from sklearn.datasets import load_digits

    pixels, labels = load_digits(return_X_y=True)
    rng = np.random.default_rng(seed)
    flipped = rng.choice(len(labels), round(fraction * len(labels)), replace=False)
    noisy = labels.copy()
    noisy[flipped] = (labels[flipped] + rng.integers(1, 10, len(flipped))) % 10
    return pixels, noisy, flipped


@pytest.mark.parametrize(("fraction", "seed"), [(0.01, 1), (0.02, 0)])
def test_planted_flips_are_found_on_real_digits(fraction: float, seed: int) -> None:
    pixels, noisy, flipped = flipped_digits(fraction, seed)
    assert len(flipped) >= 18  # a plan of no flips would pass vacuously
    probabilities = confident.out_of_fold_probabilities(pixels, noisy, 10, folds=5, seed=0)
    issues = confident.find_label_issues(noisy, probabilities)
    hits = len(set(issues.indices.tolist()) & set(flipped.tolist()))
    assert hits / len(flipped) >= 0.7, "recall"
    assert hits / len(issues.indices) >= 0.5, "precision"
    assert np.all(np.diff(issues.self_confidence) >= 0), "ranked by self-confidence, lowest first"
    assert np.all(issues.suggested != noisy[issues.indices])


def test_thresholds_are_mean_self_confidence_and_the_joint_counts_confident_rows() -> None:
    labels = np.array([0, 0, 1, 1])
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.4, 0.6]])
    issues = confident.find_label_issues(labels, probabilities)
    np.testing.assert_allclose(issues.thresholds, [0.55, 0.65])
    assert issues.indices.tolist() == [1] and issues.suggested.tolist() == [1]
    assert issues.confident_joint.tolist() == [[1, 1], [0, 1]]  # row 3: 0.6 < 0.65 and 0.4 < 0.55, uncounted


def test_out_of_fold_is_seeded_and_too_few_images_fail_in_one_line() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 3)), np.repeat([0, 1], 20)
    first = confident.out_of_fold_probabilities(x, y, 2, folds=4, seed=1)
    np.testing.assert_array_equal(first, confident.out_of_fold_probabilities(x, y, 2, folds=4, seed=1))
    with pytest.raises(DataError, match=r"audit\.label_folds=5"):
        confident.out_of_fold_probabilities(x[:6], y[:6], 2, folds=5)
    assert confident.pooled_features(np.ones((2, 5, 5, 4))).shape == (2, 4)
