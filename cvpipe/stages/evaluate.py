"""The evaluate stage: score a saved model on the test cache and write DVC metrics and plot data.

Outputs (all written atomically):

* ``metrics.json``: flat keys for ``dvc metrics show`` (``accuracy``, ``loss``, ``roc_auc``, macro
  precision/recall/F1, ``n_samples``) plus a nested ``per_class`` block.
* ``<plots dir>/confusion.csv``: one ``actual,predicted`` row per test sample, for DVC's ``confusion``
  template; ``confusion_matrix.json``: the counts, rows actual and columns predicted.
* ``<plots dir>/roc.csv``: ``fpr,tpr,threshold`` rows for DVC's ``simple``/``linear`` templates (with more
  than two classes, one one-vs-rest curve per class and a leading ``class`` column).
* ``<plots dir>/calibration.csv``: the reliability diagram (``bin,lower,upper,count,confidence,accuracy``),
  whose count-weighted gap is ``ece`` in the metrics; ``accuracy_ci`` (Wilson) and ``roc_auc_ci`` (seeded
  bootstrap) sit next to the figures they bound.
* ``reports/predictions/<variant>.parquet``: one row per test image (member, sha256, label, each class's
  probability, predicted, confidence, correct), the images named from the split table
  (:mod:`cvpipe.ml.predictions`).

The metrics are computed with NumPy from the predicted probabilities (:mod:`cvpipe.ml.metrics`). The model
is scored in float32 whatever precision it was trained in (:func:`load_for_evaluation`).
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from cvpipe import layout
from cvpipe.config import EvaluateConfig, Params
from cvpipe.errors import DataError
from cvpipe.io import write_bytes_atomic, write_json_atomic, write_parquet
from cvpipe.ml.arrays import IN_MEMORY_BYTES, ArrayBatches, fits_in_memory, load_split
from cvpipe.ml.metrics import Uncertainty, classification_metrics, predicted_labels, roc_curve
from cvpipe.ml.models import load_model, recast, walk_layers
from cvpipe.ml.variants import get_variant

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluatePaths:
    """Where ``evaluate@<variant>`` reads and writes; :meth:`default` gives dvc.yaml's paths."""

    inputs: Path
    """The cache the variant was trained on (its test split is read)."""
    model: Path
    metrics: Path
    plots: Path
    predictions: Path | None = None
    """The per-image parquet to write (None: none); it names rows from ``splits``."""
    splits: Path = layout.SPLITS

    @classmethod
    def default(cls, variant: str) -> EvaluatePaths:
        """The paths of ``variant`` in the pipeline (:mod:`cvpipe.layout`)."""
        cache = layout.FEATURES_CACHE if get_variant(variant).inputs == "features" else layout.IMAGES_CACHE
        return cls(
            cache,
            layout.model_file(variant),
            layout.metrics_file(variant),
            layout.plots_dir(variant),
            layout.predictions_file(variant),
        )


@dataclass(frozen=True)
class EvaluateSummary:
    """What ``evaluate@<variant>`` measured on the test split: ``metrics.json`` less ``per_class``."""

    accuracy: float
    loss: float
    roc_auc: float | None
    n_samples: int
    threshold: float | None
    precision_macro: float
    recall_macro: float
    f1_macro: float
    confusion_matrix: list[list[int]]
    """Rows actual classes, columns predicted ones."""
    accuracy_ci: list[float] | None = None
    roc_auc_ci: list[float] | None = None
    ci_level: float | None = None
    brier: float | None = None
    ece: float | None = None


def run(
    variant: str, params: Params, paths: EvaluatePaths | None = None, progress: Callable[[int], None] | None = None
) -> EvaluateSummary:
    """The ``evaluate@<variant>`` stage: score the model on the test split of its cache.

    Args:
        variant: one of :data:`cvpipe.ml.variants.NAMES` (for the default paths).
        params: the whole params file (``evaluate`` and ``data.classes`` are read).
        paths: inputs and outputs; default :meth:`EvaluatePaths.default`.
        progress: called with the number of test samples once they are scored.

    Raises:
        ConfigError: unknown variant.
        DataError: the test cache is missing or does not fit the model.
    """
    paths = paths or EvaluatePaths.default(variant)
    inputs, labels = load_split(paths.inputs, "test")
    # Named before the model runs, so a cache from another split version fails in one line at once.
    rows = None
    if paths.predictions is not None:
        # Imported here: it needs pandas, which evaluate_model alone does not (the GPU check's machine lacks it).
        from cvpipe.ml.predictions import split_rows

        rows = split_rows(paths.splits, "test", len(labels))
    metrics = evaluate_model(
        paths.model,
        inputs,
        labels,
        params.evaluate,
        params.data.classes,
        paths.metrics,
        paths.plots,
        rows=rows,
        out_predictions=paths.predictions,
    )
    if progress is not None:
        progress(len(labels))
    return EvaluateSummary(**{key: value for key, value in metrics.items() if key not in ("per_class", "calibration")})


