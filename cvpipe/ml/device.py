"""What a model runs on: backend and GPUs, the dtype policy, determinism, and the multi-GPU scope.

Each backend's own module (``tensorflow``, ``jax``, ``torch``) is imported inside a function and only when it
is the backend Keras runs on, so this module loads under any Keras 3 backend without the others installed.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import keras

from cvpipe.config import Precision
from cvpipe.errors import ConfigError

logger = logging.getLogger(__name__)


PRECISIONS: tuple[str, ...] = get_args(Precision)
"""What ``train.precision`` and ``features.precision`` accept; ``auto`` is resolved by :func:`resolve_precision`."""

CPU_BF16_FLAGS: frozenset[str] = frozenset({"amx_bf16", "avx512_bf16"})
"""``/proc/cpuinfo`` flags of a CPU with native bfloat16 matrix instructions (Sapphire Rapids and later, Zen 4)."""

CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class Device:
    """What training runs on."""

    backend: str
    gpus: int
    bfloat16: bool
    """Every GPU has fast bfloat16 (compute capability 8.0 or more)."""
    cpu_bfloat16: bool = False
    """The CPU has AMX-BF16 or AVX512-BF16 (what ``auto`` reads when there is no GPU)."""

    def describe(self) -> str:
        """One line for logs and summaries, e.g. ``tensorflow backend, 2 GPUs``."""
        where = "CPU" if self.gpus == 0 else f"{self.gpus} GPU{'s' if self.gpus > 1 else ''}"
        return f"{self.backend} backend, {where}"


def cpu_has_bfloat16(cpuinfo: Path = CPUINFO) -> bool:
    """Return whether the CPU's flags (``/proc/cpuinfo``) include AMX-BF16 or AVX512-BF16; False where unreadable."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags" and CPU_BF16_FLAGS & set(value.split()):
            return True
    return False


def detect_device() -> Device:
    """Return the backend, how many GPUs it sees and which have bfloat16 (each backend is imported only when used)."""
    backend = keras.backend.backend()
    cpu_bf16 = cpu_has_bfloat16()
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        capabilities = [tf.config.experimental.get_device_details(gpu).get("compute_capability") for gpu in gpus]
        bf16 = bool(gpus) and all(cap is not None and tuple(cap) >= (8, 0) for cap in capabilities)
        return Device(backend, len(gpus), bf16, cpu_bf16)
    if backend == "jax":
        import jax

        gpus = [device for device in jax.devices() if device.platform == "gpu"]
        bf16 = bool(gpus) and all(float(getattr(gpu, "compute_capability", "0") or 0) >= 8.0 for gpu in gpus)
        return Device(backend, len(gpus), bf16, cpu_bf16)
    if backend == "torch":
        import torch

        count = torch.cuda.device_count()
        return Device(backend, count, count > 0 and torch.cuda.is_bf16_supported(), cpu_bf16)
    return Device(backend, 0, False, cpu_bf16)


def resolve_precision(precision: str, device: Device | None = None) -> str:
    """Return the Keras dtype policy ``precision`` stands for on ``device``.

    ``auto``: ``mixed_bfloat16`` on GPUs of compute capability 8.0+ (no loss scaling needed) and on CPUs with
    AMX-BF16 or AVX512-BF16 (oneDNN's bf16 convolutions; the VGG16 base ran 4-10x its float32 speed on
    TensorFlow, 1.3x on JAX's CPU backend); ``mixed_float16`` (Keras scales the loss) on older GPUs; ``float32``
    on other CPUs, where reduced precision only costs. Any other value is returned as it is.

    Args:
        precision: one of :data:`PRECISIONS`.
        device: from :func:`detect_device` (detected when None and ``precision`` is ``auto``).

    Raises:
        ConfigError: ``precision`` is not one of :data:`PRECISIONS`.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    device = device or detect_device()
    if device.gpus > 0:
        return "mixed_bfloat16" if device.bfloat16 else "mixed_float16"
    return "mixed_bfloat16" if device.cpu_bfloat16 else "float32"


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
