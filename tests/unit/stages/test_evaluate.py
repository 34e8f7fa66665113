"""The evaluate stage on models whose predictions are known: metrics checked against hand computation."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

import keras
import numpy as np
import pytest

from cvpipe import layout
from cvpipe.config import EvaluateConfig, Params
from cvpipe.errors import DataError
from cvpipe.ml import device, models
from cvpipe.stages import evaluate

# Binary case. Threshold 0.5 predicts [0, 1, 1, 0, 1, 0]: confusion [[2, 1], [1, 2]], accuracy 4/6.
# Positives score 0.8, 0.4, 0.9 against negatives 0.1, 0.6, 0.2: 3 + 2 + 3 = 8 of 9 pairs ordered, AUC 8/9.
BINARY_LABELS = np.array([0, 0, 1, 1, 1, 0])
BINARY_SCORES = np.array([[0.1], [0.6], [0.8], [0.4], [0.9], [0.2]], dtype=np.float32)

# Three classes. Argmax predicts [0, 1, 2, 1, 0, 2]: accuracy 4/6.
# One-vs-rest AUCs: class 0 7/8, class 1 7/8, class 2 8/8.
MULTI_LABELS = np.array([0, 1, 2, 0, 1, 2])
MULTI_PROBS = np.array(
    [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.3, 0.4, 0.3], [0.5, 0.3, 0.2], [0.1, 0.1, 0.8]],
    dtype=np.float32,
)


def identity_model(path: Path, width: int) -> Path:
    """Save a model whose output is its input, so its 'probabilities' are whatever the test feeds it."""
    inputs = keras.Input(shape=(width,))
    layer = keras.layers.Dense(width, use_bias=False, kernel_initializer="identity", name="probabilities")
    keras.Model(inputs, layer(inputs)).save(path)
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_binary_metrics_match_hand_computation(tmp_path: Path) -> None:
    model = identity_model(tmp_path / "binary.keras", 1)
    np.save(tmp_path / "scores.npy", BINARY_SCORES)
    scores = np.load(tmp_path / "scores.npy", mmap_mode="r")
    metrics = evaluate.evaluate_model(
        model,
        scores,
        BINARY_LABELS,
        EvaluateConfig(batch_size=4),
        ["cat", "dog"],
        tmp_path / "metrics.json",
        tmp_path / "plots",
    )
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    assert metrics["roc_auc"] == pytest.approx(8 / 9)
    assert metrics["confusion_matrix"] == [[2, 1], [1, 2]]
    expected_loss = -(math.log(0.9) + math.log(0.4) + math.log(0.8)) / 3
    assert metrics["loss"] == pytest.approx(expected_loss, rel=1e-6)
    keras_loss = float(keras.losses.BinaryCrossentropy()(BINARY_LABELS.reshape(-1, 1), BINARY_SCORES))
    assert metrics["loss"] == pytest.approx(keras_loss, rel=1e-5)
    for name in ("cat", "dog"):
        assert metrics["per_class"][name]["precision"] == pytest.approx(2 / 3)
        assert metrics["per_class"][name]["recall"] == pytest.approx(2 / 3)
        assert metrics["per_class"][name]["f1"] == pytest.approx(2 / 3)
        assert metrics["per_class"][name]["support"] == 3

    written = json.loads((tmp_path / "metrics.json").read_text())
    assert {"accuracy", "loss", "roc_auc", "f1_macro", "n_samples", "per_class"} <= set(written)
    assert "confusion_matrix" not in written  # a list of lists is no metric for `dvc metrics show`
    confusion = read_csv(tmp_path / "plots" / layout.CONFUSION_NAME)
    assert [(row["actual"], row["predicted"]) for row in confusion] == [
        ("cat", "cat"),
        ("cat", "dog"),
        ("dog", "dog"),
        ("dog", "cat"),
        ("dog", "dog"),
        ("cat", "cat"),
    ]
    matrix = json.loads((tmp_path / "plots" / layout.CONFUSION_MATRIX_NAME).read_text())
    assert matrix == {"labels": ["cat", "dog"], "matrix": [[2, 1], [1, 2]]}


def test_binary_roc_points(tmp_path: Path) -> None:
    model = identity_model(tmp_path / "binary.keras", 1)
    evaluate.evaluate_model(
        model,
        BINARY_SCORES,
        BINARY_LABELS,
        EvaluateConfig(),
        ["cat", "dog"],
        tmp_path / "metrics.json",
        tmp_path / "plots",
    )
    rows = read_csv(tmp_path / "plots" / layout.ROC_NAME)
    fpr = np.array([float(row["fpr"]) for row in rows])
    tpr = np.array([float(row["tpr"]) for row in rows])
    np.testing.assert_allclose(fpr, [0, 0, 0, 1 / 3, 1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(tpr, [0, 1 / 3, 2 / 3, 2 / 3, 1, 1, 1])
    assert rows[0]["threshold"] == "inf"
    assert float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2)) == pytest.approx(8 / 9)


def test_three_classes_use_argmax_and_macro_one_vs_rest_auc(tmp_path: Path) -> None:
    model = identity_model(tmp_path / "multi.keras", 3)
    names = ["cat", "dog", "fox"]
    metrics = evaluate.evaluate_model(
        model, MULTI_PROBS, MULTI_LABELS, EvaluateConfig(), names, tmp_path / "metrics.json", tmp_path / "plots"
    )
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    assert metrics["confusion_matrix"] == [[1, 1, 0], [1, 1, 0], [0, 0, 2]]
    assert [metrics["per_class"][name]["roc_auc"] for name in names] == pytest.approx([7 / 8, 7 / 8, 1.0])
    assert metrics["roc_auc"] == pytest.approx((7 / 8 + 7 / 8 + 1) / 3)
    assert metrics["per_class"]["fox"]["precision"] == 1.0 and metrics["per_class"]["cat"]["precision"] == 0.5
    expected_loss = -np.mean(np.log([0.7, 0.8, 0.6, 0.3, 0.3, 0.8]))
    assert metrics["loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert metrics["threshold"] is None
    rows = read_csv(tmp_path / "plots" / layout.ROC_NAME)
    assert {row["class"] for row in rows} == set(names)


def test_one_class_only_gives_a_null_auc(tmp_path: Path) -> None:
    model = identity_model(tmp_path / "binary.keras", 1)
    metrics = evaluate.evaluate_model(
        model,
        BINARY_SCORES[:2],
        np.array([0, 0]),
        EvaluateConfig(),
        ["cat", "dog"],
        tmp_path / "metrics.json",
        tmp_path / "plots",
    )
    assert metrics["roc_auc"] is None
    assert json.loads((tmp_path / "metrics.json").read_text())["roc_auc"] is None


def test_mismatches_fail_with_one_line(tmp_path: Path) -> None:
    model = identity_model(tmp_path / "binary.keras", 1)
    cfg = EvaluateConfig()
    with pytest.raises(DataError, match="2 classes but 3 class names"):
        evaluate.evaluate_model(
            model, BINARY_SCORES, BINARY_LABELS, cfg, ["a", "b", "c"], tmp_path / "m.json", tmp_path
        )
    with pytest.raises(DataError, match="6 inputs and 5 labels"):
        evaluate.evaluate_model(model, BINARY_SCORES, BINARY_LABELS[:5], cfg, ["a", "b"], tmp_path / "m.json", tmp_path)
    with pytest.raises(DataError, match="labels span"):
        evaluate.evaluate_model(model, BINARY_SCORES, BINARY_LABELS + 1, cfg, ["a", "b"], tmp_path / "m.json", tmp_path)
    assert not (tmp_path / "m.json").exists()


def test_both_feeding_paths_predict_the_same(tmp_path: Path) -> None:
    model = keras.models.load_model(identity_model(tmp_path / "identity.keras", 3))
    np.save(tmp_path / "probs.npy", MULTI_PROBS)
    inputs = np.load(tmp_path / "probs.npy", mmap_mode="r")
    whole = evaluate.predict_probabilities(model, inputs, batch_size=4)
    batched = evaluate.predict_probabilities(model, inputs, batch_size=4, in_memory_bytes=0)
    np.testing.assert_allclose(whole, MULTI_PROBS, rtol=1e-6)
    np.testing.assert_array_equal(whole, batched)


def test_run_scores_the_test_split_and_summarises_without_per_class(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    np.save(layout.split_file(cache, "test"), BINARY_SCORES)
    np.save(layout.labels_file(cache, "test"), BINARY_LABELS)
    paths = evaluate.EvaluatePaths(
        inputs=cache,
        model=identity_model(tmp_path / "binary.keras", 1),
        metrics=tmp_path / "metrics.json",
        plots=tmp_path / "plots",
    )
    counted: list[int] = []
    summary = evaluate.run("feature_extraction", Params(), paths, counted.append)
    written = json.loads(paths.metrics.read_text())
    assert summary.accuracy == pytest.approx(4 / 6) and summary.confusion_matrix == [[2, 1], [1, 2]]
    assert summary.n_samples == 6 == sum(counted)
    assert {key: value for key, value in written.items() if key not in ("per_class", "calibration")} == {
        key: value for key, value in dataclasses.asdict(summary).items() if key != "confusion_matrix"
    }
    assert evaluate.EvaluatePaths.default("feature_extraction").inputs == layout.FEATURES_CACHE
    assert evaluate.EvaluatePaths.default("scratch") == evaluate.EvaluatePaths(
        layout.IMAGES_CACHE,
        layout.model_file("scratch"),
        layout.metrics_file("scratch"),
        layout.plots_dir("scratch"),
        layout.predictions_file("scratch"),
    )


def test_run_writes_intervals_calibration_and_per_image_predictions(tmp_path: Path) -> None:
    import pandas as pd

    cache = tmp_path / "cache"
    cache.mkdir()
    np.save(layout.split_file(cache, "test"), BINARY_SCORES)
    np.save(layout.labels_file(cache, "test"), BINARY_LABELS)
    splits = tmp_path / "splits.parquet"
    pd.DataFrame(
        {
            "split": ["test"] * 6,
            "row": list(range(6)),
            "member": [f"train/{'dog' if y else 'cat'}.{i}.jpg" for i, y in enumerate(BINARY_LABELS)],
            "sha256": [f"{i:064x}" for i in range(6)],
            "label": ["dog" if y else "cat" for y in BINARY_LABELS],
            "label_index": BINARY_LABELS,
            "group": list(range(6)),
        }
    ).to_parquet(splits, index=False)
    paths = evaluate.EvaluatePaths(
        inputs=cache,
        model=identity_model(tmp_path / "binary.keras", 1),
        metrics=tmp_path / "metrics.json",
        plots=tmp_path / "plots",
        predictions=tmp_path / "predictions.parquet",
        splits=splits,
    )
    summary = evaluate.run("feature_extraction", Params(), paths)
    low, high = summary.accuracy_ci
    assert low < 4 / 6 < high and summary.brier == pytest.approx(np.mean((BINARY_SCORES[:, 0] - BINARY_LABELS) ** 2))
    calibration = read_csv(paths.plots / layout.CALIBRATION_NAME)
    assert len(calibration) == 10 and sum(int(row["count"]) for row in calibration) == 6
    frame = pd.read_parquet(paths.predictions)
    assert frame["member"].tolist()[2] == "train/dog.2.jpg" and frame["correct"].sum() == 4
    np.testing.assert_allclose(frame["p_dog"], BINARY_SCORES[:, 0], rtol=1e-6)
    with pytest.raises(DataError, match="another split version"):
        evaluate.run("feature_extraction", Params(), dataclasses.replace(paths, splits=_short_splits(tmp_path)))


def _short_splits(tmp_path: Path) -> Path:
    import pandas as pd

    path = tmp_path / "short.parquet"
    frame = pd.read_parquet(tmp_path / "splits.parquet").head(5)
    frame.to_parquet(path, index=False)
    return path


def test_a_model_trained_in_bf16_is_evaluated_in_float32(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with device.dtype_policy("mixed_bfloat16"):
        trained = models.small_convnet((32, 32, 3))
    trained.save(tmp_path / "bf16.keras")
    scored: list[keras.Model] = []
    real = evaluate.predict_probabilities

    def spy(model: keras.Model, *args: object, **kwargs: object) -> np.ndarray:
        scored.append(model)
        return real(model, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(evaluate, "predict_probabilities", spy)
    images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    metrics = evaluate.evaluate_model(
        tmp_path / "bf16.keras", images, BINARY_LABELS, EvaluateConfig(), ["a", "b"], tmp_path / "m.json", tmp_path
    )
    # The file restores bf16 layers; evaluation must not inherit the training precision.
    assert {layer.compute_dtype for layer in models.walk_layers(scored[0])} == {"float32"}
    assert metrics["n_samples"] == 6
