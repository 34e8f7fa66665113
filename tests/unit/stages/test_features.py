"""Tests for cvpipe.stages.features: the VGG16 feature cache, on tiny 32 x 32 images (1 x 1 x 512 features).

No test touches the network: the weights are 'none' (seeded random) or files the tests write
(:mod:`tests.support.vgg16`); resolving and loading weights is tested in tests/unit/ml/test_weights.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import keras
import numpy as np
import pytest

from cvpipe import layout
from cvpipe.config import FeaturesConfig, Params
from cvpipe.errors import CvpipeError, DataError
from cvpipe.io import sha256_file
from cvpipe.ml import weights
from cvpipe.ml.weights import load_conv_base
from cvpipe.stages import features
from cvpipe.stages.features import extract_features
from tests.support.vgg16 import SHAPE, SIZE, other_weights_base, write_legacy_h5

REPO = Path(__file__).resolve().parents[3]


def _write_cache(folder: Path, counts: dict[str, int], seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write a decoded-image cache the way the decode stage does; return what was written."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, count in counts.items():
        images = rng.integers(0, 256, size=(count, *SHAPE), dtype=np.uint8)
        labels = rng.integers(0, 2, size=count).astype(np.int32)
        np.save(folder / f"{split}.npy", images)
        np.save(folder / f"{split}_labels.npy", labels)
        written[split] = (images, labels)
    return written


def _preprocessed(images: np.ndarray) -> np.ndarray:
    return keras.applications.vgg16.preprocess_input(images.astype(np.float32).copy())


@pytest.fixture(autouse=True)
def _isolated_keras_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "keras_home"
    monkeypatch.setenv("KERAS_HOME", str(home))
    return home


@pytest.fixture(scope="module")
def random_base() -> keras.Model:
    """The 'none' model: the one extract_features builds for weights 'none' (same seed)."""
    return load_conv_base("none", SHAPE)


# ------------------------------------------------------------------------------------------- outputs


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_shapes_dtype_labels_and_json(tmp_path: Path, dtype: str) -> None:
    written = _write_cache(tmp_path / "images", {"train": 10, "val": 4, "test": 5})
    out = tmp_path / "vgg16"
    ticks: list[int] = []

    summary = extract_features(
        tmp_path / "images", out, FeaturesConfig(weights="none", batch_size=4, dtype=dtype), progress=ticks.append
    )

    for split, (_, labels) in written.items():
        feats = np.load(out / f"{split}.npy", mmap_mode="r")
        assert feats.shape == (len(labels), 1, 1, 512)
        assert feats.dtype == np.dtype(dtype)
        copied = np.load(out / f"{split}_labels.npy")
        assert copied.dtype == np.int32
        np.testing.assert_array_equal(copied, labels)
        assert summary.splits[split].count == len(labels)
        assert summary.splits[split].images_per_second > 0
    assert sum(ticks) == 19 and max(ticks) <= 4
    meta = json.loads((out / "features.json").read_text())
    assert meta["weights"] == {"spec": "none", "file": "random (none)", "seed": weights.RANDOM_WEIGHTS_SEED}
    assert summary.weights == meta["weights"]  # the lineage's record of the extractor, without reading the file
    assert meta["dtype"] == dtype
    assert meta["input_shape"] == [SIZE, SIZE, 3] and meta["feature_shape"] == [1, 1, 512]
    assert meta["counts"] == {"train": 10, "val": 4, "test": 5}
    assert meta["keras_version"] == keras.__version__ and meta["backend"] == keras.backend.backend()
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [layout.FEATURES_META_NAME] + [f"{s}.npy" for s in written] + [f"{s}_labels.npy" for s in written]
    )


def test_float16_matches_float32(tmp_path: Path) -> None:
    _write_cache(tmp_path / "images", {"train": 6})
    extract_features(tmp_path / "images", tmp_path / "f32", FeaturesConfig(weights="none", dtype="float32"))
    extract_features(tmp_path / "images", tmp_path / "f16", FeaturesConfig(weights="none", dtype="float16"))
    f32 = np.load(tmp_path / "f32" / "train.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "f16" / "train.npy"), f32.astype(np.float16))


def test_row_i_is_the_model_on_image_i_alone(tmp_path: Path, random_base: keras.Model) -> None:
    written = _write_cache(tmp_path / "images", {"train": 7})
    extract_features(tmp_path / "images", tmp_path / "out", FeaturesConfig(weights="none", batch_size=3))

    feats = np.load(tmp_path / "out" / "train.npy")
    images, _ = written["train"]
    for i in range(len(images)):
        alone = random_base.predict_on_batch(_preprocessed(images[i : i + 1]))
        np.testing.assert_allclose(feats[i], alone[0], rtol=1e-4, atol=1e-4)
    # Rows are distinct, so a permutation would have been caught above.
    assert len({feats[i].tobytes() for i in range(len(images))}) == len(images)


def test_empty_split_gives_empty_features(tmp_path: Path) -> None:
    _write_cache(tmp_path / "images", {"train": 3, "val": 0})
    extract_features(tmp_path / "images", tmp_path / "out", FeaturesConfig(weights="none"))
    assert np.load(tmp_path / "out" / "val.npy").shape == (0, 1, 1, 512)
    assert np.load(tmp_path / "out" / "val_labels.npy").shape == (0,)


class _SpyModel:
    """Wraps a model, recording every batch it is given."""

    def __init__(self, model: keras.Model) -> None:
        self._model = model
        self.output_shape = model.output_shape
        self.inputs: list[np.ndarray] = []

    def predict_on_batch(self, batch: np.ndarray) -> np.ndarray:
        self.inputs.append(batch.copy())
        return self._model.predict_on_batch(batch)


def test_preprocess_input_exactly_as_keras_and_cache_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, random_base: keras.Model
) -> None:
    written = _write_cache(tmp_path / "images", {"train": 9})
    before = sha256_file(tmp_path / "images" / "train.npy")
    spy = _SpyModel(random_base)
    monkeypatch.setattr(features, "build_conv_base", lambda *args: spy)

    extract_features(tmp_path / "images", tmp_path / "out", FeaturesConfig(weights="none", batch_size=4))

    images, _ = written["train"]
    assert [len(b) for b in spy.inputs] == [4, 4, 1]
    fed = np.concatenate(spy.inputs)
    assert fed.dtype == np.float32
    np.testing.assert_array_equal(fed, _preprocessed(images))
    # caffe mode: BGR order, ImageNet means subtracted, no scaling.
    np.testing.assert_allclose(fed[..., 0], images[..., 2] - 103.939, atol=1e-4)
    assert sha256_file(tmp_path / "images" / "train.npy") == before


# ----------------------------------------------------------------------------------------- streaming


class _SpyImages:
    """Stands in for the memory-mapped images: records each slice read and refuses whole-array reads."""

    def __init__(self, array: np.ndarray) -> None:
        self._array = array
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim
        self.reads: list[tuple[int, int]] = []

    def __getitem__(self, key: slice) -> np.ndarray:
        assert isinstance(key, slice), f"images read with {key!r}, not a row slice"
        start, stop, step = key.indices(self.shape[0])
        assert step == 1
        self.reads.append((start, stop))
        return np.asarray(self._array[key])

    def __array__(self, *args: object, **kwargs: object) -> np.ndarray:
        raise AssertionError("the whole images array was materialised")

    def __len__(self) -> int:
        return self.shape[0]


def test_images_are_read_lazily_one_batch_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_cache(tmp_path / "images", {"train": 23})
    spies: list[_SpyImages] = []

    def spy_open(path: Path) -> _SpyImages:
        spies.append(_SpyImages(np.load(path, mmap_mode="r")))
        return spies[-1]

    monkeypatch.setattr(features, "_open_images", spy_open)
    extract_features(tmp_path / "images", tmp_path / "out", FeaturesConfig(weights="none", batch_size=5))

    assert spies[0].reads == [(0, 5), (5, 10), (10, 15), (15, 20), (20, 23)]


def test_peak_memory_does_not_grow_with_the_number_of_images(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, random_base: keras.Model
) -> None:
    batch_size = 16
    # Warm the model up on this batch shape so that tracing is not measured.
    random_base.predict_on_batch(np.zeros((batch_size, *SHAPE), np.float32))
    monkeypatch.setattr(features, "build_conv_base", lambda *args: random_base)
    cfg = FeaturesConfig(weights="none", batch_size=batch_size)

    def peak_bytes(count: int) -> int:
        folder = tmp_path / f"n{count}"
        _write_cache(folder / "images", {"train": count})
        tracemalloc.start()
        try:
            extract_features(folder / "images", folder / "out", cfg)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small, large = peak_bytes(64), peak_bytes(320)
    # 320 images are 960 KiB as uint8, 3.75 MiB as float32 and 640 KiB of float32 features; one float32
    # batch is 192 KiB. Reading the split whole, or keeping its features in memory, adds more than the
    # margin (checked by breaking the implementation both ways); streaming adds ~2 KiB of bookkeeping.
    assert large < small + 256 * 1024, (small, large)
    assert large < 2 * 1024 * 1024, large


# -------------------------------------------------------------------------------------------- atomicity


def test_failure_midway_leaves_no_output_and_no_temp(tmp_path: Path) -> None:
    _write_cache(tmp_path / "images", {"train": 12})
    out = tmp_path / "out"
    seen: list[int] = []

    def explode_after_first_batch(n: int) -> None:
        seen.append(n)
        if len(seen) == 2:
            raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        extract_features(
            tmp_path / "images", out, FeaturesConfig(weights="none", batch_size=4), progress=explode_after_first_batch
        )
    assert list(out.iterdir()) == []


def test_rerun_after_failure_replaces_nothing_until_complete(tmp_path: Path) -> None:
    _write_cache(tmp_path / "images", {"train": 8})
    out = tmp_path / "out"
    extract_features(tmp_path / "images", out, FeaturesConfig(weights="none"))
    good = (out / "train.npy").read_bytes()

    def explode(n: int) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        extract_features(tmp_path / "images", out, FeaturesConfig(weights="none", batch_size=2), progress=explode)
    assert (out / "train.npy").read_bytes() == good
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


# ---------------------------------------------------------------------------------------------- inputs


def test_missing_cache_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="decode stage"):
        extract_features(tmp_path / "nowhere", tmp_path / "out", FeaturesConfig(weights="none"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"train\.npy"):
        extract_features(tmp_path / "empty", tmp_path / "out", FeaturesConfig(weights="none"))


def test_misaligned_labels_are_a_data_error(tmp_path: Path) -> None:
    _write_cache(tmp_path / "images", {"train": 5})
    np.save(tmp_path / "images" / "train_labels.npy", np.zeros(4, np.int32))
    with pytest.raises(DataError, match="5 integer labels"):
        extract_features(tmp_path / "images", tmp_path / "out", FeaturesConfig(weights="none"))


# ---------------------------------------------------------------------------------------------- weights


def test_legacy_h5_layout_loads_and_changes_features(tmp_path: Path, random_base: keras.Model) -> None:
    source = other_weights_base()
    path = tmp_path / "vgg16_legacy_layout.h5"
    write_legacy_h5(path, source)

    loaded = load_conv_base(str(path), SHAPE)
    for got, want in zip(loaded.get_weights(), source.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)

    _write_cache(tmp_path / "images", {"train": 4})
    summary = extract_features(tmp_path / "images", tmp_path / "file", FeaturesConfig(weights=str(path)))
    extract_features(tmp_path / "images", tmp_path / "none", FeaturesConfig(weights="none"))
    with_file = np.load(tmp_path / "file" / "train.npy")
    assert not np.allclose(with_file, np.load(tmp_path / "none" / "train.npy"))
    images = np.load(tmp_path / "images" / "train.npy")
    np.testing.assert_allclose(with_file, source.predict_on_batch(_preprocessed(images)), rtol=1e-4, atol=1e-4)
    meta = json.loads((tmp_path / "file" / "features.json").read_text())
    assert meta["weights"]["file"] == path.name and meta["weights"]["sha256"] == sha256_file(path)
    assert summary.weights == meta["weights"]


# --------------------------------------------------------------------------------------------- backends


def test_runs_under_jax_and_matches_this_backend(tmp_path: Path) -> None:
    # Whole batches only: each new batch shape costs JAX a compilation of VGG16.
    _write_cache(tmp_path / "images", {"train": 8, "val": 4})
    extract_features(tmp_path / "images", tmp_path / "here", FeaturesConfig(weights="none", batch_size=4))
    script = textwrap.dedent(
        f"""
        import dataclasses, json, sys
        from pathlib import Path
        from cvpipe.config import FeaturesConfig
        from cvpipe.stages.features import extract_features
        summary = extract_features(Path({str(tmp_path / "images")!r}), Path({str(tmp_path / "jax")!r}),
                                   FeaturesConfig(weights="none", batch_size=4))
        print(json.dumps(dataclasses.asdict(summary)))
        """
    )
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    meta = json.loads((tmp_path / "jax" / "features.json").read_text())
    assert meta["backend"] == "jax"
    for split in ("train", "val"):
        np.testing.assert_allclose(
            np.load(tmp_path / "jax" / f"{split}.npy"),
            np.load(tmp_path / "here" / f"{split}.npy"),
            rtol=1e-3,
            atol=1e-3,
        )


# ------------------------------------------------------------------------------------------- precision


def test_mixed_bfloat16_is_within_one_percent_and_recorded(tmp_path: Path) -> None:
    _write_cache(tmp_path / "images", {"train": 4})
    cfg = FeaturesConfig(weights="none", batch_size=4)
    extract_features(tmp_path / "images", tmp_path / "f32", cfg)
    summary = extract_features(tmp_path / "images", tmp_path / "bf16", cfg, precision="mixed_bfloat16")
    f32, bf16 = np.load(tmp_path / "f32" / "train.npy"), np.load(tmp_path / "bf16" / "train.npy")
    assert bf16.dtype == np.float32
    assert np.linalg.norm(bf16 - f32) / np.linalg.norm(f32) < 1e-2
    assert summary.precision == "mixed_bfloat16"
    assert json.loads((tmp_path / "bf16" / "features.json").read_text())["precision"] == "mixed_bfloat16"
    assert json.loads((tmp_path / "f32" / "features.json").read_text())["precision"] == "float32"
    assert keras.config.dtype_policy().name == "float32"  # the global policy is left as it was


def test_precision_comes_from_the_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_cache(tmp_path / "images", {"train": 2})
    seen: list[str] = []
    real_build = features.build_conv_base

    def spy(path, shape, precision="float32"):
        seen.append(precision)
        return real_build(path, shape, precision)

    monkeypatch.setattr(features, "build_conv_base", spy)
    cfg = FeaturesConfig(weights="none", batch_size=2, precision="mixed_bfloat16")
    extract_features(tmp_path / "images", tmp_path / "out", cfg)
    assert seen == ["mixed_bfloat16"]


def test_unknown_precision_is_one_clear_error(tmp_path: Path) -> None:
    _write_cache(tmp_path / "images", {"train": 2})
    cfg = FeaturesConfig(weights="none")
    with pytest.raises(CvpipeError, match=r"float64.*expected one of auto, float32, mixed_bfloat16, mixed_float16"):
        extract_features(tmp_path / "images", tmp_path / "out", cfg, precision="float64")


# -------------------------------------------------------------------------------------------- the stage


def test_run_reads_the_params_and_counts_the_images(tmp_path: Path) -> None:
    _write_cache(tmp_path / "images", {"train": 3, "test": 2})
    params = Params.model_validate({"features": {"weights": "none", "batch_size": 2}})
    paths = features.FeaturesPaths(images=tmp_path / "images", out=tmp_path / "out")
    ticks: list[int] = []
    summary = features.run(params, paths, ticks.append)
    assert features.count_images(paths.images) == sum(ticks) == 5
    assert summary.feature_shape == [1, 1, 512] and list(summary.splits) == ["train", "test"]
    assert summary.weights["spec"] == "none"
    assert (layout.split_file(paths.out, "test")).is_file()
    assert features.FeaturesPaths() == features.FeaturesPaths(layout.IMAGES_CACHE, layout.FEATURES_CACHE)


def test_weights_identity_lands_in_the_lineage_record_and_openlineage_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import yaml

    from cvpipe.lineage import track_stage

    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["features"]
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"features": stage}}))
    weights_file = tmp_path / "vgg16_legacy_layout.h5"
    write_legacy_h5(weights_file, other_weights_base())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"features": {"weights": str(weights_file)}}))
    _write_cache(tmp_path / layout.IMAGES_CACHE, {"train": 2})
    for name in ("DVC_STAGE", "OPENLINEAGE_URL", "OPENLINEAGE_CONFIG", "OPENLINEAGE_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.chdir(tmp_path)

    cfg = FeaturesConfig(weights=str(weights_file))
    with track_stage(
        "features",
        inputs=[layout.IMAGES_CACHE],
        outputs=[layout.FEATURES_CACHE],
        params_file=Path("params.yaml"),
        sections=["features"],
    ) as run:
        run.summary = extract_features(layout.IMAGES_CACHE, layout.FEATURES_CACHE, cfg)

    expected = {"spec": str(weights_file), "file": weights_file.name, "sha256": sha256_file(weights_file)}
    folder = tmp_path / "reports/lineage/features"
    record = json.loads((folder / "record.json").read_text())
    assert record["summary"]["weights"] == {**record["summary"]["weights"], **expected}
    complete = [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()][-1]
    assert complete["eventType"] == "COMPLETE"
    (cache,) = [d for d in complete["outputs"] if d["name"].endswith(layout.FEATURES_CACHE.as_posix())]
    facet = cache["facets"]["cvpipe_vgg16Weights"]
    assert facet == {**facet, **expected} and facet["_schemaURL"].endswith("#/$defs/Vgg16WeightsDatasetFacet")
