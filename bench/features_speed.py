"""features: the VGG16 conv base over 256 images at 180 x 180, cvpipe's features stage against the seed's loop.

On the same images, in four parts of 64 taken in ABBA BAAB order (seed, cvpipe, cvpipe, seed, cvpipe, seed,
seed, cvpipe), so that a drift in the machine's load falls on both sides alike, and judged on the median of
the four parts' ratios, so that one burst of load from elsewhere cannot decide the result:

- **seed**: the walkthrough's ``get_features_and_labels``: for each batch of 32 from
  ``image_dataset_from_directory``, ``preprocess_input`` then ``conv_base.predict``.
- **cvpipe**: ``cvpipe.stages.features.extract_features`` over the decode stage's cache (positioned reads of 32 rows,
  ``preprocess_input``, ``predict_on_batch``, rows appended to the output), in the precision chosen below.

Both models are built and traced before the clock starts (the seed's once in its process; cvpipe's is handed
to the stage), and both use the same random weights (ImageNet's cannot be downloaded here; the arithmetic is
the same). First a short probe times float32 against ``mixed_bfloat16`` on one batch and measures bfloat16's
error; the main comparison runs cvpipe in bfloat16 where the CPU multiplies it natively (AVX512-BF16, AMX)
and the error bound holds, else in float32 (a one-batch race is too easily decided by others' load).

    .venv/bin/python bench/features_speed.py [--images 256]
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common

SIZE = 180
BATCH = 32
PROBE_BATCH = 8
PARTS = 4
TARGET = 1.5
ERROR_BOUND = 1e-2
# AVX2 + FMA: two 8-wide float32 fused multiply-adds a cycle per core.
_AVX2_FLOPS_PER_CYCLE = 32


def conv_flops(model: Any) -> float:
    """Floating-point operations of one image through the model's convolutions (2 per multiply-add)."""
    import keras

    total = 0.0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, height, width, out_channels = layer.output.shape
            kernel_h, kernel_w, in_channels, _ = layer.kernel.shape
            total += 2.0 * height * width * out_channels * kernel_h * kernel_w * in_channels
    return total


def cpu_ghz() -> float | None:
    """The clock /proc/cpuinfo reports (may be the nominal one), in GHz."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return float(line.split(":", 1)[1]) / 1000
    except (OSError, ValueError):
        pass
    return None


# ------------------------------------------------------------------------------------------ seed side (child)


def seed_contenders(folders: list[str], size: int, batch: int) -> tuple[dict[str, Callable[[], Any]], dict[str, Any]]:
    """The seed's feature loop over each folder, its conv base built and traced before any timing."""
    import keras

    conv_base = keras.applications.vgg16.VGG16(weights=None, include_top=False, input_shape=(size, size, 3))
    conv_base.predict(np.zeros((batch, size, size, 3), np.float32), verbose=0)

    def get_features_and_labels(folder: str) -> dict[str, Any]:
        dataset = common.seed_dataset(folder, size, batch)
        all_features, all_labels = [], []
        started = time.perf_counter()
        for images, labels in dataset:
            preprocessed_images = keras.applications.vgg16.preprocess_input(images)
            features = conv_base.predict(preprocessed_images, verbose=0)
            all_features.append(features)
            all_labels.append(labels)
        count = len(np.concatenate(all_labels))
        return {"seconds": time.perf_counter() - started, "images": count}

    contenders = {f"seed{index}": (lambda f=folder: get_features_and_labels(f)) for index, folder in enumerate(folders)}
    return contenders, {}


# --------------------------------------------------------------------------------------------- cvpipe side


def _warm(model: Any, batch: int) -> Any:
    """Run one batch of that size: traces ``predict_on_batch`` and makes oneDNN's kernels for the shape."""
    size = model.input_shape[1]
    model.predict_on_batch(np.zeros((batch, size, size, 3), np.float32))
    return model


