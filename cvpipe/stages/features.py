"""The features stage: run the VGG16 convolutional base once over the decoded-image cache.

Reads ``{split}.npy`` (uint8, N x S x S x 3) and ``{split}_labels.npy`` from the decode stage's folder and
writes, per split present, ``{split}.npy`` (N x h x w x 512, 5 x 5 x 512 at 180 px) and a row-aligned copy of
the labels, then ``features.json`` last (weights identity, dtype, shapes, counts, Keras version, backend).

Each split is one streaming pass: the images are read ``batch_size`` rows at a time with positioned reads
(:class:`NpyRows`) and each batch's features are appended to the output file, so resident memory does not
grow with the number of images. (Memory maps would do the same work but count every page they touch,
read or written, as the process's resident memory until unmapped: ~2.4 GB at 25,000 images of 180 px.)
Outputs are written under a temporary name in the same folder and renamed only when complete, so a killed
run never leaves a complete-looking ``.npy``.

``precision`` is the compute dtype policy of the conv base: ``float32`` (default), or ``mixed_bfloat16``
(bfloat16 matrix products, float32 weights), which is faster only where the CPU multiplies bfloat16 in
hardware (AVX512-BF16, AMX) and on GPUs; its features stay within ~1e-2 relative error of float32
(``bench/features_speed.py`` measures both). The images are preprocessed in float32 either way.

Weights never come from the network: ``imagenet`` means the file Keras would have cached, which must
already be in ``$KERAS_HOME/models`` (default ``~/.keras/models``); ``none`` means seeded random weights
(an offline demo whose features are meaningless for accuracy); anything else is a weights file path.

This module imports ``keras`` and ``numpy`` only, so it runs under any Keras 3 backend (TensorFlow, JAX,
PyTorch).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, get_args

import keras
import numpy as np

from cvpipe.config import SPLITS, FeaturesConfig
from cvpipe.errors import CvpipeError, DataError
from cvpipe.io import atomic_path, md5_file, sha256_file, write_json_atomic, write_npy_atomic
from cvpipe.ml.models import vgg16_conv_base

logger = logging.getLogger(__name__)

NOTOP_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
FULL_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels.h5"
# The MD5s Keras itself checks (keras.applications.vgg16) before it trusts a cached download.
KERAS_VGG16_MD5: dict[str, str] = {
    NOTOP_FILE: "6d6bbae143d832006294945121d1f1fc",
    FULL_FILE: "64373286793e3c8b2b4e3219cbf3544b",
}
# Seed of the 'none' (random) weights: fixed so that the offline demo's features are reproducible.
RANDOM_WEIGHTS_SEED = 0
FEATURES_JSON = "features.json"
# The compute dtype policies params.yaml accepts (features.precision), in one place: the config's type.
PRECISIONS: tuple[str, ...] = get_args(FeaturesConfig.model_fields["precision"].annotation)


# --------------------------------------------------------------------------------------------- weights


def keras_cache_dir() -> Path:
    """Return the folder where Keras caches downloaded model weights.

    Mirrors Keras (``$KERAS_HOME/models``, else ``~/.keras/models``) but reads ``KERAS_HOME`` at call time,
    whereas Keras reads it once at import.
    """
    home = os.environ.get("KERAS_HOME")
    base = Path(home).expanduser() if home else Path.home() / ".keras"
    return base / "models"


def _check_published_md5(path: Path) -> None:
    """Reject a file named like one of Keras's published VGG16 files whose content is not that file."""
    expected = KERAS_VGG16_MD5.get(path.name)
    if expected is None:
        return
    actual = md5_file(path)
    if actual != expected:
        raise CvpipeError(
            f"{path}: MD5 {actual} does not match Keras's published {path.name} (MD5 {expected}); "
            "the file is truncated or not the original: replace it with the original file"
        )


