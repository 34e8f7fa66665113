"""Arrays for Keras: the caches' splits, positioned row reads, and what fit is fed (whole or in batches)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cvpipe.errors import DataError
from cvpipe.ml import arrays


def images(count: int, seed: int, side: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images N x side x side x 3 with alternating labels."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, side, side, 3), dtype=np.uint8), np.arange(count) % 2


def test_load_split_memory_maps_a_cache_and_names_what_is_missing(tmp_path: Path) -> None:
    x, y = images(5, 0)
    np.save(tmp_path / "train.npy", x)
    np.save(tmp_path / "train_labels.npy", y)
    inputs, labels = arrays.load_split(tmp_path, "train")
    assert isinstance(inputs, np.memmap)
    np.testing.assert_array_equal(inputs, x)
    np.testing.assert_array_equal(labels, y)
    with pytest.raises(DataError, match=r"val\.npy or .*val_labels\.npy is missing"):
        arrays.load_split(tmp_path, "val")


def test_fit_inputs_hold_small_splits_in_memory_and_batch_large_ones() -> None:
    train_split, val_split = images(10, 0), images(6, 1)
    whole = arrays.fit_inputs(train_split, val_split, 4, seed=1, binary=True)
    assert whole["x"].dtype == np.uint8 and whole["batch_size"] == 4 and whole["shuffle"] is True
    assert whole["y"].dtype == np.float32 and whole["y"].shape == (10, 1)
    np.testing.assert_array_equal(whole["validation_data"][0], val_split[0])
    bytes_needed = arrays.held_bytes(train_split[0]) + arrays.held_bytes(val_split[0])
    batched = arrays.fit_inputs(train_split, val_split, 4, seed=1, binary=False, limit=bytes_needed - 1)
    assert isinstance(batched["x"], arrays.ArrayBatches) and batched["shuffle"] is False
    assert isinstance(batched["validation_data"], arrays.ArrayBatches)
    assert batched["x"][0][1].dtype == np.int32
    # float16 features are held as float32 by Keras; uint8 images stay uint8.
    assert arrays.held_bytes(np.zeros((2, 3), np.float16)) == 24 and arrays.held_bytes(np.zeros(5, np.uint8)) == 5


def test_array_batches_reshuffle_from_the_seed() -> None:
    x = np.arange(10, dtype=np.uint8).reshape(10, 1)
    y = np.arange(10) % 2

    def epochs(seed: int) -> list[list[int]]:
        batches = arrays.ArrayBatches(x, y, 4, shuffle=True, seed=seed)
        orders = []
        for _ in range(2):
            orders.append([int(v) for i in range(len(batches)) for v in batches[i][0][:, 0]])
            batches.on_epoch_end()
        return orders

    first, again = epochs(5), epochs(5)
    assert first == again and first[0] != first[1]
    assert all(sorted(order) == list(range(10)) for order in first)
    batch_x, batch_y = arrays.ArrayBatches(x, y, 4)[2]
    assert batch_x.dtype == np.float32 and batch_y.shape == (2, 1)
    assert arrays.ArrayBatches(x, y, 4, binary=False)[0][1].dtype == np.int32


def test_npy_rows_reads_slices_like_the_array(tmp_path: Path) -> None:
    array = np.random.default_rng(0).integers(0, 256, size=(11, 4, 4, 3), dtype=np.uint8)
    np.save(tmp_path / "a.npy", array)
    rows = arrays.NpyRows(tmp_path / "a.npy")
    assert rows.shape == array.shape and rows.dtype == array.dtype and rows.ndim == 4 and len(rows) == 11
    for key in (slice(0, 4), slice(4, 11), slice(9, 20), slice(5, 5)):
        np.testing.assert_array_equal(rows[key], array[key])
    with pytest.raises(TypeError):
        rows[3]  # type: ignore[index]
    with pytest.raises(TypeError):
        rows[0:4:2]


def test_npy_rows_reports_a_truncated_file(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.zeros((10, 4, 4, 3), np.uint8))
    data = (tmp_path / "a.npy").read_bytes()
    (tmp_path / "a.npy").write_bytes(data[:-100])
    with pytest.raises(DataError, match="truncated"):
        arrays.NpyRows(tmp_path / "a.npy")[0:10]
    (tmp_path / "b.npy").write_bytes(b"not an array")
    with pytest.raises(DataError, match=r"not a \.npy"):
        arrays.NpyRows(tmp_path / "b.npy")
