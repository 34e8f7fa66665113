"""Model builders for the chapter-8 experiment: no data, no I/O, any Keras 3 backend.

Every builder returns an uncompiled ``keras.Model``; :func:`build_model` picks one by name from
:data:`MODEL_BUILDERS` (the names :mod:`cvpipe.ml.variants` refers to) and raises
:class:`~cvpipe.errors.ConfigError` on an unknown name. The output layer is
always float32 (``dtype="float32"``) so probabilities and the loss stay exact under a mixed-precision policy.

The dense head's hidden ``Dense(256)`` is linear by default, as the walkthrough's (``train.head_activation``:
``None``), so the VGG16 variants' figures compare with the seed's like for like; a linear layer before the
sigmoid adds no capacity, and ``head_activation="relu"`` is the non-linear head cvpipe trained before.

One departure from the walkthrough, on purpose:

* :func:`prepare_fine_tuning` leaves exactly the base's last four layers trainable (block5_conv1-3 and
  block5_pool), as the book describes; the walkthrough's loop sets ``trainable = True`` and trains the
  whole base.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import layers

from cvpipe.errors import ConfigError

logger = logging.getLogger(__name__)

VGG16_MEAN_BGR: tuple[float, float, float] = (103.939, 116.779, 123.68)
"""ImageNet channel means that ``keras.applications.vgg16.preprocess_input`` ("caffe" mode) subtracts."""

SEED_IMAGE_SHAPE: tuple[int, int, int] = (180, 180, 3)
MIN_IMAGE_SIDE = 32
"""VGG16 accepts nothing smaller; the small convnet uses the same floor (params.yaml's ``image.size``)."""

_MIN_VALID_SIDE = 78
"""Smallest side at which the seed's valid-padding stack (5 convs, 4 pools) still has a 1x1 map left."""

FINE_TUNE_LAYERS: tuple[str, ...] = ("block5_conv1", "block5_conv2", "block5_conv3", "block5_pool")
OUTPUT_NAME = "predictions"
"""The classifier's last layer, always float32."""
HEAD_UNITS = 256
"""Width of the VGG16 variants' hidden Dense head layer (the seed's)."""


@keras.saving.register_keras_serializable(package="cvpipe")
class VGG16Preprocess(layers.Layer):
    """``keras.applications.vgg16.preprocess_input`` as a layer: RGB->BGR, subtract the ImageNet means.

    A plain function call on a symbolic tensor would be traced into backend-specific ops that a ``.keras``
    file cannot always rebuild on another backend; a registered layer saves as its class name and runs the
    same ``keras.ops`` everywhere. It has no weights. Build it with ``dtype="float32"``: subtracting means of
    ~100 from values up to 255 in bfloat16 would lose the low bits before the conv base sees them.
    """

    def call(self, inputs: Any) -> Any:
        """Return the caffe-preprocessed batch (channels last)."""
        bgr = keras.ops.flip(inputs, axis=-1)
        mean = keras.ops.convert_to_tensor(np.asarray(VGG16_MEAN_BGR), dtype=bgr.dtype)
        return bgr - mean

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        """Shape is unchanged."""
        return input_shape


def loss_and_metrics(num_classes: int) -> tuple[str, list[str]]:
    """Return the loss and metrics that match :func:`output_layer` for ``num_classes``.

    Args:
        num_classes: number of classes; 2 means one sigmoid unit.

    Raises:
        ConfigError: fewer than two classes.
    """
    _check_num_classes(num_classes)
    if num_classes == 2:
        return "binary_crossentropy", ["accuracy"]
    return "sparse_categorical_crossentropy", ["accuracy"]


def output_layer(num_classes: int, name: str = OUTPUT_NAME) -> layers.Dense:
    """Return the classifier's last layer: Dense(1, sigmoid) for two classes, softmax otherwise.

    Args:
        num_classes: number of classes.
        name: layer name.

    Raises:
        ConfigError: fewer than two classes.
    """
    _check_num_classes(num_classes)
    if num_classes == 2:
        return layers.Dense(1, activation="sigmoid", dtype="float32", name=name)
    return layers.Dense(num_classes, activation="softmax", dtype="float32", name=name)


AUGMENTATION_LAYERS: tuple[type[layers.Layer], ...] = (layers.RandomFlip, layers.RandomRotation, layers.RandomZoom)

_JIT_SAFE_ON_JAX: tuple[type[layers.Layer], ...] = (layers.RandomRotation, layers.RandomZoom)
"""Layers Keras 3.15 marks ``supports_jit = False``, which makes a model holding one resolve ``jit_compile="auto"``
to False. On JAX their transform is ``jax.numpy`` and their random state a ``SeedGenerator`` variable that the
compiled step carries, so they compile and still draw a new transform each step (tests/unit/ml/test_models.py).
On TensorFlow the flag stays: their ``ImageProjectiveTransformV3`` has no XLA kernel."""


def augmentation(name: str = "augmentation") -> keras.Sequential:
    """Return the book's augmentation block: horizontal flips, rotations of +-10 %, zooms of +-20 %.

    The layers are inside the model, so they run on the accelerator, on every backend, and only in training.
    They compute in float32 under any policy: TensorFlow has no bfloat16 GPU kernel for their image transform
    (it would fall back to the CPU every batch) and the pixels reach :class:`VGG16Preprocess` exact. On JAX
    they are marked jit-safe (:func:`allow_jit`), so the augmented variants compile.
    """
    block = keras.Sequential(
        [
            layers.RandomFlip("horizontal", dtype="float32"),
            layers.RandomRotation(0.1, dtype="float32"),
            layers.RandomZoom(0.2, dtype="float32"),
        ],
        name=name,
    )
    allow_jit(block)
    return block


def walk_layers(model: keras.Model) -> list[layers.Layer]:
    """Return every layer of ``model``, nested models' layers included (depth first, in order)."""
    found: list[layers.Layer] = []
    for layer in model.layers:
        found.append(layer)
        if isinstance(layer, keras.Model):
            found.extend(walk_layers(layer))
    return found


def allow_jit(model: keras.Model) -> keras.Model:
    """On the JAX backend, mark the augmentation layers jit-safe (see :data:`_JIT_SAFE_ON_JAX`); elsewhere a no-op.

    Keras sets the flag in each layer's constructor, so a loaded or cloned model needs it again
    (:func:`load_model` and :func:`recast` call this). Returns ``model``.
    """
    if keras.backend.backend() == "jax":
        for layer in walk_layers(model):
            if isinstance(layer, _JIT_SAFE_ON_JAX):
                layer.supports_jit = True
    return model


def compute_dtypes(model: keras.Model) -> dict[str, str | None]:
    """Return what ``model`` computes in: ``base``, ``augmentation`` and ``head`` (None where it has none).

    ``base`` is the first convolution (VGG16's ``block1_conv1``, or the small convnet's first conv);
    ``augmentation`` the random layers' dtype (``"mixed"`` if they differ); ``head`` the classifier's first
    Dense layer outside a nested base (the hidden Dense(256), or the small convnet's float32 output layer).
    """
    every = walk_layers(model)
    convs = [layer for layer in every if isinstance(layer, layers.Conv2D)]
    augment = {layer.compute_dtype for layer in every if isinstance(layer, AUGMENTATION_LAYERS)}
    dense = [layer for layer in model.layers if isinstance(layer, layers.Dense)]
    return {
        "base": convs[0].compute_dtype if convs else None,
        "augmentation": (augment.pop() if len(augment) == 1 else "mixed") if augment else None,
        "head": dense[0].compute_dtype if dense else None,
    }


def recast(model: keras.Model, policy: str = "float32") -> keras.Model:
    """Return a copy of ``model`` whose layers compute under ``policy``, with the same weights.

    A ``.keras`` file restores each layer's own dtype policy, so loading under another global policy changes
    nothing; this rebuilds the layers instead. The layers this module pins to float32 (augmentation,
    :class:`VGG16Preprocess`, the output layer) stay float32. Weights are float32 variables under every
    policy Keras has, so they copy exactly.

    Args:
        model: a model built by this module (or loaded from one's file).
        policy: a Keras dtype policy name, e.g. ``float32`` (evaluation) or ``mixed_bfloat16``.
    """

    def clone(layer: layers.Layer) -> layers.Layer:
        config = layer.get_config()
        pinned = isinstance(layer, (*AUGMENTATION_LAYERS, VGG16Preprocess)) or layer.name == OUTPUT_NAME
        config["dtype"] = "float32" if pinned else policy
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone, recursive=True)
    copy.set_weights(model.get_weights())
    for source, target in zip(walk_layers(model), walk_layers(copy), strict=True):
        target.trainable = source.trainable
    return allow_jit(copy)


