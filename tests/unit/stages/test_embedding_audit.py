"""The embedding_audit stage on a features cache of real digits, with copies of test images planted in train."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cvpipe import layout
from cvpipe.config import Params
from cvpipe.errors import DataError
from cvpipe.stages import embedding_audit

SIZES = {"train": 200, "val": 60, "test": 100}
PLANTED = {150: 7, 151: 42}  # train row -> the test row it copies (a little noise added)


def params(**embedding: object) -> Params:
    return Params.model_validate({"audit": {"thumbnails": 4, "embedding": {"threshold": 0.99, **embedding}}})


def write_inputs(root: Path, weights: str = "imagenet") -> embedding_audit.EmbeddingAuditPaths:
    """Digits as 1 x 1 x 64 'feature maps' per split, the split table naming them, an archive of their PNGs."""
    from sklearn.datasets import load_digits

    pixels, labels = load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    cache = root / "vgg16"
    cache.mkdir()
    start, frames, blocks = 0, [], {}
    for split, count in SIZES.items():
        blocks[split] = (pixels[start : start + count].copy(), labels[start : start + count], start)
        start += count
    train = blocks["train"][0]
    for row, test_row in PLANTED.items():
        train[row] = blocks["test"][0][test_row] + rng.normal(0, 0.1, 64)
    with zipfile.ZipFile(root / "images.zip", "w") as archive:
        for split, (x, y, first) in blocks.items():
            np.save(layout.split_file(cache, split), x.reshape(-1, 1, 1, 64).astype(np.float32))
            np.save(layout.labels_file(cache, split), y.astype(np.int32))
            members = [f"train/{split}.{first + i}.png" for i in range(len(x))]
            for member, image in zip(members, x, strict=True):
                buffer = io.BytesIO()
                Image.fromarray((np.clip(image, 0, 16) * 15).astype(np.uint8).reshape(8, 8)).save(buffer, "PNG")
                archive.writestr(member, buffer.getvalue())
            frames.append(
                pd.DataFrame(
                    {
                        "split": split,
                        "row": np.arange(len(x)),
                        "member": members,
                        "sha256": [f"{first + i:064x}" for i in range(len(x))],
                        "label": [str(v) for v in y],
                    }
                )
            )
    pd.concat(frames).to_parquet(root / "splits.parquet", index=False)
    (cache / layout.FEATURES_META_NAME).write_text(json.dumps({"weights": {"spec": weights}}))
    out = root / "audit"
    return embedding_audit.EmbeddingAuditPaths(
        cache, root / "splits.parquet", root / "images.zip", out / "embedding.json", out / "m.json", out / "thumbs"
    )


def test_planted_copies_across_splits_fail_the_stage_after_the_report(tmp_path: Path) -> None:
    paths = write_inputs(tmp_path)
    with pytest.raises(DataError, match="2 image pair\\(s\\) across splits"):
        embedding_audit.run(params(), paths)
    report = json.loads(paths.report.read_text())
    found = {(p["a"], p["b"]) for p in report["pairs"]}
    assert found == {(f"train/train.{row}.png", f"train/test.{200 + 60 + t}.png") for row, t in PLANTED.items()}
    assert report["summary"]["meaningful"] and not report["summary"]["passed"]
    assert report["summary"]["cross_split_pairs_by_splits"] == {"train-test": 2}
    assert all((paths.thumbnails.parent / p["thumbnail"]).is_file() for p in report["pairs"])
    assert json.loads(paths.metrics.read_text()) == {
        "images": 360,
        "cross_split_pairs": 2,
        "meaningful": True,
        "passed": False,
    }


def test_within_the_bound_it_passes(tmp_path: Path) -> None:
    summary = embedding_audit.run(params(max_cross_split_pairs=2), write_inputs(tmp_path))
    assert summary.passed and summary.cross_split_pairs == 2 and summary.images_per_split == SIZES


def test_random_weights_are_not_meaningful_and_never_fail(tmp_path: Path) -> None:
    paths = write_inputs(tmp_path, weights="none")
    summary = embedding_audit.run(params(), paths)
    assert summary.passed and not summary.meaningful
    assert "not meaningful" in json.loads(paths.report.read_text())["note"]
    from cvpipe.report.verdicts import embedding_section

    html = embedding_section(paths.report, tmp_path / "no-images", 4)
    assert "Not meaningful" in html and "<img" in html  # the stage's thumbnails, from the archive


def test_a_too_loose_threshold_stops_with_one_line(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"audit\.embedding\.max_pairs"):
        embedding_audit.run(params(threshold=-0.5, max_pairs=100), write_inputs(tmp_path))


def test_a_missing_cache_or_an_empty_split_is_one_line(tmp_path: Path) -> None:
    paths = write_inputs(tmp_path)
    layout.split_file(paths.features, "val").unlink()
    with pytest.raises(DataError, match="run the features stage") as missing:
        embedding_audit.run(params(), paths)
    assert "\n" not in str(missing.value)
    np.save(layout.split_file(paths.features, "val"), np.zeros((0, 1, 1, 64), np.float32))
    with pytest.raises(DataError, match="an empty val split"):
        embedding_audit.run(params(), paths)


def test_a_split_table_out_of_step_with_the_cache_is_one_line(tmp_path: Path) -> None:
    paths = write_inputs(tmp_path)
    np.save(layout.split_file(paths.features, "test"), np.zeros((5, 1, 1, 64), np.float32))
    with pytest.raises(DataError, match="rerun decode and features"):
        embedding_audit.run(params(), paths)
