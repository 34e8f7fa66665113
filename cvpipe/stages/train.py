"""The train stage: fit one of the seed's five variants on the cached arrays, keep the best epoch.

Inputs are NumPy arrays or ``np.load(..., mmap_mode="r")`` memmaps, of the cache the variant reads
(:mod:`cvpipe.ml.variants`): uint8 images N x S x S x 3, or VGG16 features N x h x w x 512 for
``feature_extraction``. How they reach ``fit`` (whole, or a batch at a time) is :func:`cvpipe.ml.arrays.fit_inputs`'s
choice; the models are :mod:`cvpipe.ml.models`' builders; ``fine_tuning`` starts from
``feature_extraction_aug``'s ``.keras``, passed explicitly.

Outputs: the best model by ``val_loss`` (``.keras``, written once, when training finished, under a temporary
name then renamed, so a killed run leaves no file that looks like a finished model; the best epoch's weights
and optimizer state wait in memory until then, see :class:`~cvpipe.ml.callbacks.BestEpoch`), ``history.json``
and dvclive's curves in the stage's folder.
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
from typing import Any

import keras
import numpy as np

from cvpipe import layout
from cvpipe.config import Params, TrainConfig, VariantConfig
from cvpipe.errors import ConfigError, DataError
from cvpipe.io import temp_path, write_json_atomic
from cvpipe.ml.arrays import IN_MEMORY_BYTES, Split, fit_inputs, load_split
from cvpipe.ml.callbacks import BestEpoch, EpochLogger, EpochProgress, LiveCallback, open_live
from cvpipe.ml.device import (
    Device,
    detect_device,
    distribution_scope,
    dtype_policy,
    enable_determinism,
    resolve_precision,
)
from cvpipe.ml.models import build_model, compute_dtypes, head_activation, load_model, loss_and_metrics, recast
from cvpipe.ml.variants import Variant, get_variant
from cvpipe.ml.weights import load_conv_base, weights_identity

logger = logging.getLogger(__name__)

ConvBaseSpec = keras.Model | str | Callable[[tuple[int, int, int]], keras.Model]
"""A built conv base, a weights spec for :func:`cvpipe.ml.weights.load_conv_base`, or a factory of the input shape."""


@dataclass(frozen=True)
class TrainPaths:
    """Where ``train@<variant>`` reads and writes; :meth:`default` gives dvc.yaml's paths."""

    inputs: Path
    """The cache folder the variant reads (decoded images or VGG16 features)."""
    model: Path
    """The ``.keras`` file to write."""
    out: Path
    """Folder for ``history.json`` and dvclive's curves."""
    init: Path | None = None
    """The model a variant with a parent starts from (``fine_tuning``: ``feature_extraction_aug``'s)."""

    @classmethod
    def default(cls, variant: str) -> TrainPaths:
        """The paths of ``variant`` in the pipeline (:mod:`cvpipe.layout`), its parent's model included."""
        spec = get_variant(variant)
        cache = layout.FEATURES_CACHE if spec.inputs == "features" else layout.IMAGES_CACHE
        init = layout.model_file(spec.parent) if spec.parent else None
        return cls(cache, layout.model_file(variant), layout.train_dir(variant), init)


@dataclass(frozen=True)
class TrainSummary:
    """What ``train@<variant>`` did: epochs, the best epoch, time, where it ran, the model's size."""

    variant: str
    epochs_run: int
    best_epoch: int
    """1-based."""
    best_val_loss: float
    best_val_accuracy: float | None
    seconds: float
    device: str
    backend: str
    precision: str
    """The dtype policy the model was built under (``train.precision`` with ``auto`` resolved)."""
    params: int
    trainable_params: int
    jit_compile: bool
    """Whether the compiled model runs its steps through XLA (Keras's ``jit_compile`` as it resolved it)."""
    compute_dtypes: dict[str, str | None]
    """What ran in which dtype: ``base``, ``augmentation``, ``head`` (see :func:`cvpipe.ml.models.compute_dtypes`)."""
    conv_base: dict[str, Any] | None = None
    """The VGG16 weights' identity (spec, file, sha256) for a variant that builds the base from a spec."""
    head_activation: str | None = None
    """The dense head's Dense(256) activation as built (``linear``: the seed's); None without that head."""


