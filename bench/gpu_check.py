"""GPU check: the seed's whole experiment (VGG16 features + the five variants) on synthetic data, timed.

Runs the library's own code (``cvpipe.stages.features.extract_features``, ``cvpipe.stages.train.train_variant``,
``cvpipe.stages.evaluate.evaluate_model``) at the seed's sizes (1,000/500/1,000 images per class, 180x180) and epochs
(30/100/20/50/30, batch 32, RMSprop 1e-3, fine-tuning 1e-5) on a learnable synthetic dataset, and prints one
table: per variant the epochs, seconds, seconds per epoch after the first (which carries XLA's compilation),
images/s, model FLOP/s and their fraction of the accelerator's measured bf16 matrix rate, peak accelerator
memory, test accuracy; and the whole experiment's wall time against the target (5 minutes on one H200).
It also checks the fast path (issue 16) for every variant, from its training summary: compiled by XLA
(``jit_compile``), bfloat16 in the VGG16 base (and the small convnet's convs) under ``auto`` on a bf16 GPU, and
the augmentation in float32; a failed check is listed under the table and the exit code is 1.

Made for the lent GPU machine, which has JAX but no TensorFlow and no internet: it needs only NumPy, JAX, Keras
and pydantic/PyYAML (for ``cvpipe.config``); ``bench/gpu/run.sh`` installs Keras and the rest from carried
wheels. ImageNet weights cannot be downloaded there, so the VGG16 base has seeded random weights
(``features.weights: none``): timings are those of the real model, accuracies are not the seed's.
Curves are not sent to dvclive (it imports DVC, which the machine lacks): ``train_variant(live=False)``.

    bash bench/gpu/run.sh                          # on the GPU machine: install from wheels, full check
    KERAS_BACKEND=jax JAX_PLATFORMS=cpu .venv/bin/python -m bench.gpu_check --per-class 4 4 4 --size 32 \
        --epochs 2 --matmul-size 64 --features-batch-size 8 --out /tmp/gpu-check.md     # CPU smoke test

The Markdown table goes to ``--out`` (default ``$OUT/gpu-check.md`` when ``$OUT`` is set, else
``bench/results/gpu-check-<date>.md``), rewritten after every stage so a run killed by a time limit still
leaves what it measured; a JSON with the raw figures goes next to it.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import math
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import ROOT, cpu_model
from cvpipe.config import SPLITS
from cvpipe.layout import labels_file, split_file

CLASS_NAMES: tuple[str, str] = ("ellipse", "rectangle")
SEED_PER_CLASS: tuple[int, int, int] = (1000, 500, 1000)
SEED_SIZE = 180
TARGET_SECONDS = 300.0
"""Issue 6's target for the whole experiment on one H200 (the seed's own code: ~25 min on its Colab GPU)."""
_CHUNK = 256
"""Images generated at once: bounds the generator's float32 scratch (~256 x 180 x 180 x 4 bytes per array)."""

log = logging.getLogger("gpu_check")


# ---------------------------------------------------------------------------------------------------- data


def synthetic_split(per_class: int, size: int, seed: int, split_index: int) -> tuple[np.ndarray, np.ndarray]:
    """Return one split of two learnable classes: ``per_class`` ellipses (0) and as many rectangles (1).

    Both shapes have the same area, colour and brightness distributions, on noisy backgrounds of random
    grey level, so only the shape tells the classes apart (as in dogs vs cats, no single pixel statistic
    does). Vectorised in chunks, so the seed's 5,000 images at 180 px take seconds and little memory.

    Args:
        per_class: images of each class.
        size: side of the square images.
        seed: seed of the whole dataset.
        split_index: 0, 1, 2 for train, val, test: each split gets its own stream from ``seed``.

    Returns:
        uint8 images N x size x size x 3 and int32 labels N (balanced, in a seeded random order).
    """
    rng = np.random.default_rng([seed, split_index])
    count = 2 * per_class
    labels = rng.permutation(np.repeat(np.arange(2, dtype=np.int32), per_class))
    images = np.empty((count, size, size, 3), dtype=np.uint8)
    for start in range(0, count, _CHUNK):
        stop = min(start + _CHUNK, count)
        images[start:stop] = _draw_shapes(rng, labels[start:stop], size)
    return images, labels


