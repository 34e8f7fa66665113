"""Device and precision: auto picks bf16 on bf16 GPUs and CPUs; the dtype policy scope restores the global one."""

from __future__ import annotations

from pathlib import Path

import keras
import pytest

from cvpipe.errors import ConfigError
from cvpipe.ml import device


@pytest.mark.parametrize(
    ("found", "expected"),
    [
        (device.Device("tensorflow", 1, True), "mixed_bfloat16"),  # compute capability >= 8.0
        (device.Device("jax", 2, False, cpu_bfloat16=True), "mixed_float16"),  # older GPUs: the GPU decides
        (device.Device("tensorflow", 0, False, cpu_bfloat16=True), "mixed_bfloat16"),  # AMX-BF16 / AVX512-BF16
        (device.Device("jax", 0, False, cpu_bfloat16=False), "float32"),
    ],
)
def test_auto_precision_picks_by_hardware(found: device.Device, expected: str) -> None:
    assert device.resolve_precision("auto", found) == expected
    for explicit in ("float32", "mixed_bfloat16", "mixed_float16"):
        assert device.resolve_precision(explicit, found) == explicit


def test_unknown_precision_is_one_line() -> None:
    with pytest.raises(ConfigError, match=r"precision 'bf16': expected one of auto, float32"):
        device.resolve_precision("bf16", device.Device("jax", 0, False))
    assert device.Device("jax", 2, True).describe() == "jax backend, 2 GPUs"


@pytest.mark.parametrize(
    ("flags", "expected"),
    [("fpu avx512f avx512_bf16 avx512_vnni", True), ("fpu avx2 amx_bf16 amx_tile", True), ("fpu avx512f avx2", False)],
)
def test_cpu_bfloat16_is_read_from_the_flags(tmp_path: Path, flags: str, expected: bool) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: a CPU\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
    assert device.cpu_has_bfloat16(cpuinfo) is expected
    assert device.cpu_has_bfloat16(tmp_path / "missing") is False


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
    assert found.cpu_bfloat16 is device.cpu_has_bfloat16()
    assert device.distribution_scope(found) is not None
