"""`cvpipe lineage image` names each evaluation's verdict on the image (issue 13 part 1)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cvpipe.lineage import query


def test_an_evaluation_record_leads_to_its_prediction_of_the_image(tmp_path: Path) -> None:
    (tmp_path / "reports/predictions").mkdir(parents=True)
    pd.DataFrame(
        {
            "row": [0, 1],
            "member": ["train/cat.1.jpg", "train/dog.2.jpg"],
            "sha256": ["a" * 64, "b" * 64],
            "label": ["cat", "dog"],
            "p_cat": [0.2, 0.1],
            "p_dog": [0.8, 0.9],
            "predicted": ["dog", "dog"],
            "confidence": [0.8, 0.9],
            "correct": [False, True],
        }
    ).to_parquet(tmp_path / "reports/predictions/scratch.parquet")
    record = {"outputs": [{"path": "reports/metrics/scratch.json"}, {"path": "reports/predictions/scratch.parquet"}]}
    said = query._prediction(tmp_path, record, "a" * 64)
    assert said == {
        "label": "cat",
        "predicted": "dog",
        "confidence": 0.8,
        "correct": False,
        "probabilities": {"cat": 0.2, "dog": 0.8},
        "path": "reports/predictions/scratch.parquet",
    }
    assert query._prediction(tmp_path, record, "c" * 64) is None
    assert query._prediction(tmp_path, {"outputs": []}, "a" * 64) is None
    answer = {
        "members": ["train/cat.1.jpg"],
        "sha256": "a" * 64,
        "label": "cat",
        "status": "ok",
        "reason": None,
        "exact_copies": ["train/cat.1.jpg"],
        "split": "test",
        "row": 0,
        "near_duplicate_group": ["train/cat.1.jpg"],
        "caches": [],
        "models": [
            {
                "stage": "evaluate@scratch",
                "model": "models/scratch.keras",
                "use": "tested on it",
                "same_split_version": True,
                "chain_intact": True,
                "prediction": said,
            }
        ],
    }
    text = query.format_image(answer)
    assert "evaluate@scratch: models/scratch.keras tested on it" in text
    assert "predicted dog with p=0.800: WRONG (label cat)" in text
