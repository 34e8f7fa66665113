"""The train stage on tiny learnable data: every variant learns, saves, reloads; seeds, backends, failures."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

from cvpipe import layout
from cvpipe.config import Params, TrainConfig, VariantConfig
from cvpipe.errors import ConfigError, DataError
from cvpipe.ml import models
from cvpipe.ml.device import detect_device, resolve_precision
from cvpipe.ml.variants import NAMES, get_variant
from cvpipe.stages import train

SIDE = 32
QUICK = VariantConfig(epochs=2, batch_size=8)
VGG_QUICK = VariantConfig(epochs=2, batch_size=4)
# deterministic=True: these runs double as the reference of the determinism test (TensorFlow's switch is
# process-wide and cannot be turned off, so it stays on for the rest of the session; harmless on CPU).
# precision float32: the reference predictions below are compared across processes and backends to 1e-5;
# the bf16 path has its own tests.
CFG = TrainConfig(
    seed=7,
    deterministic=True,
    precision="float32",
    scratch=QUICK,
    scratch_aug=QUICK,
    feature_extraction=QUICK,
    feature_extraction_aug=VGG_QUICK,
    fine_tuning=VariantConfig(epochs=2, batch_size=4, learning_rate=1e-5),  # the seed's rate
)
SUBPROCESS_TIMEOUT = 240
# XLA's CPU compiler spends 5-15 s optimising each conv graph; these tiny runs are better off without it
# (the numbers are the same, checked below with allclose).
FAST_XLA = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def shapes(count: int, seed: int, num_classes: int = 2, side: int = SIDE) -> tuple[np.ndarray, np.ndarray]:
    """Noisy uint8 images: a red disc (0), a blue square (1), a green bar (2), at random places and sizes."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % num_classes
    images = rng.integers(0, 40, (count, side, side, 3), dtype=np.uint8)
    rows, cols = np.mgrid[:side, :side]
    for image, label in zip(images, labels, strict=True):
        cy, cx = rng.integers(side // 3, 2 * side // 3, 2)
        radius = int(rng.integers(side // 6, side // 4 + 1))
        if label == 0:
            mask, colour = (rows - cy) ** 2 + (cols - cx) ** 2 <= radius**2, (230, 60, 40)
        elif label == 1:
            mask, colour = (abs(rows - cy) <= radius) & (abs(cols - cx) <= radius), (40, 60, 230)
        else:
            mask, colour = abs(rows - cy) <= radius // 3, (40, 230, 60)
        image[mask] = colour
    return images, labels


def features(count: int, seed: int, num_classes: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """float16 'VGG16 features' N x 1 x 1 x 512 around a fixed centre per class."""
    centres = np.random.default_rng(1234).normal(size=(num_classes, 512))
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % num_classes
    values = centres[labels] + rng.normal(scale=2.0, size=(count, 512))
    return values.reshape(count, 1, 1, 512).astype(np.float16), labels


def train_head(
    workdir: Path,
    name: str,
    train_split: tuple[np.ndarray, np.ndarray],
    val_split: tuple[np.ndarray, np.ndarray],
    **kwargs: Any,
) -> train.TrainSummary:
    """Train the dense head (the quickest variant) to ``models/<name>.keras`` and ``reports/<name>``."""
    return train.train_variant(
        "feature_extraction",
        CFG,
        train_split,
        val_split,
        workdir / "models" / f"{name}.keras",
        workdir / "reports" / name,
        **kwargs,
    )


def as_memmap(folder: Path, name: str, array: np.ndarray) -> np.ndarray:
    """Save and reopen read-only, memory-mapped, as the decode and features stages' caches are."""
    path = folder / f"{name}.npy"
    np.save(path, array)
    return np.load(path, mmap_mode="r")


def start_python(code: str, backend: str, cwd: Path, *args: str) -> subprocess.Popen[str]:
    """Start ``code`` in a new interpreter with ``KERAS_BACKEND`` set (not waiting, so runs can overlap)."""
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3", "JAX_PLATFORMS": "cpu"}
    if backend == "jax":
        env["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_XLA}".strip()
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    """Wait for ``process``; return its exit code, stdout and stderr."""
    try:
        stdout, stderr = process.communicate(timeout=SUBPROCESS_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
    return process.returncode, stdout, stderr


RELOAD_SCRIPT = """
import json, sys
import numpy as np
from cvpipe.ml.models import load_model
for model_path, inputs, out in json.loads(sys.argv[1]).values():
    model = load_model(model_path, compile=False)
    np.save(out, model.predict(np.load(inputs).astype("float32"), verbose=0))
"""

JAX_SCRIPT = """
import dataclasses, json, sys

class NoTensorFlow:
    # models/train/evaluate must not need TensorFlow off its backend (a JAX GPU box may not have it);
    # it also spares the 5 s import that keras.utils.set_random_seed does when TensorFlow is installed.
    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
        return None

sys.meta_path.insert(0, NoTensorFlow())
import keras
import numpy as np
from cvpipe.config import TrainConfig, VariantConfig
from cvpipe.ml.device import detect_device
from cvpipe.ml.models import compute_dtypes, load_model, vgg16_conv_base
from cvpipe.stages.train import compile_variant, train_variant

assert keras.backend.backend() == "jax"
load = lambda name: np.load(f"jax_{name}.npy", mmap_mode="r")
cfg = TrainConfig(seed=3, precision="float32", feature_extraction=VariantConfig(epochs=2, batch_size=8))
summary = dataclasses.asdict(train_variant("feature_extraction", cfg, (load("x_train"), load("y_train")),
                        (load("x_val"), load("y_val")), "jax.keras", "jax_report"))
model = load_model("jax.keras", compile=False)
np.save("jax_pred.npy", model.predict(load("x_val")[:8].astype("float32"), verbose=0))
for variant, (path, inputs, out) in json.loads(sys.argv[1]).items():
    np.save(out, load_model(path, compile=False).predict(np.load(inputs).astype("float32"), verbose=0))
# Every variant, as train_variant builds and compiles it under bf16 (no fit: XLA's compile alone is slow here).
compiled = {}
for variant, shape, extra in [
    ("scratch", (32, 32, 3), {}),
    ("scratch_aug", (32, 32, 3), {}),
    ("feature_extraction", (1, 1, 512), {}),
    ("feature_extraction_aug", (32, 32, 3), {"conv_base": vgg16_conv_base}),
    ("fine_tuning", (32, 32, 3), {"init_model": json.loads(sys.argv[2])}),
]:
    model = compile_variant(variant, cfg.scratch, shape, "mixed_bfloat16", detect_device(), **extra)
    compiled[variant] = {"jit_compile": model.jit_compile, "compute_dtypes": compute_dtypes(model)}
summary["compiled"] = compiled
summary["tensorflow_imported"] = "tensorflow" in sys.modules
print(json.dumps(summary))
"""

# JAX trains the dense head (a conv net with augmentation takes ~25 s to train on JAX's CPU backend here);
# convs, augmentation and the custom preprocessing layer run when it reads a plain and a VGG16 model that
# TensorFlow trained.
JAX_READS = ("scratch", "feature_extraction_aug")
AUGMENTED = ("scratch_aug", "feature_extraction_aug", "fine_tuning")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A scratch folder that is also the working directory, so no tool finds the project's repositories."""
    folder = tmp_path_factory.mktemp("train")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.delenv("DVC_ROOT", raising=False)
        yield folder


@pytest.fixture(scope="module")
def data(workdir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Image and feature splits as memmaps."""
    arrays = {
        "images_train": shapes(32, 0),
        "images_val": shapes(16, 1),
        "feat_train": features(48, 2),
        "feat_val": features(16, 3),
        "vgg_train": shapes(16, 4),
        "vgg_val": shapes(8, 5),
    }
    return {
        name: (as_memmap(workdir, f"{name}_x", x), as_memmap(workdir, f"{name}_y", y))
        for name, (x, y) in arrays.items()
    }


@pytest.fixture(scope="module")
def trained(workdir: Path, data: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, dict[str, Any]]:
    """All five variants, trained in pipeline order (fine_tuning starts from feature_extraction_aug)."""
    # VGG16 runs get fewer images: a CPU step through the 15M-parameter base costs more than all else here.
    splits = {"feature_extraction": "feat", "feature_extraction_aug": "vgg", "fine_tuning": "vgg"}
    extra: dict[str, dict[str, Any]] = {
        "feature_extraction_aug": {"conv_base": models.vgg16_conv_base},
        "fine_tuning": {"init_model": workdir / "models" / "feature_extraction_aug.keras"},
    }
    results: dict[str, dict[str, Any]] = {}
    for variant in NAMES:
        split = splits.get(variant, "images")
        model_path = workdir / "models" / f"{variant}.keras"
        summary = train.train_variant(
            variant,
            CFG,
            data[f"{split}_train"],
            data[f"{split}_val"],
            model_path,
            workdir / "reports" / variant,
            **extra.get(variant, {}),
        )
        results[variant] = {"summary": summary, "model": model_path, "val": data[f"{split}_val"][0]}
    return results


@pytest.mark.parametrize("variant", NAMES)
def test_each_variant_learns_and_keeps_its_best_epoch(trained: dict[str, dict[str, Any]], variant: str) -> None:
    result = trained[variant]
    summary = result["summary"]
    report = json.loads((result["model"].parents[1] / "reports" / variant / layout.HISTORY_NAME).read_text())
    history = report["history"]
    # val_loss, not loss: with dropout and augmentation on a dozen images the training loss of one epoch
    # is noise; the validation loss is measured with the model in inference mode.
    assert history["val_loss"][-1] < history["val_loss"][0]
    assert summary.epochs_run == 2 and summary.device == "tensorflow backend, CPU"
    assert summary.best_val_loss == pytest.approx(min(history["val_loss"]))
    assert summary.best_epoch == int(np.argmin(history["val_loss"])) + 1
    # history.json holds the training facts; conv_base (a spec's identity, for the lineage) is not one.
    assert report["summary"] == {k: v for k, v in dataclasses.asdict(summary).items() if k != "conv_base"}
    assert summary.conv_base is None  # the VGG16 base came as a factory here, not a weights spec
    assert result["model"].is_file()
    # What ran, for a reader to verify: TensorFlow on a CPU never compiles with XLA (Keras's "auto").
    facts = report["summary"]
    assert (facts["backend"], facts["device"]) == ("tensorflow", "tensorflow backend, CPU")
    assert facts["precision"] == "float32"
    assert facts["jit_compile"] is False
    assert facts["compute_dtypes"] == {
        "base": None if variant == "feature_extraction" else "float32",
        "augmentation": "float32" if variant in AUGMENTED else None,
        "head": "float32",
    }


def test_the_head_is_the_seeds_linear_one_by_default_and_fine_tuning_inherits_it(
    trained: dict[str, dict[str, Any]],
) -> None:
    heads = {variant: result["summary"].head_activation for variant, result in trained.items()}
    assert heads == {
        "scratch": None,
        "scratch_aug": None,
        "feature_extraction": "linear",
        "feature_extraction_aug": "linear",
        "fine_tuning": "linear",
    }


@pytest.mark.parametrize("variant", ["feature_extraction", "feature_extraction_aug"])
def test_train_head_activation_reaches_both_variants_with_a_head(variant: str) -> None:
    shape, extra = (1, 1, 512), {}
    if variant == "feature_extraction_aug":
        shape, extra = (32, 32, 3), {"conv_base": models.vgg16_conv_base}
    model = train.compile_variant(variant, QUICK, shape, "float32", detect_device(), head_activation="relu", **extra)
    assert models.head_activation(model) == "relu"
    # The scratch variants have no such head: the param does not reach them.
    scratch = train.compile_variant("scratch", QUICK, (32, 32, 3), "float32", detect_device(), head_activation="relu")
    assert models.head_activation(scratch) is None


def test_train_variant_builds_the_head_train_head_activation_names(
    workdir: Path, data: dict[str, tuple[np.ndarray, np.ndarray]]
) -> None:
    cfg = CFG.model_copy(update={"head_activation": "relu"})
    out = workdir / "relu_head"
    summary = train.train_variant(
        "feature_extraction", cfg, data["feat_train"], data["feat_val"], out / "model.keras", out, live=False
    )
    assert summary.head_activation == "relu"
    assert json.loads((out / layout.HISTORY_NAME).read_text())["summary"]["head_activation"] == "relu"
    assert models.head_activation(models.load_model(out / "model.keras", compile=False)) == "relu"


def test_fine_tuning_trains_block5_and_the_head_only(trained: dict[str, dict[str, Any]]) -> None:
    model = models.load_model(trained["fine_tuning"]["model"], compile=False)
    base = models.find_conv_base(model)
    # A reloaded InputLayer reports trainable=True; it has no weights, so it does not count.
    trainable = [
        layer.name for layer in base.layers if layer.trainable and not isinstance(layer, keras.layers.InputLayer)
    ]
    assert trainable == list(models.FINE_TUNE_LAYERS)
    assert len(base.trainable_weights) == 6
    block5 = 3 * (3 * 3 * 512 * 512 + 512)
    head = 512 * 256 + 256 + 257
    assert trained["fine_tuning"]["summary"].trainable_params == block5 + head
    assert trained["feature_extraction_aug"]["summary"].trainable_params == head


def test_dvclive_curves_and_no_leftovers(trained: dict[str, dict[str, Any]], workdir: Path) -> None:
    live = workdir / "reports" / "scratch" / layout.LIVE_DIR_NAME
    loss_curve = (live / "plots" / "metrics" / "train" / "loss.tsv").read_text().splitlines()
    assert loss_curve[0].split("\t") == ["step", "loss"] and len(loss_curve) == 3
    assert (live / "plots" / "metrics" / "val" / "accuracy.tsv").is_file()
    assert not list((workdir / "models").glob(".*"))  # no partial checkpoints
    assert not (workdir / "dvc.yaml").exists() and not (workdir / ".dvc").exists()


@pytest.fixture(scope="module")
def fresh_runs(trained: dict[str, dict[str, Any]], workdir: Path) -> dict[str, Any]:
    """Reload every model in a fresh TensorFlow process and, at the same time, train and read on JAX."""
    reload_jobs, jax_jobs = {}, {}
    for variant, result in trained.items():
        inputs = workdir / f"fresh_{variant}_x.npy"
        np.save(inputs, np.asarray(result["val"][:8]))
        reload_jobs[variant] = [str(result["model"]), str(inputs), str(workdir / f"tf_reads_{variant}.npy")]
        if variant in JAX_READS:
            jax_jobs[variant] = [str(result["model"]), str(inputs), str(workdir / f"jax_reads_{variant}.npy")]
    jax_data = {"x_train": features(32, 10), "x_val": features(16, 11)}
    for name, (x, y) in jax_data.items():
        np.save(workdir / f"jax_{name}.npy", x)
        np.save(workdir / f"jax_{name.replace('x_', 'y_')}.npy", y)

    processes = {"tensorflow": start_python(RELOAD_SCRIPT, "tensorflow", workdir, json.dumps(reload_jobs))}
    parent = json.dumps(str(trained["feature_extraction_aug"]["model"]))
    processes["jax"] = start_python(JAX_SCRIPT, "jax", workdir, json.dumps(jax_jobs), parent)
    # While they run: this process's own predictions, the reference both are held to.
    reference = {
        variant: models.load_model(path, compile=False).predict(np.load(inputs).astype("float32"), verbose=0)
        for variant, (path, inputs, _) in reload_jobs.items()
    }
    return {
        "reference": reference,
        "reload_jobs": reload_jobs,
        "jax_jobs": jax_jobs,
        "runs": {backend: finish(process) for backend, process in processes.items()},
    }


def test_saved_models_reload_in_a_fresh_process(fresh_runs: dict[str, Any]) -> None:
    code, _, stderr = fresh_runs["runs"]["tensorflow"]
    assert code == 0, stderr[-4000:]
    for variant, (_, _, out) in fresh_runs["reload_jobs"].items():
        np.testing.assert_allclose(
            np.load(out), fresh_runs["reference"][variant], rtol=1e-5, atol=1e-6, err_msg=variant
        )


def test_jax_backend_trains_and_reads_tensorflow_models(fresh_runs: dict[str, Any], workdir: Path) -> None:
    assert "jax" in fresh_runs["runs"], "jax is a dev dependency: `make test` installs it"
    code, stdout, stderr = fresh_runs["runs"]["jax"]
    assert code == 0, stderr[-4000:]
    summary = json.loads(stdout.strip().splitlines()[-1])
    history = json.loads((workdir / "jax_report" / layout.HISTORY_NAME).read_text())["history"]
    assert summary["backend"] == "jax" and summary["device"] == "jax backend, CPU"
    assert summary["tensorflow_imported"] is False
    assert summary["jit_compile"] is True
    # Every variant compiles on JAX (RandomRotation/RandomZoom's supports_jit=False made three run op by op),
    # bf16 reaches the VGG16 base and the augmentation stays float32.
    for variant, facts in summary["compiled"].items():
        assert facts["jit_compile"] is True, variant
        assert facts["compute_dtypes"] == {
            "base": None if variant == "feature_extraction" else "bfloat16",
            "augmentation": "float32" if variant in AUGMENTED else None,
            "head": "float32" if variant.startswith("scratch") else "bfloat16",
        }, variant
    assert history["val_loss"][-1] < history["val_loss"][0]
    # The JAX-trained file reads back on TensorFlow with the same predictions, and the other way round.
    val = np.load(workdir / "jax_x_val.npy")[:8].astype("float32")
    here = models.load_model(workdir / "jax.keras", compile=False).predict(val, verbose=0)
    np.testing.assert_allclose(np.load(workdir / "jax_pred.npy"), here, rtol=1e-4, atol=1e-5)
    for variant, (_, _, out) in fresh_runs["jax_jobs"].items():
        np.testing.assert_allclose(
            np.load(out), fresh_runs["reference"][variant], rtol=1e-4, atol=1e-5, err_msg=variant
        )


def test_more_than_two_classes_trains_a_softmax(workdir: Path) -> None:
    summary = train_head(
        workdir, "three", features(48, 4, num_classes=3), features(15, 5, num_classes=3), num_classes=3
    )
    model = models.load_model(workdir / "models" / "three.keras")
    assert model.output_shape == (None, 3)
    assert model.loss == "sparse_categorical_crossentropy"
    history = json.loads((workdir / "reports" / "three" / layout.HISTORY_NAME).read_text())["history"]
    assert history["loss"][-1] < history["loss"][0]
    assert summary.best_val_accuracy is not None


def test_deterministic_training_repeats_bit_for_bit(
    trained: dict[str, dict[str, Any]], data: dict[str, tuple[np.ndarray, np.ndarray]], workdir: Path
) -> None:
    again = workdir / "models" / "scratch_aug_again.keras"
    train.train_variant("scratch_aug", CFG, data["images_train"], data["images_val"], again, workdir / "again")
    first = models.load_model(trained["scratch_aug"]["model"], compile=False).get_weights()
    second = models.load_model(again, compile=False).get_weights()
    assert len(first) == len(second) > 0
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)


class _Crash(keras.callbacks.Callback):
    """Kill the run after the first epoch (its weights are kept in memory, nothing is on disk yet)."""

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        raise KeyboardInterrupt


def test_an_interrupted_run_leaves_no_model(workdir: Path) -> None:
    out = workdir / "models" / "crashed.keras"
    out.write_bytes(b"a stale model from an earlier run")
    with pytest.raises(KeyboardInterrupt):
        train.train_variant(
            "feature_extraction",
            CFG,
            features(16, 6),
            features(8, 7),
            out,
            workdir / "reports" / "crashed",
            callbacks=[_Crash()],
        )
    assert not out.exists()
    assert not list(out.parent.glob(".crashed*"))


def test_a_split_too_large_for_memory_trains_a_batch_at_a_time(workdir: Path) -> None:
    out = workdir / "models" / "batched.keras"
    summary = train_head(workdir, "batched", features(48, 15), features(16, 16), in_memory_bytes=0)
    history = json.loads((workdir / "reports" / "batched" / layout.HISTORY_NAME).read_text())["history"]
    assert out.is_file() and summary.epochs_run == 2
    assert history["val_loss"][-1] < history["val_loss"][0]


@pytest.mark.parametrize(
    ("variant", "kwargs", "error", "message"),
    [
        ("resnet", {}, ConfigError, "valid variants: scratch, scratch_aug"),
        ("feature_extraction_aug", {}, ConfigError, "needs a VGG16 conv base"),
        ("fine_tuning", {}, ConfigError, "init_model"),
        ("feature_extraction", {}, DataError, "VGG16 features"),
        ("scratch", {"num_classes": 2, "labels": 2}, DataError, "labels span"),
    ],
)
def test_bad_requests_fail_with_one_line(
    workdir: Path, variant: str, kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    x, y = shapes(4, 0)
    if "labels" in kwargs:
        y = y + kwargs.pop("labels")
    with pytest.raises(error, match=message) as info:
        train.train_variant(variant, CFG, (x, y), (x, y), workdir / "models" / "bad.keras", workdir / "bad", **kwargs)
    assert "\n" not in str(info.value)


def test_mixed_precision_trains_keeps_a_float32_output_and_restores_the_policy(workdir: Path) -> None:
    out = workdir / "models" / "mixed.keras"
    summary = train_head(workdir, "mixed", features(32, 12), features(8, 13), precision="mixed_bfloat16")
    assert summary.precision == "mixed_bfloat16"
    assert summary.compute_dtypes == {"base": None, "augmentation": None, "head": "bfloat16"}
    assert keras.config.dtype_policy().name == "float32"
    model = models.load_model(out, compile=False)
    assert model.get_layer(index=2).dtype_policy.name == "mixed_bfloat16"
    assert model.predict(features(4, 14)[0].astype("float32"), verbose=0).dtype == np.float32


def test_auto_precision_is_resolved_from_the_hardware_and_recorded(workdir: Path) -> None:
    auto = CFG.model_copy(update={"precision": "auto"})
    summary = train.train_variant(
        "feature_extraction", auto, features(16, 30), features(8, 31), workdir / "auto.keras", workdir / "auto"
    )
    expected = resolve_precision("auto", detect_device())  # mixed_bfloat16 on the AMX/AVX512-BF16 CPUs here
    assert summary.precision == expected
    assert summary.compute_dtypes["head"] == ("bfloat16" if expected == "mixed_bfloat16" else "float32")


def test_fine_tuning_recasts_its_parent_to_this_runs_precision(
    trained: dict[str, dict[str, Any]], data: dict[str, tuple[np.ndarray, np.ndarray]], workdir: Path
) -> None:
    # The parent was trained (and saved) in float32; a bf16 run must not inherit that through the file.
    quick = CFG.model_copy(update={"fine_tuning": VariantConfig(epochs=1, batch_size=4, learning_rate=1e-5)})
    summary = train.train_variant(
        "fine_tuning",
        quick,
        data["vgg_train"],
        data["vgg_val"],
        workdir / "models" / "ft_bf16.keras",
        workdir / "reports" / "ft_bf16",
        init_model=trained["feature_extraction_aug"]["model"],
        precision="mixed_bfloat16",
    )
    assert summary.compute_dtypes == {"base": "bfloat16", "augmentation": "float32", "head": "bfloat16"}
    assert summary.trainable_params == trained["fine_tuning"]["summary"].trainable_params


def test_a_weights_spec_is_resolved_by_the_weights_module() -> None:
    # "none": random weights, nothing downloaded
    base = train._resolve_conv_base(get_variant("feature_extraction_aug"), "none", (32, 32, 3))
    assert base.get_layer("block5_conv1") is not None and base.output_shape == (None, 1, 1, 512)


def _write_cache(folder: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, (x, y) in splits.items():
        np.save(layout.split_file(folder, split), x)
        np.save(layout.labels_file(folder, split), y)
    return folder


def test_run_trains_from_a_cache_folder_and_counts_epochs(workdir: Path) -> None:
    cache = _write_cache(workdir / "stage_features", {"train": features(24, 20), "val": features(8, 21)})
    params = Params(train=CFG)
    paths = train.TrainPaths(cache, workdir / "models" / "stage.keras", workdir / "reports" / "stage")
    epochs: list[int] = []
    summary = train.run("feature_extraction", params, paths, epochs.append)
    assert summary.variant == "feature_extraction" and summary.epochs_run == 2 == sum(epochs)
    assert summary.conv_base is None and paths.model.is_file()
    assert train.TrainPaths.default("fine_tuning") == train.TrainPaths(
        layout.IMAGES_CACHE,
        layout.model_file("fine_tuning"),
        layout.train_dir("fine_tuning"),
        layout.model_file("feature_extraction_aug"),
    )
    assert train.TrainPaths.default("feature_extraction").inputs == layout.FEATURES_CACHE


def test_run_records_the_conv_base_a_weights_spec_built(workdir: Path) -> None:
    cache = _write_cache(workdir / "stage_images", {"train": shapes(8, 22), "val": shapes(4, 23)})
    quick = CFG.model_copy(
        update={"feature_extraction_aug": VariantConfig(epochs=1, batch_size=4), "precision": "mixed_bfloat16"}
    )
    params = Params.model_validate({"train": quick.model_dump(), "features": {"weights": "none"}})
    paths = train.TrainPaths(cache, workdir / "models" / "stage_aug.keras", workdir / "reports" / "stage_aug")
    summary = train.run("feature_extraction_aug", params, paths)
    assert summary.conv_base == {"spec": "none", "file": "random (none)"}
    # The base a weights spec builds computes in the run's precision (it was float32 under a bf16 head),
    # the augmentation in float32 (TensorFlow has no bf16 GPU kernel for it).
    assert summary.compute_dtypes == {"base": "bfloat16", "augmentation": "float32", "head": "bfloat16"}
    history = json.loads((paths.out / layout.HISTORY_NAME).read_text())
    assert "conv_base" not in history["summary"]


def test_run_needs_the_parents_model_for_fine_tuning(workdir: Path) -> None:
    paths = train.TrainPaths(workdir, workdir / "ft.keras", workdir / "ft")
    with pytest.raises(ConfigError, match=r"pass it as init \(--init models/feature_extraction_aug\.keras\)"):
        train.run("fine_tuning", Params(), paths)