def run(
    variant: str, params: Params, paths: TrainPaths | None = None, progress: Callable[[int], None] | None = None
) -> TrainSummary:
    """The ``train@<variant>`` stage: train on the train split, select the best epoch on val.

    Args:
        variant: one of :data:`cvpipe.ml.variants.NAMES`.
        params: the whole params file (``train``, ``data.classes`` and, for the VGG16 variants,
            ``features.weights`` are read).
        paths: inputs and outputs; default :meth:`TrainPaths.default`. A variant with a parent needs ``init``.
        progress: called with 1 after each epoch.

    Raises:
        ConfigError: unknown variant, or a variant with a parent and no ``init``.
        DataError: a cache or the initial model is missing, or the inputs do not fit the variant.
    """
    spec = get_variant(variant)
    paths = paths or TrainPaths.default(variant)
    if spec.parent and paths.init is None:
        raise ConfigError(
            f"{variant} starts from {spec.parent}'s model: pass it as init (--init {layout.model_file(spec.parent)})"
        )
    return train_variant(
        variant,
        params.train,
        load_split(paths.inputs, "train"),
        load_split(paths.inputs, "val"),
        paths.model,
        paths.out,
        num_classes=len(params.data.classes),
        conv_base=params.features.weights if spec.needs_base else None,
        init_model=paths.init if spec.parent else None,
        callbacks=[EpochProgress(progress)] if progress is not None else (),
    )


def variant_config(cfg: TrainConfig, variant: str) -> VariantConfig:
    """Return the settings of ``variant``.

    Raises:
        ConfigError: unknown variant; the message lists the valid ones.
    """
    return getattr(cfg, get_variant(variant).name)


def make_optimizer(settings: VariantConfig) -> keras.optimizers.Optimizer:
    """Return the optimizer named in ``settings`` with its learning rate."""
    classes = {"rmsprop": keras.optimizers.RMSprop, "adam": keras.optimizers.Adam, "sgd": keras.optimizers.SGD}
    return classes[settings.optimizer](learning_rate=settings.learning_rate)


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
    precision: str | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    workers: int = 1,
    live: bool = True,
    in_memory_bytes: int = IN_MEMORY_BYTES,
) -> TrainSummary:
    """Train ``variant`` and save its best epoch (lowest ``val_loss``) to ``out_model``.

    Args:
        variant: one of :data:`cvpipe.ml.variants.NAMES`.
        cfg: the ``train`` section of params.yaml (seed, determinism, the variant's optimiser settings).
        train: training (inputs, labels); images as uint8 N x S x S x 3, or VGG16 features for
            ``feature_extraction``.
        val: validation (inputs, labels), same kind as ``train``.
        out_model: the ``.keras`` file to write; removed first so a failed run leaves nothing stale.
        out_dir: folder for ``history.json`` and dvclive's curves (``live/``).
        num_classes: 2 (sigmoid) or more (softmax); labels must lie in ``[0, num_classes)``.
        conv_base: for a variant that needs the base (``feature_extraction_aug``): a VGG16 conv base, a weights
            spec for :func:`cvpipe.ml.weights.load_conv_base`, or a factory called with the image shape. A spec
            or factory is built after the precision policy and inside the multi-GPU scope; prefer them. A
            spec's identity is the summary's ``conv_base``.
        init_model: for a variant with a parent (``fine_tuning``): the parent's ``.keras``.
        precision: the dtype policy, overriding ``cfg.precision`` (``auto``: see
            :func:`cvpipe.ml.device.resolve_precision`). The VGG16 base is built under it too; the augmentation
            block, the preprocessing and the output layer stay float32.
        callbacks: extra Keras callbacks (the CLI's progress bar).
        workers: ``PyDataset`` reader threads (splits too large for memory only).
        live: write dvclive curves; False where dvclive (which imports DVC) is not installed, e.g. the GPU
            check on a machine that only carries keras.
        in_memory_bytes: train and val inputs up to this size are read into memory (see
            :data:`cvpipe.ml.arrays.IN_MEMORY_BYTES`); larger ones are fed a batch at a time.

    Returns:
        The summary; ``history.json`` holds the same fields but ``conv_base``.

    Raises:
        ConfigError: unknown variant, or a missing conv base / initial model.
        DataError: inputs of the wrong kind, mismatched lengths, or labels out of range.
    """
    spec = get_variant(variant)
    settings = variant_config(cfg, variant)
    out_model, out_dir = Path(out_model), Path(out_dir)
    _check_split("train", spec, train, num_classes)
    _check_split("val", spec, val, num_classes)
    if train[0].shape[1:] != val[0].shape[1:]:
        raise DataError(f"train inputs are {train[0].shape[1:]} but val inputs are {val[0].shape[1:]}")

    device = detect_device()
    policy = resolve_precision(precision or cfg.precision, device)
    keras.utils.set_random_seed(cfg.seed)
    if cfg.deterministic:
        enable_determinism(device.backend)

    out_model.unlink(missing_ok=True)
    model = compile_variant(
        variant,
        settings,
        train[0].shape[1:],
        policy,
        device,
        num_classes,
        conv_base,
        init_model,
        out_model,
        head_activation=cfg.head_activation,
    )
    logger.info(
        "training %s on %s (precision %s, jit_compile %s, compute dtypes %s)",
        variant,
        device.describe(),
        policy,
        model.jit_compile,
        compute_dtypes(model),
    )

    inputs = fit_inputs(
        train, val, settings.batch_size, seed=cfg.seed, binary=num_classes == 2, workers=workers, limit=in_memory_bytes
    )
    started = time.perf_counter()
    history = _fit(model, variant, settings.epochs, inputs, out_model, out_dir, callbacks, live)
    seconds = time.perf_counter() - started

    summary = _summary(variant, history, seconds, device, policy, model)
    # The training facts only: conv_base is the lineage's (and history.json stays what it was).
    facts = {key: value for key, value in dataclasses.asdict(summary).items() if key != "conv_base"}
    write_json_atomic(out_dir / layout.HISTORY_NAME, {"history": history, "summary": facts})
    logger.info(
        "%s: best val_loss %.4f at epoch %d of %d (%.1f s)",
        variant,
        summary.best_val_loss,
        summary.best_epoch,
        summary.epochs_run,
        seconds,
    )
    if isinstance(conv_base, str):
        summary = dataclasses.replace(summary, conv_base=weights_identity(conv_base))
    return summary


