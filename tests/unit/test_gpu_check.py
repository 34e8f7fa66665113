"""bench/gpu_check.py and bench/gpu/: FLOP counts, synthetic data, reports, the offline install, a tiny CPU run.

The GPU machine has JAX but no TensorFlow, DVC, pandas or Pillow: the end-to-end run blocks those imports so
that a dependency creeping into the check's path fails here, not on the lent machine.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import math
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
RUN_SH = ROOT / "bench" / "gpu" / "run.sh"


def load(path: Path, name: str) -> ModuleType:
    """Import a script that lives outside the package (registered first: dataclasses look their module up)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


gpu_check = load(ROOT / "bench" / "gpu_check.py", "gpu_check")
install = load(ROOT / "bench" / "gpu" / "install.py", "gpu_install")
prepare = load(ROOT / "bench" / "gpu" / "prepare.py", "gpu_prepare")


# --------------------------------------------------------------------------------------------------- FLOPs


def test_conv_flops_formula() -> None:
    # 2 x H_out x W_out x k x k x C_in x C_out
    assert gpu_check.conv_flops((2, 3), (3, 3, 4, 5)) == 2 * 2 * 3 * 3 * 3 * 4 * 5


def test_vgg16_conv_base_flops_match_the_published_figure() -> None:
    from cvpipe.ml.models import vgg16_conv_base

    forward, step = gpu_check.model_flops(vgg16_conv_base((224, 224, 3)))
    # VGG16's 13 convs are ~15.35 GMACs at 224 px (15.47 with the classifier, the usual "15.5 GFLOPs").
    assert forward == 30_693_261_312
    assert forward / 2 == pytest.approx(15.35e9, rel=0.005)
    # All trainable: weight grads everywhere, input grads everywhere above the first conv.
    assert 2 * forward < step < 3 * forward

    forward_180, _ = gpu_check.model_flops(vgg16_conv_base((180, 180, 3)))
    # Pooling floors 45 -> 22 -> 11, so a little under the (180/224)^2 scaling.
    assert forward_180 == 19_478_255_616
    assert forward_180 < forward * (180 / 224) ** 2


def test_training_flops_follow_the_trainable_layers() -> None:
    from cvpipe.ml.models import frozen_base_classifier, prepare_fine_tuning, vgg16_conv_base

    model = frozen_base_classifier(vgg16_conv_base((64, 64, 3)))
    forward, frozen_step = gpu_check.model_flops(model)
    dense256, dense1 = 2 * (2 * 2 * 512) * 256, 2 * 256  # the head on the 2x2x512 map
    # The frozen base costs its forward pass only; Dense(256) adds its weight grads, Dense(1) both grads.
    assert frozen_step == forward + dense256 + 2 * dense1

    block5 = sum(
        gpu_check.layer_flops(layer) for layer in gpu_check.leaf_layers(model) if layer.name.startswith("block5_conv")
    )
    _, tuning_step = gpu_check.model_flops(prepare_fine_tuning(model))
    block5_conv1 = gpu_check.layer_flops(
        next(layer for layer in gpu_check.leaf_layers(model) if layer.name == "block5_conv1")
    )
    # block5 convs: weight grads (x1 more); all but the first also input grads (x1 more); the head: both.
    assert tuning_step == forward + block5 + (block5 - block5_conv1) + 2 * (dense256 + dense1)


# ---------------------------------------------------------------------------------------------------- data


def test_synthetic_split_shapes_balance_determinism() -> None:
    images, labels = gpu_check.synthetic_split(per_class=300, size=40, seed=3, split_index=0)
    assert images.shape == (600, 40, 40, 3) and images.dtype == np.uint8
    assert labels.shape == (600,) and labels.dtype == np.int32
    assert np.bincount(labels).tolist() == [300, 300]
    assert 0 < labels[:20].sum() < 20  # shuffled, not sorted by class

    again, labels_again = gpu_check.synthetic_split(per_class=300, size=40, seed=3, split_index=0)
    np.testing.assert_array_equal(images, again)
    np.testing.assert_array_equal(labels, labels_again)
    other_split, _ = gpu_check.synthetic_split(per_class=300, size=40, seed=3, split_index=1)
    other_seed, _ = gpu_check.synthetic_split(per_class=300, size=40, seed=4, split_index=0)
    assert not np.array_equal(images, other_split)
    assert not np.array_equal(images, other_seed)


