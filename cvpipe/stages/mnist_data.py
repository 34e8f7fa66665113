"""The mnist_data stage: the MNIST experiment's digits, from their source into a cache of its own.

It reads what ``mnist.source`` names (:mod:`cvpipe.sources.mnist`: Keras's ``mnist.npz``, a local ``.npz`` or
IDX folder, or drawn digits), validates it, and writes ``data/cache/mnist/``: ``train.npy`` and ``test.npy``
(uint8 N x 28 x 28), ``train_labels.npy`` and ``test_labels.npy`` (uint8 0-9) and ``SOURCE.json`` (where the
digits came from, with the source file's sha256).

Why a stage of its own rather than reading the source in ``mnist_train``: the Keras cache and a local file are
outside the DVC repository, so DVC cannot track them; the cache it writes is tracked by content, so
``mnist_train`` and ``mnist_evaluate`` rerun exactly when the digits change, and the lineage of a model names
the cache by hash and, through this stage's record, the source file by sha256. The cache shares nothing with
dogs-vs-cats (no dep, out or params key), so ``dvc repro`` of one experiment never touches the other.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cvpipe import layout
from cvpipe.config import Params
from cvpipe.io import write_json_atomic, write_npy_atomic
from cvpipe.sources.mnist import load_source

logger = logging.getLogger(__name__)

SPLITS: tuple[str, str] = ("train", "test")


@dataclass(frozen=True)
class MnistDataPaths:
    """Where ``mnist_data`` writes; the default is dvc.yaml's ``data/cache/mnist``."""

    out: Path = layout.MNIST_CACHE

    @property
    def source(self) -> Path:
        """``SOURCE.json`` in the cache folder."""
        return Path(self.out) / layout.SOURCE_NAME


@dataclass(frozen=True)
class MnistDataSummary:
    """What ``mnist_data`` read and wrote: the source (kind, file, sha256) and the images per split and digit."""

    source: str
    """``keras``, ``local`` or ``synthetic``."""
    path: str | None
    sha256: str | None
    """The source file's sha256 (see :class:`cvpipe.sources.mnist.MnistSource` for a folder and drawn digits)."""
    files: dict[str, str]
    generator: dict[str, Any] | None
    train_images: int
    test_images: int
    train_per_digit: list[int]
    test_per_digit: list[int]


def run(
    params: Params, paths: MnistDataPaths | None = None, progress: Callable[[int], None] | None = None
) -> MnistDataSummary:
    """The ``mnist_data`` stage: read and validate the source, write the cache and ``SOURCE.json``.

    Args:
        params: the whole params file (``mnist.source``, ``mnist.path``, ``mnist.synthetic`` are read).
        paths: the output folder; default :class:`MnistDataPaths`.
        progress: called with the number of images written, once.

    Raises:
        MnistFileError: the source is not MNIST (one line naming the file and what is wrong).
        SourceError: Keras's copy cannot be fetched.
    """
    paths = paths or MnistDataPaths()
    data, source = load_source(params.mnist)
    for split in SPLITS:
        images, labels = data.split(split)
        write_npy_atomic(layout.split_file(paths.out, split), np.ascontiguousarray(images, dtype=np.uint8))
        write_npy_atomic(layout.labels_file(paths.out, split), np.ascontiguousarray(labels, dtype=np.uint8))
    summary = MnistDataSummary(
        **dataclasses.asdict(source),
        train_images=len(data.y_train),
        test_images=len(data.y_test),
        train_per_digit=np.bincount(data.y_train, minlength=10).tolist(),
        test_per_digit=np.bincount(data.y_test, minlength=10).tolist(),
    )
    write_json_atomic(paths.source, dataclasses.asdict(summary))
    logger.info(
        "mnist_data: %s source, %d train and %d test images, sha256 %s",
        source.source,
        summary.train_images,
        summary.test_images,
        source.sha256,
    )
    if progress is not None:
        progress(summary.train_images + summary.test_images)
    return summary