def mnist_convnet(input_shape: Sequence[int] = (28, 28, 1), num_classes: int = 10, pooling: bool = True) -> keras.Model:
    """Return the book's first MNIST convnet: three 3x3 convs (32, 64, 128), Flatten, classifier.

    Args:
        input_shape: image shape, channels last.
        num_classes: number of classes.
        pooling: put a 2x2 max-pool after the first two convs (104,202 params on MNIST); without them the
            Flatten output is 61,952 wide and the model has 712,202 params, the book's counter-example.
    """
    inputs = keras.Input(shape=tuple(input_shape))
    x = inputs
    for index, filters in enumerate((32, 64, 128)):
        x = layers.Conv2D(filters, 3, activation="relu")(x)
        if pooling and index < 2:
            x = layers.MaxPooling2D(2)(x)
    x = layers.Flatten()(x)
    outputs = output_layer(num_classes)(x)
    return keras.Model(inputs, outputs, name="mnist_convnet" if pooling else "mnist_convnet_no_pool")


def mnist_convnet_no_pool(input_shape: Sequence[int] = (28, 28, 1), num_classes: int = 10) -> keras.Model:
    """Return :func:`mnist_convnet` without max-pooling (712,202 params on MNIST)."""
    return mnist_convnet(input_shape, num_classes, pooling=False)


