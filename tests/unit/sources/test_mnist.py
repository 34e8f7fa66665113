"""The MNIST sources: Keras's file, a local .npz or IDX folder, drawn digits; and what a bad file is told."""

from __future__ import annotations

import dataclasses
import gzip
from pathlib import Path

import numpy as np
import pytest

from cvpipe.config import MnistConfig, MnistSyntheticConfig, parse_params
from cvpipe.errors import ConfigError, CvpipeError, SourceError
from cvpipe.io import sha256_file
from cvpipe.sources import mnist
from cvpipe.sources.mnist import IDX_FILES, MnistData, MnistFileError
from tests.support.mnist import digits_mnist, idx_bytes, write_idx_folder


def same(a: MnistData, b: MnistData) -> bool:
    return all(np.array_equal(getattr(a, name), getattr(b, name)) for name in mnist.NPZ_MEMBERS)


def local(path: Path) -> MnistConfig:
    return MnistConfig(source="local", path=path)


def test_a_keras_layout_npz_is_read_with_its_sha256(tmp_path: Path) -> None:
    path = mnist.write_npz(tmp_path / "mnist.npz", digits_mnist())
    data, source = mnist.load_source(local(path))
    assert same(data, digits_mnist())
    assert source.source == "local" and source.path == str(path)
    assert source.sha256 == sha256_file(path) and source.files == {"mnist.npz": source.sha256}


def test_a_folder_of_the_four_idx_files_reads_the_same_digits(tmp_path: Path) -> None:
    folder = write_idx_folder(tmp_path / "idx", digits_mnist())
    data, source = mnist.load_source(local(folder))
    assert same(data, digits_mnist())
    assert list(source.files) == [f"{stem}.gz" for stem in IDX_FILES.values()]
    assert source.files[f"{IDX_FILES['y_test']}.gz"] == sha256_file(folder / f"{IDX_FILES['y_test']}.gz")
    lines = "".join(f"{sha}  {name}\n" for name, sha in source.files.items())
    assert source.sha256 == mnist.hashlib.sha256(lines.encode()).hexdigest()


def test_uncompressed_idx_files_are_read_too(tmp_path: Path) -> None:
    folder = tmp_path / "plain"
    folder.mkdir()
    for name, stem in IDX_FILES.items():
        (folder / stem).write_bytes(idx_bytes(getattr(digits_mnist(), name)))
    assert same(mnist.load_source(local(folder))[0], digits_mnist())


def test_keras_source_is_the_file_load_data_fetches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import keras

    (tmp_path / "datasets").mkdir()
    cached = mnist.write_npz(tmp_path / "datasets" / "mnist.npz", digits_mnist())
    asked = {}

    def get_file(**kwargs: str) -> str:
        asked.update(kwargs)
        return str(cached)

    monkeypatch.setattr(keras.utils, "get_file", get_file)
    data, source = mnist.load_source(MnistConfig())
    assert asked == {"fname": "mnist.npz", "origin": mnist.KERAS_ORIGIN, "file_hash": mnist.KERAS_SHA256}
    assert source.source == "keras" and source.path == str(cached) and source.sha256 == sha256_file(cached)
    assert same(data, digits_mnist())


def test_keras_source_offline_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import keras

    def offline(**kwargs: str) -> str:
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- [Errno -3] no network")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    with pytest.raises(SourceError, match=r"cannot fetch Keras's mnist.npz .*mnist.source: local") as caught:
        mnist.load_source(MnistConfig())
    assert "\n" not in str(caught.value)


def test_drawn_digits_are_deterministic_balanced_and_valid() -> None:
    cfg = MnistSyntheticConfig(train=60, test=20, seed=3)
    first, source = mnist.load_source(MnistConfig(source="synthetic", synthetic=cfg))
    again = mnist.synthetic_digits(cfg)
    assert same(first, again)
    assert np.bincount(first.y_train).tolist() == [6] * 10 and first.x_train.shape == (60, 28, 28)
    assert source.sha256 == mnist.arrays_sha256(first) and source.path is None
    assert source.generator == {"name": mnist.GENERATOR, "version": 1, "seed": 3, "train": 60, "test": 20}
    # Image i depends on (seed, split, i) only: a longer set starts with the same digits.
    longer = mnist.synthetic_digits(cfg.model_copy(update={"train": 70}))
    assert np.array_equal(longer.x_train[:60], first.x_train)
    assert not np.array_equal(mnist.synthetic_digits(cfg.model_copy(update={"seed": 4})).x_train, first.x_train)
    # Digits, not blank frames: ink in the 20 x 20 box, a dark border.
    assert 10 < first.x_train.mean() < 80 and first.x_train[:, :2].mean() < first.x_train[:, 8:20].mean()