def shape_masks(labels: np.ndarray, centre: np.ndarray, radii: np.ndarray, size: int) -> np.ndarray:
    """Return boolean masks N x size x size: an ellipse for label 0, a rectangle of the same area for label 1.

    Args:
        labels: N labels.
        centre: N x 2 (row, column) centres in pixels.
        radii: N x 2 (row, column) semi-axes of the ellipse in pixels.
        size: image side.
    """
    grid = np.arange(size, dtype=np.float32)
    cy, cx = (centre[:, i, None, None].astype(np.float32) for i in (0, 1))
    ry, rx = (radii[:, i, None, None].astype(np.float32) for i in (0, 1))
    dy, dx = np.abs(grid[None, :, None] - cy), np.abs(grid[None, None, :] - cx)
    ellipse = (dy / ry) ** 2 + (dx / rx) ** 2 <= 1.0
    # Half-sides scaled by sqrt(pi)/2 give the rectangle the ellipse's area: size is no cue.
    half = math.sqrt(math.pi) / 2
    rectangle = (dy <= ry * half) & (dx <= rx * half)
    return np.where(labels[:, None, None] == 0, ellipse, rectangle)


def _draw_shapes(rng: np.random.Generator, labels: np.ndarray, size: int) -> np.ndarray:
    """Draw one chunk of images for ``labels`` (0 ellipse, 1 rectangle)."""
    n = len(labels)
    centre = rng.uniform(0.3 * size, 0.7 * size, (n, 2))
    radii = rng.uniform(0.12 * size, 0.28 * size, (n, 2))
    mask = shape_masks(labels, centre, radii, size)[..., None]
    # int16 so that the noise can push past 0 and 255 before the clip.
    background = rng.integers(0, 110, (n, 1, 1, 1), dtype=np.int16) + rng.integers(
        0, 48, (n, size, size, 3), dtype=np.int16
    )
    colour = rng.integers(130, 256, (n, 1, 1, 3), dtype=np.int16) - rng.integers(
        0, 32, (n, size, size, 3), dtype=np.int16
    )
    return np.where(mask, colour, background).clip(0, 255).astype(np.uint8)


def write_image_cache(folder: Path, per_class: Sequence[int], size: int, seed: int) -> dict[str, int]:
    """Write a decode-stage cache (``{split}.npy`` uint8, ``{split}_labels.npy`` int32) of synthetic images.

    Args:
        folder: where the files go (created).
        per_class: images per class for train, val, test.
        size: image side.
        seed: dataset seed.

    Returns:
        Number of images per split.
    """
    folder.mkdir(parents=True, exist_ok=True)
    counts = {}
    for index, (split, n) in enumerate(zip(SPLITS, per_class, strict=True)):
        images, labels = synthetic_split(n, size, seed, index)
        np.save(split_file(folder, split), images)
        np.save(labels_file(folder, split), labels)
        counts[split] = len(labels)
    return counts


# --------------------------------------------------------------------------------------------------- FLOPs


def conv_flops(output_hw: tuple[int, int], kernel_shape: Sequence[int]) -> int:
    """Return the FLOPs of one 2-D convolution on one image: 2 x H_out x W_out x k_h x k_w x C_in x C_out.

    Counts a multiply-add as two operations, as matrix-rate figures do; the bias add is left out.
    """
    kh, kw, c_in, c_out = (int(d) for d in kernel_shape)
    return 2 * int(output_hw[0]) * int(output_hw[1]) * kh * kw * c_in * c_out


def leaf_layers(model: Any) -> list[Any]:
    """Return ``model``'s layers in order, nested models and ``Sequential`` blocks flattened."""
    flat = []
    for layer in model.layers:
        flat.extend(leaf_layers(layer) if hasattr(layer, "layers") else [layer])
    return flat


def layer_flops(layer: Any) -> int:
    """Return the forward FLOPs per image of a Conv2D or Dense layer; 0 for anything else (cheap by comparison)."""
    kernel = getattr(layer, "kernel", None)
    if kernel is None:
        return 0
    shape = tuple(kernel.shape)
    if len(shape) == 4:
        _, height, width, _ = layer.output.shape
        return conv_flops((height, width), shape)
    if len(shape) == 2:
        return 2 * int(shape[0]) * int(shape[1])
    return 0


