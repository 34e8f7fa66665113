"""Model builders: the book's exact parameter counts, freezing, fine-tuning layers, the registry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from cvpipe.errors import ConfigError
from cvpipe.ml import device, models


@pytest.fixture(scope="module")
def vgg16_180() -> keras.Model:
    """One random-weight VGG16 base at the seed's size (building it costs about a second)."""
    return models.vgg16_conv_base((180, 180, 3))


def test_mnist_convnets_have_the_books_parameter_counts() -> None:
    assert models.build_model("mnist").count_params() == 104_202
    assert models.build_model("mnist_no_pool").count_params() == 712_202


def test_small_convnet_has_991041_parameters_at_180_pixels() -> None:
    model = models.small_convnet((180, 180, 3))
    assert model.count_params() == 991_041
    assert model.get_layer(index=-2).output.shape[-1] == 12_544  # Flatten of the 7x7x256 map


@pytest.mark.parametrize("side", [32, 48, 77, 78, 100])
def test_small_convnet_builds_at_small_sizes(side: int) -> None:
    model = models.small_convnet((side, side, 3), augment=True)
    assert model.output_shape == (None, 1)
    out = model.predict(np.zeros((2, side, side, 3), np.float32), verbose=0)
    assert out.shape == (2, 1)


def test_augmented_convnet_adds_augmentation_and_dropout_but_no_weights() -> None:
    plain = models.small_convnet((180, 180, 3))
    augmented = models.small_convnet_aug((180, 180, 3))
    assert augmented.count_params() == plain.count_params()
    names = [type(layer).__name__ for layer in augmented.get_layer("augmentation").layers]
    assert names == ["RandomFlip", "RandomRotation", "RandomZoom"]
    dropout = augmented.get_layer(index=-2)
    assert isinstance(dropout, keras.layers.Dropout) and dropout.rate == 0.5


def test_small_images_are_refused_with_one_line() -> None:
    with pytest.raises(ConfigError, match="at least 32 pixels"):
        models.small_convnet((16, 16, 3))


def test_vgg16_base_counts_and_freezing(vgg16_180: keras.Model) -> None:
    assert vgg16_180.count_params() == 14_714_688
    assert vgg16_180.output_shape == (None, 5, 5, 512)
    assert len(vgg16_180.trainable_weights) == 26
    vgg16_180.trainable = False
    try:
        assert len(vgg16_180.trainable_weights) == 0
    finally:
        vgg16_180.trainable = True


def test_dense_head_on_seed_features() -> None:
    head = models.dense_head((5, 5, 512))
    # Flatten 12,800 -> Dense 256 (3,277,056) -> Dropout -> Dense 1 (257)
    assert head.count_params() == 3_277_313
    assert [type(layer).__name__ for layer in head.layers[1:]] == ["Flatten", "Dense", "Dropout", "Dense"]
    # The seed's Dense(256) is linear (train.head_activation: null), so "vs seed" compares the same model.
    assert head.layers[2].activation is keras.activations.linear
    assert models.head_activation(head) == "linear"


@pytest.mark.parametrize("activation", [None, "relu", "gelu"])
def test_the_heads_activation_is_what_the_param_says(activation: str | None) -> None:
    expected = activation or "linear"
    assert models.head_activation(models.dense_head((1, 1, 512), head_activation=activation)) == expected
    base = models.vgg16_conv_base((32, 32, 3))
    frozen = models.frozen_base_classifier(base, head_activation=activation)
    assert models.head_activation(frozen) == expected
    assert models.head_activation(models.small_convnet((32, 32, 3))) is None  # no dense head there


def test_frozen_base_classifier_trains_only_the_head(vgg16_180: keras.Model) -> None:
    model = models.frozen_base_classifier(vgg16_180)
    try:
        assert len(model.trainable_weights) == 4  # two Dense layers: kernels and biases
        assert model.count_params() == 14_714_688 + 3_277_313
        assert [layer.name for layer in model.layers[1:4]] == ["augmentation", "vgg16_preprocess", "vgg16"]
    finally:
        vgg16_180.trainable = True


