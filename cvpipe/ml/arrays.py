"""The caches as arrays for Keras: memory-mapped splits, positioned row reads, and what ``fit`` is fed.

A split whose inputs fit in :data:`IN_MEMORY_BYTES` is handed to ``fit`` (and ``predict``) whole, as an array
(uint8 images stay uint8; the model casts them); a larger one goes through :class:`ArrayBatches` (a
``keras.utils.PyDataset``), so only one batch at a time is in memory as float32. Both work on every Keras
backend.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import keras
import numpy as np

from cvpipe.errors import DataError
from cvpipe.layout import labels_file, split_file

IN_MEMORY_BYTES = 2 * 2**30
"""Train and val inputs up to this size together (as Keras holds them) are fed to ``fit`` as in-memory arrays.

Feeding a ``PyDataset`` costs TensorFlow far more than its batches (Keras wraps it in
``tf.data.Dataset.from_generator``; docs/performance.md has the measurements). The price is memory: Keras
holds the arrays, up to this limit more than a batch at a time. The seed's splits are far below it (2,000
training images at 180 px: 194 MB of uint8); all of Kaggle's 25,000 images at 180 px (2.4 GB) are not.
"""

Split = tuple[np.ndarray, np.ndarray]
"""(inputs, integer labels) of one split; memmaps welcome."""


def load_split(cache_dir: Path, split: str) -> Split:
    """Memory-map one split of a cache folder (decoded images or VGG16 features) with its labels.

    Raises:
        DataError: the cache is missing; says which stage makes it.
    """
    inputs, labels = split_file(cache_dir, split), labels_file(cache_dir, split)
    if not inputs.exists() or not labels.exists():
        raise DataError(f"{inputs} or {labels} is missing; run the stage that makes {cache_dir} (dvc repro)")
    return np.load(inputs, mmap_mode="r"), np.load(labels)


class NpyRows:
    """A read-only ``.npy`` array whose rows are read on demand with positioned reads.

    Looks like the array where the features stage needs it (``shape``, ``dtype``, ``ndim``, ``len``, a row
    slice gives a NumPy array), but keeps nothing: each slice is read into a fresh buffer, so resident memory
    stays at one batch whatever the file's size. (A memory map would count every page it touched as the
    process's resident memory until unmapped.)
    """

    def __init__(self, path: Path) -> None:
        """Read the header of the ``.npy`` at ``path``.

        Raises:
            DataError: the file is not a C-ordered ``.npy``.
        """
        self.path = Path(path)
        readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        with open(self.path, "rb") as handle:
            try:
                version = np.lib.format.read_magic(handle)
                if version not in readers:
                    raise ValueError(f"format version {version}")
                shape, fortran, dtype = readers[version](handle)
            except ValueError as error:
                raise DataError(f"{self.path}: not a .npy file cvpipe reads ({error})") from None
            self._offset = handle.tell()
        if fortran or dtype.hasobject:
            raise DataError(f"{self.path}: expected a C-ordered numeric array")
        self.shape: tuple[int, ...] = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.ndim = len(self.shape)
        self._row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0] if self.shape else 0

    def __getitem__(self, key: slice) -> np.ndarray:
        """Read rows ``key`` (a slice with step 1) into a new array."""
        if not isinstance(key, slice):
            raise TypeError(f"{type(self).__name__} reads row slices only, not {key!r}")
        start, stop, step = key.indices(len(self))
        if step != 1:
            raise TypeError(f"{type(self).__name__} reads contiguous row slices only")
        out = np.empty((max(0, stop - start), *self.shape[1:]), dtype=self.dtype)
        if out.size == 0:
            return out
        view, done, offset = memoryview(out).cast("B"), 0, self._offset + start * self._row_bytes
        fd = os.open(self.path, os.O_RDONLY)
        try:
            while done < len(view):
                got = os.preadv(fd, [view[done:]], offset + done)
                if not got:
                    raise DataError(f"{self.path}: file ends before row {stop} (truncated?)")
                done += got
        finally:
            os.close(fd)
        return out


class ArrayBatches(keras.utils.PyDataset):
    """Batches of a (possibly memory-mapped) array pair, as float32, reshuffled every epoch from a seed.

    Only the rows of the current batch are read and converted, so a split larger than memory trains fine.
    Rows of a batch are read in ascending order, which keeps memmap reads sequential; the batch is a set
    anyway as far as the loss is concerned.
    """

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray | None,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        binary: bool = True,
        **kwargs: Any,
    ) -> None:
        """Create the batches.

        Args:
            x: inputs, first axis is the sample.
            y: integer labels, or None for prediction.
            batch_size: samples per batch (the last batch may be smaller).
            shuffle: draw a new order every epoch.
            seed: seed of the shuffling; same seed, same order every run.
            binary: labels go out as float32 (N, 1) for a sigmoid output, else as int32 (N,).
            **kwargs: ``workers``, ``use_multiprocessing``, ``max_queue_size`` of ``PyDataset``.
        """
        super().__init__(**kwargs)
        self._x = x
        self._y = y
        self._batch_size = batch_size
        self._shuffle = shuffle
        self._rng = np.random.default_rng(seed)
        self._binary = binary
        self._order = self._new_order()

    def __len__(self) -> int:
        """Number of batches."""
        return math.ceil(len(self._x) / self._batch_size)

    def __getitem__(self, index: int) -> Any:
        """Return batch ``index`` as ``x`` or ``(x, y)``."""
        rows = np.sort(self._order[index * self._batch_size : (index + 1) * self._batch_size])
        x = np.asarray(self._x[rows], dtype=np.float32)
        if self._y is None:
            return x
        return x, model_labels(self._y[rows], self._binary)

    def on_epoch_end(self) -> None:
        """Draw the next epoch's order."""
        self._order = self._new_order()

    def _new_order(self) -> np.ndarray:
        if self._shuffle:
            return self._rng.permutation(len(self._x))
        return np.arange(len(self._x))


