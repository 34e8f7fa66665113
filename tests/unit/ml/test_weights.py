"""VGG16 weights: resolved offline and checksummed, loaded in both layouts Keras 3 reads, identified for lineage.

No test touches the network: 'imagenet' is only ever resolved against a KERAS_HOME in a temp folder, and the
weights files loaded here are written by the tests (:mod:`tests.support.vgg16`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import h5py
import numpy as np
import pytest

from cvpipe.errors import CvpipeError
from cvpipe.io import md5_file, sha256_file
from cvpipe.ml import weights
from cvpipe.ml.weights import NOTOP_FILE, load_conv_base, resolve_weights
from tests.support.vgg16 import SHAPE, other_weights_base, write_legacy_h5


@pytest.fixture(autouse=True)
def _isolated_keras_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "keras_home"
    monkeypatch.setenv("KERAS_HOME", str(home))
    return home


def test_none_is_random_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="cvpipe.ml.weights"):
        assert resolve_weights("none") is None
    assert "meaningless" in caplog.text


def test_missing_imagenet_file_names_the_full_path(_isolated_keras_home: Path) -> None:
    expected = _isolated_keras_home / "models" / NOTOP_FILE
    with pytest.raises(CvpipeError) as caught:
        resolve_weights("imagenet")
    message = str(caught.value)
    assert str(expected) in message and "features.weights: none" in message
    assert "\n" not in message
    assert not expected.exists()  # nothing was downloaded


def test_imagenet_file_with_wrong_md5_is_rejected(_isolated_keras_home: Path) -> None:
    target = _isolated_keras_home / "models" / NOTOP_FILE
    target.parent.mkdir(parents=True)
    target.write_bytes(b"not the weights")
    with pytest.raises(CvpipeError, match="MD5"):
        resolve_weights("imagenet")


def test_notop_named_path_with_wrong_md5_is_rejected(tmp_path: Path) -> None:
    target = tmp_path / NOTOP_FILE
    target.write_bytes(b"truncated")
    with pytest.raises(CvpipeError, match=f"does not match Keras's published {NOTOP_FILE}"):
        resolve_weights(str(target))


def test_missing_weights_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CvpipeError, match="no such weights file"):
        resolve_weights(str(tmp_path / "absent.h5"))


# Keras's own save_weights trips NumPy 2's __array__(copy=...) deprecation on the TensorFlow backend.
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_keras3_weights_h5_loads(tmp_path: Path) -> None:
    source = other_weights_base(seed=11)
    path = tmp_path / "base.weights.h5"
    source.save_weights(path)
    loaded = load_conv_base(str(path), SHAPE)
    for got, want in zip(loaded.get_weights(), source.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)


def test_imagenet_resolves_the_cached_notop_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _isolated_keras_home: Path
) -> None:
    # The real file cannot be had offline: stand in a legacy-layout file and trust its MD5 instead.
    source = other_weights_base(seed=3)
    target = _isolated_keras_home / "models" / NOTOP_FILE
    target.parent.mkdir(parents=True)
    write_legacy_h5(target, source)
    monkeypatch.setitem(weights.KERAS_VGG16_MD5, NOTOP_FILE, md5_file(target))

    assert resolve_weights("imagenet") == target
    loaded = load_conv_base("imagenet", SHAPE)
    np.testing.assert_array_equal(loaded.get_weights()[0], source.get_weights()[0])
    assert weights.weights_identity("imagenet") == {
        "spec": "imagenet",
        "file": NOTOP_FILE,
        "sha256": sha256_file(target),
    }


def test_a_file_that_does_not_fit_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "wrong.h5"
    with h5py.File(path, "w") as handle:
        handle.attrs["layer_names"] = np.array([b"dense"])
        group = handle.create_group("dense")
        group.attrs["weight_names"] = np.array([b"dense_W:0"])
        group.create_dataset("dense_W:0", data=np.zeros((2, 2), np.float32))
    with pytest.raises(CvpipeError, match="cannot load into the VGG16 conv base"):
        load_conv_base(str(path), SHAPE)


def test_random_weights_are_seeded_and_identified_as_such() -> None:
    first, second = load_conv_base("none", SHAPE), load_conv_base("none", SHAPE)
    for a, b in zip(first.get_weights(), second.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert weights.weights_identity("none") == {"spec": "none", "file": "random (none)"}
    assert weights.weights_record("none", None) == {
        "spec": "none",
        "file": "random (none)",
        "seed": weights.RANDOM_WEIGHTS_SEED,
    }


def test_unknown_precision_is_one_clear_error() -> None:
    with pytest.raises(CvpipeError, match=r"mixed_float16.*expected one of float32, mixed_bfloat16"):
        weights.check_precision("mixed_float16")
