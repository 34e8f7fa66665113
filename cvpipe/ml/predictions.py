"""Per-image predictions: which image each cache row is, and what a model said about it.

The decode stage writes every split's rows in the split table's order (``data/splits/splits.parquet``'s
``row`` column), and the features stage keeps that order, so row ``i`` of any ``test.npy`` is the test image
whose ``row`` is ``i``. :func:`split_rows` reads that mapping; :func:`predictions_frame` joins it to a model's
probabilities as ``reports/predictions/<variant>.parquet`` (one row per test image: member, sha256, label,
the probability of each class, predicted class, confidence, correct), which ``cvpipe lineage image`` and the
report read.

A cache without a split table (MNIST's: its digits come from an ``.npz``, not an archive) names its rows with
:func:`array_rows`: member ``<prefix>/<index>`` and the sha256 of the image's own bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cvpipe.errors import DataError
from cvpipe.io import sha256_bytes

PROBABILITY_PREFIX = "p_"
"""Column ``p_<class>``: the model's probability of that class."""


def split_rows(splits_path: Path, split: str, expected: int | None = None) -> pd.DataFrame:
    """Return ``row, member, sha256, label, label_index`` of one split, in cache-row order.

    Args:
        splits_path: the split table.
        split: ``train``, ``val`` or ``test``.
        expected: the cache's row count; a different count means the cache is from another split version.

    Raises:
        DataError: the table is missing or unreadable, or its row count for ``split`` is not ``expected``.
    """
    try:
        table = pd.read_parquet(splits_path, columns=["split", "row", "member", "sha256", "label", "label_index"])
    except (OSError, ValueError) as error:
        raise DataError(f"{splits_path}: cannot read the split table ({type(error).__name__}); run the split") from None
    rows = table[table["split"] == split].sort_values("row", kind="stable").drop(columns="split")
    rows = rows.reset_index(drop=True)
    if expected is not None and len(rows) != expected:
        raise DataError(
            f"{splits_path}: {len(rows)} {split} rows but the cache has {expected}; the cache is from another "
            "split version (dvc repro decode)"
        )
    return rows


def array_rows(images: np.ndarray, labels: np.ndarray, prefix: str) -> pd.DataFrame:
    """Return ``row, member, sha256, label_index`` naming each image of an in-memory split by its position.

    For a cache with no archive member behind its rows (MNIST): ``member`` is ``<prefix>/<index>`` (``index``
    the row in the source's own order, which the cache keeps) and ``sha256`` that of the image's bytes as
    cached (C order; 784 uint8 for an MNIST digit), so the same digit has the same sha256 in any copy of the
    data set.

    Raises:
        DataError: ``images`` and ``labels`` differ in length.
    """
    if len(images) != len(labels):
        raise DataError(f"predictions: {len(images)} images but {len(labels)} labels")
    prefix = prefix.rstrip("/")
    return pd.DataFrame(
        {
            "row": np.arange(len(images), dtype=np.int64),
            "member": [f"{prefix}/{index}" for index in range(len(images))],
            "sha256": [sha256_bytes(np.ascontiguousarray(image).tobytes()) for image in images],
            "label_index": np.asarray(labels).astype(np.int64),
        }
    )


def predictions_frame(
    rows: pd.DataFrame, probabilities: np.ndarray, predicted: np.ndarray, class_names: Sequence[str]
) -> pd.DataFrame:
    """Return one row per image: its names, each class's probability, and the verdict.

    Columns ``row, member, sha256, label, label_index, p_<class>..., predicted, predicted_index, confidence,
    correct``. ``label`` and ``predicted`` are class names; ``confidence`` is the probability of the predicted
    class, the figure the report sorts mistakes by.

    Raises:
        DataError: ``rows`` and ``probabilities`` differ in length.
    """
    if len(rows) != len(probabilities):
        raise DataError(f"predictions: {len(rows)} images but {len(probabilities)} rows of probabilities")
    predicted = np.asarray(predicted).astype(np.int64)
    labels = rows["label_index"].to_numpy().astype(np.int64)
    frame = pd.DataFrame(
        {
            "row": rows["row"].to_numpy().astype(np.int64),
            "member": rows["member"].astype(str).to_numpy(),
            "sha256": rows["sha256"].astype(str).to_numpy(),
            "label": [class_names[i] for i in labels],
            "label_index": labels,
        }
    )
    for index, name in enumerate(class_names):
        frame[f"{PROBABILITY_PREFIX}{name}"] = probabilities[:, index].astype(np.float64)
    frame["predicted"] = [class_names[i] for i in predicted]
    frame["predicted_index"] = predicted
    frame["confidence"] = probabilities[np.arange(len(predicted)), predicted].astype(np.float64)
    frame["correct"] = predicted == labels
    return frame


def confident_mistakes(frame: pd.DataFrame, count: int) -> pd.DataFrame:
    """The ``count`` wrong predictions the model was surest of, most confident first (ties by row)."""
    wrong = frame[~frame["correct"]]
    return wrong.sort_values(["confidence", "row"], ascending=[False, True], kind="stable").head(count)
