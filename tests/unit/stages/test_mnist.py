"""The MNIST stages (mnist_data, mnist_train, mnist_evaluate): a tiny real run, and their isolation in the DAG."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cvpipe import layout
from cvpipe.config import Params, parse_params
from cvpipe.errors import DataError
from cvpipe.io import sha256_file
from cvpipe.sources.mnist import CLASSES, write_npz
from cvpipe.stages import mnist_data, mnist_evaluate, mnist_train
from tests.support.codemap import dvc_stages, paths
from tests.support.mnist import digits_mnist

MNIST_STAGES = {"mnist_data", "mnist_train", "mnist_evaluate"}


def tiny(npz: Path, **training: object) -> Params:
    return parse_params({"mnist": {"source": "local", "path": str(npz), "epochs": 1, "batch_size": 32, **training}})


def test_data_stage_caches_the_digits_with_the_source_sha256(tmp_path: Path) -> None:
    npz = write_npz(tmp_path / "digits.npz", digits_mnist(300, 100))
    summary = mnist_data.run(tiny(npz), mnist_data.MnistDataPaths(out=tmp_path / "cache"))
    assert summary.sha256 == sha256_file(npz) and summary.source == "local"
    assert (summary.train_images, summary.test_images) == (300, 100) and sum(summary.test_per_digit) == 100
    images = np.load(layout.split_file(tmp_path / "cache", "train"))
    assert images.dtype == np.uint8 and images.shape == (300, 28, 28)
    assert np.array_equal(np.load(layout.labels_file(tmp_path / "cache", "test")), digits_mnist(300, 100).y_test)
    recorded = json.loads((tmp_path / "cache" / layout.SOURCE_NAME).read_text())
    assert recorded["sha256"] == summary.sha256 and recorded["files"] == {"digits.npz": summary.sha256}


def test_a_tiny_real_run_trains_and_writes_mnist_json_with_accuracy(tmp_path: Path) -> None:
    npz = write_npz(tmp_path / "digits.npz", digits_mnist(400, 200))
    params = tiny(npz)
    cache = tmp_path / "data/cache/mnist"
    mnist_data.run(params, mnist_data.MnistDataPaths(out=cache))
    epochs: list[int] = []
    train_paths = mnist_train.MnistTrainPaths(inputs=cache, model=tmp_path / "mnist.keras", out=tmp_path / "train")
    trained = mnist_train.run(params, train_paths, epochs.append)
    assert epochs == [1] and trained.epochs_run == 1 and trained.train_images == 400
    assert trained.params == 104_202 and trained.model == "mnist" and trained.precision == "float32"
    history = json.loads((tmp_path / "train" / layout.HISTORY_NAME).read_text())
    assert history["summary"]["params"] == 104_202 and len(history["history"]["loss"]) == 1
    assert (tmp_path / "train" / layout.LIVE_PLOTS).is_dir()

    metrics_file = tmp_path / "metrics" / "mnist.json"
    predictions_file = tmp_path / "predictions" / "mnist.parquet"
    paths_ = mnist_evaluate.MnistEvaluatePaths(
        cache, tmp_path / "mnist.keras", metrics_file, tmp_path / "plots", predictions_file
    )
    scored: list[int] = []
    summary = mnist_evaluate.run(params, paths_, scored.append)
    metrics = json.loads(metrics_file.read_text())
    assert scored == [200] and metrics["n_samples"] == 200 and summary.accuracy == metrics["accuracy"]
    # One epoch on 400 real scans: well above chance (0.1), the model learnt something.
    assert 0.3 < metrics["accuracy"] <= 1.0
    assert set(metrics["per_class"]) == set(CLASSES) and "f1_macro" in metrics and metrics["loss"] > 0
    matrix = json.loads((tmp_path / "plots" / layout.CONFUSION_MATRIX_NAME).read_text())
    assert matrix["labels"] == list(CLASSES) and np.asarray(matrix["matrix"]).shape == (10, 10)
    assert np.asarray(matrix["matrix"]).sum() == 200
    assert (tmp_path / "plots" / layout.CONFUSION_NAME).read_text().startswith("actual,predicted\n")
    assert_predictions_name_each_test_digit(predictions_file, cache, metrics["accuracy"])


def assert_predictions_name_each_test_digit(path: Path, cache: Path, accuracy: float) -> None:
    """The dogs-vs-cats schema; each digit named ``mnist/test/<index>`` with the sha256 of its cached bytes."""
    import hashlib

    import pandas as pd

    frame = pd.read_parquet(path)
    images = np.load(layout.split_file(cache, "test"))
    labels = np.load(layout.labels_file(cache, "test"))
    probabilities = [f"p_{digit}" for digit in CLASSES]
    expected = ["row", "member", "sha256", "label", "label_index", *probabilities]
    assert list(frame.columns) == [*expected, "predicted", "predicted_index", "confidence", "correct"]
    assert frame["member"].tolist() == [f"mnist/test/{i}" for i in range(len(images))]
    assert frame["sha256"].tolist() == [hashlib.sha256(image.tobytes()).hexdigest() for image in images]
    assert frame["label"].tolist() == [str(label) for label in labels]
    np.testing.assert_allclose(frame[probabilities].sum(axis=1), 1.0, atol=1e-5)
    assert frame["correct"].mean() == pytest.approx(accuracy)
    assert (frame["predicted"] == frame[probabilities].idxmax(axis=1).str[2:]).all()


def test_the_no_pool_variant_has_the_seeds_712202_params() -> None:
    from cvpipe.ml.models import build_model

    pooled = mnist_train.with_scaling(build_model("mnist", (28, 28, 1), 10))
    unpooled = mnist_train.with_scaling(build_model("mnist_no_pool", (28, 28, 1), 10))
    assert (pooled.count_params(), unpooled.count_params()) == (104_202, 712_202)
    digits = digits_mnist(10, 10).x_train
    # The model scales inside: uint8 in, the same as float inputs scaled by the seed's /255.
    inner = pooled.layers[-1]
    expected = inner.predict((digits.astype(np.float32) / 255)[..., None], verbose=0)
    np.testing.assert_allclose(pooled.predict(digits, verbose=0), expected, rtol=1e-5, atol=1e-6)


def test_evaluation_names_the_digits_as_the_source_does() -> None:
    assert mnist_evaluate.CLASSES == CLASSES


def test_a_cache_that_is_not_mnist_is_a_data_error(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    np.save(layout.split_file(cache, "train"), np.zeros((5, 32, 32, 3), np.uint8))
    np.save(layout.labels_file(cache, "train"), np.zeros(5, np.uint8))
    with pytest.raises(DataError, match=r"uint8 N x 28 x 28, got uint8 \(5, 32, 32, 3\)"):
        mnist_train.run(Params(), mnist_train.MnistTrainPaths(cache, tmp_path / "m.keras", tmp_path / "out"))
    with pytest.raises(DataError, match="missing; run the stage that makes"):
        mnist_evaluate.run(Params(), mnist_evaluate.MnistEvaluatePaths(tmp_path / "none", tmp_path / "m.keras"))


# -- the two experiments share nothing in the DAG -----------------------------------------------------------------


def upstream(stages: dict[str, dict], name: str) -> set[str]:
    """Every stage ``name`` depends on, transitively, through its data deps and their writers."""
    writers = {
        out: stage for stage, spec in stages.items() for out in paths(spec.get("outs")) + paths(spec.get("metrics"))
    }

    def inside(path: str, folder: str) -> bool:
        return path == folder or path.startswith(folder.rstrip("/") + "/")

    found: set[str] = set()
    todo = [name]
    while todo:
        for dep in paths(stages[todo.pop()].get("deps")):
            for out, writer in writers.items():
                if (inside(dep, out) or inside(out, dep)) and writer not in found:
                    found.add(writer)
                    todo.append(writer)
    return found


def test_the_mnist_stages_and_dogs_vs_cats_share_no_input_output_or_param() -> None:
    stages = dvc_stages()
    assert set(stages) >= MNIST_STAGES
    others = set(stages) - MNIST_STAGES - {"report"}  # the report reads both, by design
    for name in MNIST_STAGES:
        assert upstream(stages, name) <= MNIST_STAGES, f"{name} depends on {upstream(stages, name) - MNIST_STAGES}"
    for name in others:
        assert not upstream(stages, name) & MNIST_STAGES, f"{name} depends on an MNIST stage"
    assert upstream(stages, "report") >= MNIST_STAGES

    def data(spec: dict, key: str) -> set[str]:
        return {p for p in paths(spec.get(key)) if not p.startswith("cvpipe/")}

    mnist_files = set().union(*(data(stages[n], k) for n in MNIST_STAGES for k in ("deps", "outs", "metrics")))
    other_files = set().union(*(data(stages[n], k) for n in others for k in ("deps", "outs", "metrics")))
    assert not mnist_files & other_files
    mnist_keys = {key for name in MNIST_STAGES for key in stages[name]["params"]}
    other_keys = {key for name in others for key in stages[name].get("params", [])}
    assert all(key.startswith("mnist.") for key in mnist_keys) and not any(k.startswith("mnist") for k in other_keys)
