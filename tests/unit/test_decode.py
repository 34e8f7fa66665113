from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cvpipe.config import ImageConfig, IngestConfig, SplitConfig, SplitCounts
from cvpipe.decode import decode_split, run_decode
from cvpipe.errors import DataError
from cvpipe.images import load_rgb
from cvpipe.ingest import run_ingest
from cvpipe.split import run_split
from tests.conftest import image_bytes, jpeg_bytes

CLASSES = ["cat", "dog"]


@pytest.fixture(scope="module")
def splits(synthetic_archive, tmp_path_factory) -> tuple[Path, Path]:
    archive, _ = synthetic_archive
    work = tmp_path_factory.mktemp("decode")
    run_ingest(archive, work / "manifest", IngestConfig(), "filename", CLASSES)
    split_cfg = SplitConfig(per_class=SplitCounts(train=20, val=8, test=10))
    run_split(work / "manifest/images.parquet", work / "splits", split_cfg, CLASSES)
    return archive, work / "splits/splits.parquet"


def test_cache_shapes_order_and_labels(splits, tmp_path: Path) -> None:
    archive, table_path = splits
    summary = run_decode(archive, table_path, tmp_path, ImageConfig(size=32, workers=2))
    table = pd.read_parquet(table_path)
    for name, count in (("train", 40), ("val", 16), ("test", 20)):
        images = np.load(tmp_path / f"{name}.npy", mmap_mode="r")
        labels = np.load(tmp_path / f"{name}_labels.npy")
        assert images.shape == (count, 32, 32, 3) and images.dtype == np.uint8
        assert labels.dtype == np.int32
        rows = table[table["split"] == name].sort_values("row")
        assert labels.tolist() == rows["label_index"].tolist()
        import zipfile

        with zipfile.ZipFile(archive) as zf:
            first = load_rgb(zf.read(rows["member"].iloc[0]), 32)
            last = load_rgb(zf.read(rows["member"].iloc[-1]), 32)
        np.testing.assert_array_equal(images[0], first)
        np.testing.assert_array_equal(images[-1], last)
    assert summary["splits"]["train"]["shape"] == [40, 32, 32, 3]
    assert json.loads((tmp_path / "images.json").read_text())["size"] == 32
    assert not list(tmp_path.glob(".*.tmp"))


def test_one_and_two_workers_give_identical_bytes(splits, tmp_path: Path) -> None:
    archive, table_path = splits
    run_decode(archive, table_path, tmp_path / "one", ImageConfig(size=40, workers=1))
    run_decode(archive, table_path, tmp_path / "two", ImageConfig(size=40, workers=2))
    for name in ("train.npy", "val.npy", "test.npy", "train_labels.npy", "images.json"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name


def test_a_failing_member_leaves_no_output(make_zip, tmp_path: Path) -> None:
    archive = make_zip({"train/cat.0.jpg": jpeg_bytes(0), "train/cat.1.jpg": b"garbage"})
    with pytest.raises(DataError, match=r"train/cat.1.jpg: passed ingest but failed to decode"):
        decode_split(archive, ["train/cat.0.jpg", "train/cat.1.jpg"], tmp_path / "train.npy", ImageConfig(size=32))
    assert list(tmp_path.iterdir()) == [archive]


def test_exif_orientation_and_modes() -> None:
    tall = Image.new("RGB", (40, 80), "white")
    tall.paste(Image.new("RGB", (40, 40), "black"), (0, 0))  # black top half
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW when displayed: the black half ends up on the right
    upright = load_rgb(image_bytes(tall, "JPEG", exif=exif.tobytes(), quality=95), 32)
    assert upright[:, :12].mean() > 200 and upright[:, -12:].mean() < 60
    transparent = Image.new("RGBA", (40, 40), (255, 0, 0, 0))
    assert load_rgb(image_bytes(transparent, "PNG"), 32).min() == 255  # composited on white, not black
    sixteen = Image.fromarray(np.full((40, 40), 1000, dtype=np.uint16))
    assert load_rgb(image_bytes(sixteen, "PNG"), 32).min() == 255  # rescaled, not clipped to 255 by accident
    cmyk = load_rgb(jpeg_bytes(3, mode="CMYK"), 32)
    assert cmyk.shape == (32, 32, 3)