def test_shapes_have_equal_areas_and_differ_in_form() -> None:
    size, n = 200, 50
    rng = np.random.default_rng(0)
    centre = rng.uniform(80, 120, (n, 2))
    radii = rng.uniform(25, 55, (n, 2))
    ellipses = gpu_check.shape_masks(np.zeros(n, np.int32), centre, radii, size)
    rectangles = gpu_check.shape_masks(np.ones(n, np.int32), centre, radii, size)
    areas = ellipses.sum(axis=(1, 2)) / rectangles.sum(axis=(1, 2))
    np.testing.assert_allclose(areas, 1.0, atol=0.05)  # same area: size tells nothing

    def fill(mask: np.ndarray) -> float:
        rows, cols = np.nonzero(mask)
        return mask.sum() / ((np.ptp(rows) + 1) * (np.ptp(cols) + 1))

    assert all(fill(mask) > 0.99 for mask in rectangles)
    assert all(abs(fill(mask) - math.pi / 4) < 0.05 for mask in ellipses)


def test_synthetic_classes_share_brightness() -> None:
    images, labels = gpu_check.synthetic_split(per_class=1000, size=32, seed=0, split_index=0)
    assert abs(images[labels == 0].mean() - images[labels == 1].mean()) < 3  # no brightness shortcut
    assert images.std() > 20