def precision_probe(images: np.ndarray, rounds: int = 2) -> tuple[dict[str, Any], Any]:
    """Time float32 against mixed_bfloat16 on a small batch and measure bfloat16's error.

    Returns:
        The probe's figures, and the model (of either precision) the features stage should run.
    """
    from cvpipe.stages.features import _preprocess, load_conv_base

    batch = _preprocess(images[:PROBE_BATCH])
    f32 = _warm(load_conv_base("none", images.shape[1:]), PROBE_BATCH)
    bf16 = _warm(load_conv_base("none", images.shape[1:], precision="mixed_bfloat16"), PROBE_BATCH)
    contenders = {"float32": lambda: f32.predict_on_batch(batch), "bf16": lambda: bf16.predict_on_batch(batch)}
    times = common.alternate(contenders, rounds)
    reference = np.asarray(f32.predict_on_batch(batch), dtype=np.float64)
    low = np.asarray(bf16.predict_on_batch(batch), dtype=np.float64)
    half = reference.astype(np.float16).astype(np.float64)
    norm = float(np.linalg.norm(reference)) or 1.0
    per_image = [
        float(np.linalg.norm(low[i] - reference[i]) / (np.linalg.norm(reference[i]) or 1.0)) for i in range(len(low))
    ]
    probe = {
        "float32_s": min(times["float32"].wall),
        "bf16_s": min(times["bf16"].wall),
        "bf16_error": float(np.linalg.norm(low - reference)) / norm,
        "bf16_worst_image_error": max(per_image),
        "float16_file_error": float(np.linalg.norm(half - reference)) / norm,
    }
    # bfloat16 is chosen by the hardware, not by this one-batch race, which another process's burst of load
    # can decide either way: where the CPU multiplies bfloat16 natively it is faster (1.2-1.9x measured on
    # AMX/AVX512-BF16 CPUs); elsewhere it is emulated, and slower in every quiet measurement here.
    native = common.has_bf16_hardware() and probe["bf16_error"] <= ERROR_BOUND
    return probe, (bf16 if native else f32)


def cvpipe_contenders(parts: list[Path], out: Path, model: Any) -> tuple[dict[str, Callable[[], Any]], float]:
    """The features stage over each part's cache, with ``model`` built and traced once, outside the timing."""
    from cvpipe.config import FeaturesConfig
    from cvpipe.stages import features

    started = time.perf_counter()
    _warm(model, BATCH)
    setup_seconds = time.perf_counter() - started
    precision = "mixed_bfloat16" if "bfloat16" in str(model.dtype_policy.name) else "float32"
    features._build_conv_base = lambda *args: model  # the stage's own loop, with the model already built
    cfg = FeaturesConfig(weights="none", batch_size=BATCH, dtype="float32")

    def stage(part: Path) -> dict[str, Any]:
        summary = features.extract_features(part, out / part.name, cfg, precision=precision)
        return {"seconds": summary["splits"]["train"]["seconds"]}

    return {f"cvpipe{index}": (lambda p=part: stage(p)) for index, part in enumerate(parts)}, setup_seconds


