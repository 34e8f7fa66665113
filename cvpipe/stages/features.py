"""The features stage: run the VGG16 convolutional base once over the decoded-image cache.

Reads ``{split}.npy`` (uint8, N x S x S x 3) and ``{split}_labels.npy`` from the decode stage's folder and
writes, per split present, ``{split}.npy`` (N x h x w x 512, 5 x 5 x 512 at 180 px) and a row-aligned copy of
the labels, then ``features.json`` last (weights identity, dtype, shapes, counts, Keras version, backend).

Each split is one streaming pass: the images are read ``batch_size`` rows at a time with positioned reads
(:class:`~cvpipe.ml.arrays.NpyRows`) and each batch's features are appended to the output file, so resident
memory does not grow with the number of images (memory maps would count every page they touch as resident;
docs/performance.md). Outputs are written under a temporary name in the same folder and renamed only when
complete, so a killed run never leaves a complete-looking ``.npy``.

``precision`` is the compute dtype policy of the conv base: ``float32`` (default), or ``mixed_bfloat16``
(bfloat16 matrix products, float32 weights), which is faster only where the CPU multiplies bfloat16 in
hardware (AVX512-BF16, AMX) and on GPUs (``auto`` picks it there and records what it picked); its features
stay within ~1e-2 relative error of float32 (``bench/features_speed.py`` measures both).
The images are preprocessed in float32 either way.

The weights never come from the network (:mod:`cvpipe.ml.weights`). This module imports ``keras`` and
``numpy`` only, so it runs under any Keras 3 backend (TensorFlow, JAX, PyTorch).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from cvpipe import layout
from cvpipe.config import SPLITS, FeaturesConfig, Params
from cvpipe.errors import CvpipeError, DataError
from cvpipe.io import atomic_path, write_json_atomic, write_npy_atomic
from cvpipe.ml.arrays import NpyRows
from cvpipe.ml.device import resolve_precision
from cvpipe.ml.weights import build_conv_base, check_precision, resolve_weights, weights_record

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeaturesPaths:
    """Where the features stage reads and writes (dvc.yaml's paths by default)."""

    images: Path = layout.IMAGES_CACHE
    """The decode stage's folder."""
    out: Path = layout.FEATURES_CACHE


@dataclass(frozen=True)
class SplitPass:
    """One split's pass through the conv base."""

    count: int
    seconds: float
    images_per_second: float


@dataclass(frozen=True)
class FeaturesSummary:
    """What the features stage wrote: the features' shape and dtype, the weights, and per split its pass."""

    feature_shape: list[int]
    dtype: str
    precision: str
    splits: dict[str, SplitPass]
    weights: dict[str, Any]
    """The weights' identity, as ``features.json`` records it: what a model's lineage names as its extractor."""


def run(
    params: Params, paths: FeaturesPaths | None = None, progress: Callable[[int], None] | None = None
) -> FeaturesSummary:
    """The features stage: :func:`extract_features` with the ``features`` params.

    Args:
        params: the whole params file (``features`` is read).
        paths: the decoded-image cache and the output folder; default :class:`FeaturesPaths`'s.
        progress: called after each batch with the number of images in it.
    """
    paths = paths or FeaturesPaths()
    return extract_features(paths.images, paths.out, params.features, progress=progress)


def count_images(images_dir: Path) -> int:
    """How many images the stage will pass through the base (for a progress bar): the splits' label counts."""
    return sum(
        len(np.load(layout.labels_file(images_dir, split), mmap_mode="r"))
        for split in SPLITS
        if layout.labels_file(images_dir, split).is_file()
    )


def _open_images(path: Path) -> NpyRows:
    """Open a decoded-image array for reading by row slices: nothing is read until a batch is sliced."""
    return NpyRows(path)


def _present_splits(images_dir: Path) -> list[str]:
    if not images_dir.is_dir():
        raise DataError(f"{images_dir}: no decoded-image cache (run the decode stage first)")
    splits = [split for split in SPLITS if layout.split_file(images_dir, split).is_file()]
    if not splits:
        raise DataError(f"{images_dir}: none of {', '.join(f'{s}.npy' for s in SPLITS)} (run the decode stage)")
    return splits


def _open_split(images_dir: Path, split: str) -> tuple[NpyRows, np.ndarray]:
    """Open one split's images (row reads) and labels, checking the decode stage's contract."""
    images_path, labels_path = layout.split_file(images_dir, split), layout.labels_file(images_dir, split)
    images = _open_images(images_path)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise DataError(f"{images_path}: expected uint8 N x H x W x 3, got {images.dtype} {images.shape}")
    if not labels_path.is_file():
        raise DataError(f"{labels_path}: missing (the decode stage writes it next to {images_path.name})")
    labels = np.load(labels_path)
    if labels.ndim != 1 or labels.shape[0] != images.shape[0] or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{labels_path}: expected {images.shape[0]} integer labels, got {labels.dtype} {labels.shape}")
    return images, labels


# ------------------------------------------------------------------------------------------ extraction


def _preprocess(rows: np.ndarray) -> np.ndarray:
    """Return VGG16's caffe-mode input for a batch of uint8 rows, never touching ``rows``.

    ``preprocess_input`` modifies float32 NumPy arrays in place, so it gets a fresh float32 copy.
    """
    batch = np.array(rows, dtype=np.float32, copy=True)
    return keras.applications.vgg16.preprocess_input(batch)


def _extract_split(
    model: keras.Model,
    images: NpyRows,
    out_path: Path,
    cfg: FeaturesConfig,
    progress: Callable[[int], None] | None,
) -> float:
    """Stream one split through ``model`` into ``out_path``; return the seconds it took."""
    count = images.shape[0]
    feature_shape = tuple(model.output_shape[1:])
    dtype = np.dtype(cfg.dtype)
    started = time.perf_counter()
    with atomic_path(out_path) as tmp, open(tmp, "wb") as handle:
        shape = (count, *feature_shape)
        np.lib.format.write_array_header_1_0(
            handle, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
        )
        for start in range(0, count, cfg.batch_size):
            stop = min(start + cfg.batch_size, count)
            # Rows are appended in input order; the cast gives the output dtype (float16) whatever the
            # compute dtype was (bfloat16 under mixed precision).
            features = np.asarray(model.predict_on_batch(_preprocess(images[start:stop])))
            handle.write(np.ascontiguousarray(features, dtype=dtype).tobytes())
            if progress is not None:
                progress(stop - start)
    return time.perf_counter() - started


def _common_input_shape(opened: dict[str, tuple[NpyRows, np.ndarray]]) -> tuple[int, int, int]:
    shapes = {tuple(images.shape[1:]) for images, _ in opened.values()}
    if len(shapes) != 1:
        raise DataError(f"splits have different image shapes {sorted(shapes)}; the decode stage uses one size")
    return shapes.pop()


def extract_features(
    images_dir: Path,
    out_dir: Path,
    cfg: FeaturesConfig,
    *,
    progress: Callable[[int], None] | None = None,
    precision: str | None = None,
) -> FeaturesSummary:
    """Run the VGG16 conv base over every split in the decoded-image cache, one streaming pass per split.

    Args:
        images_dir: the decode stage's folder (``{split}.npy`` uint8 N x S x S x 3, ``{split}_labels.npy``).
        out_dir: where ``{split}.npy`` (features), ``{split}_labels.npy`` and ``features.json`` go.
        cfg: the ``features`` params (weights, batch size, output dtype, compute precision).
        progress: called after each batch with the number of images in it.
        precision: the compute dtype policy (``cvpipe.ml.weights.PRECISIONS``), overriding ``cfg.precision``
            (benchmarks).

    Returns:
        Feature shape, dtype, precision, weights, and per split its count, seconds and images per second.

    Raises:
        DataError: the cache is missing or does not satisfy the decode stage's contract.
        CvpipeError: the weights cannot be found, verified or loaded, or the precision is unknown.
    """
    images_dir, out_dir = Path(images_dir), Path(out_dir)
    precision = resolve_precision(check_precision(precision or cfg.precision))  # auto: what ran is recorded
    if keras.config.image_data_format() != "channels_last":
        raise CvpipeError("Keras image_data_format must be 'channels_last' (see ~/.keras/keras.json)")
    opened = {split: _open_split(images_dir, split) for split in _present_splits(images_dir)}
    input_shape = _common_input_shape(opened)
    weights_path = resolve_weights(cfg.weights)
    model = build_conv_base(weights_path, input_shape, precision)
    feature_shape = tuple(int(d) for d in model.output_shape[1:])

    splits: dict[str, SplitPass] = {}
    for split, (images, labels) in opened.items():
        seconds = _extract_split(model, images, layout.split_file(out_dir, split), cfg, progress)
        write_npy_atomic(layout.labels_file(out_dir, split), labels)
        count = int(images.shape[0])
        rate = count / seconds if seconds > 0 else 0.0
        splits[split] = SplitPass(count, round(seconds, 3), round(rate, 2))
        logger.info("features %s: %d images in %.1f s (%.1f images/s)", split, count, seconds, rate)

    # Written last: its presence means every split's features are complete. No timings, so it is
    # byte-identical for equal inputs.
    weights = weights_record(cfg.weights, weights_path)
    write_json_atomic(
        out_dir / layout.FEATURES_META_NAME,
        {
            "weights": weights,
            "dtype": cfg.dtype,
            "precision": precision,
            "batch_size": cfg.batch_size,
            "input_shape": list(input_shape),
            "feature_shape": list(feature_shape),
            "preprocess": "keras.applications.vgg16.preprocess_input (caffe: RGB->BGR, ImageNet mean subtracted)",
            "counts": {split: info.count for split, info in splits.items()},
            "keras_version": keras.__version__,
            "backend": keras.backend.backend(),
        },
    )
    return FeaturesSummary(list(feature_shape), cfg.dtype, precision, splits, weights)
