"""The train stage: fit one of the seed's five variants on the cached arrays, keep the best epoch.

Inputs are NumPy arrays or ``np.load(..., mmap_mode="r")`` memmaps. A split whose inputs fit in
:data:`IN_MEMORY_BYTES` is read into memory once and handed to ``fit`` as an array (uint8 images stay uint8;
the model casts them); a larger one is fed through :class:`ArrayBatches` (a ``keras.utils.PyDataset``), so
only one batch at a time is in memory as float32. Both work on every Keras backend.

========================  ===================================================  ===============================
variant                   train / val inputs                                   model
========================  ===================================================  ===============================
scratch                   uint8 images N x S x S x 3                           small convnet
scratch_aug               uint8 images                                         small convnet + augmentation
feature_extraction        VGG16 features N x h x w x 512 (float16/32)          dense head
feature_extraction_aug    uint8 images                                         frozen VGG16 + augmentation
fine_tuning               uint8 images, and feature_extraction_aug's .keras    block5 of VGG16 unfrozen
========================  ===================================================  ===============================

Outputs: the best model by ``val_loss`` (``.keras``, written once, when training finished, under a temporary
name then renamed, so a killed run leaves no file that looks like a finished model; the best epoch's weights
and optimizer state wait in memory until then, see :class:`BestEpoch`), ``history.json`` and dvclive's
curves in ``out_dir``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from cvpipe.config import VARIANTS, TrainConfig, VariantConfig
from cvpipe.errors import ConfigError, DataError
from cvpipe.io import temp_path, write_json_atomic
from cvpipe.ml.models import (
    dense_head,
    frozen_base_classifier,
    load_model,
    loss_and_metrics,
    prepare_fine_tuning,
    small_convnet,
)

logger = logging.getLogger(__name__)

FEATURE_VARIANTS: frozenset[str] = frozenset({"feature_extraction"})
HISTORY_FILE = "history.json"
LIVE_DIR = "live"

IN_MEMORY_BYTES = 2 * 2**30
"""Train and val inputs up to this size together (as Keras holds them) are fed to ``fit`` as in-memory arrays.

Feeding a ``PyDataset`` costs TensorFlow far more than its batches: Keras wraps it in
``tf.data.Dataset.from_generator``, and each step then pays page faults and ``munmap`` for buffers that the
array path reuses. Measured side by side on 2 CPU cores (TensorFlow 2.21, batch 32, 64 px): the small
convnet's epoch took 1.8x the CPU time and 2x the wall time through :class:`ArrayBatches`; the frozen VGG16
classifier's, 1.15x the CPU and 1.5x the wall time. The price is memory: Keras holds the arrays (TensorFlow
copies them into a tensor), up to this limit more than a batch at a time. The seed's splits are far below
it (2,000 training images at 180 px: 194 MB of uint8); all of Kaggle's 25,000 images at 180 px (2.4 GB) are
not.
"""

Split = tuple[np.ndarray, np.ndarray]
"""(inputs, integer labels) of one split; memmaps welcome."""

ConvBaseSpec = keras.Model | str | Callable[[tuple[int, int, int]], keras.Model]
"""A built conv base, a weights spec for ``cvpipe.stages.features.load_conv_base``, or a factory of the input shape."""


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


class ArrayBatches(keras.utils.PyDataset):
    """Batches of a (possibly memory-mapped) array pair, as float32, reshuffled every epoch from a seed.

    Only the rows of the current batch are read and converted, so a split larger than memory trains fine.
    Rows of a batch are read in ascending order, which keeps memmap reads sequential; the batch is a set
    anyway as far as the loss is concerned.
    """

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray | None,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        binary: bool = True,
        **kwargs: Any,
    ) -> None:
        """Create the batches.

        Args:
            x: inputs, first axis is the sample.
            y: integer labels, or None for prediction.
            batch_size: samples per batch (the last batch may be smaller).
            shuffle: draw a new order every epoch.
            seed: seed of the shuffling; same seed, same order every run.
            binary: labels go out as float32 (N, 1) for a sigmoid output, else as int32 (N,).
            **kwargs: ``workers``, ``use_multiprocessing``, ``max_queue_size`` of ``PyDataset``.
        """
        super().__init__(**kwargs)
        self._x = x
        self._y = y
        self._batch_size = batch_size
        self._shuffle = shuffle
        self._rng = np.random.default_rng(seed)
        self._binary = binary
        self._order = self._new_order()

    def __len__(self) -> int:
        """Number of batches."""
        return math.ceil(len(self._x) / self._batch_size)

    def __getitem__(self, index: int) -> Any:
        """Return batch ``index`` as ``x`` or ``(x, y)``."""
        rows = np.sort(self._order[index * self._batch_size : (index + 1) * self._batch_size])
        x = np.asarray(self._x[rows], dtype=np.float32)
        if self._y is None:
            return x
        return x, model_labels(self._y[rows], self._binary)

    def on_epoch_end(self) -> None:
        """Draw the next epoch's order."""
        self._order = self._new_order()

    def _new_order(self) -> np.ndarray:
        if self._shuffle:
            return self._rng.permutation(len(self._x))
        return np.arange(len(self._x))