def resolve_weights(spec: str) -> Path | None:
    """Turn ``features.weights`` into a local weights file, never downloading anything.

    Args:
        spec: ``imagenet`` (the notop file in the Keras cache), ``none`` (random weights) or a file path.

    Returns:
        The weights file to load, or ``None`` for random weights.

    Raises:
        CvpipeError: the file is missing, or is named like a Keras VGG16 file but its MD5 differs.
    """
    keyword = spec.strip().lower()
    if keyword == "none":
        logger.warning(
            "features.weights is 'none': the VGG16 base has random weights, so its features are meaningless "
            "for accuracy (offline demo only)"
        )
        return None
    if keyword == "imagenet":
        path = keras_cache_dir() / NOTOP_FILE
        if not path.is_file():
            raise CvpipeError(
                f"VGG16 ImageNet weights not found and downloads are off: put {NOTOP_FILE} "
                f"(MD5 {KERAS_VGG16_MD5[NOTOP_FILE]}) at {path} (e.g. copy it from ~/.keras/models of a machine "
                "that ran keras.applications.VGG16(include_top=False)), or set features.weights to a file path, "
                "or set features.weights: none to run with random weights (offline demo)"
            )
    else:
        path = Path(spec.strip()).expanduser()
        if not path.is_file():
            raise CvpipeError(f"features.weights: no such weights file {path} (use 'imagenet', 'none' or a path)")
    _check_published_md5(path)
    return path


def _glorot_uniform(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
    fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape).astype(np.float32)


def _seed_random_weights(model: keras.Model, seed: int) -> None:
    """Re-draw every kernel (Glorot uniform) and zero every bias from a NumPy seed.

    Keras's own initialisers are unseeded here, so 'none' would otherwise give different features on every
    run; NumPy draws are also identical on every backend.
    """
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        values = layer.get_weights()
        if values:
            layer.set_weights([_glorot_uniform(rng, v.shape) if v.ndim > 1 else np.zeros_like(v) for v in values])


