"""The mnist_evaluate stage: the MNIST convnet on the cache's test split, with the variants' metric set.

It scores through :func:`cvpipe.stages.evaluate.evaluate_model`, the dogs-vs-cats variants' own evaluation,
so ``reports/metrics/mnist.json`` has the same keys (top-level ``accuracy``, ``loss``, macro precision, recall
and F1, one-vs-rest ``roc_auc``, ``n_samples``, and ``per_class`` for the ten digits) and
``reports/plots/mnist/`` the same files (``confusion.csv``, the 10 x 10 ``confusion_matrix.json``, ``roc.csv``
with one curve per digit). The seed reports 0.993 test accuracy on real MNIST.

``reports/predictions/mnist.parquet`` holds the model's verdict on each test digit, in the dogs-vs-cats
variants' schema (:mod:`cvpipe.ml.predictions`). MNIST's digits have no archive member, so each is named by its
place in the test set, ``mnist/test/<index>`` (:data:`MEMBER_PREFIX`), and by the sha256 of its 28 x 28 uint8
bytes.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cvpipe import layout
from cvpipe.config import EvaluateConfig, Params
from cvpipe.errors import DataError
from cvpipe.ml.arrays import load_split
from cvpipe.stages.evaluate import EvaluateSummary, evaluate_model

logger = logging.getLogger(__name__)

# The class names are the digits (cvpipe.sources.mnist.CLASSES; not imported, so that a change to the sources
# does not make this stage stale: it reads the cache, not the source).
CLASSES: tuple[str, ...] = tuple("0123456789")
MEMBER_PREFIX = "mnist/test"
"""Test digit ``i`` is member ``mnist/test/<i>`` in the predictions (the cache keeps the source's order)."""


@dataclass(frozen=True)
class MnistEvaluatePaths:
    """Where ``mnist_evaluate`` reads and writes; the defaults are dvc.yaml's."""

    inputs: Path = layout.MNIST_CACHE
    """The MNIST cache (its test split is read)."""
    model: Path = layout.MNIST_MODEL
    metrics: Path = layout.MNIST_METRICS
    plots: Path = layout.MNIST_PLOTS
    predictions: Path | None = None
    """The per-image parquet to write (None: none); dvc.yaml's is ``layout.MNIST_PREDICTIONS``."""


def run(
    params: Params, paths: MnistEvaluatePaths | None = None, progress: Callable[[int], None] | None = None
) -> EvaluateSummary:
    """The ``mnist_evaluate`` stage: score ``models/mnist.keras`` on the test split.

    Args:
        params: the whole params file (``mnist.batch_size`` is read: the MNIST stages share no key with the
            dogs-vs-cats ones, ``evaluate.*`` included).
        paths: inputs and outputs; default :class:`MnistEvaluatePaths`.
        progress: called with the number of test images once they are scored.

    Raises:
        DataError: the cache or the model is missing, or they do not fit each other.
    """
    paths = paths or MnistEvaluatePaths()
    images, labels = load_split(paths.inputs, "test")
    # The evaluate section's defaults but the batch size: its keys are the dogs-vs-cats stages' (dvc.yaml lists
    # them there), and a key shared with them would rerun one experiment for the other.
    cfg = EvaluateConfig(batch_size=params.mnist.batch_size)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"MNIST test images must be N x 28 x 28, got {images.shape}; rerun mnist_data (dvc repro)")
    rows = None
    if paths.predictions is not None:
        # Imported here, as evaluate does: it needs pandas, which scoring alone does not.
        from cvpipe.ml.predictions import array_rows

        rows = array_rows(images, labels, MEMBER_PREFIX)
    # uint8 as cached: the model scales them itself (cvpipe.stages.mnist_train.with_scaling).
    metrics = evaluate_model(
        paths.model, images, labels, cfg, CLASSES, paths.metrics, paths.plots, rows, paths.predictions
    )
    if progress is not None:
        progress(len(labels))
    logger.info("mnist_evaluate: accuracy %.4f on %d test images", metrics["accuracy"], len(labels))
    return EvaluateSummary(**{item.name: metrics[item.name] for item in dataclasses.fields(EvaluateSummary)})