def model_labels(labels: np.ndarray, binary: bool) -> np.ndarray:
    """Labels as the loss wants them: float32 (N, 1) for one sigmoid unit, int32 (N,) for a softmax."""
    labels = np.asarray(labels)
    return labels.astype(np.float32).reshape(-1, 1) if binary else labels.astype(np.int32)


def held_bytes(x: np.ndarray) -> int:
    """Bytes ``x`` takes once Keras holds it in memory: floats become float32, integers (uint8 images) stay."""
    itemsize = 4 if np.issubdtype(x.dtype, np.floating) else x.dtype.itemsize
    return int(x.size) * itemsize


def fits_in_memory(*arrays: np.ndarray, limit: int = IN_MEMORY_BYTES) -> bool:
    """Whether ``arrays`` together may be handed to Keras whole (see :data:`IN_MEMORY_BYTES`)."""
    return sum(held_bytes(x) for x in arrays) <= limit


def fit_inputs(
    train: Split,
    val: Split,
    batch_size: int,
    *,
    seed: int,
    binary: bool,
    workers: int = 1,
    limit: int = IN_MEMORY_BYTES,
) -> dict[str, Any]:
    """Return the data arguments of ``model.fit``: in-memory arrays when both splits fit, else batches.

    Arrays are shuffled by Keras each epoch from the global seed (``keras.utils.set_random_seed``), batches
    by :class:`ArrayBatches` from ``seed``; either way the same seed gives the same order.

    Args:
        train: training (inputs, labels); memmaps are read whole only on the in-memory path.
        val: validation (inputs, labels).
        batch_size: samples per batch, for both splits.
        seed: seed of :class:`ArrayBatches`' shuffling.
        binary: one sigmoid unit (float32 (N, 1) labels), else a softmax (int32 labels).
        workers: :class:`ArrayBatches` reader threads.
        limit: bytes above which the batches path is taken.
    """
    if fits_in_memory(train[0], val[0], limit=limit):
        return {
            "x": np.asarray(train[0]),
            "y": model_labels(train[1], binary),
            "batch_size": batch_size,
            "shuffle": True,
            "validation_data": (np.asarray(val[0]), model_labels(val[1], binary)),
        }
    return {
        "x": ArrayBatches(*train, batch_size, shuffle=True, seed=seed, binary=binary, workers=workers),
        "shuffle": False,  # ArrayBatches shuffles, from the seed
        "validation_data": ArrayBatches(*val, batch_size, binary=binary, workers=workers),
    }


class BestEpoch(keras.callbacks.Callback):
    """Keep the weights and optimizer state of the epoch with the lowest finite ``val_loss``, in memory.

    What ``ModelCheckpoint(save_best_only=True)`` gives, without writing the whole model to disk at every
    improvement: a VGG16 model is a 60 MB ``.keras`` file, and early epochs improve nearly every time. The
    caller saves once, after :meth:`restore`. A snapshot costs one copy of the variables in memory.
    """

    def __init__(self, monitor: str = "val_loss") -> None:
        """Watch ``monitor`` (lower is better)."""
        super().__init__()
        self.monitor = monitor
        self.best = math.inf
        self.best_epoch: int | None = None
        self._weights: list[np.ndarray] = []
        self._optimizer: list[np.ndarray] = []

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        """Snapshot the model when ``monitor`` improved (NaN and inf never do)."""
        value = (logs or {}).get(self.monitor)
        if value is None or not math.isfinite(value) or value >= self.best:
            return
        self.best, self.best_epoch = float(value), epoch
        # Copies: a backend may hand out a view of the variable's buffer, which the next step overwrites.
        self._weights = [np.array(weight, copy=True) for weight in self.model.get_weights()]
        self._optimizer = [np.array(keras.ops.convert_to_numpy(v), copy=True) for v in self._optimizer_variables()]

    def restore(self) -> bool:
        """Put the best epoch's weights and optimizer state back; False when no epoch had a finite value."""
        if self.best_epoch is None:
            return False
        self.model.set_weights(self._weights)
        for variable, value in zip(self._optimizer_variables(), self._optimizer, strict=True):
            variable.assign(value)
        return True

    def _optimizer_variables(self) -> list[Any]:
        optimizer = getattr(self.model, "optimizer", None)
        return list(optimizer.variables) if optimizer is not None else []


