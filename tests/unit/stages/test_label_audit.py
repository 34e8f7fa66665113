"""The label_audit stage on a features cache made of real digits, two flipped labels planted."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cvpipe import layout
from cvpipe.config import Params
from cvpipe.errors import DataError
from cvpipe.stages import label_audit


def write_cache(root: Path) -> tuple[label_audit.LabelAuditPaths, list[str]]:
    """Digits 0 and 1 as 1 x 1 x 64 'feature maps' in train and val, with a split table naming them."""
    from sklearn.datasets import load_digits

    pixels, labels = load_digits(n_class=2, return_X_y=True)
    cache = root / "vgg16"
    cache.mkdir()
    noisy = labels.copy()
    planted = [5, 300]
    noisy[planted] = 1 - noisy[planted]
    frames = []
    for split, rows in (("train", slice(0, 250)), ("val", slice(250, None))):
        np.save(layout.split_file(cache, split), pixels[rows].reshape(-1, 1, 1, 64).astype(np.float32))
        np.save(layout.labels_file(cache, split), noisy[rows].astype(np.int32))
        count = len(noisy[rows])
        start = rows.start
        frames.append(
            pd.DataFrame(
                {
                    "split": split,
                    "row": np.arange(count),
                    "member": [f"digits/{start + i}.png" for i in range(count)],
                    "sha256": [f"{start + i:064x}" for i in range(count)],
                    "label": ["cat" if y == 0 else "dog" for y in noisy[rows]],
                    "label_index": noisy[rows],
                    "group": np.arange(count) + start,
                }
            )
        )
    pd.concat(frames).to_parquet(root / "splits.parquet", index=False)
    (cache / layout.FEATURES_META_NAME).write_text(json.dumps({"weights": {"spec": "none"}}))
    paths = label_audit.LabelAuditPaths(cache, root / "splits.parquet", root / "issues.parquet", root / "m.json")
    return paths, [f"digits/{i}.png" for i in planted]


def test_the_planted_flips_top_the_ranked_issues(tmp_path: Path) -> None:
    paths, planted = write_cache(tmp_path)
    summary = label_audit.run(Params(), paths)
    issues = pd.read_parquet(paths.issues)
    assert set(planted) <= set(issues["member"].head(len(planted) + 1))
    assert issues["rank"].tolist() == list(range(1, len(issues) + 1))
    assert set(issues.loc[issues["member"] == planted[1], "split"]) == {"val"}
    assert summary.weights == "none" and summary.images == 360 and summary.out_of_fold_accuracy > 0.95
    assert json.loads(paths.metrics.read_text())["issues"] == summary.issues == len(issues)


def test_a_missing_cache_is_one_line(tmp_path: Path) -> None:
    paths = label_audit.LabelAuditPaths(tmp_path / "none", tmp_path / "s.parquet", tmp_path / "i", tmp_path / "m")
    with pytest.raises(DataError, match="run the features stage"):
        label_audit.run(Params(), paths)
