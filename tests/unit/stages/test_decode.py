from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cvpipe.config import ImageConfig, IngestConfig, Params, SplitConfig, SplitCounts
from cvpipe.errors import DataError
from cvpipe.imaging import images as images_module
from cvpipe.imaging.archive import read_member
from cvpipe.imaging.images import load_rgb
from cvpipe.parallel import map_chunks
from cvpipe.stages import decode as decode_module
from cvpipe.stages import ingest as ingest_module
from cvpipe.stages import split as split_module
from cvpipe.stages.decode import DecodePaths, decode_split
from cvpipe.stages.ingest import IngestPaths
from cvpipe.stages.split import SplitPaths
from tests.conftest import image_bytes, jpeg_bytes

CLASSES = ["cat", "dog"]


@pytest.fixture(scope="module")
def splits(synthetic_archive, tmp_path_factory) -> tuple[Path, Path]:
    archive, _ = synthetic_archive
    work = tmp_path_factory.mktemp("decode")
    ingest_module.run(Params(ingest=IngestConfig()), IngestPaths(archive, work / "manifest"))
    split_cfg = SplitConfig(per_class=SplitCounts(train=20, val=8, test=10))
    split_module.run(Params(split=split_cfg), SplitPaths(work / "manifest/images.parquet", work / "splits", archive))
    return archive, work / "splits/splits.parquet"


def test_cache_shapes_order_and_labels(splits, tmp_path: Path) -> None:
    archive, table_path = splits
    summary = decode_module.run(
        Params(image=ImageConfig(size=32, workers=2)), DecodePaths(archive, table_path, tmp_path)
    )
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
    assert summary.splits["train"]["shape"] == [40, 32, 32, 3]
    assert json.loads((tmp_path / "images.json").read_text())["size"] == 32
    assert not list(tmp_path.glob(".*.tmp"))


def test_one_and_two_workers_give_identical_bytes(splits, tmp_path: Path) -> None:
    archive, table_path = splits
    decode_module.run(Params(image=ImageConfig(size=40, workers=1)), DecodePaths(archive, table_path, tmp_path / "one"))
    decode_module.run(Params(image=ImageConfig(size=40, workers=2)), DecodePaths(archive, table_path, tmp_path / "two"))
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


# ------------------------------------------------------------------------------------- the fast JPEG path


def _photo(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(9, 12, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse, "RGB").resize((width, height), Image.Resampling.BICUBIC), np.int16)
    grain = rng.integers(-12, 13, size=smooth.shape, dtype=np.int16)
    return Image.fromarray(np.clip(smooth + grain, 0, 255).astype(np.uint8), "RGB")


JPEG_VARIANTS = {
    "420 landscape, scale 1/2": (_photo(500, 375), {"quality": 90}),
    "420 portrait, no DCT scaling": (_photo(300, 450, 1), {"quality": 80}),
    "444": (_photo(420, 380, 2), {"quality": 95, "subsampling": 0}),
    "422": (_photo(401, 377, 3), {"quality": 85, "subsampling": 1}),
    "progressive": (_photo(480, 400, 4), {"quality": 85, "progressive": True}),
    "greyscale": (_photo(390, 370, 5).convert("L"), {"quality": 90}),
    "large, scale 1/4": (_photo(800, 760, 6), {"quality": 75}),
    "smaller than the target": (_photo(150, 120, 7), {"quality": 90}),
}


@pytest.mark.parametrize("name", sorted(JPEG_VARIANTS))
def test_fast_jpeg_path_gives_pillows_pixels(name: str) -> None:
    image, options = JPEG_VARIANTS[name]
    data = image_bytes(image, "JPEG", **options)
    fast = images_module._decode_plain_jpeg(data, 180)
    assert fast is not None, "a plain JPEG must take the fast path"
    pillow = np.asarray(images_module.decode_oriented(data, draft_size=180))
    assert fast.shape == pillow.shape and np.array_equal(fast, pillow)
    np.testing.assert_array_equal(load_rgb(data, 180), images_module.squash(pillow, 180))