class LiveCallback(keras.callbacks.Callback):
    """Send each epoch's metrics to dvclive (``train/loss``, ``val/accuracy``, ...) on every backend.

    ``dvclive.keras.DVCLiveCallback`` subclasses ``tf.keras.callbacks.Callback`` and so needs TensorFlow.
    """

    def __init__(self, live: Any) -> None:
        """Wrap an open ``dvclive.Live``."""
        super().__init__()
        self._live = live

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        """Log the epoch's metrics and advance the step."""
        for name, value in sorted((logs or {}).items()):
            split, metric = ("val", name[4:]) if name.startswith("val_") else ("train", name)
            self._live.log_metric(f"{split}/{metric}", float(value))
        self._live.next_step()


class EpochLogger(keras.callbacks.Callback):
    """Log one line per epoch (``fit`` runs with ``verbose=0``: the library never prints)."""

    def __init__(self, variant: str, epochs: int) -> None:
        """Name the run in each line."""
        super().__init__()
        self._variant = variant
        self._epochs = epochs

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        """Log the epoch's metrics."""
        metrics = " ".join(f"{name}={value:.4f}" for name, value in sorted((logs or {}).items()))
        logger.info("%s epoch %d/%d %s", self._variant, epoch + 1, self._epochs, metrics)


def open_live(directory: Path) -> Any:
    """Return a ``dvclive.Live`` writing curves to ``directory`` that never edits dvc.yaml or makes experiments.

    Outside a DVC pipeline (no ``DVC_ROOT``: tests, a notebook, a direct CLI call) stock ``Live`` looks for a
    DVC repo and, finding only a Git one, runs ``dvc init`` in it (and crashes in a Git repo without commits);
    so it talks to DVC only when DVC started us. The curves (``plots/metrics/**.tsv``, ``metrics.json``) are
    the same either way.
    """
    from dvclive import Live  # imported here: only this stage needs it, and it pulls in DVC

    class _StageLive(Live):
        def _init_dvc(self) -> None:
            if not os.environ.get("DVC_ROOT"):
                self._dvc_file = self._init_dvc_file()
                return
            try:
                super()._init_dvc()
            except Exception as error:  # the curves matter more than DVC's bookkeeping
                logger.warning("dvclive could not attach to the DVC repo (%s); writing curves only", error)
                self._dvc_repo = None
                self._dvc_file = self._init_dvc_file()

    return _StageLive(str(directory), dvcyaml=False, save_dvc_exp=False, report=None)


def variant_config(cfg: TrainConfig, variant: str) -> VariantConfig:
    """Return the settings of ``variant``.

    Raises:
        ConfigError: unknown variant; the message lists the valid ones.
    """
    if variant not in VARIANTS:
        raise ConfigError(f"unknown training variant {variant!r}; valid variants: {', '.join(VARIANTS)}")
    return getattr(cfg, variant)


def make_optimizer(settings: VariantConfig) -> keras.optimizers.Optimizer:
    """Return the optimizer named in ``settings`` with its learning rate."""
    classes = {"rmsprop": keras.optimizers.RMSprop, "adam": keras.optimizers.Adam, "sgd": keras.optimizers.SGD}
    return classes[settings.optimizer](learning_rate=settings.learning_rate)


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