def compile_variant(
    variant: str,
    settings: VariantConfig,
    input_shape: tuple[int, ...],
    policy: str,
    device: Device,
    num_classes: int = 2,
    conv_base: ConvBaseSpec | None = None,
    init_model: Path | None = None,
    out_model: Path | None = None,
    head_activation: str | None = None,
) -> keras.Model:
    """Build ``variant``'s model under the dtype policy ``policy`` (in the multi-GPU scope) and compile it.

    ``jit_compile`` is left to Keras (``"auto"``): XLA on JAX for every variant, on TensorFlow only on a GPU
    and for models without the augmentation layers (see README, Devices).

    Args:
        variant: one of :data:`cvpipe.ml.variants.NAMES`.
        settings: the variant's optimiser settings.
        input_shape: one input's shape.
        policy: a Keras dtype policy (``auto`` already resolved).
        device: from :func:`cvpipe.ml.device.detect_device`.
        num_classes: number of classes.
        conv_base: see :func:`train_variant`.
        init_model: see :func:`train_variant`.
        out_model: the file training will write, which ``init_model`` must not be.
        head_activation: ``train.head_activation`` for a variant that builds the dense head (None: linear).
    """
    spec = get_variant(variant)
    with dtype_policy(policy), distribution_scope(device):
        model = _build(spec, input_shape, num_classes, conv_base, init_model, out_model, policy, head_activation)
        loss, metrics = loss_and_metrics(num_classes)
        model.compile(optimizer=make_optimizer(settings), loss=loss, metrics=metrics)
    return model


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
        with open_live(out_dir / layout.LIVE_DIR_NAME) if live else contextlib.nullcontext() as curves:
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
    spec: Variant,
    input_shape: tuple[int, ...],
    num_classes: int,
    conv_base: ConvBaseSpec | None,
    init_model: Path | None,
    out_model: Path | None,
    policy: str,
    activation: str | None = None,
) -> keras.Model:
    """Build ``spec``'s model with its registered builder: from its parent's model, a conv base, or a shape."""
    if spec.parent is not None:
        # The parent's file keeps the dtypes it was trained under; this variant's policy is this run's.
        parent = recast(_parent_model(spec, init_model, num_classes, out_model), policy)
        return build_model(spec.builder, parent)
    head = {"head_activation": activation} if spec.head else {}
    if spec.needs_base:
        return build_model(spec.builder, _resolve_conv_base(spec, conv_base, input_shape, policy), num_classes, **head)
    return build_model(spec.builder, input_shape, num_classes, **head)