def evaluate_model(
    model_path: Path,
    inputs: np.ndarray,
    labels: np.ndarray,
    cfg: EvaluateConfig,
    class_names: Sequence[str],
    out_metrics: Path,
    out_plots_dir: Path,
    rows: Any = None,
    out_predictions: Path | None = None,
) -> dict[str, Any]:
    """Score ``model_path`` on ``inputs`` and write metrics, confusion and ROC data.

    Args:
        model_path: a ``.keras`` file written by the train stage.
        inputs: test images (uint8) or VGG16 features, as the model was trained on; memmaps welcome.
        labels: integer labels, ``0 .. len(class_names) - 1``.
        cfg: the ``evaluate`` section (batch size, decision threshold for two classes).
        class_names: names by label index, e.g. ``["cat", "dog"]``; label 1 is the positive class.
        out_metrics: the metrics JSON to write.
        out_plots_dir: folder for ``confusion.csv``, ``confusion_matrix.json``, ``roc.csv``, ``calibration.csv``.
        rows: the test images in row order (:func:`cvpipe.ml.predictions.split_rows`), for ``out_predictions``.
        out_predictions: the per-image parquet to write; None writes none.

    Returns:
        The metrics written to ``out_metrics`` plus ``confusion_matrix``.

    Raises:
        DataError: inputs and labels disagree, labels are out of range, or the class names do not fit the
            model's output.
    """
    labels = np.asarray(labels)
    if len(inputs) != len(labels) or len(labels) == 0:
        raise DataError(f"evaluate: {len(inputs)} inputs and {len(labels)} labels (need as many, at least one)")
    model = load_for_evaluation(model_path)
    probabilities = predict_probabilities(model, inputs, cfg.batch_size)
    if probabilities.shape[1] != len(class_names):
        raise DataError(
            f"{model_path} predicts {probabilities.shape[1]} classes but {len(class_names)} class names were given"
        )
    uncertainty = Uncertainty(cfg.ci_level, cfg.bootstrap_resamples, cfg.bootstrap_seed, cfg.calibration_bins)
    metrics = classification_metrics(labels, probabilities, class_names, cfg.threshold, uncertainty)
    _write_outputs(metrics, labels, probabilities, class_names, cfg.threshold, Path(out_metrics), Path(out_plots_dir))
    if out_predictions is not None:
        from cvpipe.ml.predictions import predictions_frame

        frame = predictions_frame(rows, probabilities, predicted_labels(probabilities, cfg.threshold), class_names)
        write_parquet(frame, Path(out_predictions))
    logger.info(
        "evaluated %s on %d samples: accuracy %.4f, loss %.4f, roc_auc %s",
        Path(model_path).name,
        len(labels),
        metrics["accuracy"],
        metrics["loss"],
        metrics["roc_auc"],
    )
    return metrics


def load_for_evaluation(model_path: Path) -> keras.Model:
    """Load ``model_path`` to compute in float32, whatever dtype policy it was trained under.

    A ``.keras`` file restores its layers' policies, so a model trained in bfloat16 on a GPU would otherwise
    be scored in bfloat16 on whatever runs evaluation: slow on a CPU without bf16, and not the same numbers
    on every machine. Its weights are float32 either way.
    """
    model = load_model(model_path, compile=False)
    if all(layer.compute_dtype == "float32" for layer in walk_layers(model)):
        return model
    logger.info("%s was trained in reduced precision; evaluating it in float32", Path(model_path).name)
    return recast(model, "float32")


def predict_probabilities(
    model: keras.Model, inputs: np.ndarray, batch_size: int, in_memory_bytes: int = IN_MEMORY_BYTES
) -> np.ndarray:
    """Return class probabilities N x K (K >= 2; a sigmoid output p becomes columns ``1 - p, p``).

    Inputs that fit in ``in_memory_bytes`` go to ``predict`` as one array (the fast path on TensorFlow, see
    :data:`cvpipe.ml.arrays.IN_MEMORY_BYTES`); larger ones a batch at a time.
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
    write_bytes_atomic(out_plots_dir / layout.CONFUSION_NAME, _csv(("actual", "predicted"), rows))
    write_json_atomic(
        out_plots_dir / layout.CONFUSION_MATRIX_NAME,
        {"labels": list(class_names), "matrix": metrics["confusion_matrix"]},
    )
    write_bytes_atomic(out_plots_dir / layout.ROC_NAME, _roc_csv(labels, probabilities, class_names))
    fields = ("bin", "lower", "upper", "count", "confidence", "accuracy")
    calibration = [[row[key] if row[key] is not None else "" for key in fields] for row in metrics["calibration"]]
    write_bytes_atomic(out_plots_dir / layout.CALIBRATION_NAME, _csv(fields, calibration))


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