def train_variant(
    variant: str,
    cfg: TrainConfig,
    train: Split,
    val: Split,
    out_model: Path,
    out_dir: Path,
    *,
    num_classes: int = 2,
    conv_base: ConvBaseSpec | None = None,
    init_model: Path | None = None,
    mixed_precision: bool | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    workers: int = 1,
    live: bool = True,
    in_memory_bytes: int = IN_MEMORY_BYTES,
) -> dict[str, Any]:
    """Train ``variant`` and save its best epoch (lowest ``val_loss``) to ``out_model``.

    Args:
        variant: one of :data:`VARIANTS`.
        cfg: the ``train`` section of params.yaml (seed, determinism, the variant's optimiser settings).
        train: training (inputs, labels); images as uint8 N x S x S x 3, or VGG16 features for
            ``feature_extraction``.
        val: validation (inputs, labels), same kind as ``train``.
        out_model: the ``.keras`` file to write; removed first so a failed run leaves nothing stale.
        out_dir: folder for ``history.json`` and dvclive's curves (``live/``).
        num_classes: 2 (sigmoid) or more (softmax); labels must lie in ``[0, num_classes)``.
        conv_base: for ``feature_extraction_aug``: a VGG16 conv base, a weights spec for
            ``cvpipe.stages.features.load_conv_base``, or a factory called with the image shape. A spec or factory
            is built after the precision policy and inside the multi-GPU scope; prefer them.
        init_model: for ``fine_tuning``: feature_extraction_aug's ``.keras``.
        mixed_precision: None: on exactly when a GPU is present.
        callbacks: extra Keras callbacks (the CLI's progress bar).
        workers: ``PyDataset`` reader threads (splits too large for memory only).
        live: write dvclive curves; False where dvclive (which imports DVC) is not installed, e.g. the GPU
            check on a machine that only carries keras.
        in_memory_bytes: train and val inputs up to this size are read into memory (see
            :data:`IN_MEMORY_BYTES`); larger ones are fed a batch at a time.

    Returns:
        variant, epochs_run, best_epoch, best_val_loss, best_val_accuracy, seconds, device, backend,
        precision, params, trainable_params.

    Raises:
        ConfigError: unknown variant, or a missing conv base / initial model.
        DataError: inputs of the wrong kind, mismatched lengths, or labels out of range.
    """
    settings = variant_config(cfg, variant)
    out_model, out_dir = Path(out_model), Path(out_dir)
    _check_split("train", variant, train, num_classes)
    _check_split("val", variant, val, num_classes)
    if train[0].shape[1:] != val[0].shape[1:]:
        raise DataError(f"train inputs are {train[0].shape[1:]} but val inputs are {val[0].shape[1:]}")

    device = detect_device()
    policy = precision_policy(device, mixed_precision)
    logger.info("training %s on %s (precision %s)", variant, device.describe(), policy)
    keras.utils.set_random_seed(cfg.seed)
    if cfg.deterministic:
        _enable_determinism(device.backend)

    out_model.unlink(missing_ok=True)
    with _dtype_policy(policy), _distribution_scope(device):
        model = _build(variant, train[0].shape[1:], num_classes, conv_base, init_model, out_model)
        loss, metrics = loss_and_metrics(num_classes)
        model.compile(optimizer=make_optimizer(settings), loss=loss, metrics=metrics)

    inputs = fit_inputs(
        train, val, settings.batch_size, seed=cfg.seed, binary=num_classes == 2, workers=workers, limit=in_memory_bytes
    )
    started = time.perf_counter()
    history = _fit(model, variant, settings.epochs, inputs, out_model, out_dir, callbacks, live)
    seconds = time.perf_counter() - started

    summary = _summary(variant, history, seconds, device, policy, model)
    write_json_atomic(out_dir / HISTORY_FILE, {"history": history, "summary": summary})
    logger.info(
        "%s: best val_loss %.4f at epoch %d of %d (%.1f s)",
        variant,
        summary["best_val_loss"],
        summary["best_epoch"],
        summary["epochs_run"],
        seconds,
    )
    return summary