def _resolve_conv_base(
    variant: Variant, base: ConvBaseSpec | None, input_shape: tuple[int, ...], policy: str = "float32"
) -> keras.Model:
    if base is None:
        raise ConfigError(f"{variant.name} needs a VGG16 conv base (conv_base: weights spec or model)")
    shape = tuple(int(side) for side in input_shape)
    if isinstance(base, keras.Model):
        return base  # built by the caller, under the caller's policy
    if isinstance(base, str):
        # The loader sets its own policy while building: it must be this run's, or the base (99% of the
        # FLOPs of the VGG16 variants) would compute in float32 under a bf16 head.
        return load_conv_base(base, shape, precision=policy)  # offline and checksummed
    return base(shape)  # under the global policy compile_variant set


def _parent_model(variant: Variant, init_model: Path | None, num_classes: int, out_model: Path | None) -> keras.Model:
    """Load the trained model ``variant`` starts from, checked against its classes and its own output."""
    if init_model is None:
        raise ConfigError(f"{variant.name} starts from {variant.parent}'s model: pass its .keras as init_model")
    init_model = Path(init_model)
    if not init_model.is_file():
        raise DataError(f"{init_model}: no such model; train {variant.parent} first")
    if out_model is not None and init_model.resolve() == out_model.resolve():
        raise ConfigError(f"{init_model}: {variant.name} must not overwrite the model it starts from")
    model = load_model(init_model, compile=False)
    units = model.output_shape[-1]
    if (2 if units == 1 else units) != num_classes:
        raise DataError(f"{init_model} predicts {units} unit(s), which does not fit num_classes={num_classes}")
    return model


def _check_split(name: str, spec: Variant, split: Split, num_classes: int) -> None:
    variant = spec.name
    x, y = split
    if len(x) == 0:
        raise DataError(f"{variant}: the {name} split is empty")
    if len(x) != len(y):
        raise DataError(f"{variant}: {name} has {len(x)} inputs but {len(y)} labels")
    if spec.inputs == "features":
        if x.ndim != 4 or x.shape[-1] != 512:
            raise DataError(f"{variant}: {name} inputs must be VGG16 features N x h x w x 512, got {x.shape}")
    elif x.ndim != 4 or x.shape[-1] != 3:
        raise DataError(f"{variant}: {name} inputs must be RGB images N x S x S x 3, got {x.shape}")
    labels = np.asarray(y)
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{variant}: {name} labels must be integers, got {labels.dtype}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise DataError(f"{variant}: {name} labels span {labels.min()}..{labels.max()}, expected 0..{num_classes - 1}")


def _summary(
    variant: str, history: dict[str, list[float]], seconds: float, device: Device, policy: str, model: keras.Model
) -> TrainSummary:
    val_loss = history.get("val_loss", [])
    finite = np.isfinite(val_loss)
    best = int(np.argmin(np.where(finite, val_loss, np.inf))) if finite.any() else 0
    val_accuracy = history.get("val_accuracy", [])
    return TrainSummary(
        variant=variant,
        epochs_run=len(history.get("loss", [])),
        best_epoch=best + 1,
        best_val_loss=float(val_loss[best]) if val_loss else float("nan"),
        best_val_accuracy=float(val_accuracy[best]) if val_accuracy else None,
        seconds=round(seconds, 3),
        device=device.describe(),
        backend=device.backend,
        precision=policy,
        params=int(model.count_params()),
        trainable_params=int(sum(np.prod(weight.shape) for weight in model.trainable_weights)),
        jit_compile=bool(model.jit_compile),
        compute_dtypes=compute_dtypes(model),
        head_activation=head_activation(model),
    )
