"""The mnist_train stage: the seed's first convnet (section 8.1) on the MNIST cache, as the seed trains it.

The model is :func:`cvpipe.ml.models.mnist_convnet` (three 3x3 convs of 32, 64 and 128 filters, two 2x2
max-pools, Flatten, Dense(10, softmax): 104,202 params; ``mnist.pooling: false`` drops the pools, 712,202
params, the book's counter-example). Training is the seed's: inputs scaled to 0-1 (inside the model, see
:func:`with_scaling`), RMSprop, sparse categorical cross-entropy, 5 epochs of batches of 64 on all 60,000
training images, no validation split; the model after the last epoch is the one kept (the seed selects no
epoch, and reports 0.991-0.993 test accuracy).

Outputs: ``models/mnist.keras`` (written under a temporary name then renamed, so a killed run leaves no file
that looks finished), ``history.json`` and dvclive's curves in ``reports/train/mnist/``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from keras import layers

from cvpipe import layout
from cvpipe.config import MnistConfig, Params
from cvpipe.errors import DataError
from cvpipe.io import temp_path, write_json_atomic
from cvpipe.ml.arrays import load_split
from cvpipe.ml.callbacks import EpochLogger, EpochProgress, LiveCallback, open_live
from cvpipe.ml.device import detect_device
from cvpipe.ml.models import build_model, loss_and_metrics

logger = logging.getLogger(__name__)

NUM_CLASSES = 10
SHAPE: tuple[int, int] = (28, 28)
# float32 throughout: a 104k-parameter model on 28 x 28 inputs gains nothing from mixed precision, and the
# seed's figures are float32 ones.
PRECISION = "float32"


@dataclass(frozen=True)
class MnistTrainPaths:
    """Where ``mnist_train`` reads and writes; the defaults are dvc.yaml's."""

    inputs: Path = layout.MNIST_CACHE
    """The MNIST cache (its train split is read)."""
    model: Path = layout.MNIST_MODEL
    out: Path = layout.MNIST_TRAIN_DIR
    """Folder for ``history.json`` and dvclive's curves."""


@dataclass(frozen=True)
class MnistTrainSummary:
    """What ``mnist_train`` did: the model, epochs, final training loss and accuracy, time, where it ran."""

    model: str
    """The builder's name: ``mnist`` or ``mnist_no_pool``."""
    params: int
    epochs_run: int
    train_images: int
    final_loss: float
    final_accuracy: float
    seconds: float
    device: str
    backend: str
    precision: str


def run(
    params: Params, paths: MnistTrainPaths | None = None, progress: Callable[[int], None] | None = None
) -> MnistTrainSummary:
    """The ``mnist_train`` stage: train the seed's MNIST convnet on the cache's train split.

    Args:
        params: the whole params file (``mnist.pooling``, ``epochs``, ``batch_size``, ``optimizer``,
            ``learning_rate`` and ``seed`` are read).
        paths: inputs and outputs; default :class:`MnistTrainPaths`.
        progress: called with 1 after each epoch.

    Raises:
        DataError: the cache is missing or is not MNIST-shaped.
    """
    paths = paths or MnistTrainPaths()
    images, labels = load_split(paths.inputs, "train")
    callbacks = [EpochProgress(progress)] if progress is not None else []
    return train_mnist(params.mnist, images, labels, paths.model, paths.out, callbacks=callbacks)


def check_images(images: np.ndarray) -> None:
    """Raise :class:`~cvpipe.errors.DataError` unless ``images`` is N x 28 x 28 uint8 (the MNIST cache's kind)."""
    if images.ndim != 3 or images.shape[1:] != SHAPE or images.dtype != np.uint8:
        raise DataError(
            f"MNIST images must be uint8 N x 28 x 28, got {images.dtype} {images.shape}; rerun mnist_data (dvc repro)"
        )


def with_scaling(convnet: keras.Model) -> keras.Model:
    """Return uint8 N x 28 x 28 -> ``convnet``: scaled to 0-1 and given a channel axis inside the model.

    The seed divides by 255 in NumPy before ``fit``; inside the model the cache goes to ``fit`` and ``predict``
    as uint8 (a quarter of the memory of float32) and the saved model takes what the cache holds, as the
    dogs-vs-cats models do. The two layers have no weights: the parameter count is the convnet's.
    """
    inputs = keras.Input(shape=SHAPE, dtype="uint8", name="digits")
    x = layers.Rescaling(1.0 / 255, name="scale_0_1")(inputs)
    x = layers.Reshape((*SHAPE, 1), name="channel")(x)
    return keras.Model(inputs, convnet(x), name=convnet.name)


