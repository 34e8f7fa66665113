"""precision: one epoch of the VGG16 variants, cvpipe's ``train.precision: auto`` against the seed's float32 code.

Two rows (issue 16):

- **precision-epoch**: one epoch of ``feature_extraction_aug`` and then of ``fine_tuning`` (from that model), at
  the seed's sizes by default (2,000 training images, 180 px, batch 32; a validation pass of ``--val`` images
  each epoch on both sides). Each side runs in its own process:

  - **seed**: the walkthrough's code: ``image_dataset_from_directory`` over class folders, the augmentation
    ``Sequential``, ``vgg16.preprocess_input``, the frozen VGG16 base and the dense head, float32, ``fit`` for
    one epoch; then block5 unfrozen, ``RMSprop(1e-5)``, ``fit`` one epoch.
  - **cvpipe**: ``cvpipe.stages.train.train_variant`` on the decode stage's uint8 cache with
    ``train.precision: auto`` (bf16 on bf16 GPUs and on AMX/AVX512-BF16 CPUs), ``feature_extraction_aug`` then
    ``fine_tuning`` from its saved model.

  Both use random VGG16 weights (ImageNet's cannot be downloaded here; the arithmetic is the same). Judged on
  the total of the two epochs, goal >= 4x on a bf16 CPU.

- **precision-guard**: bf16 against float32 test accuracy of ``scratch`` and ``feature_extraction`` on the
  synthetic source (``--guard-size`` px; features from the random-weight base), trained with the same seed:
  each within 2 points.

    .venv/bin/python -m bench.precision [--images 2000] [--val 64] [--guard-images 1000]
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench import common
from cvpipe.layout import labels_file, split_file

SIZE = 180
BATCH = 32
TARGET = 4.0
GUARD_POINTS = 2.0


# ------------------------------------------------------------------------------------- contenders (children)


def seed(train: str, val: str, size: int) -> dict[str, Any]:
    """The walkthrough's feature-extraction-with-augmentation then fine-tuning, one epoch each, float32."""
    import keras
    from keras import layers

    train_dataset = common.seed_dataset(train, size, BATCH)
    validation_dataset = common.seed_dataset(val, size, BATCH)
    conv_base = keras.applications.vgg16.VGG16(weights=None, include_top=False, input_shape=(size, size, 3))
    conv_base.trainable = False
    data_augmentation = keras.Sequential(
        [layers.RandomFlip("horizontal"), layers.RandomRotation(0.1), layers.RandomZoom(0.2)]
    )
    inputs = keras.Input(shape=(size, size, 3))
    x = data_augmentation(inputs)
    x = keras.applications.vgg16.preprocess_input(x)
    x = conv_base(x)
    x = layers.Flatten()(x)
    x = layers.Dense(256)(x)
    x = layers.Dropout(0.5)(x)
    outputs = layers.Dense(1, activation="sigmoid")(x)
    model = keras.Model(inputs, outputs)
    model.compile(loss="binary_crossentropy", optimizer="rmsprop", metrics=["accuracy"])
    extraction = common.measure(
        lambda: model.fit(train_dataset, epochs=1, validation_data=validation_dataset, verbose=0)
    )
    conv_base.trainable = True
    for layer in conv_base.layers[:-4]:
        layer.trainable = False
    model.compile(
        loss="binary_crossentropy", optimizer=keras.optimizers.RMSprop(learning_rate=1e-5), metrics=["accuracy"]
    )
    tuning = common.measure(lambda: model.fit(train_dataset, epochs=1, validation_data=validation_dataset, verbose=0))
    return {"feature_extraction_aug": extraction["seconds"], "fine_tuning": tuning["seconds"], "precision": "float32"}


def cvpipe(cache: str, out: str) -> dict[str, Any]:
    """cvpipe's train stage, ``precision: auto``: feature_extraction_aug, then fine_tuning from its model."""
    from cvpipe.config import TrainConfig, VariantConfig
    from cvpipe.ml.arrays import load_split
    from cvpipe.stages.train import train_variant

    one = VariantConfig(epochs=1, batch_size=BATCH)
    cfg = TrainConfig(
        precision="auto", feature_extraction_aug=one, fine_tuning=one.model_copy(update={"learning_rate": 1e-5})
    )
    train, val = load_split(Path(cache), "train"), load_split(Path(cache), "val")
    folder = Path(out)
    timings: dict[str, Any] = {}
    for variant, extra in (
        ("feature_extraction_aug", {"conv_base": "none"}),
        ("fine_tuning", {"init_model": folder / "feature_extraction_aug.keras"}),
    ):
        started = time.perf_counter()
        summary = train_variant(
            variant, cfg, train, val, folder / f"{variant}.keras", folder / variant, live=False, **extra
        )
        timings[variant] = time.perf_counter() - started
        timings[f"{variant}_fit"] = summary.seconds
        timings["precision"] = summary.precision
        timings[f"{variant}_dtypes"] = summary.compute_dtypes
        timings[f"{variant}_jit"] = summary.jit_compile
    return timings


