"""Ingest + split at the defaults on real scans: scikit-learn's UCI digits (1,797 8x8 scans, 10 classes).

The digits are the data that broke the hash-only rule (72% of them "near-duplicates" at 10 bits, a class left
short): similar-looking distinct images. Copies of chosen scans are planted (JPEG re-encode, 1 and 2 px shift,
90% resize, +10% brightness, mirror); the split must find them, keep each with its original in one split, and
group hardly any of the other scans. A rule loosened past sense must stop at the guard, with one line.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageEnhance, ImageOps

from cvpipe.config import DataConfig, IngestConfig, NearDuplicateConfig, Params, SplitConfig, SplitFractions
from cvpipe.errors import DataError
from cvpipe.stages import ingest, split

SIDE = 80
COPIES = 12  # per transform
CLASSES = [str(digit) for digit in range(10)]


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=75)
    return buffer.getvalue()


def _shift(pixels: int) -> Callable[[Image.Image], bytes]:
    def apply(image: Image.Image) -> bytes:
        return _png(Image.fromarray(np.roll(np.asarray(image), (pixels, pixels), axis=(0, 1))))

    return apply


def _resize(image: Image.Image) -> bytes:
    return _png(image.resize((round(image.width * 0.9), round(image.height * 0.9)), Image.Resampling.BICUBIC))


TRANSFORMS: dict[str, Callable[[Image.Image], bytes]] = {
    "jpeg": _jpeg,
    "shift": _shift(1),
    # 2 px: the phash of an 80 px scan moves up to ~20 bits; the Fourier hash (shift_bits) finds these copies.
    "shift2": _shift(2),
    "resize": _resize,
    "brighter": lambda image: _png(ImageEnhance.Brightness(image).enhance(1.1)),
    "mirror": lambda image: _png(ImageOps.mirror(image)),
}


@pytest.fixture(scope="module")
def digits_archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[str, str]]]:
    """``digits/<d>/<i>.png`` at 80x80 (nearest), plus planted copies; returns the archive and (original, copy)."""
    load_digits = pytest.importorskip("sklearn.datasets").load_digits
    digits = load_digits()
    path = tmp_path_factory.mktemp("digits") / "digits.zip"
    rng = np.random.default_rng(0)
    chosen = rng.choice(len(digits.images), size=(len(TRANSFORMS), COPIES), replace=False)
    planted = []
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        images = {}
        for index, (scan, target) in enumerate(zip(digits.images, digits.target, strict=True)):
            image = Image.fromarray((scan * (255 / 16)).round().astype(np.uint8), "L")
            images[index] = image.resize((SIDE, SIDE), Image.Resampling.NEAREST)
            archive.writestr(f"digits/{target}/{index}.png", _png(images[index]))
        for (kind, transform), picks in zip(TRANSFORMS.items(), chosen, strict=True):
            for index in picks.tolist():
                target = digits.target[index]
                copy = f"digits/{target}/{index}-{kind}.png"
                archive.writestr(copy, transform(images[index]))
                planted.append((f"digits/{target}/{index}.png", copy))
    return path, planted


def _params(**near: object) -> Params:
    return Params(
        data=DataConfig(source="local", path=Path("unused.zip"), labels="folder", classes=CLASSES),
        ingest=IngestConfig(workers=1),
        split=SplitConfig(
            per_class=None,
            fractions=SplitFractions(train=0.7, val=0.15, test=0.15),
            near_duplicate=NearDuplicateConfig(**near),
        ),
    )


@pytest.fixture(scope="module")
def manifest(digits_archive: tuple[Path, list], tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("manifest")
    ingest.run(_params(), ingest.IngestPaths(digits_archive[0], folder))
    return folder / "images.parquet"


def test_the_default_rule_finds_the_planted_copies_and_groups_little_else(
    digits_archive: tuple[Path, list[tuple[str, str]]], manifest: Path, tmp_path: Path
) -> None:
    archive, planted = digits_archive
    assert len(planted) == len(TRANSFORMS) * COPIES
    paths = split.SplitPaths(manifest, tmp_path / "splits", archive)
    summary = split.run(_params(), paths)
    report = json.loads(paths.report.read_text())
    table = pd.read_parquet(paths.splits)
    group_of = {member: index for index, group in enumerate(report["near_duplicate_groups"]) for member in group}
    found = [original in group_of and group_of[original] == group_of.get(copy) for original, copy in planted]
    assert np.mean(found) >= 0.95, [pair for pair, hit in zip(planted, found, strict=True) if not hit]
    where = table.set_index("member")["split"]
    for original, copy in planted:
        assert where.get(original, "unused") == where.get(copy, "unused") or copy not in where
    involved = {member for pair in planted for member in pair}
    others = [member for member in group_of if member not in involved]
    distinct = len(pd.read_parquet(manifest)) - len(involved)
    assert len(others) <= 0.01 * distinct, others
    assert summary.near_duplicate_rule["hash_bits"] == NearDuplicateConfig().hash_bits
    assert report["policy"]["near_duplicate"]["measure"] == "ncc" and summary.near_duplicate_confirmed >= len(planted)
    assert set(table["label"]) == set(CLASSES)
    shift2 = [hit for (_, copy), hit in zip(planted, found, strict=True) if copy.endswith("-shift2.png")]
    assert len(shift2) == COPIES and all(shift2), shift2  # phash alone: ~0.58 (bench/results)
    assert summary.near_duplicate_rule["shift_bits"] == NearDuplicateConfig().shift_bits > 0


def test_a_rule_too_loose_stops_at_the_guard_after_writing_the_report(
    digits_archive: tuple[Path, list], manifest: Path, tmp_path: Path
) -> None:
    paths = split.SplitPaths(manifest, tmp_path / "splits", digits_archive[0])
    with pytest.raises(DataError) as error:
        split.run(_params(hash_bits=16, threshold=0.5), paths)
    message = str(error.value)
    assert "\n" not in message and "near-duplicate groups look like a rule too loose" in message
    assert "split.near_duplicate.max_group_size=25" in message and "split.near_duplicate.threshold" in message
    report = json.loads(paths.report.read_text())
    assert report["error"] in message and report["near_duplicates"]["largest_groups"][0]["size"] > 25
    assert not paths.splits.exists()