def small_convnet(
    input_shape: Sequence[int] = SEED_IMAGE_SHAPE, num_classes: int = 2, augment: bool = False
) -> keras.Model:
    """Return the from-scratch dogs-vs-cats convnet (991,041 params at 180x180x3).

    Rescaling(1/255), five 3x3 relu convs (32, 64, 128, 256, 256) with a max-pool after the first four,
    Flatten, and the classifier. With ``augment`` the augmentation block comes first and Dropout(0.5) sits
    before the classifier (the seed's "scratch_aug" variant).

    Below a side of 78 pixels the seed's valid-padding stack runs out of pixels, so the convs pad "same"
    there; conv parameter counts are unchanged and Keras sizes Flatten and the classifier from the map.

    Args:
        input_shape: image shape (side >= 32), channels last.
        num_classes: number of classes.
        augment: add augmentation and dropout.

    Raises:
        ConfigError: the image is smaller than 32 pixels.
    """
    shape = _image_shape(input_shape)
    padding = "valid" if min(shape[:2]) >= _MIN_VALID_SIDE else "same"
    inputs = keras.Input(shape=shape)
    x = augmentation()(inputs) if augment else inputs
    x = layers.Rescaling(1.0 / 255)(x)
    for filters in (32, 64, 128, 256):
        x = layers.Conv2D(filters, 3, activation="relu", padding=padding)(x)
        x = layers.MaxPooling2D(2)(x)
    x = layers.Conv2D(256, 3, activation="relu", padding=padding)(x)
    x = layers.Flatten()(x)
    if augment:
        x = layers.Dropout(0.5)(x)
    outputs = output_layer(num_classes)(x)
    return keras.Model(inputs, outputs, name="small_convnet_aug" if augment else "small_convnet")