def check_precision(precision: str) -> str:
    """Return ``precision`` if it is one of :data:`PRECISIONS`.

    Raises:
        CvpipeError: it is not.
    """
    if precision not in PRECISIONS:
        raise CvpipeError(f"features precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    return precision


def _conv_base_in(precision: str, input_shape: Sequence[int]) -> keras.Model:
    """Build the VGG16 base under the dtype policy ``precision``, leaving the global policy as it was."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(check_precision(precision))
    try:
        return vgg16_conv_base(input_shape)
    finally:
        keras.config.set_dtype_policy(previous)


def _build_conv_base(weights_path: Path | None, input_shape: Sequence[int], precision: str = "float32") -> keras.Model:
    """Build the VGG16 base and load ``weights_path`` into it (seeded random weights for ``None``)."""
    base = _conv_base_in(precision, input_shape)
    if weights_path is None:
        _seed_random_weights(base, RANDOM_WEIGHTS_SEED)
        return base
    try:
        # Legacy .h5 (Keras's published file) loads by layer order; .weights.h5 by Keras 3's object layout.
        base.load_weights(str(weights_path))
    except (ValueError, OSError, KeyError) as error:
        hint = (
            f" ({FULL_FILE} has the classifier; the conv base needs {NOTOP_FILE})"
            if weights_path.name == FULL_FILE
            else ""
        )
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CvpipeError(f"{weights_path}: cannot load into the VGG16 conv base{hint}: {first_line}") from None
    return base


def load_conv_base(weights: str, input_shape: Sequence[int], precision: str = "float32") -> keras.Model:
    """Build the VGG16 convolutional base (no classifier) with local weights.

    Args:
        weights: ``imagenet``, ``none`` or a weights file path (see :func:`resolve_weights`).
        input_shape: (height, width, 3).
        precision: the compute dtype policy, one of :data:`PRECISIONS`.

    Returns:
        The base; its output is (h, w, 512), 5 x 5 x 512 at 180 x 180.

    Raises:
        CvpipeError: the weights cannot be found, verified or loaded, or the precision is unknown.
    """
    return _build_conv_base(resolve_weights(weights), input_shape, precision)


def _weights_record(spec: str, path: Path | None) -> dict[str, Any]:
    if path is None:
        return {"spec": spec, "file": "random (none)", "seed": RANDOM_WEIGHTS_SEED}
    return {"spec": spec, "file": path.name, "sha256": sha256_file(path), "md5": md5_file(path)}


# ---------------------------------------------------------------------------------------------- inputs


class NpyRows:
    """A read-only ``.npy`` array whose rows are read on demand with positioned reads.

    Looks like the array where :func:`extract_features` needs it (``shape``, ``dtype``, ``ndim``, ``len``,
    a row slice gives a NumPy array), but keeps nothing: each slice is read into a fresh buffer, so resident
    memory stays at one batch whatever the file's size.
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


def _open_images(path: Path) -> NpyRows:
    """Open a decoded-image array for reading by row slices: nothing is read until a batch is sliced."""
    return NpyRows(path)


def _present_splits(images_dir: Path) -> list[str]:
    if not images_dir.is_dir():
        raise DataError(f"{images_dir}: no decoded-image cache (run the decode stage first)")
    splits = [split for split in SPLITS if (images_dir / f"{split}.npy").is_file()]
    if not splits:
        raise DataError(f"{images_dir}: none of {', '.join(f'{s}.npy' for s in SPLITS)} (run the decode stage)")
    return splits


def _open_split(images_dir: Path, split: str) -> tuple[NpyRows, np.ndarray]:
    """Open one split's images (memory-mapped) and labels, checking the decode stage's contract."""
    images_path, labels_path = images_dir / f"{split}.npy", images_dir / f"{split}_labels.npy"
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
) -> dict[str, Any]:
    """Run the VGG16 conv base over every split in the decoded-image cache, one streaming pass per split.

    Args:
        images_dir: the decode stage's folder (``{split}.npy`` uint8 N x S x S x 3, ``{split}_labels.npy``).
        out_dir: where ``{split}.npy`` (features), ``{split}_labels.npy`` and ``features.json`` go.
        cfg: the ``features`` params (weights, batch size, output dtype, compute precision).
        progress: called after each batch with the number of images in it.
        precision: the compute dtype policy (:data:`PRECISIONS`), overriding ``cfg.precision`` (benchmarks).

    Returns:
        A summary: feature shape, dtype, precision, and per split its count, seconds and images per second.

    Raises:
        DataError: the cache is missing or does not satisfy the decode stage's contract.
        CvpipeError: the weights cannot be found, verified or loaded, or the precision is unknown.
    """
    images_dir, out_dir = Path(images_dir), Path(out_dir)
    precision = check_precision(precision or cfg.precision)
    if keras.config.image_data_format() != "channels_last":
        raise CvpipeError("Keras image_data_format must be 'channels_last' (see ~/.keras/keras.json)")
    opened = {split: _open_split(images_dir, split) for split in _present_splits(images_dir)}
    input_shape = _common_input_shape(opened)
    weights_path = resolve_weights(cfg.weights)
    model = _build_conv_base(weights_path, input_shape, precision)
    feature_shape = tuple(int(d) for d in model.output_shape[1:])

    splits: dict[str, dict[str, float | int]] = {}
    for split, (images, labels) in opened.items():
        seconds = _extract_split(model, images, out_dir / f"{split}.npy", cfg, progress)
        write_npy_atomic(out_dir / f"{split}_labels.npy", labels)
        count = int(images.shape[0])
        rate = count / seconds if seconds > 0 else 0.0
        splits[split] = {"count": count, "seconds": round(seconds, 3), "images_per_second": round(rate, 2)}
        logger.info("features %s: %d images in %.1f s (%.1f images/s)", split, count, seconds, rate)

    # Written last: its presence means every split's features are complete. No timings, so it is
    # byte-identical for equal inputs.
    write_json_atomic(
        out_dir / FEATURES_JSON,
        {
            "weights": _weights_record(cfg.weights, weights_path),
            "dtype": cfg.dtype,
            "precision": precision,
            "batch_size": cfg.batch_size,
            "input_shape": list(input_shape),
            "feature_shape": list(feature_shape),
            "preprocess": "keras.applications.vgg16.preprocess_input (caffe: RGB->BGR, ImageNet mean subtracted)",
            "counts": {split: info["count"] for split, info in splits.items()},
            "keras_version": keras.__version__,
            "backend": keras.backend.backend(),
        },
    )
    return {"feature_shape": list(feature_shape), "dtype": cfg.dtype, "precision": precision, "splits": splits}