def model_flops(model: Any) -> tuple[int, int]:
    """Return (forward, training-step) FLOPs per image of ``model``.

    A training step runs the forward pass, then for each layer the weight gradient if the layer is trainable
    (as much again as its forward) and the input gradient if any trainable layer lies below it (as much
    again). So a frozen VGG16 base under a trainable head costs one forward pass, and fine-tuning's block5
    three.
    """
    forward = step = 0
    trainable_below = False
    for layer in leaf_layers(model):
        flops = layer_flops(layer)
        trainable = bool(layer.trainable_weights)
        forward += flops
        step += flops * (1 + int(trainable) + int(trainable_below))
        trainable_below = trainable_below or trainable
    return forward, step


# ------------------------------------------------------------------------------------------------ timing


def steady_epoch_seconds(epoch_seconds: Sequence[float]) -> float:
    """Return the median epoch time after the first (which carries compilation), or the first if alone."""
    if not epoch_seconds:
        return float("nan")
    later = list(epoch_seconds[1:]) or list(epoch_seconds)
    return float(statistics.median(later))


def scaled_epochs(seed_epochs: int, scale: float, fixed: int | None) -> int:
    """Return the epochs to run: ``fixed`` if given, else the seed's scaled and rounded, at least 1."""
    if fixed is not None:
        return fixed
    return max(1, round(seed_epochs * scale))


def matmul_rate(size: int, repeats: int = 20) -> float:
    """Return the measured bf16 matrix-product rate in FLOP/s of JAX's default device (size^3 products).

    Random normal operands (zeros run faster on NVIDIA chips); three warm-up products first, then the mean
    of ``repeats`` timed ones, each waited for.
    """
    import jax
    import jax.numpy as jnp

    key_a, key_b = jax.random.split(jax.random.PRNGKey(0))
    a = jax.random.normal(key_a, (size, size), dtype=jnp.bfloat16)
    b = jax.random.normal(key_b, (size, size), dtype=jnp.bfloat16)
    dot = jax.jit(jnp.dot)
    for _ in range(3):
        dot(a, b).block_until_ready()
    started = time.perf_counter()
    for _ in range(repeats):
        out = dot(a, b)
    out.block_until_ready()  # one device queue: the last product finishes after the others
    seconds = (time.perf_counter() - started) / repeats
    return 2.0 * size**3 / seconds


def peak_memory_bytes() -> int | None:
    """Return JAX's peak bytes in use on the first device so far (None where the device does not say, e.g. CPU)."""
    import jax

    stats = jax.local_devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return int(peak) if peak is not None else None


def _epoch_timer() -> Any:
    """Return a Keras callback recording each epoch's wall time (validation and checkpoint included)."""
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.seconds: list[float] = []
            self._started = 0.0

        def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            self._started = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            # Extra callbacks come last: the epoch's time includes BestEpoch's in-memory snapshot.
            self.seconds.append(time.perf_counter() - self._started)

    return EpochTimer()


# ------------------------------------------------------------------------------------------------ report


@dataclasses.dataclass
class Row:
    """One line of the table: the feature pass or one variant."""

    name: str
    images: int = 0
    epochs: int = 0
    seconds: float = float("nan")
    eval_seconds: float = 0.0
    first_epoch: float = float("nan")
    per_epoch: float = float("nan")
    images_per_second: float = float("nan")
    flops_per_second: float = float("nan")
    peak_fraction: float = float("nan")
    peak_memory: int | None = None
    test_accuracy: float = float("nan")
    precision: str = ""
    note: str = ""
    jit_compile: bool | None = None
    compute_dtypes: dict[str, str | None] | None = None


@dataclasses.dataclass
class Report:
    """Everything the table shows."""

    machine: dict[str, str]
    settings: dict[str, Any]
    bf16_rate: float = float("nan")
    data_seconds: float = float("nan")
    rows: list[Row] = dataclasses.field(default_factory=list)
    experiment_seconds: float = float("nan")
    total_seconds: float = float("nan")
    complete: bool = False
    checks: list[str] = dataclasses.field(default_factory=list)
    """One line per fast-path check (issue 16), ``ok: ...`` or ``FAILED: ...``."""

    @property
    def failed(self) -> list[str]:
        """The checks that failed."""
        return [line for line in self.checks if line.startswith("FAILED")]