def guard(cache: str, features: str, precision: str, epochs: int) -> dict[str, Any]:
    """Train scratch (images) and feature_extraction (features) under ``precision``; their test accuracy."""
    from cvpipe.config import TrainConfig, VariantConfig
    from cvpipe.ml.arrays import load_split
    from cvpipe.ml.models import load_model
    from cvpipe.stages.train import train_variant

    settings = VariantConfig(epochs=epochs, batch_size=BATCH)
    cfg = TrainConfig(seed=1337, precision=precision, scratch=settings, feature_extraction=settings)
    accuracy: dict[str, Any] = {}
    with common.scratch("precision-guard") as work:
        for variant, folder in (("scratch", cache), ("feature_extraction", features)):
            train, val = load_split(Path(folder), "train"), load_split(Path(folder), "val")
            x_test, y_test = load_split(Path(folder), "test")
            path = work / f"{variant}.keras"
            train_variant(variant, cfg, train, val, path, work / variant, live=False)
            scores = load_model(path, compile=False).predict(np.asarray(x_test, np.float32), verbose=0).reshape(-1)
            accuracy[variant] = float(np.mean((scores > 0.5) == (np.asarray(y_test) == 1)))
    return accuracy


SIDES: dict[str, Callable[..., dict[str, Any]]] = {"seed": seed, "cvpipe": cvpipe, "guard": guard}


# -------------------------------------------------------------------------------------------------- run


def _write_split(folder: Path, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    np.save(split_file(folder, split), images)
    np.save(labels_file(folder, split), labels)


def _decode(archive: Path, members: list[str], size: int, work: Path) -> np.ndarray:
    from cvpipe.config import ImageConfig
    from cvpipe.stages.decode import decode_split

    decode_split(archive, members, work / "decoded.npy", ImageConfig(size=size, workers=0))
    return np.load(work / "decoded.npy")


def epoch_row(images: int, val: int, size: int, cache: Path | None) -> common.Result:
    """One epoch of feature_extraction_aug and fine_tuning, both sides; the precision-epoch row."""
    archive = common.synthetic_archive(images + val, cache)
    members = common.image_members(archive)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(members))  # the archive is in name order: cats first
    train_members = [members[i] for i in order[:images]]
    val_members = [members[i] for i in order[images : images + val]]
    with common.scratch("precision") as work:
        for split, chosen in (("train", train_members), ("val", val_members)):
            decoded = _decode(archive, chosen, size, work)
            _write_split(work / "cache", split, decoded, common.member_labels(chosen))
        train_dir = common.extract_to_folders(archive, work / "train", train_members)
        val_dir = common.extract_to_folders(archive, work / "val", val_members)
        theirs = common.in_child("precision", "seed", {"train": str(train_dir), "val": str(val_dir), "size": size})
        ours = common.in_child("precision", "cvpipe", {"cache": str(work / "cache"), "out": str(work / "models")})
    variants = ("feature_extraction_aug", "fine_tuning")
    seed_total = sum(theirs[v] for v in variants)
    ours_total = sum(ours[v] for v in variants)
    ratio = seed_total / ours_total
    details = [
        f"{images} training and {val} validation images at {size}x{size}, batch {BATCH}, {common.cores()} cores, "
        "one epoch each of feature_extraction_aug then fine_tuning (block5 + head), random VGG16 weights on both "
        "sides; each side in its own process, seed first",
        "seed (float32, image_dataset_from_directory): feature_extraction_aug "
        f"{theirs['feature_extraction_aug']:.1f} s, "
        f"fine_tuning {theirs['fine_tuning']:.1f} s (fit, with its tracing)",
        f"cvpipe (train.precision auto -> {ours['precision']}): feature_extraction_aug "
        f"{ours['feature_extraction_aug']:.1f} s (fit {ours['feature_extraction_aug_fit']:.1f} s), fine_tuning "
        f"{ours['fine_tuning']:.1f} s (fit {ours['fine_tuning_fit']:.1f} s); train_variant's whole call (build, "
        "load the parent, fit, save)",
        f"compute dtypes: {ours['feature_extraction_aug_dtypes']} / {ours['fine_tuning_dtypes']}; jit_compile "
        f"{ours['feature_extraction_aug_jit']} / {ours['fine_tuning_jit']}",
        f"ratio per variant: feature_extraction_aug "
        f"{theirs['feature_extraction_aug'] / ours['feature_extraction_aug']:.2f}x, fine_tuning "
        f"{theirs['fine_tuning'] / ours['fine_tuning']:.2f}x; judged on the total, {ratio:.2f}x",
        f"bf16 hardware on this CPU: {'yes' if common.has_bf16_hardware() else 'no'} (goal {TARGET:g}x is for a bf16 "
        "CPU; elsewhere auto is float32 and the figure is reported as it is)",
    ]
    return common.Result.speedup(
        "precision-epoch",
        f"one epoch of feature_extraction_aug + fine_tuning, {images} images at {size}x{size}",
        f"{ours_total:.1f} s ({ours['precision']})",
        f"{seed_total:.1f} s (float32)",
        ratio,
        TARGET,
        details,
        unit=" less time on a bf16 CPU",
    )


