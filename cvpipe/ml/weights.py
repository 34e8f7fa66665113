"""VGG16 weights, never from the network: resolve ``features.weights``, check it, build the conv base with it.

``imagenet`` means the file Keras would have cached, which must already be in ``$KERAS_HOME/models`` (default
``~/.keras/models``); ``none`` means seeded random weights (an offline demo whose features are meaningless for
accuracy); anything else is a weights file path. The identity of the weights used (spec, file, sha256) goes
into the features cache's metadata and the lineage of every model built on them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_args

import keras
import numpy as np

from cvpipe.config import FeaturesConfig
from cvpipe.errors import CvpipeError
from cvpipe.io import md5_file, sha256_file
from cvpipe.ml.device import dtype_policy
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
RANDOM_WEIGHTS_FILE = "random (none)"
# The compute dtype policies params.yaml accepts (features.precision), in one place: the config's type.
PRECISIONS: tuple[str, ...] = get_args(FeaturesConfig.model_fields["precision"].annotation)


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


def seed_random_weights(model: keras.Model, seed: int) -> None:
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


def build_conv_base(weights_path: Path | None, input_shape: Sequence[int], precision: str = "float32") -> keras.Model:
    """Build the VGG16 base under the dtype policy ``precision`` and load ``weights_path`` into it.

    ``None`` gives seeded random weights. The global dtype policy is left as it was.

    Raises:
        CvpipeError: the file does not fit the conv base, or the precision is unknown.
    """
    with dtype_policy(check_precision(precision)):
        base = vgg16_conv_base(input_shape)
    if weights_path is None:
        seed_random_weights(base, RANDOM_WEIGHTS_SEED)
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
    return build_conv_base(resolve_weights(weights), input_shape, precision)


def weights_record(spec: str, path: Path | None) -> dict[str, Any]:
    """The weights as the features cache records them (``features.json``): spec, file, sha256 and MD5, or seed."""
    if path is None:
        return {"spec": spec, "file": RANDOM_WEIGHTS_FILE, "seed": RANDOM_WEIGHTS_SEED}
    return {"spec": spec, "file": path.name, "sha256": sha256_file(path), "md5": md5_file(path)}


def weights_identity(spec: str) -> dict[str, Any]:
    """The VGG16 weights a model was built on, for its lineage: spec, file and sha256 (random weights: none).

    Raises:
        CvpipeError: the weights cannot be found or verified (see :func:`resolve_weights`).
    """
    path = resolve_weights(spec)
    if path is None:
        return {"spec": spec, "file": RANDOM_WEIGHTS_FILE}
    return {"spec": spec, "file": path.name, "sha256": sha256_file(path)}
