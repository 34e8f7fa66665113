"""Per-image predictions: cache rows named from the split table, and the confident mistakes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cvpipe.errors import DataError
from cvpipe.ml import predictions


def write_splits(path: Path) -> Path:
    frame = pd.DataFrame(
        {
            "split": ["test", "train", "test", "test"],
            "row": [1, 0, 0, 2],
            "member": ["t/dog.1.jpg", "t/cat.9.jpg", "t/cat.2.jpg", "t/dog.3.jpg"],
            "sha256": ["b" * 64, "x" * 64, "a" * 64, "c" * 64],
            "label": ["dog", "cat", "cat", "dog"],
            "label_index": [1, 0, 0, 1],
            "group": [0, 1, 2, 3],
        }
    )
    frame.to_parquet(path, index=False)
    return path


def test_rows_come_in_cache_order_and_a_wrong_count_fails_in_one_line(tmp_path: Path) -> None:
    splits = write_splits(tmp_path / "splits.parquet")
    rows = predictions.split_rows(splits, "test", 3)
    assert rows["member"].tolist() == ["t/cat.2.jpg", "t/dog.1.jpg", "t/dog.3.jpg"]
    with pytest.raises(DataError, match="another split version"):
        predictions.split_rows(splits, "test", 4)
    with pytest.raises(DataError, match="cannot read the split table"):
        predictions.split_rows(tmp_path / "missing.parquet", "test")


def test_frame_has_every_class_probability_and_the_verdict(tmp_path: Path) -> None:
    rows = predictions.split_rows(write_splits(tmp_path / "splits.parquet"), "test")
    probabilities = np.array([[0.1, 0.9], [0.3, 0.7], [0.95, 0.05]])
    frame = predictions.predictions_frame(rows, probabilities, np.array([1, 1, 0]), ["cat", "dog"])
    assert frame["p_dog"].tolist() == [0.9, 0.7, 0.05]
    assert frame["predicted"].tolist() == ["dog", "dog", "cat"]
    assert frame["correct"].tolist() == [False, True, False]
    assert frame["confidence"].tolist() == [0.9, 0.7, 0.95]
    mistakes = predictions.confident_mistakes(frame, 5)
    assert mistakes["member"].tolist() == ["t/dog.3.jpg", "t/cat.2.jpg"]
    with pytest.raises(DataError, match="3 images but 2 rows"):
        predictions.predictions_frame(rows, probabilities[:2], np.array([1, 1]), ["cat", "dog"])