def small_convnet_aug(input_shape: Sequence[int] = SEED_IMAGE_SHAPE, num_classes: int = 2) -> keras.Model:
    """Return :func:`small_convnet` with augmentation and dropout."""
    return small_convnet(input_shape, num_classes, augment=True)


def vgg16_conv_base(input_shape: Sequence[int] = SEED_IMAGE_SHAPE, weights: str | None = None) -> keras.Model:
    """Return VGG16's convolutional base (14,714,688 params, 26 weight tensors; (5, 5, 512) out at 180 px).

    Args:
        input_shape: image shape (side >= 32), channels last.
        weights: ``None`` for random initialisation (tests: never downloads), or what
            ``keras.applications.VGG16`` accepts; resolving ImageNet weights offline is
            ``cvpipe.ml.weights.load_conv_base``'s job.
    """
    return keras.applications.VGG16(weights=weights, include_top=False, input_shape=_image_shape(input_shape))


def dense_head(
    feature_shape: Sequence[int] = (5, 5, 512), num_classes: int = 2, head_activation: str | None = None
) -> keras.Model:
    """Return the classifier trained on cached VGG16 features: Flatten, Dense(256), Dropout(0.5), out.

    Args:
        feature_shape: shape of one cached feature map, (5, 5, 512) for 180-pixel images.
        num_classes: number of classes.
        head_activation: the Dense(256)'s activation; None (linear) is the seed's.
    """
    inputs = keras.Input(shape=tuple(feature_shape))
    outputs = _head(inputs, num_classes, head_activation)
    return keras.Model(inputs, outputs, name="dense_head")


def frozen_base_classifier(
    conv_base: keras.Model, num_classes: int = 2, augment: bool = True, head_activation: str | None = None
) -> keras.Model:
    """Return images -> augmentation -> VGG16 preprocessing -> frozen ``conv_base`` -> dense head.

    ``conv_base.trainable`` is set to False (the head is random at first; its large gradients would wreck
    the pretrained filters). The input shape is the base's.

    Args:
        conv_base: a VGG16 conv base, e.g. from :func:`vgg16_conv_base` or ``cvpipe.ml.weights.load_conv_base``.
        num_classes: number of classes.
        augment: put the augmentation block in front (the seed's "feature_extraction_aug").
        head_activation: the head's Dense(256) activation; None (linear) is the seed's.
    """
    conv_base.trainable = False
    inputs = keras.Input(shape=tuple(conv_base.input_shape[1:]))
    x = augmentation()(inputs) if augment else inputs
    x = VGG16Preprocess(dtype="float32", name="vgg16_preprocess")(x)
    x = conv_base(x)
    outputs = _head(x, num_classes, head_activation)
    return keras.Model(inputs, outputs, name="frozen_vgg16_classifier")


def find_conv_base(model: keras.Model) -> keras.Model:
    """Return the VGG16 conv base nested inside ``model``.

    Raises:
        ConfigError: ``model`` has no nested model with a ``block5_conv1`` layer.
    """
    for layer in model.layers:
        if isinstance(layer, keras.Model) and any(sub.name == "block5_conv1" for sub in layer.layers):
            return layer
    raise ConfigError(
        f"model {model.name!r} has no VGG16 conv base inside; fine-tuning starts from the feature_extraction_aug model"
    )