def test_config_wants_a_path_with_local_and_only_then() -> None:
    with pytest.raises(ConfigError, match=r"mnist: source 'local' needs mnist\.path"):
        parse_params({"mnist": {"source": "local"}})
    with pytest.raises(ConfigError, match=r"mnist\.path is read with source 'local' only"):
        parse_params({"mnist": {"path": "digits.npz"}})
    assert parse_params({}).mnist.source == "keras"


# -- bad files: one line naming the file and what is wrong ------------------------------------------------------


def bad_npz(tmp_path: Path, **changes: np.ndarray) -> Path:
    data = dataclasses.replace(digits_mnist(), **changes)
    return mnist.write_npz(tmp_path / "bad.npz", data)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"x_train": np.zeros((10, 27, 27), np.uint8)}, r"x_train is \(10, 27, 27\), expected N x 28 x 28"),
        ({"x_test": np.zeros((297, 28, 28), np.float32)}, r"x_test is float32, expected uint8"),
        ({"y_test": np.full(297, 10, np.uint8)}, r"y_test labels span 10..10, expected 0..9"),
        ({"y_train": np.zeros(1499, np.uint8)}, r"y_train is \(1499,\) for 1500 images"),
        ({"y_train": np.zeros(1500, np.float64)}, r"y_train is float64, expected integer labels"),
        ({"y_test": np.zeros(297, np.uint8)}, r"y_test has no image of digit\(s\) 1, 2, 3, 4, 5, 6, 7, 8, 9"),
    ],
)
def test_a_wrong_array_is_named(tmp_path: Path, changes: dict[str, np.ndarray], message: str) -> None:
    path = bad_npz(tmp_path, **changes)
    with pytest.raises(MnistFileError, match=message) as caught:
        mnist.load_source(local(path))
    assert str(caught.value).startswith(str(path)) and "\n" not in str(caught.value)


def test_a_missing_member_is_named(tmp_path: Path) -> None:
    path = tmp_path / "three.npz"
    np.savez(path, x_train=digits_mnist().x_train, y_train=digits_mnist().y_train, x_test=digits_mnist().x_test)
    with pytest.raises(MnistFileError, match=r"three.npz: missing member y_test \(an MNIST .npz holds x_train"):
        mnist.load_source(local(path))


@pytest.mark.parametrize("content", [b"not a zip at all", b"PK\x03\x04truncated"])
def test_a_file_that_is_no_npz_is_one_line(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "mnist.npz"
    path.write_bytes(content)
    with pytest.raises(MnistFileError, match=r"mnist\.npz: not a readable \.npz"):
        mnist.load_source(local(path))


def test_a_missing_path_or_idx_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(MnistFileError, match="no such file or folder"):
        mnist.load_source(local(tmp_path / "nowhere.npz"))
    folder = write_idx_folder(tmp_path / "idx", digits_mnist())
    (folder / f"{IDX_FILES['y_test']}.gz").unlink()
    with pytest.raises(MnistFileError, match=r"missing t10k-labels-idx1-ubyte\.gz"):
        mnist.load_source(local(folder))


def test_a_truncated_idx_file_is_named(tmp_path: Path) -> None:
    folder = write_idx_folder(tmp_path / "idx", digits_mnist())
    images = folder / f"{IDX_FILES['x_train']}.gz"
    images.write_bytes(images.read_bytes()[:-200])  # a cut download: the gzip stream ends early
    with pytest.raises(MnistFileError, match=r"train-images-idx3-ubyte.gz: cannot be read .*truncated\?"):
        mnist.load_source(local(folder))
    # A whole gzip whose payload is shorter than its header says.
    short = idx_bytes(digits_mnist().x_train)[:-784]
    images.write_bytes(gzip.compress(short, mtime=0))
    with pytest.raises(MnistFileError, match=r"truncated: header says \(1500, 28, 28\) \(1176000 bytes\), 1175216"):
        mnist.load_source(local(folder))


def test_an_idx_file_of_the_wrong_kind_is_named(tmp_path: Path) -> None:
    folder = write_idx_folder(tmp_path / "idx", digits_mnist())
    labels = folder / f"{IDX_FILES['y_train']}.gz"
    labels.write_bytes(gzip.compress(idx_bytes(digits_mnist().x_train), mtime=0))  # images where labels belong
    with pytest.raises(
        MnistFileError, match=r"an IDX file of type 0x08 with 3 dimension\(s\); MNIST's has type 0x08 with 1"
    ):
        mnist.load_source(local(folder))
    labels.write_bytes(gzip.compress(b"hello world", mtime=0))
    with pytest.raises(MnistFileError, match="not an IDX file"):
        mnist.load_source(local(folder))


def test_every_error_is_a_cvpipe_error() -> None:
    assert issubclass(MnistFileError, SourceError) and issubclass(MnistFileError, CvpipeError)
