"""Glue for the modelling stages: read the caches a stage needs, call the library, name its outputs.

Kept apart from the CLI so that the CLI stays a shell and so that a Prefect task or a notebook can run a
stage with the same paths ``dvc.yaml`` uses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cvpipe.config import Params
from cvpipe.errors import DataError

SPLIT_FILES = "{split}.npy"
LABEL_FILES = "{split}_labels.npy"


def load_split(cache_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Memory-map one split of a cache folder (decoded images or VGG16 features) with its labels.

    Raises:
        DataError: the cache is missing; says which stage makes it.
    """
    inputs = Path(cache_dir) / SPLIT_FILES.format(split=split)
    labels = Path(cache_dir) / LABEL_FILES.format(split=split)
    if not inputs.exists() or not labels.exists():
        raise DataError(f"{inputs} or {labels} is missing; run the stage that makes {cache_dir} (dvc repro)")
    return np.load(inputs, mmap_mode="r"), np.load(labels)


def train_stage(
    variant: str,
    params: Params,
    inputs_dir: Path,
    model_path: Path,
    out_dir: Path,
    init_model: Path | None = None,
) -> dict[str, Any]:
    """The ``train@<variant>`` stage: train on the train split, select the best epoch on val.

    ``fine_tuning`` starts from ``init_model``, by default ``feature_extraction_aug.keras`` next to
    ``model_path`` (what dvc.yaml lists as its dependency).
    """
    from cvpipe.stages.train import train_variant

    if variant == "fine_tuning" and init_model is None:
        init_model = Path(model_path).with_name("feature_extraction_aug.keras")
    return train_variant(
        variant,
        params.train,
        load_split(inputs_dir, "train"),
        load_split(inputs_dir, "val"),
        model_path,
        out_dir,
        num_classes=len(params.data.classes),
        conv_base=params.features.weights if variant == "feature_extraction_aug" else None,
        init_model=init_model,
    )


def evaluate_stage(
    params: Params, inputs_dir: Path, model_path: Path, metrics_path: Path, plots_dir: Path
) -> dict[str, Any]:
    """The ``evaluate@<variant>`` stage: score the model on the test split."""
    from cvpipe.stages.evaluate import evaluate_model

    inputs, labels = load_split(inputs_dir, "test")
    return evaluate_model(model_path, inputs, labels, params.evaluate, params.data.classes, metrics_path, plots_dir)
