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


def test_array_rows_name_images_by_place_and_by_their_bytes() -> None:
    import hashlib

    images = np.arange(3 * 28 * 28, dtype=np.uint32).reshape(3, 28, 28).astype(np.uint8)
    images[2] = images[0]
    rows = predictions.array_rows(images, np.array([7, 1, 7], np.uint8), "mnist/test/")
    assert rows["member"].tolist() == ["mnist/test/0", "mnist/test/1", "mnist/test/2"]
    assert rows["sha256"][0] == hashlib.sha256(images[0].tobytes()).hexdigest() == rows["sha256"][2]
    assert rows["sha256"][0] != rows["sha256"][1] and rows["row"].tolist() == [0, 1, 2]
    # A non-contiguous view hashes as its C-order bytes: the same digit, the same sha256.
    assert predictions.array_rows(images[:, :, ::-1][:, :, ::-1], np.zeros(3), "m")["sha256"].equals(rows["sha256"])
    digits = [str(d) for d in range(10)]
    frame = predictions.predictions_frame(rows, np.eye(10)[[7, 2, 7]], np.array([7, 2, 7]), digits)
    assert frame["label"].tolist() == ["7", "1", "7"] and frame["correct"].tolist() == [True, False, True]
    with pytest.raises(DataError, match="3 images but 2 labels"):
        predictions.array_rows(images, np.zeros(2), "m")