@pytest.mark.parametrize("side", [180, 359, 360, 361, 719, 720, 1440, 1441, 3000])
def test_draft_scale_is_pillows(side: int) -> None:
    for width, height in ((side, 500), (500, side), (side, side)):
        image = Image.open(io.BytesIO(image_bytes(Image.new("RGB", (width, height)), "JPEG")))
        image.draft("RGB", (180, 180))
        scale = images_module.draft_scale(width, height, 180)
        assert image.size == (-(-width // scale), -(-height // scale))


def _with_app1(data: bytes, *payloads: bytes) -> bytes:
    segments = b"".join(b"\xff\xe1" + struct.pack(">H", len(p) + 2) + p for p in payloads)
    return data[:2] + segments + data[2:]


def _exif(orientation: int | None, byte_order: str = "<") -> bytes:
    entries = [] if orientation is None else [(0x0112, 3, 1, orientation)]
    entries.append((0x010F, 2, 4, 0))  # Make, another tag around it
    prefix = b"II" if byte_order == "<" else b"MM"
    ifd = struct.pack(byte_order + "H", len(entries)) + b"".join(
        struct.pack(byte_order + "HHIHH", tag, kind, count, value, 0) for tag, kind, count, value in entries
    )
    return b"Exif\x00\x00" + prefix + struct.pack(byte_order + "HI", 42, 8) + ifd + b"\x00\x00\x00\x00"


def test_jpeg_orientation_reads_exif_as_pillow_does() -> None:
    plain = jpeg_bytes(0)
    assert images_module.jpeg_orientation(plain) == 1
    for orientation in (1, 3, 6, 8):
        for order in ("<", ">"):
            data = _with_app1(plain, _exif(orientation, order))
            assert images_module.jpeg_orientation(data) == orientation
            assert Image.open(io.BytesIO(data)).getexif().get(0x0112) == orientation
    assert images_module.jpeg_orientation(_with_app1(plain, _exif(None))) == 1
    # What the short parser leaves to Pillow: XMP (may carry an orientation), two EXIF blocks, not a JPEG, junk.
    assert images_module.jpeg_orientation(_with_app1(plain, b"http://ns.adobe.com/xap/1.0/\x00<x/>")) is None
    assert images_module.jpeg_orientation(_with_app1(plain, _exif(1), _exif(6))) is None
    assert images_module.jpeg_orientation(image_bytes(Image.new("RGB", (8, 8)), "PNG")) is None
    assert images_module.jpeg_orientation(plain[:2] + b"\xff\xe1\x00") is None


def test_rotated_cmyk_and_png_go_through_pillow_with_the_same_squash() -> None:
    rotated = _with_app1(jpeg_bytes(1, size=(200, 120)), _exif(6))
    cmyk = jpeg_bytes(3, size=(200, 120), mode="CMYK")
    png = image_bytes(_photo(200, 120), "PNG")
    for data in (rotated, cmyk, png):
        assert images_module._decode_plain_jpeg(data, 64) is None
        expected = images_module.squash(np.asarray(images_module.decode_oriented(data, draft_size=64)), 64)
        np.testing.assert_array_equal(load_rgb(data, 64), expected)
    assert load_rgb(rotated, 64).shape == (64, 64, 3)


def test_undecodable_jpeg_raises_as_before() -> None:
    truncated = image_bytes(_photo(400, 300), "JPEG")[:3000]
    with pytest.raises(OSError):
        load_rgb(truncated, 64)


# ---------------------------------------------------------------------------------------- bounded chunks


def test_chunks_are_bounded_and_change_nothing(splits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive, table_path = splits
    decode_module.run(
        Params(image=ImageConfig(size=32, workers=2)), DecodePaths(archive, table_path, tmp_path / "whole")
    )
    seen: list[int] = []
    original = decode_module._decode_rows

    def spy(*args):
        seen.append(len(args[-1]))
        return original(*args)

    monkeypatch.setattr(decode_module, "_CHUNK_BYTES", 7 * 32 * 32 * 3)  # 7 rows
    monkeypatch.setattr(decode_module, "_decode_rows", spy)
    decode_module.run(
        Params(image=ImageConfig(size=32, workers=1)), DecodePaths(archive, table_path, tmp_path / "chunked")
    )
    assert max(seen) <= 7 and sum(seen) == 76
    for name in ("train.npy", "val.npy", "test.npy"):
        assert (tmp_path / "whole" / name).read_bytes() == (tmp_path / "chunked" / name).read_bytes()


@pytest.mark.parametrize(("count", "workers", "max_chunk"), [(1000, 2, 30), (1000, 1, 30), (100, 2, None), (5, 2, 2)])
def test_map_chunks_keeps_order_and_bounds_chunks(count: int, workers: int, max_chunk: int | None) -> None:
    sizes: list[int] = []
    result = map_chunks(_double, list(range(count)), workers, progress=sizes.append, max_chunk=max_chunk)
    assert result == [2 * i for i in range(count)]
    assert sum(sizes) == count
    if max_chunk:
        assert max(sizes) <= max_chunk


def _double(items: list[int]) -> list[int]:
    return [2 * item for item in items]


# ------------------------------------------------------------------------------------------ archive reads


def test_read_member_matches_zipfile_for_stored_deflated_and_bzip2(tmp_path: Path) -> None:
    import os
    import zipfile

    payloads = {"a.jpg": jpeg_bytes(0), "b.txt": b"x" * 5000, "c.bin": bytes(range(256)) * 40}
    for compression in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2):
        path = tmp_path / f"{compression}.zip"
        with zipfile.ZipFile(path, "w", compression) as archive:
            for name, data in payloads.items():
                archive.writestr(name, data)
        located = decode_module.locate_members(path, list(payloads))
        fd = os.open(path, os.O_RDONLY)
        try:
            for member in located:
                assert read_member(fd, member, path) == payloads[member.name]
        finally:
            os.close(fd)


def test_read_member_checks_the_crc_and_missing_members_are_data_errors(tmp_path: Path) -> None:
    import os
    import zipfile

    path = tmp_path / "a.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("a.jpg", b"0123456789" * 10)
    (member,) = decode_module.locate_members(path, ["a.jpg"])
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(zipfile.BadZipFile, match="CRC"):
            read_member(fd, member._replace(crc=member.crc ^ 1), path)
    finally:
        os.close(fd)
    with pytest.raises(DataError, match=r"missing\.jpg"):
        decode_module.locate_members(path, ["a.jpg", "missing.jpg"])


# ---------------------------------------------------------------------------------- what the stage holds


def test_read_splits_gives_each_splits_members_and_int32_labels_in_row_order(tmp_path: Path) -> None:
    import pyarrow as pa

    rng = np.random.default_rng(0)
    table = pd.DataFrame(
        {
            "split": ["train"] * 6 + ["val"] * 3 + ["holdout"] * 2,  # a split the stage does not know: left out
            "row": [3, 0, 5, 1, 4, 2, 2, 0, 1, 0, 1],
            "member": [f"train/{name}.{index}.jpg" for index, name in enumerate(CLASSES * 5 + ["cat"])],
            "label_index": [1, 0, 1, 1, 0, 0, 1, 0, 1, 0, 1],
        }
    ).iloc[rng.permutation(11)]
    path = tmp_path / "splits.parquet"
    table.to_parquet(path, index=False)
    pool = pa.default_memory_pool()
    splits = decode_module.read_splits(path)
    assert pa.default_memory_pool().backend_name == pool.backend_name  # the swap is undone
    assert set(splits) == {"train", "val", "test"}
    for name in ("train", "val", "test"):
        members, labels = splits[name]
        expected = table[table["split"] == name].sort_values("row", kind="stable")
        assert members.to_pylist() == expected["member"].tolist()
        assert labels.dtype == np.int32 and labels.tolist() == expected["label_index"].tolist()
    assert decode_module.count_images(path) == 11


def test_decode_jobs_slice_into_row_ranges_that_pickle_only_their_rows(make_zip) -> None:
    import pickle

    names = [f"train/cat.{index}.jpg" for index in range(300)]
    archive = make_zip({name: b"x" for name in names})
    jobs = decode_module._Rows(0, decode_module.locate_members(archive, names))
    chunk = jobs[100:110][2:5]
    assert (chunk.start, len(chunk)) == (102, 3)
    assert [member.name for member in chunk.members] == names[102:105]
    assert len(pickle.dumps(chunk)) < len(pickle.dumps(jobs)) / 20
    with pytest.raises(ValueError, match="contiguous"):
        jobs[::2]
