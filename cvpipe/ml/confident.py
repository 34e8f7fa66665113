"""Label issues by confident learning (Northcutt, Jiang and Chuang, JAIR 2021), in NumPy.

cleanlab implements the method under AGPL-3.0 and cvpipe is MIT, so this is a fresh implementation of the
paper's "confident joint" rule, not a port:

1. Out-of-fold probabilities: every image is scored by a model that did not see it (k-fold,
   :func:`out_of_fold_probabilities`), here a multinomial logistic regression fitted by accelerated gradient
   descent (:func:`fit_softmax_regression`): cheap, deterministic, and enough on VGG16 features or pixels.
2. Per-class thresholds ``t_j``: the mean probability of class ``j`` over the images labelled ``j`` (the
   model's average self-confidence for that class).
3. An image is counted in the confident joint at (given ``i``, true ``j``) when ``p_j >= t_j``, ``j`` being the
   most probable such class; those off the diagonal (``j != i``) are the suspected mislabels.
4. They are ranked by self-confidence, the probability of the given label, lowest (most suspect) first.

Nothing here changes a label.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cvpipe.errors import DataError


@dataclass(frozen=True)
class LabelIssues:
    """Suspected mislabels, most suspect first, and what flagged them."""

    indices: np.ndarray
    """Row numbers into the audited arrays."""
    suggested: np.ndarray
    """The class the confident joint puts each one in."""
    self_confidence: np.ndarray
    """The out-of-fold probability of the given label."""
    thresholds: np.ndarray
    """Per-class thresholds ``t_j``."""
    confident_joint: np.ndarray
    """K x K counts: rows given labels, columns the confident class (unflagged rows are left out)."""


def standardise(train: np.ndarray, other: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scale both to the train rows' mean 0 and variance 1 per column (constant columns left at 0)."""
    mean = train.mean(axis=0)
    scale = train.std(axis=0)
    scale[scale == 0] = 1.0
    return (train - mean) / scale, (other - mean) / scale


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, shifted by each row's maximum so that it never overflows."""
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def fit_softmax_regression(
    features: np.ndarray, labels: np.ndarray, num_classes: int, l2: float = 1e-3, steps: int = 600
) -> tuple[np.ndarray, np.ndarray]:
    """Fit a multinomial logistic regression with an L2 penalty by Nesterov-accelerated gradient descent.

    The step is 1 / L for L the gradient's Lipschitz bound (half the largest eigenvalue of ``X^T X / n``, plus
    ``l2``), so no learning rate needs tuning; starting from zero weights, the fit is deterministic.

    Returns:
        ``(weights D x K, bias K)``.
    """
    n, d = features.shape
    onehot = np.eye(num_classes)[labels]
    x = np.hstack([features, np.ones((n, 1))])
    # Power iteration on X^T X / n for the Lipschitz bound (30 rounds are plenty for a step size).
    vector = np.ones(d + 1) / np.sqrt(d + 1)
    for _ in range(30):
        vector = x.T @ (x @ vector) / n
        vector /= np.linalg.norm(vector) or 1.0
    top = float(vector @ (x.T @ (x @ vector)) / n)
    step = 1.0 / (0.5 * top + l2)
    weights = np.zeros((d + 1, num_classes))
    previous = weights
    for t in range(1, steps + 1):
        look = weights + (t - 1) / (t + 2) * (weights - previous)
        gradient = x.T @ (softmax(x @ look) - onehot) / n
        gradient[:-1] += l2 * look[:-1]  # the bias is not penalised
        previous, weights = weights, look - step * gradient
    return weights[:-1], weights[-1]


def out_of_fold_probabilities(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    folds: int = 5,
    seed: int = 0,
    l2: float = 1e-3,
    steps: int = 600,
) -> np.ndarray:
    """Return N x K probabilities, each row from a model fitted on the other folds (stratified, seeded).

    Raises:
        DataError: fewer images than folds, or a class with fewer images than folds.
    """
    labels = np.asarray(labels).astype(np.int64)
    counts = np.bincount(labels, minlength=num_classes)
    if folds < 2 or len(labels) < folds or counts.min() < folds:
        raise DataError(
            f"label audit: {len(labels)} images, the rarest class {int(counts.min())}; need at least "
            f"audit.label_folds={folds} of each"
        )
    fold_of = np.empty(len(labels), dtype=np.int64)
    rng = np.random.default_rng(seed)
    for k in range(num_classes):
        members = np.flatnonzero(labels == k)
        fold_of[rng.permutation(members)] = np.arange(len(members)) % folds
    probabilities = np.empty((len(labels), num_classes))
    flat = features.reshape(len(features), -1).astype(np.float64)
    for fold in range(folds):
        held = fold_of == fold
        train_x, held_x = standardise(flat[~held], flat[held])
        weights, bias = fit_softmax_regression(train_x, labels[~held], num_classes, l2, steps)
        probabilities[held] = softmax(held_x @ weights + bias)
    return probabilities


def find_label_issues(labels: np.ndarray, probabilities: np.ndarray) -> LabelIssues:
    """Return the confident joint's off-diagonal images, ranked by self-confidence (lowest first).

    Raises:
        DataError: a class has no images (its threshold is undefined) or shapes disagree.
    """
    labels = np.asarray(labels).astype(np.int64)
    n, num_classes = probabilities.shape
    if len(labels) != n:
        raise DataError(f"label audit: {len(labels)} labels but {n} rows of probabilities")
    counts = np.bincount(labels, minlength=num_classes)
    if counts.min() == 0:
        raise DataError(f"label audit: class {int(np.argmin(counts))} has no images")
    thresholds = np.array([probabilities[labels == k, k].mean() for k in range(num_classes)])
    above = probabilities >= thresholds
    # The most probable class among those above their threshold; -1 where none is.
    masked = np.where(above, probabilities, -np.inf)
    confident = np.where(above.any(axis=1), masked.argmax(axis=1), -1)
    joint = np.zeros((num_classes, num_classes), dtype=np.int64)
    counted = confident >= 0
    np.add.at(joint, (labels[counted], confident[counted]), 1)
    flagged = np.flatnonzero(counted & (confident != labels))
    self_confidence = probabilities[flagged, labels[flagged]]
    order = np.lexsort((flagged, self_confidence))
    flagged = flagged[order]
    return LabelIssues(
        indices=flagged,
        suggested=confident[flagged],
        self_confidence=probabilities[flagged, labels[flagged]],
        thresholds=thresholds,
        confident_joint=joint,
    )


def pooled_features(features: np.ndarray) -> np.ndarray:
    """Global-average-pool N x H x W x C maps to N x C (2-D input is returned as float64)."""
    array = np.asarray(features, dtype=np.float64)
    return array.mean(axis=(1, 2)) if array.ndim == 4 else array.reshape(len(array), -1)