def test_preprocess_layer_matches_keras_vgg16_preprocess_input() -> None:
    images = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3)).astype(np.float32)
    expected = keras.applications.vgg16.preprocess_input(images.copy())
    actual = keras.ops.convert_to_numpy(models.VGG16Preprocess(dtype="float32")(images))
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-4)


def test_preprocess_layer_round_trips_through_keras_file(tmp_path: Path) -> None:
    # The full VGG16 models are reloaded in fresh processes (and on JAX) in test_train; this is the quick check.
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Rescaling(1 / 255)(models.augmentation()(inputs))  # a sigmoid saturated at 255 would hide it
    x = models.VGG16Preprocess(dtype="float32", name="vgg16_preprocess")(x)
    model = keras.Model(inputs, keras.layers.Conv2D(2, 3, name="conv")(x))
    images = np.random.default_rng(1).integers(0, 256, (4, 8, 8, 3)).astype(np.float32)
    model.save(tmp_path / "small.keras")
    reloaded = models.load_model(tmp_path / "small.keras", compile=False)
    assert isinstance(reloaded.get_layer("vgg16_preprocess"), models.VGG16Preprocess)
    np.testing.assert_allclose(reloaded.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-5)


def test_fine_tuning_unfreezes_exactly_block5() -> None:
    model = models.frozen_base_classifier(models.vgg16_conv_base((32, 32, 3)))
    models.prepare_fine_tuning(model)
    base = models.find_conv_base(model)
    assert [layer.name for layer in base.layers if layer.trainable] == list(models.FINE_TUNE_LAYERS)
    assert sum(not layer.trainable for layer in base.layers) == len(base.layers) - 4
    assert len(base.trainable_weights) == 6  # block5_conv1-3: kernel + bias each
    assert len(model.trainable_weights) == 6 + 4  # and the head


def test_fine_tuning_needs_a_conv_base() -> None:
    with pytest.raises(ConfigError, match="no VGG16 conv base"):
        models.prepare_fine_tuning(models.dense_head((1, 1, 512)))


def test_unknown_model_name_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError) as info:
        models.build_model("resnet")
    message = str(info.value)
    assert "\n" not in message
    assert "'resnet'" in message
    assert all(name in message for name in models.MODEL_BUILDERS)


def test_two_classes_sigmoid_more_classes_softmax() -> None:
    binary = models.dense_head((1, 1, 512), num_classes=2)
    multi = models.dense_head((1, 1, 512), num_classes=3)
    assert binary.output_shape == (None, 1) and binary.layers[-1].activation is keras.activations.sigmoid
    assert multi.output_shape == (None, 3) and multi.layers[-1].activation is keras.activations.softmax
    assert models.loss_and_metrics(2) == ("binary_crossentropy", ["accuracy"])
    assert models.loss_and_metrics(3) == ("sparse_categorical_crossentropy", ["accuracy"])
    with pytest.raises(ConfigError):
        models.loss_and_metrics(1)


def test_output_layer_stays_float32_under_mixed_precision() -> None:
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = models.small_convnet((32, 32, 3))
    finally:
        keras.config.set_dtype_policy(previous)
    assert model.layers[-2].dtype_policy.compute_dtype == "bfloat16"
    assert model.layers[-1].dtype_policy.name == "float32"
    assert model.predict(np.zeros((1, 32, 32, 3), np.float32), verbose=0).dtype == np.float32


def test_frozen_vgg16_under_mixed_precision_preprocesses_in_float32() -> None:
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = models.frozen_base_classifier(models.vgg16_conv_base((32, 32, 3)))
    finally:
        keras.config.set_dtype_policy(previous)
    assert model.get_layer("vgg16_preprocess").dtype_policy.name == "float32"
    assert models.find_conv_base(model).get_layer("block1_conv1").dtype_policy.compute_dtype == "bfloat16"
    out = model.predict(np.full((2, 32, 32, 3), 128, np.float32), verbose=0)
    assert out.dtype == np.float32 and np.isfinite(out).all()


