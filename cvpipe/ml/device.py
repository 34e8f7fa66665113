"""What a model runs on: backend and GPUs, the dtype policy, determinism, and the multi-GPU scope.

Each backend's own module (``tensorflow``, ``jax``, ``torch``) is imported inside a function and only when it
is the backend Keras runs on, so this module loads under any Keras 3 backend without the others installed.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import keras

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Device:
    """What training runs on."""

    backend: str
    gpus: int
    bfloat16: bool

    def describe(self) -> str:
        """One line for logs and summaries, e.g. ``tensorflow backend, 2 GPUs``."""
        where = "CPU" if self.gpus == 0 else f"{self.gpus} GPU{'s' if self.gpus > 1 else ''}"
        return f"{self.backend} backend, {where}"


def detect_device() -> Device:
    """Return the backend and how many GPUs it sees (each backend is imported only when it is the one in use)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        capabilities = [tf.config.experimental.get_device_details(gpu).get("compute_capability") for gpu in gpus]
        bf16 = bool(gpus) and all(cap is not None and tuple(cap) >= (8, 0) for cap in capabilities)
        return Device(backend, len(gpus), bf16)
    if backend == "jax":
        import jax

        gpus = [device for device in jax.devices() if device.platform == "gpu"]
        bf16 = bool(gpus) and all(float(getattr(gpu, "compute_capability", "0") or 0) >= 8.0 for gpu in gpus)
        return Device(backend, len(gpus), bf16)
    if backend == "torch":
        import torch

        count = torch.cuda.device_count()
        return Device(backend, count, count > 0 and torch.cuda.is_bf16_supported())
    return Device(backend, 0, False)


def precision_policy(device: Device, mixed_precision: bool | None = None) -> str:
    """Return the dtype policy to build with.

    Mixed precision only pays on a GPU (on CPU float16 gave nothing here); bfloat16 where the GPU has it
    (compute capability 8.0+; no loss scaling needed), float16 with Keras's automatic loss scaling otherwise.

    Args:
        device: from :func:`detect_device`.
        mixed_precision: None: on exactly when a GPU is present; True/False forces it.
    """
    wanted = device.gpus > 0 if mixed_precision is None else mixed_precision
    if not wanted:
        return "float32"
    return "mixed_bfloat16" if device.bfloat16 or device.gpus == 0 else "mixed_float16"


def enable_determinism(backend: str) -> None:
    """Make kernels deterministic where the backend can (same seed, same weights)."""
    if backend == "tensorflow":
        import tensorflow as tf

        # Process-wide and with no public off switch; a stage runs in its own process.
        tf.config.experimental.enable_op_determinism()
    elif backend == "torch":
        import torch

        torch.use_deterministic_algorithms(True)
    else:
        # JAX on CPU is deterministic; on GPU it needs XLA_FLAGS=--xla_gpu_deterministic_ops=true set
        # before JAX starts, which a library cannot do after the fact.
        logger.info("deterministic: %s needs no switch on CPU (GPU: set XLA_FLAGS before start)", backend)


@contextlib.contextmanager
def dtype_policy(policy: str) -> Iterator[None]:
    """Build under ``policy``, then restore the global one so later models are unaffected."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def distribution_scope(device: Device) -> contextlib.AbstractContextManager[Any]:
    """Mirror the model over all GPUs on TensorFlow; one device elsewhere (``keras.distribution`` is JAX-only)."""
    if device.backend == "tensorflow" and device.gpus > 1:
        import tensorflow as tf

        return tf.distribute.MirroredStrategy().scope()
    return contextlib.nullcontext()