def guard_row(images: int, size: int, epochs: int, cache: Path | None) -> common.Result:
    """bf16 vs float32 test accuracy of scratch and feature_extraction; the precision-guard row."""
    from cvpipe.ml.weights import load_conv_base
    from cvpipe.stages.features import _preprocess

    archive = common.synthetic_archive(images, cache, seed=1)
    members = common.image_members(archive)
    order = np.random.default_rng(1).permutation(len(members))
    cut = [int(images * 0.5), int(images * 0.7)]
    splits = dict(zip(("train", "val", "test"), np.split(order, cut), strict=True))
    with common.scratch("precision-guard-data") as work:
        base = load_conv_base("none", (size, size, 3), "float32")
        for split, indices in splits.items():
            chosen = [members[i] for i in indices]
            decoded, labels = _decode(archive, chosen, size, work), common.member_labels(chosen)
            _write_split(work / "images", split, decoded, labels)
            features = base.predict(_preprocess(decoded), batch_size=BATCH, verbose=0)
            _write_split(work / "features", split, features.astype(np.float32), labels)
        config = {"cache": str(work / "images"), "features": str(work / "features"), "epochs": epochs}
        full = common.in_child("precision", "guard", {**config, "precision": "float32"})
        low = common.in_child("precision", "guard", {**config, "precision": "mixed_bfloat16"})
    gaps = {variant: 100 * abs(low[variant] - full[variant]) for variant in full}
    worst = max(gaps.values())
    details = [
        f"synthetic source, {images} images at {size}x{size} split 50/20/30 (train/val/test), {epochs} epochs, "
        "seed 1337 on both sides; feature_extraction on features of the random-weight VGG16 base (float32)",
        *[
            f"{variant}: float32 {100 * full[variant]:.1f} %, mixed_bfloat16 {100 * low[variant]:.1f} % "
            f"(gap {gaps[variant]:.1f} points)"
            for variant in full
        ],
    ]
    return common.Result.alone(
        "precision-guard",
        "bf16 vs float32 test accuracy, scratch and feature_extraction",
        f"worst gap {worst:.1f} points",
        f"<= {GUARD_POINTS:g} points",
        worst <= GUARD_POINTS,
        details,
    )


def run(
    images: int = 2000,
    val: int = 64,
    size: int = SIZE,
    guard_images: int = 1000,
    guard_size: int = 64,
    guard_epochs: int = 8,
    cache: Path | None = None,
) -> list[common.Result]:
    """Measure and return the precision-epoch and precision-guard rows."""
    return [epoch_row(images, val, size, cache), guard_row(guard_images, guard_size, guard_epochs, cache)]


if __name__ == "__main__":
    quick = common.QUICK
    common.run_main(
        "precision",
        __doc__,
        run,
        SIDES,
        images=8 if quick else 2000,
        val=4 if quick else 64,
        size=32 if quick else SIZE,
        guard_images=20 if quick else 1000,
        guard_size=32 if quick else 64,
        guard_epochs=1 if quick else 8,
    )