def test_augmentation_computes_in_float32_under_bf16_and_the_base_and_head_in_bf16() -> None:
    # TensorFlow has no bf16 GPU kernel for the rotation/zoom transform: under bf16 it would run on the CPU.
    with device.dtype_policy("mixed_bfloat16"):
        model = models.frozen_base_classifier(models.vgg16_conv_base((32, 32, 3)))
        scratch = models.small_convnet_aug((32, 32, 3))
    assert models.compute_dtypes(model) == {"base": "bfloat16", "augmentation": "float32", "head": "bfloat16"}
    # The small convnet's only Dense is its float32 output layer.
    assert models.compute_dtypes(scratch) == {"base": "bfloat16", "augmentation": "float32", "head": "float32"}
    assert models.compute_dtypes(models.dense_head((1, 1, 512))) == {
        "base": None,
        "augmentation": None,
        "head": "float32",
    }


def test_recast_changes_the_compute_dtype_not_the_weights(tmp_path: Path) -> None:
    with device.dtype_policy("mixed_bfloat16"):
        model = models.frozen_base_classifier(models.vgg16_conv_base((32, 32, 3)))
    model.save(tmp_path / "bf16.keras")
    loaded = models.load_model(tmp_path / "bf16.keras", compile=False)
    assert models.compute_dtypes(loaded)["base"] == "bfloat16"  # a file keeps the policy it was saved under
    full = models.recast(loaded, "float32")
    assert {layer.compute_dtype for layer in models.walk_layers(full)} == {"float32"}
    for before, after in zip(loaded.get_weights(), full.get_weights(), strict=True):
        np.testing.assert_array_equal(before, after)
    assert models.find_conv_base(full).get_layer("block5_conv1") is not None
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(full.predict(images, verbose=0), loaded.predict(images, verbose=0), atol=2e-2)
    again = models.recast(full, "mixed_bfloat16")
    assert models.compute_dtypes(again) == {"base": "bfloat16", "augmentation": "float32", "head": "bfloat16"}
    assert again.get_layer("vgg16_preprocess").compute_dtype == again.layers[-1].compute_dtype == "float32"


JIT_SCRIPT = """
import json
import keras
import numpy as np
from cvpipe.ml import models

assert keras.backend.backend() == "jax"
keras.utils.set_random_seed(5)
inputs = keras.Input((32, 32, 3))
x = keras.layers.Rescaling(1 / 255)(models.augmentation()(inputs))  # a sigmoid saturated at 255 would hide it
outputs = models.output_layer(2)(keras.layers.Flatten()(keras.layers.AveragePooling2D(4)(x)))
model = keras.Model(inputs, outputs)
# Learning rate 0: the weights never move, so a change of loss on the same batch is the augmentation's.
model.compile(optimizer=keras.optimizers.SGD(0.0), loss="binary_crossentropy")
images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3)).astype("float32")
labels = np.arange(8) % 2
losses = [float(model.train_on_batch(images, labels)) for _ in range(4)]
model.save("aug.keras")
loaded = models.load_model("aug.keras", compile=False)
loaded.compile(optimizer="sgd", loss="binary_crossentropy")
print(json.dumps({"jit": model.jit_compile, "losses": losses, "loaded_jit": loaded.jit_compile}))
"""


def test_augmentation_compiles_on_jax_and_still_varies_every_step(tmp_path: Path) -> None:
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, "-c", JIT_SCRIPT], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    # Keras marks RandomRotation/RandomZoom supports_jit=False: without models.allow_jit this is False.
    assert result["jit"] is True and result["loaded_jit"] is True
    assert len(set(result["losses"])) == len(result["losses"]), result["losses"]