def _write_part(folder: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    folder.mkdir(parents=True)
    np.save(folder / "train.npy", images)
    np.save(folder / "train_labels.npy", labels)
    return folder


# -------------------------------------------------------------------------------------------------- run


def run(
    images: int = 256, size: int = SIZE, cache: Path | None = None, archive_images: int = 2000
) -> list[common.Result]:
    """Measure and return the features result row (on the first ``images`` of the decode benchmark's archive)."""
    from cvpipe.config import ImageConfig
    from cvpipe.stages.decode import decode_split

    archive = common.kaggle_like_archive(max(images, archive_images), cache)
    members = common.image_members(archive)[:images]
    part_size = images // PARTS
    with common.scratch("features") as work:
        decode_split(archive, members, work / "all.npy", ImageConfig(size=size, workers=0))
        decoded = np.load(work / "all.npy")
        labels = common.member_labels(members)
        bounds = [(i * part_size, (i + 1) * part_size) for i in range(PARTS)]
        parts = [_write_part(work / f"part{i}", decoded[a:b], labels[a:b]) for i, (a, b) in enumerate(bounds)]
        folders = [
            common.extract_to_folders(archive, work / f"folders{i}", members[a:b]) for i, (a, b) in enumerate(bounds)
        ]
        config = {"folders": [str(f) for f in folders], "size": size, "batch": BATCH}
        # The seed's child builds and warms its model while this process runs the probe (nothing is timed).
        with common.Remote("bench.features_speed:seed_contenders", config) as seed:
            probe, faster = precision_probe(decoded)
            precision = faster.dtype_policy.name
            local, setup = cvpipe_contenders(parts, work / "out", faster)
            order: dict[str, Callable[[], Any]] = {}
            for index, first in enumerate("SCCS"):  # ABBA BAAB over the four parts
                pair = ("seed", "cvpipe") if first == "S" else ("cvpipe", "seed")
                for side in pair:
                    name = f"{side}{index}"
                    order[name] = seed.contender(name) if side == "seed" else local[name]
            times = common.alternate(order, rounds=1)
    seed_times = [times[f"seed{i}"].wall[0] for i in range(PARTS)]
    cvpipe_times = [times[f"cvpipe{i}"].wall[0] for i in range(PARTS)]
    count = PARTS * part_size
    seed_rate, cvpipe_rate = count / sum(seed_times), count / sum(cvpipe_times)
    part_ratios = [s_ / c_ for s_, c_ in zip(seed_times, cvpipe_times, strict=True)]
    ratio = float(np.median(part_ratios))
    gflop = _flops_per_image(size) / 1e9
    ghz = cpu_ghz()
    peak = f"{common.cores() * ghz * _AVX2_FLOPS_PER_CYCLE:.0f}" if ghz else "?"
    bf16_hw = common.has_bf16_hardware()
    details = [
        f"{count} Kaggle-like images at {size}x{size}, batches of {BATCH}, {common.cores()} cores; {PARTS} parts of "
        f"{part_size} in ABBA BAAB order; random VGG16 weights on both sides (same arithmetic as ImageNet's)",
        f"seed loop (preprocess_input + conv_base.predict per batch): {seed_rate:.2f} images/s over all parts "
        f"(parts: {common.runs(seed_times)})",
        f"cvpipe features stage ({precision}): {cvpipe_rate:.2f} images/s over all parts "
        f"(parts: {common.runs(cvpipe_times)}); building and tracing its model took {setup:.1f} s once, outside the "
        "timing (the seed's likewise)",
        f"ratio per part (seed time / cvpipe time): {', '.join(f'{r:.2f}x' for r in part_ratios)}; judged on the "
        f"median, {ratio:.2f}x (over all parts: {cvpipe_rate / seed_rate:.2f}x)",
        f"VGG16 conv base at {size}x{size}: {gflop:.1f} GFLOP an image (2 per multiply-add), so cvpipe ran at "
        f"{cvpipe_rate * gflop:.0f} GFLOP/s and the seed at {seed_rate * gflop:.0f} GFLOP/s, against a float32 peak "
        f"of ~{peak} GFLOP/s ({common.cores()} cores x {ghz or 0:.2f} GHz x {_AVX2_FLOPS_PER_CYCLE} FLOP/cycle, "
        "AVX2 FMA)",
        f"precision probe, one batch of {PROBE_BATCH}, best of 2: float32 {probe['float32_s']:.2f} s, mixed_bfloat16 "
        f"{probe['bf16_s']:.2f} s ({probe['float32_s'] / probe['bf16_s']:.2f}x); bf16 hardware on this CPU: "
        f"{'yes' if bf16_hw else 'no (no avx512_bf16/amx_bf16: bfloat16 is emulated)'}",
        f"bfloat16 features vs float32: relative error {probe['bf16_error']:.2e} overall, worst image "
        f"{probe['bf16_worst_image_error']:.2e} (bound {ERROR_BOUND:g}); float16 feature files (features.dtype): "
        f"{probe['float16_file_error']:.1e}",
        f"chosen for cvpipe: {precision}",
    ]
    if "avx512f" not in common.cpu_flags():
        details.append("no AVX-512 on this CPU: oneDNN runs VGG16's convolutions with AVX2 kernels")
    return [
        common.Result.speedup(
            "features",
            f"VGG16 conv base over {count} images at {size}x{size}",
            f"{cvpipe_rate:.2f} img/s ({precision})",
            f"{seed_rate:.2f} img/s",
            ratio,
            TARGET,
            details,
            unit=f"; faster dtype within {ERROR_BOUND:g} rel. error",
        )
    ]


def _flops_per_image(size: int) -> float:
    from cvpipe.ml.models import vgg16_conv_base

    return conv_flops(vgg16_conv_base((size, size, 3)))


def main() -> None:
    """Run at the sizes given on the command line (``--size 32 --images 8`` for a quick check)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    common.run_main("features", __doc__, run, images=256, size=SIZE)


if __name__ == "__main__":
    main()