def test_write_image_cache_matches_the_decode_contract(tmp_path: Path) -> None:
    counts = gpu_check.write_image_cache(tmp_path, (3, 2, 1), 32, seed=0)
    assert counts == {"train": 6, "val": 4, "test": 2}
    for split, count in counts.items():
        images = np.load(tmp_path / f"{split}.npy", mmap_mode="r")
        labels = np.load(tmp_path / f"{split}_labels.npy")
        assert images.shape == (count, 32, 32, 3) and images.dtype == np.uint8
        assert labels.dtype == np.int32 and np.bincount(labels).tolist() == [count // 2] * 2


# ------------------------------------------------------------------------------------------ timing, report


def test_steady_epoch_seconds_skips_the_compiling_epoch() -> None:
    assert gpu_check.steady_epoch_seconds([30.0, 1.0, 3.0, 2.0]) == 2.0
    assert gpu_check.steady_epoch_seconds([4.0]) == 4.0
    assert math.isnan(gpu_check.steady_epoch_seconds([]))


def test_scaled_epochs() -> None:
    assert gpu_check.scaled_epochs(30, 1.0, None) == 30
    assert gpu_check.scaled_epochs(100, 0.1, None) == 10
    assert gpu_check.scaled_epochs(20, 0.01, None) == 1
    assert gpu_check.scaled_epochs(50, 1.0, 2) == 2


def test_parse_args_orders_variants_and_needs_fine_tunings_parent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OUT", raising=False)
    args = gpu_check.parse_args(["--variants", "fine_tuning,scratch,feature_extraction_aug"])
    assert args.variants == ["scratch", "feature_extraction_aug", "fine_tuning"]
    assert args.per_class == [1000, 500, 1000] and args.size == 180 and args.batch_size == 32
    assert args.precision == "auto"
    assert args.out.parent == ROOT / "bench" / "results"
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--variants", "fine_tuning"])
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--variants", "scratch,nope"])
    monkeypatch.setenv("OUT", "/somewhere")
    assert gpu_check.parse_args([]).out == Path("/somewhere/gpu-check.md")


def test_render_markdown_handles_missing_figures() -> None:
    report = gpu_check.Report(machine={"date": "2026-01-02T03:04:05+00:00"}, settings={"matmul_size": 8192})
    report.rows.append(gpu_check.Row(name="scratch", images=10, epochs=1, seconds=2.0))
    text = gpu_check.render_markdown(report)
    assert "# GPU check, 2026-01-02" in text
    assert "| scratch | 10 | 1 | 2.0 |" in text and "n/a" in text
    assert "INCOMPLETE" in text


# --------------------------------------------------------------------------------------- wheels, install


def test_prepare_downloads_pinned_wheels_for_each_python(tmp_path: Path) -> None:
    pins = prepare.pinned_versions([*prepare.PURE, *prepare.BINARY])
    assert pins["keras"] == __import__("keras").__version__
    commands = prepare.download_commands(pins, tmp_path)
    assert len(commands) == 1 + len(prepare.PYTHONS)
    for command in commands:
        assert {"--no-deps", "--only-binary=:all:"} <= set(command)
        assert command[command.index("--dest") + 1] == str(tmp_path)
    assert f"keras=={pins['keras']}" in commands[0]
    for version, command in zip(prepare.PYTHONS, commands[1:], strict=True):
        assert command[command.index("--python-version") + 1] == version
        assert f"pydantic-core=={pins['pydantic-core']}" in command
    text = prepare.requirements_text(pins)
    assert install.parse_requirements(text) == {install.normalise(k): v for k, v in pins.items()}


def test_install_plan_keeps_what_the_machine_has() -> None:
    pins = {
        "keras": "3.15.1",
        "rich": "15.0.0",
        "typing-extensions": "4.16.0",
        "pydantic": "2.14.4",
        "pydantic-core": "2.50.5",
        "pyyaml": "6.0.4",
    }
    machine = {
        "keras": "3.15.1",
        "rich": "15.1.0",
        "typing-extensions": "4.12.2",
        "pydantic-core": "2.50.5",
        "pyyaml": "6.0.4",
    }
    wanted, notes = install.plan(pins, machine.get)
    # keras always; typing-extensions older there; pydantic missing, so its pinned core comes along.
    assert wanted == ["keras==3.15.1", "pydantic==2.14.4", "pydantic-core==2.50.5", "typing-extensions==4.16.0"]
    assert any("rich: keep the machine's 15.1.0" in note for note in notes)
    assert any("pydantic-core: install 2.50.5 (goes with pydantic)" in note for note in notes)


def test_release_and_normalise() -> None:
    assert install.release("2.50.5") == (2, 50, 5)
    assert install.release("1.2rc1") == (1, 2)
    assert install.release("4.16.0") > install.release("4.9.1")
    assert install.normalise("PyYAML") == "pyyaml"
    assert install.normalise("pydantic_core") == "pydantic-core"


def _dummy_wheel(folder: Path, name: str, version: str) -> Path:
    """Write a minimal pure-Python wheel (PEP 427) defining ``VALUE = 42``."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": b"VALUE = 42\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }

    def digest(data: bytes) -> str:
        return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()

    record = "".join(f"{path},{digest(data)},{len(data)}\n" for path, data in files.items()) + f"{dist}/RECORD,,\n"
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in files.items():
            archive.writestr(member, data)
        archive.writestr(f"{dist}/RECORD", record)
    return path


def test_run_sh_installs_offline_from_the_wheel_folder(tmp_path: Path) -> None:
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    wheels.mkdir()
    _dummy_wheel(wheels, "gpucheck_dummy", "0.1")
    # numpy is here at a newer version than 0.1, so it is kept (and needs no wheel).
    (wheels / "requirements.txt").write_text("# test\ngpucheck_dummy==0.1\nnumpy==0.1\n")
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "GPU_CHECK_WHEELS": str(wheels),
        "GPU_CHECK_SITE": str(site),
        "JAX_PLATFORMS": "cpu",
        "PIP_NO_INDEX": "1",
    }
    result = subprocess.run(
        ["bash", str(RUN_SH), "--install-only"], env=env, capture_output=True, text=True, timeout=180, check=False
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "gpucheck-dummy: install 0.1 (machine has none)" in result.stdout
    assert "numpy: keep the machine's" in result.stdout
    assert "keras 3" in result.stdout and "(jax)" in result.stdout
    assert (site / "gpucheck_dummy" / "__init__.py").read_text() == "VALUE = 42\n"
    assert not (site / "numpy").exists()


def test_run_sh_says_what_to_do_without_wheels(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "GPU_CHECK_WHEELS": str(tmp_path / "none"),
        "GPU_CHECK_SITE": str(tmp_path / "site"),
    }
    result = subprocess.run(
        ["bash", str(RUN_SH), "--install-only"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2
    assert "prepare.py" in result.stderr


# ---------------------------------------------------------------------------------------------- end to end

BLOCKED_RUN = """
import runpy, sys

class NotOnTheGpuMachine:
    # The lent machine has none of these; the check's path must not import them.
    blocked = {"tensorflow", "dvc", "dvclive", "pandas", "pyarrow", "pandera", "prefect", "PIL", "typer"}

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.blocked:
            raise ModuleNotFoundError(f"No module named {name!r} (not on the GPU machine)")
        return None

sys.meta_path.insert(0, NotOnTheGpuMachine())
sys.argv = ["bench/gpu_check.py", *sys.argv[1:]]
runpy.run_path("bench/gpu_check.py", run_name="__main__")
"""


@pytest.mark.slow
def test_tiny_cpu_run_fills_the_table(tmp_path: Path) -> None:
    out = tmp_path / "results" / "gpu-check.md"
    env = {key: value for key, value in os.environ.items() if key != "OUT"}
    env.update({"KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)})
    args = [
        "--per-class",
        "4",
        "4",
        "4",
        "--size",
        "32",
        "--epochs",
        "2",
        "--matmul-size",
        "64",
        "--features-batch-size",
        "8",
        "--workdir",
        str(tmp_path),
        "--out",
        str(out),
    ]
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(BLOCKED_RUN), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]

    report = json.loads(out.with_suffix(".json").read_text())
    assert report["complete"] is True
    names = [row["name"] for row in report["rows"]]
    assert names == [
        "features (VGG16 pass)",
        "scratch",
        "scratch_aug",
        "feature_extraction",
        "feature_extraction_aug",
        "fine_tuning",
    ]
    features, *variants = report["rows"]
    assert features["images"] == 24
    for key in ("seconds", "images_per_second", "flops_per_second", "peak_fraction"):
        assert math.isfinite(features[key]) and features[key] > 0, key
    for row in variants:
        assert row["epochs"] == 2 and row["images"] == 8
        for key in (
            "seconds",
            "eval_seconds",
            "first_epoch",
            "per_epoch",
            "images_per_second",
            "flops_per_second",
            "peak_fraction",
        ):
            assert math.isfinite(row[key]) and row[key] > 0, (row["name"], key)
        assert 0.0 <= row["test_accuracy"] <= 1.0
    assert math.isfinite(report["bf16_rate"]) and report["bf16_rate"] > 0
    assert report["experiment_seconds"] == pytest.approx(
        sum(row["seconds"] + row["eval_seconds"] for row in report["rows"])
    )

    markdown = out.read_text()
    assert markdown == result.stdout.split("written: ")[0].rstrip("\n") + "\n"
    for name in names:
        assert f"| {name} |" in markdown
    assert "VGG16 weights: none" in markdown and "target <= 300 s" in markdown


def test_fast_path_checks_name_what_did_not_compile_or_kept_the_wrong_dtype() -> None:
    good = gpu_check.Row(
        name="fine_tuning",
        jit_compile=True,
        compute_dtypes={"base": "bfloat16", "augmentation": "float32", "head": "bfloat16"},
    )
    assert all(line.startswith("ok") for line in gpu_check.fast_path_checks(good, expect_bf16=True))
    bad = gpu_check.Row(
        name="scratch_aug",
        jit_compile=False,
        compute_dtypes={"base": "float32", "augmentation": "bfloat16", "head": "float32"},
    )
    failed = [line for line in gpu_check.fast_path_checks(bad, expect_bf16=True) if line.startswith("FAILED")]
    assert len(failed) == 3 and "scratch_aug jit_compile False (expected True)" in failed[0]
    head_only = gpu_check.Row(name="feature_extraction", jit_compile=True, compute_dtypes={"base": None})
    assert gpu_check.fast_path_checks(head_only, expect_bf16=True) == [
        "ok: feature_extraction jit_compile True (expected True)"
    ]
    report = gpu_check.Report(machine={"date": "2026-01-02"}, settings={"matmul_size": 1})
    report.checks = gpu_check.fast_path_checks(bad, expect_bf16=False)
    assert report.failed and "Fast-path checks" in gpu_check.render_markdown(report)