def train_mnist(
    cfg: MnistConfig,
    images: np.ndarray,
    labels: np.ndarray,
    out_model: Path,
    out_dir: Path,
    *,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    live: bool = True,
) -> MnistTrainSummary:
    """Train the MNIST convnet on ``images`` and save it to ``out_model``.

    Args:
        cfg: the ``mnist`` section of params.yaml.
        images: uint8 N x 28 x 28.
        labels: integers 0-9, one per image.
        out_model: the ``.keras`` file; removed first so that a failed run leaves nothing stale.
        out_dir: folder for ``history.json`` and dvclive's curves (``live/``).
        callbacks: extra Keras callbacks (the CLI's progress bar).
        live: write dvclive curves.

    Raises:
        DataError: images and labels disagree, or labels are outside 0-9.
    """
    check_images(images)
    inputs = np.asarray(images)
    targets = np.asarray(labels).astype(np.int64)
    if len(targets) != len(inputs) or len(inputs) == 0:
        raise DataError(f"mnist_train: {len(inputs)} images and {len(targets)} labels (need as many, at least one)")
    if targets.min() < 0 or targets.max() >= NUM_CLASSES:
        raise DataError(f"mnist_train: labels span {targets.min()}..{targets.max()}, expected 0..9")
    out_model, out_dir = Path(out_model), Path(out_dir)
    name = "mnist" if cfg.pooling else "mnist_no_pool"
    device = detect_device()
    logger.info("training %s on %s, %d images", name, device.describe(), len(inputs))
    keras.utils.set_random_seed(cfg.seed)
    out_model.unlink(missing_ok=True)
    model = with_scaling(build_model(name, (*SHAPE, 1), NUM_CLASSES))
    loss, metrics = loss_and_metrics(NUM_CLASSES)
    model.compile(optimizer=_optimizer(cfg), loss=loss, metrics=metrics)

    started = time.perf_counter()
    history = _fit(model, cfg, inputs, targets, out_model, out_dir, callbacks, live)
    summary = MnistTrainSummary(
        model=name,
        params=int(model.count_params()),
        epochs_run=len(history["loss"]),
        train_images=len(inputs),
        final_loss=history["loss"][-1],
        final_accuracy=history["accuracy"][-1],
        seconds=round(time.perf_counter() - started, 3),
        device=device.describe(),
        backend=device.backend,
        precision=PRECISION,
    )
    write_json_atomic(out_dir / layout.HISTORY_NAME, {"history": history, "summary": dataclasses.asdict(summary)})
    logger.info(
        "%s: loss %.4f, accuracy %.4f after %d epochs",
        name,
        summary.final_loss,
        summary.final_accuracy,
        summary.epochs_run,
    )
    return summary


def _optimizer(cfg: MnistConfig) -> keras.optimizers.Optimizer:
    classes = {"rmsprop": keras.optimizers.RMSprop, "adam": keras.optimizers.Adam, "sgd": keras.optimizers.SGD}
    return classes[cfg.optimizer](learning_rate=cfg.learning_rate)


def _fit(
    model: keras.Model,
    cfg: MnistConfig,
    inputs: np.ndarray,
    targets: np.ndarray,
    out_model: Path,
    out_dir: Path,
    extra_callbacks: Sequence[keras.callbacks.Callback],
    live: bool,
) -> dict[str, list[float]]:
    """Fit, then save the model to a temporary ``.keras`` renamed over ``out_model``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    partial = temp_path(out_model, suffix=".partial.keras")  # Keras needs the suffix; cvpipe.io sweeps leftovers
    partial.unlink()  # Keras writes it, at the end
    try:
        with open_live(out_dir / layout.LIVE_DIR_NAME) if live else contextlib.nullcontext() as curves:
            logging_callbacks = [LiveCallback(curves)] if live else []
            callbacks = [*logging_callbacks, EpochLogger(layout.MNIST, cfg.epochs), *extra_callbacks]
            fitted = model.fit(
                inputs, targets, epochs=cfg.epochs, batch_size=cfg.batch_size, callbacks=callbacks, verbose=0
            )
        model.save(partial)
        os.replace(partial, out_model)
    finally:
        partial.unlink(missing_ok=True)
    return {name: [float(value) for value in values] for name, values in fitted.history.items()}
