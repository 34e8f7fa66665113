"""Device and precision: mixed precision only on GPUs; the dtype policy scope restores the global one."""

from __future__ import annotations

import keras

from cvpipe.ml import device


def test_precision_policy_is_mixed_only_on_gpus() -> None:
    cpu = device.Device("tensorflow", 0, False)
    assert device.precision_policy(cpu) == "float32"
    assert device.precision_policy(device.Device("tensorflow", 1, True)) == "mixed_bfloat16"
    assert device.precision_policy(device.Device("tensorflow", 2, False)) == "mixed_float16"
    assert device.precision_policy(cpu, mixed_precision=True) == "mixed_bfloat16"
    assert device.Device("jax", 2, True).describe() == "jax backend, 2 GPUs"


def test_dtype_policy_scope_restores_the_global_policy() -> None:
    before = keras.config.dtype_policy().name
    try:
        with device.dtype_policy("mixed_bfloat16"):
            assert keras.config.dtype_policy().name == "mixed_bfloat16"
            raise RuntimeError("a failed build")
    except RuntimeError:
        pass
    assert keras.config.dtype_policy().name == before


def test_this_machine_is_described() -> None:
    found = device.detect_device()
    assert found.backend == keras.backend.backend() and found.gpus >= 0
    assert device.distribution_scope(found) is not None