def _fit(
    model: keras.Model,
    variant: str,
    epochs: int,
    inputs: dict[str, Any],
    out_model: Path,
    out_dir: Path,
    extra_callbacks: Sequence[keras.callbacks.Callback],
    live: bool = True,
) -> dict[str, list[float]]:
    """Fit, keeping the best epoch in memory; save it once to a temporary file renamed over ``out_model``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    out_model.parent.mkdir(parents=True, exist_ok=True)
    # Keras insists on a ".keras" suffix; the leading dot and ".partial" mark it as unfinished. Named by
    # cvpipe.io so that the next run sweeps what a killed run left (60+ MB for a VGG16 variant).
    partial = temp_path(out_model, suffix=".partial.keras")
    partial.unlink()  # Keras writes it, at the end
    try:
        with open_live(out_dir / LIVE_DIR) if live else contextlib.nullcontext() as curves:
            best = BestEpoch()
            logging_callbacks = [LiveCallback(curves)] if live else []
            callbacks = [best, *logging_callbacks, EpochLogger(variant, epochs), *extra_callbacks]
            fitted = model.fit(**inputs, epochs=epochs, callbacks=callbacks, verbose=0)
        if not best.restore():
            raise DataError(f"{variant}: no epoch had a finite val_loss so no model was saved; lower the learning rate")
        model.save(partial)
        os.replace(partial, out_model)
    finally:
        partial.unlink(missing_ok=True)
    return {name: [float(value) for value in values] for name, values in fitted.history.items()}


def _build(
    variant: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    conv_base: ConvBaseSpec | None,
    init_model: Path | None,
    out_model: Path,
) -> keras.Model:
    if variant in ("scratch", "scratch_aug"):
        return small_convnet(input_shape, num_classes, augment=variant == "scratch_aug")
    if variant == "feature_extraction":
        return dense_head(input_shape, num_classes)
    if variant == "feature_extraction_aug":
        return frozen_base_classifier(_resolve_conv_base(conv_base, input_shape), num_classes)
    return _fine_tuning_model(init_model, num_classes, out_model)


def _resolve_conv_base(spec: ConvBaseSpec | None, input_shape: tuple[int, ...]) -> keras.Model:
    if spec is None:
        raise ConfigError("feature_extraction_aug needs a VGG16 conv base (conv_base: weights spec or model)")
    shape = tuple(int(side) for side in input_shape)
    if isinstance(spec, keras.Model):
        return spec
    if isinstance(spec, str):
        from cvpipe.stages.features import load_conv_base  # features owns weight resolution (offline, checksummed)

        return load_conv_base(spec, shape)
    return spec(shape)


def _fine_tuning_model(init_model: Path | None, num_classes: int, out_model: Path) -> keras.Model:
    if init_model is None:
        raise ConfigError("fine_tuning starts from feature_extraction_aug's model: pass its .keras as init_model")
    init_model = Path(init_model)
    if not init_model.is_file():
        raise DataError(f"{init_model}: no such model; train feature_extraction_aug first")
    if init_model.resolve() == out_model.resolve():
        raise ConfigError(f"{init_model}: fine_tuning must not overwrite the model it starts from")
    model = load_model(init_model, compile=False)
    units = model.output_shape[-1]
    if (2 if units == 1 else units) != num_classes:
        raise DataError(f"{init_model} predicts {units} unit(s), which does not fit num_classes={num_classes}")
    return prepare_fine_tuning(model)


def _check_split(name: str, variant: str, split: Split, num_classes: int) -> None:
    x, y = split
    if len(x) == 0:
        raise DataError(f"{variant}: the {name} split is empty")
    if len(x) != len(y):
        raise DataError(f"{variant}: {name} has {len(x)} inputs but {len(y)} labels")
    if variant in FEATURE_VARIANTS:
        if x.ndim != 4 or x.shape[-1] != 512:
            raise DataError(f"{variant}: {name} inputs must be VGG16 features N x h x w x 512, got {x.shape}")
    elif x.ndim != 4 or x.shape[-1] != 3:
        raise DataError(f"{variant}: {name} inputs must be RGB images N x S x S x 3, got {x.shape}")
    labels = np.asarray(y)
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{variant}: {name} labels must be integers, got {labels.dtype}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise DataError(f"{variant}: {name} labels span {labels.min()}..{labels.max()}, expected 0..{num_classes - 1}")


def _enable_determinism(backend: str) -> None:
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
def _dtype_policy(policy: str) -> Iterator[None]:
    """Build under ``policy``, then restore the global one so later models are unaffected."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def _distribution_scope(device: Device) -> contextlib.AbstractContextManager[Any]:
    """Mirror the model over all GPUs on TensorFlow; one device elsewhere (``keras.distribution`` is JAX-only)."""
    if device.backend == "tensorflow" and device.gpus > 1:
        import tensorflow as tf

        return tf.distribute.MirroredStrategy().scope()
    return contextlib.nullcontext()


def _summary(
    variant: str, history: dict[str, list[float]], seconds: float, device: Device, policy: str, model: keras.Model
) -> dict[str, Any]:
    val_loss = history.get("val_loss", [])
    finite = np.isfinite(val_loss)
    best = int(np.argmin(np.where(finite, val_loss, np.inf))) if finite.any() else 0
    val_accuracy = history.get("val_accuracy", [])
    return {
        "variant": variant,
        "epochs_run": len(history.get("loss", [])),
        "best_epoch": best + 1,
        "best_val_loss": float(val_loss[best]) if val_loss else float("nan"),
        "best_val_accuracy": float(val_accuracy[best]) if val_accuracy else None,
        "seconds": round(seconds, 3),
        "device": device.describe(),
        "backend": device.backend,
        "precision": policy,
        "params": int(model.count_params()),
        "trainable_params": int(sum(np.prod(weight.shape) for weight in model.trainable_weights)),
    }