def model_labels(labels: np.ndarray, binary: bool) -> np.ndarray:
    """Labels as the loss wants them: float32 (N, 1) for one sigmoid unit, int32 (N,) for a softmax."""
    labels = np.asarray(labels)
    return labels.astype(np.float32).reshape(-1, 1) if binary else labels.astype(np.int32)


def held_bytes(x: np.ndarray) -> int:
    """Bytes ``x`` takes once Keras holds it in memory: floats become float32, integers (uint8 images) stay."""
    itemsize = 4 if np.issubdtype(x.dtype, np.floating) else x.dtype.itemsize
    return int(x.size) * itemsize


def fits_in_memory(*arrays: np.ndarray, limit: int = IN_MEMORY_BYTES) -> bool:
    """Whether ``arrays`` together may be handed to Keras whole (see :data:`IN_MEMORY_BYTES`)."""
    return sum(held_bytes(x) for x in arrays) <= limit


def fit_inputs(
    train: Split,
    val: Split,
    batch_size: int,
    *,
    seed: int,
    binary: bool,
    workers: int = 1,
    limit: int = IN_MEMORY_BYTES,
) -> dict[str, Any]:
    """Return the data arguments of ``model.fit``: in-memory arrays when both splits fit, else batches.

    Arrays are shuffled by Keras each epoch from the global seed (``keras.utils.set_random_seed``), batches
    by :class:`ArrayBatches` from ``seed``; either way the same seed gives the same order.

    Args:
        train: training (inputs, labels); memmaps are read whole only on the in-memory path.
        val: validation (inputs, labels).
        batch_size: samples per batch, for both splits.
        seed: seed of :class:`ArrayBatches`' shuffling.
        binary: one sigmoid unit (float32 (N, 1) labels), else a softmax (int32 labels).
        workers: :class:`ArrayBatches` reader threads.
        limit: bytes above which the batches path is taken.
    """
    if fits_in_memory(train[0], val[0], limit=limit):
        return {
            "x": np.asarray(train[0]),
            "y": model_labels(train[1], binary),
            "batch_size": batch_size,
            "shuffle": True,
            "validation_data": (np.asarray(val[0]), model_labels(val[1], binary)),
        }
    return {
        "x": ArrayBatches(*train, batch_size, shuffle=True, seed=seed, binary=binary, workers=workers),
        "shuffle": False,  # ArrayBatches shuffles, from the seed
        "validation_data": ArrayBatches(*val, batch_size, binary=binary, workers=workers),
    }