def prepare_fine_tuning(model: keras.Model, trainable_layers: int = len(FINE_TUNE_LAYERS)) -> keras.Model:
    """Unfreeze the last ``trainable_layers`` layers of the nested conv base; freeze the rest of it.

    With the default 4 that is block5_conv1-3 and block5_pool: the top block encodes the most task-specific
    features, the lower blocks generic ones worth keeping. The head stays trainable. The flags are set on
    ``model`` itself (copying a 15M-parameter model to stay pure would double its memory) and it is
    returned for chaining; compile it afterwards, since Keras reads ``trainable`` at compile time.

    Args:
        model: a trained :func:`frozen_base_classifier` model.
        trainable_layers: how many of the base's last layers to train.
    """
    base = find_conv_base(model)
    base.trainable = True
    cut = len(base.layers) - trainable_layers
    # Each layer set on its own: a cloned base (recast) does not pass its own flag down to its layers.
    for index, layer in enumerate(base.layers):
        layer.trainable = index >= cut
    logger.info("fine-tuning layers %s", ", ".join(layer.name for layer in base.layers[cut:]))
    return model


def load_model(path: Path | str, compile: bool = True) -> keras.Model:
    """Load a ``.keras`` file written by this package (its custom layers are registered by this import).

    Args:
        path: the ``.keras`` file.
        compile: restore the optimizer and loss too; evaluation only needs ``compile=False``.

    Each layer keeps the dtype policy it was saved with (see :func:`recast`); on JAX the augmentation layers
    are marked jit-safe again (:func:`allow_jit`).
    """
    model = keras.saving.load_model(Path(path), custom_objects={"VGG16Preprocess": VGG16Preprocess}, compile=compile)
    return allow_jit(model)


MODEL_BUILDERS: dict[str, Callable[..., keras.Model]] = {
    "mnist": mnist_convnet,
    "mnist_no_pool": mnist_convnet_no_pool,
    "scratch": small_convnet,
    "scratch_aug": small_convnet_aug,
    "feature_extraction": dense_head,
    "feature_extraction_aug": frozen_base_classifier,
    "fine_tuning": prepare_fine_tuning,
}
"""Builders by name. Most take ``(input_shape, num_classes)``; ``feature_extraction_aug`` takes a conv base and
``fine_tuning`` the trained model it starts from (see :mod:`cvpipe.ml.variants`)."""


def get_builder(name: str) -> Callable[..., keras.Model]:
    """Return the builder registered as ``name``.

    Raises:
        ConfigError: unknown name; the message lists the valid ones.
    """
    try:
        return MODEL_BUILDERS[name]
    except KeyError:
        valid = ", ".join(sorted(MODEL_BUILDERS))
        raise ConfigError(f"unknown model {name!r}; valid names: {valid}") from None


def build_model(name: str, *args: Any, **kwargs: Any) -> keras.Model:
    """Build the model registered as ``name`` with the builder's own arguments.

    Raises:
        ConfigError: unknown name.
    """
    return get_builder(name)(*args, **kwargs)


def head_activation(model: keras.Model) -> str | None:
    """The activation of ``model``'s hidden Dense(256) head layer (``linear`` for the seed's), or None without one.

    Read from the model, so a fine-tuned model reports the head it inherited from its parent.
    """
    for layer in model.layers:
        if isinstance(layer, layers.Dense) and layer.units == HEAD_UNITS:
            return str(getattr(layer.activation, "__name__", layer.activation))
    return None


def _head(x: Any, num_classes: int, activation: str | None = None) -> Any:
    x = layers.Flatten()(x)
    x = layers.Dense(HEAD_UNITS, activation=activation)(x)
    x = layers.Dropout(0.5)(x)
    return output_layer(num_classes)(x)


def _image_shape(input_shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(int(side) for side in input_shape)
    if len(shape) != 3 or shape[2] != 3:
        raise ConfigError(f"expected an RGB image shape (height, width, 3), got {shape}")
    if min(shape[:2]) < MIN_IMAGE_SIDE:
        raise ConfigError(f"images must be at least {MIN_IMAGE_SIDE} pixels a side, got {shape[:2]}")
    return shape  # type: ignore[return-value]


def _check_num_classes(num_classes: int) -> None:
    if num_classes < 2:
        raise ConfigError(f"a classifier needs at least 2 classes, got {num_classes}")