def fast_path_checks(row: Row, expect_bf16: bool) -> list[str]:
    """What issue 16 requires of a trained variant on the device: compiled, bf16 in the base, float32 augmentation.

    Args:
        row: a variant's row (``jit_compile`` and ``compute_dtypes`` from its training summary).
        expect_bf16: the run's precision is bfloat16 (a GPU of compute capability 8.0+ under ``auto``).
    """
    dtypes = row.compute_dtypes or {}
    wanted = {"jit_compile": (row.jit_compile, True)}
    if dtypes.get("augmentation") is not None:
        wanted["augmentation"] = (dtypes["augmentation"], "float32")
    if expect_bf16 and dtypes.get("base") is not None:
        wanted["base"] = (dtypes["base"], "bfloat16")
    return [
        f"{'ok' if found == expected else 'FAILED'}: {row.name} {key} {found} (expected {expected})"
        for key, (found, expected) in wanted.items()
    ]


def _num(value: float, digits: int = 1) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:,.{digits}f}"


def _tflops(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value / 1e12:.3g}"


def _gib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**30:.2f}"


def render_markdown(report: Report) -> str:
    """Return the report as Markdown: machine, settings, the table, the verdict."""
    lines = [f"# GPU check, {report.machine['date'][:10]}", ""]
    lines += [f"- {key}: {value}" for key, value in report.machine.items()]
    lines += [f"- {key}: {value}" for key, value in report.settings.items()]
    lines += [
        f"- measured bf16 matrix rate: {_tflops(report.bf16_rate)} TFLOP/s "
        f"({report.settings['matmul_size']}^3 jnp.dot, mean of 20 after 3 warm-ups)",
        f"- synthetic data generation (not counted in the experiment): {_num(report.data_seconds)} s",
        "",
        "| stage | images | epochs | train s | eval s | 1st epoch s | s/epoch after 1st | images/s | model TFLOP/s "
        "| of bf16 rate | peak mem GiB | test acc | precision | note |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for row in report.rows:
        lines.append(
            f"| {row.name} | {row.images:,} | {row.epochs or ''} | {_num(row.seconds)} | {_num(row.eval_seconds)} "
            f"| {_num(row.first_epoch, 2)} | {_num(row.per_epoch, 2)} | {_num(row.images_per_second)} "
            f"| {_tflops(row.flops_per_second)} "
            f"| {_num(100 * row.peak_fraction)}% | {_gib(row.peak_memory)} | {_num(row.test_accuracy, 3)} "
            f"| {row.precision} | {row.note} |"
        )
    if report.checks:
        lines += ["", "Fast-path checks (every variant compiled, bf16 in the VGG16 base, float32 augmentation):", ""]
        lines += [f"- {line}" for line in report.checks]
    verdict = "PASS" if report.experiment_seconds <= TARGET_SECONDS else "MISS"
    if not report.complete:
        verdict = "INCOMPLETE (stopped early)"
    lines += [
        "",
        f"Whole experiment (features + training + evaluation, the train s and eval s columns): "
        f"{_num(report.experiment_seconds)} s; target "
        f"<= {TARGET_SECONDS:.0f} s on one H200: {verdict}. Script wall time: {_num(report.total_seconds)} s.",
        "",
        "train s: train_variant's wall time (model build, compilation, fit, checkpoints), for the feature pass "
        "extract_features's; eval s: evaluate_model's. "
        "images/s: training images per second of a steady epoch (its validation pass and checkpoint included); "
        "for the feature pass, the last split's rate (no compilation in it). Model TFLOP/s counts conv and dense "
        "multiply-adds as 2 FLOPs (training step = forward + weight grads of trainable layers + input grads "
        "above the first trainable one; validation = forward). Peak memory: JAX's peak bytes in use so far.",
        "",
    ]
    return "\n".join(lines)


def _write(report: Report, out: Path) -> None:
    """Write the Markdown and the JSON next to it (rewritten after each stage)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_markdown(report))
    out.with_suffix(".json").write_text(json.dumps(dataclasses.asdict(report), indent=2, default=str) + "\n")


def machine_info(argv: Sequence[str]) -> dict[str, str]:
    """Return the date, device, CPU, versions and command line."""
    import jax
    import keras

    device = jax.devices()[0]
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "device": f"{len(jax.devices())} x {device.device_kind} ({device.platform})",
        "cpu": f"{os.cpu_count()} cores, {cpu_model()}",
        "versions": f"Python {platform.python_version()}, jax {jax.__version__}, keras {keras.__version__} "
        f"(backend {keras.backend.backend()}), numpy {np.__version__}",
        "command": " ".join(shlex.quote(arg) for arg in ["python", *argv]),
    }


# -------------------------------------------------------------------------------------------- experiment


def _load(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    return np.load(split_file(folder, split), mmap_mode="r"), np.load(labels_file(folder, split))


def run_features(images: Path, out: Path, batch_size: int, bf16_rate: float) -> Row:
    """Run the features stage over the cache; return its row.

    The rate is the last split's: at the seed's sizes its batch shapes (32, and 16 for the remainder) were all
    compiled during the train split, so it is the steady rate.
    """
    from cvpipe.config import FeaturesConfig
    from cvpipe.ml.models import vgg16_conv_base
    from cvpipe.stages.features import extract_features

    started = time.perf_counter()
    summary = extract_features(images, out, FeaturesConfig(weights="none", batch_size=batch_size))
    seconds = time.perf_counter() - started
    splits = summary.splits
    last = splits[list(splits)[-1]]
    rate = last.count / last.seconds if last.seconds > 0 else float("nan")
    side = int(np.load(split_file(images, SPLITS[0]), mmap_mode="r").shape[1])
    forward, _ = model_flops(vgg16_conv_base((side, side, 3)))
    return Row(
        name="features (VGG16 pass)",
        images=sum(info.count for info in splits.values()),
        seconds=seconds,
        images_per_second=rate,
        flops_per_second=rate * forward,
        peak_fraction=rate * forward / bf16_rate,
        peak_memory=peak_memory_bytes(),
        precision="float32 (stage default)",
        note="all splits: " + ", ".join(f"{s} {info.images_per_second:.0f}/s" for s, info in splits.items()),
    )


def run_variant(
    variant: str,
    cfg: Any,
    data: dict[str, tuple[np.ndarray, np.ndarray]],
    work: Path,
    bf16_rate: float,
    *,
    precision: str = "auto",
    workers: int = 1,
) -> Row:
    """Train one variant with the library, then evaluate it on the test split; return its row.

    Args:
        variant: one of ``cvpipe.config.VARIANTS``; fine_tuning reads feature_extraction_aug's model from ``work``.
        cfg: the ``TrainConfig``.
        data: ``{split: (inputs, labels)}``: images, or VGG16 features for feature_extraction.
        work: folder for models, histories, metrics.
        bf16_rate: the measured matrix rate, FLOP/s.
        precision: ``train_variant``'s precision (``auto``: bf16 on a GPU of compute capability 8.0+).
        workers: ``train_variant``'s PyDataset reader threads.
    """
    from cvpipe.config import EvaluateConfig
    from cvpipe.ml.models import load_model
    from cvpipe.stages.evaluate import evaluate_model
    from cvpipe.stages.train import train_variant

    model_path = work / "models" / f"{variant}.keras"
    timer = _epoch_timer()
    started = time.perf_counter()
    summary = train_variant(
        variant,
        cfg,
        data["train"],
        data["val"],
        model_path,
        work / "train" / variant,
        conv_base="none" if variant == "feature_extraction_aug" else None,
        init_model=work / "models" / "feature_extraction_aug.keras" if variant == "fine_tuning" else None,
        precision=precision,
        callbacks=[timer],
        workers=workers,
        live=False,  # dvclive imports DVC, which the GPU machine does not have
    )
    seconds = time.perf_counter() - started
    started = time.perf_counter()
    metrics = evaluate_model(
        model_path,
        *data["test"],
        EvaluateConfig(),
        list(CLASS_NAMES),
        work / "metrics" / f"{variant}.json",
        work / "plots" / variant,
    )
    eval_seconds = time.perf_counter() - started
    # Counted from the saved model, outside the timings: its trainable flags are the ones it trained with.
    forward, step = model_flops(load_model(model_path, compile=False))
    n_train, n_val = len(data["train"][1]), len(data["val"][1])
    per_epoch = steady_epoch_seconds(timer.seconds)
    flops = (n_train * step + n_val * forward) / per_epoch
    row = Row(
        name=variant,
        images=n_train,
        epochs=summary.epochs_run,
        seconds=seconds,
        eval_seconds=eval_seconds,
        first_epoch=timer.seconds[0] if timer.seconds else float("nan"),
        per_epoch=per_epoch,
        images_per_second=n_train / per_epoch,
        flops_per_second=flops,
        peak_fraction=flops / bf16_rate,
        peak_memory=peak_memory_bytes(),
        test_accuracy=float(metrics["accuracy"]),
        precision=summary.precision,
        note=f"best epoch {summary.best_epoch}; jit {summary.jit_compile}; base/augmentation/head "
        + "/".join(str(summary.compute_dtypes[key]) for key in ("base", "augmentation", "head")),
        jit_compile=summary.jit_compile,
        compute_dtypes=summary.compute_dtypes,
    )
    return row


def train_config(args: argparse.Namespace) -> Any:
    """Return the seed's TrainConfig with epochs scaled (or fixed) and the batch size from the flags."""
    from cvpipe.config import VARIANTS, TrainConfig

    seed = TrainConfig()
    sections = {
        name: getattr(seed, name).model_copy(
            update={
                "epochs": scaled_epochs(getattr(seed, name).epochs, args.epochs_scale, args.epochs),
                "batch_size": args.batch_size,
            }
        )
        for name in VARIANTS
    }
    return TrainConfig(seed=seed.seed, **sections)


def run(args: argparse.Namespace, argv: Sequence[str]) -> Report:
    """Run the whole check; write the report after every stage; return it."""
    import jax

    started = time.perf_counter()
    on_gpu = jax.devices()[0].platform == "gpu"
    matmul_size = args.matmul_size or (8192 if on_gpu else 512)
    cfg = train_config(args)
    report = Report(
        machine=machine_info(argv),
        settings={
            "data": f"synthetic ellipses vs rectangles, {'/'.join(map(str, args.per_class))} per class "
            f"(train/val/test), {args.size}x{args.size}x3, seed {args.seed}",
            "VGG16 weights": "none: seeded random (the machine cannot download ImageNet weights; timings are "
            "the real model's, accuracies are not the seed's)",
            "epochs": ", ".join(f"{v} {getattr(cfg, v).epochs}" for v in args.variants),
            "batch size": args.batch_size,
            "matmul_size": matmul_size,
        },
    )
    out = args.out
    report.bf16_rate = matmul_rate(matmul_size)
    log.warning("bf16 matrix rate %.1f TFLOP/s", report.bf16_rate / 1e12)
    _write(report, out)

    with tempfile.TemporaryDirectory(prefix="gpu-check-", dir=args.workdir) as tmp:
        work = Path(tmp)
        generated = time.perf_counter()
        write_image_cache(work / "images", args.per_class, args.size, args.seed)
        report.data_seconds = time.perf_counter() - generated
        log.warning("synthetic data in %.1f s", report.data_seconds)

        images = {split: _load(work / "images", split) for split in SPLITS}
        if "feature_extraction" in args.variants:
            report.rows.append(
                run_features(work / "images", work / "features", args.features_batch_size, report.bf16_rate)
            )
            _finish_stage(report, started, out)
        features = {split: _load(work / "features", split) for split in SPLITS} if report.rows else {}
        for variant in args.variants:
            data = features if variant == "feature_extraction" else images
            report.rows.append(
                run_variant(
                    variant,
                    cfg,
                    data,
                    work,
                    report.bf16_rate,
                    precision=args.precision,
                    workers=args.workers,
                )
            )
            row = report.rows[-1]
            report.checks += fast_path_checks(row, expect_bf16=row.precision == "mixed_bfloat16")
            _finish_stage(report, started, out)
    report.complete = True
    report.total_seconds = time.perf_counter() - started
    _write(report, out)
    return report


def _finish_stage(report: Report, start: float, out: Path) -> None:
    """Update the totals, log the stage, rewrite the report (a run killed later still leaves this much)."""
    # The sum of the stages' own timings: what the pipeline would spend, without this script's FLOP counting.
    report.experiment_seconds = sum(row.seconds + row.eval_seconds for row in report.rows)
    report.total_seconds = time.perf_counter() - start
    row = report.rows[-1]
    log.warning("%s done in %.1f s (experiment so far %.1f s)", row.name, row.seconds, report.experiment_seconds)
    _write(report, out)


# ------------------------------------------------------------------------------------------------ command


def default_out(today: dt.date | None = None) -> Path:
    """Return ``$OUT/gpu-check.md`` when ``$OUT`` is set (the device tool's folder), else a dated results file."""
    if os.environ.get("OUT"):
        return Path(os.environ["OUT"]) / "gpu-check.md"
    return ROOT / "bench" / "results" / f"gpu-check-{(today or dt.date.today()).isoformat()}.md"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse the command line; ``--variants`` is checked against the library's list and order."""
    from cvpipe.config import VARIANTS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--per-class",
        type=int,
        nargs=3,
        default=list(SEED_PER_CLASS),
        metavar=("TRAIN", "VAL", "TEST"),
        help="images per class in each split (default: the seed's 1000 500 1000)",
    )
    parser.add_argument("--size", type=int, default=SEED_SIZE, help="image side (default 180)")
    parser.add_argument("--epochs-scale", type=float, default=1.0, help="multiply the seed's epochs (at least 1)")
    parser.add_argument("--epochs", type=int, default=None, help="run every variant this many epochs instead")
    parser.add_argument("--batch-size", type=int, default=32, help="training batch size (the seed's 32)")
    parser.add_argument("--features-batch-size", type=int, default=32, help="features stage batch size")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, from: " + ", ".join(VARIANTS))
    parser.add_argument("--workers", type=int, default=1, help="train_variant's reader threads (its default 1)")
    parser.add_argument(
        "--precision",
        choices=("auto", "float32", "mixed_bfloat16", "mixed_float16"),
        default="auto",
        help="train.precision; auto: the library's choice (bf16 on a GPU or CPU that has it)",
    )
    parser.add_argument("--matmul-size", type=int, default=0, help="bf16 benchmark side (default 8192 GPU, 512 CPU)")
    parser.add_argument("--seed", type=int, default=0, help="synthetic data seed")
    parser.add_argument("--workdir", type=Path, default=None, help="parent of the temporary folder (default $TMPDIR)")
    parser.add_argument("--out", type=Path, default=None, help="Markdown output (JSON written next to it)")
    parser.add_argument("--verbose", action="store_true", help="log every epoch")
    args = parser.parse_args(argv)

    names = [name.strip() for name in args.variants.split(",") if name.strip()]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; valid: {', '.join(VARIANTS)}")
    if "fine_tuning" in names and "feature_extraction_aug" not in names:
        parser.error("fine_tuning starts from feature_extraction_aug's model: include feature_extraction_aug")
    args.variants = [name for name in VARIANTS if name in names]  # the seed's order: fine_tuning after its parent
    args.out = args.out or default_out()
    if min(args.per_class) < 1 or args.size < 32 or args.batch_size < 1:
        parser.error("--per-class values must be >= 1, --size >= 32 (VGG16's minimum), --batch-size >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the check and print the table."""
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("KERAS_BACKEND", "jax")  # before keras is imported: JAX is what the GPU machine has
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    import keras

    if keras.backend.backend() != "jax":
        print(f"gpu_check needs KERAS_BACKEND=jax (got {keras.backend.backend()})", file=sys.stderr)
        return 2
    report = run(args, ["bench/gpu_check.py", *argv])
    print(render_markdown(report))
    print(f"written: {args.out} and {args.out.with_suffix('.json')}")
    for line in report.failed:
        print(f"gpu_check: {line}", file=sys.stderr)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
