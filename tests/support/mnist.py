"""MNIST-format data made from real scans offline: scikit-learn's UCI digits (1,797 8x8 images) as 28x28."""

from __future__ import annotations

import gzip
from functools import cache
from pathlib import Path

import numpy as np

from cvpipe.sources.mnist import IDX_FILES, MnistData


@cache
def digits_mnist(train: int = 1500, test: int = 297) -> MnistData:
    """The UCI digits upscaled 3x (24 x 24), padded to 28 x 28 as MNIST centres its 20 x 20 box, 0-16 -> 0-255."""
    from sklearn.datasets import load_digits  # a dev dependency: tests only

    digits = load_digits()
    images = np.kron(digits.images, np.ones((3, 3)))
    images = np.pad(images, ((0, 0), (2, 2), (2, 2)))
    images = np.clip(np.round(images * (255 / 16)), 0, 255).astype(np.uint8)
    labels = digits.target.astype(np.uint8)
    assert train + test <= len(labels)
    return MnistData(images[:train], labels[:train], images[train : train + test], labels[train : train + test])


def idx_bytes(array: np.ndarray) -> bytes:
    """One IDX file: magic 00 00 08 <ndim>, big-endian sizes, the uint8 bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(side).to_bytes(4, "big") for side in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_idx_folder(folder: Path, data: MnistData) -> Path:
    """Write ``data`` as the four original ``*-idx?-ubyte.gz`` files (mtime 0: the same bytes every time)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, stem in IDX_FILES.items():
        (folder / f"{stem}.gz").write_bytes(gzip.compress(idx_bytes(getattr(data, name)), mtime=0))
    return folder
