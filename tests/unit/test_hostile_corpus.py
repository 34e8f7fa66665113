"""Hostile inputs of issue 7 not covered by test_ingest.py / test_split.py (the list is docs/reliability.md).

Each case asserts what cvpipe does: a quarantine record with a reason while the rest goes through, or one
clear line.
"""

from __future__ import annotations

import io
import json
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cvpipe.config import IngestConfig, Params, SplitConfig, SplitCounts
from cvpipe.errors import DataError
from cvpipe.stages import ingest as ingest_module
from cvpipe.stages import split as split_module
from cvpipe.stages.ingest import IngestPaths, build_manifest
from cvpipe.stages.split import SplitPaths
from tests.conftest import image_bytes, jpeg_bytes, write_zip

CLASSES = ["cat", "dog"]


def manifest_of(path: Path) -> pd.DataFrame:
    return build_manifest(path, IngestConfig(workers=1), "filename", CLASSES).set_index("member")


def declared_png(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` but whose data is a few bytes (a pixel bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def test_static_gif_named_jpg_is_kept_with_its_format(tmp_path: Path) -> None:
    still = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 60, 3), dtype=np.uint8))
    archive = write_zip(tmp_path / "a.zip", {"train/cat.0.jpg": image_bytes(still, "GIF")})
    row = manifest_of(archive).loc["train/cat.0.jpg"]
    assert (row["status"], row["format"]) == ("ok", "GIF")


def test_20000_by_20000_declared_is_quarantined_unread(tmp_path: Path) -> None:
    members = {"train/cat.0.jpg": declared_png(20000, 20000), "train/dog.0.jpg": jpeg_bytes(1)}
    manifest = manifest_of(write_zip(tmp_path / "a.zip", members))
    assert "of 400000000 pixels exceeds ingest.max_pixels" in manifest.loc["train/cat.0.jpg", "reason"]
    assert manifest.loc["train/dog.0.jpg", "status"] == "ok"


def test_nested_archive_member_is_quarantined(tmp_path: Path) -> None:
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as nested:
        nested.writestr("cat.9.jpg", jpeg_bytes(3))
    members = {
        "train/cat.0.zip": inner.getvalue(),
        "train/cat.1.jpg": inner.getvalue(),
        "train/dog.0.jpg": jpeg_bytes(1),
    }
    manifest = manifest_of(write_zip(tmp_path / "a.zip", members))
    for member in ("train/cat.0.zip", "train/cat.1.jpg"):
        assert "not a decodable image" in manifest.loc[member, "reason"]
    assert manifest.loc["train/dog.0.jpg", "status"] == "ok"


def test_non_utf8_member_name_is_decoded_as_cp437_and_kept_apart(tmp_path: Path) -> None:
    """No UTF-8 flag: zipfile decodes the raw bytes as CP437 (the zip standard); the name is then no class."""
    path = write_zip(tmp_path / "a.zip", {"train/cat.0.jpg": jpeg_bytes(0), "train/dog.0.jpg": jpeg_bytes(1)})
    path.write_bytes(path.read_bytes().replace(b"train/cat.0.jpg", b"train/c\xe4t.0.jpg"))  # same length
    manifest = manifest_of(path)
    odd = "train/c\u03a3t.0.jpg"  # 0xE4 in CP437
    assert manifest.loc[odd, "status"] == "quarantined"
    assert "unknown class" in manifest.loc[odd, "reason"]
    assert manifest.loc["train/dog.0.jpg", "status"] == "ok"


def test_empty_archive_says_so_in_one_line(tmp_path: Path) -> None:
    empty = tmp_path / "images.zip"
    with zipfile.ZipFile(empty, "w"):
        pass
    with pytest.raises(DataError, match="no usable image among 0 members"):
        ingest_module.run(Params(ingest=IngestConfig(workers=1)), IngestPaths(empty, tmp_path / "out"))


def test_data_of_one_class_only_names_the_missing_class(tmp_path: Path) -> None:
    members = {f"train/cat.{n}.jpg": jpeg_bytes(n) for n in range(12)}
    ingest_module.run(
        Params(ingest=IngestConfig(workers=1)), IngestPaths(write_zip(tmp_path / "a.zip", members), tmp_path / "m")
    )
    counts = SplitConfig(per_class=SplitCounts(train=4, val=2, test=2))
    with pytest.raises(DataError, match="class 'dog' has 0 usable unique images but the split asks for 8"):
        split_module.run(Params(split=counts), SplitPaths(tmp_path / "m/images.parquet", tmp_path / "s"))


def test_identical_bytes_under_two_labels_are_left_out_and_reported(tmp_path: Path) -> None:
    """Issue 15: the copies used to be kept under the first name's label, placed in a split, audit passed."""
    from cvpipe.stages import audit as audit_module
    from cvpipe.stages.audit import AuditPaths

    members = {
        f"train/{label}.{n}.jpg": jpeg_bytes(n + 20 * index) for index, label in enumerate(CLASSES) for n in range(8)
    }
    members["train/cat.90.jpg"] = members["train/dog.90.jpg"] = jpeg_bytes(999)
    archive = write_zip(tmp_path / "a.zip", members)
    params = Params(ingest=IngestConfig(workers=1), split=SplitConfig(per_class=SplitCounts(train=4, val=2, test=2)))
    ingest_module.run(params, IngestPaths(archive, tmp_path / "m"))
    split_module.run(params, SplitPaths(tmp_path / "m/images.parquet", tmp_path / "s", archive))
    report = json.loads((tmp_path / "s/report.json").read_text())
    assert ["train/cat.90.jpg", "train/dog.90.jpg"] in report["label_conflicts"]
    table = pd.read_parquet(tmp_path / "s/splits.parquet")
    assert not table["member"].isin(["train/cat.90.jpg", "train/dog.90.jpg"]).any()
    summary = audit_module.run(
        params, AuditPaths(archive, tmp_path / "m/images.parquet", tmp_path / "s/splits.parquet", tmp_path / "a")
    )
    assert summary.label_conflict_pairs == 1
    group = json.loads((tmp_path / "a/report.json").read_text())["exact_duplicates"][0]
    assert group["label_conflict"] and group["labels"] == ["cat", "dog"] and group["split"] == "unused"


# Issue 15: messages that were unclear, late, or an internal error.


def test_an_empty_member_name_and_a_directory_with_data_get_quarantined_rows(tmp_path: Path) -> None:
    path = write_zip(
        tmp_path / "a.zip", {"train/cat.0.jpg": jpeg_bytes(0), "train/dog.0.jpg": jpeg_bytes(1), "zzzz/": b"hidden"}
    )
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr(zipfile.ZipInfo("", date_time=(1980, 1, 1, 0, 0, 0)), b"x")
    params = Params(ingest=IngestConfig(workers=1))
    ingest_module.run(params, IngestPaths(path, tmp_path / "m"))  # the manifest validates
    manifest = pd.read_parquet(tmp_path / "m/images.parquet").set_index("member")
    assert manifest.loc["", "reason"] == "member with an empty name"
    assert manifest.loc["zzzz/", "reason"].startswith("directory entry carrying 6 bytes")
    assert manifest.loc["train/dog.0.jpg", "status"] == "ok"


def test_class_names_match_across_unicode_normal_forms(tmp_path: Path) -> None:
    """macOS writes ``Lo\u0308we`` (NFD); params hold ``L\u00f6we`` (NFC): they look alike and did not match."""
    members = {"PetImages/Lo\u0308we/1.jpg": jpeg_bytes(0), "PetImages/Cat/1.jpg": jpeg_bytes(1)}
    manifest = build_manifest(
        write_zip(tmp_path / "a.zip", members), IngestConfig(workers=1), "folder", ["cat", "l\u00f6we"]
    ).set_index("member")
    assert manifest.loc["PetImages/Lo\u0308we/1.jpg", "label"] == "l\u00f6we"
    assert (manifest["status"] == "ok").all()


def test_a_png_with_a_large_compressed_text_chunk_is_kept(tmp_path: Path) -> None:
    from PIL import PngImagePlugin

    from cvpipe.imaging.images import load_rgb

    info = PngImagePlugin.PngInfo()
    info.add_itxt("notes", "x" * 10_000_000, zip=True)  # 10 MB of text, 10 kB compressed
    png = image_bytes(Image.fromarray(np.full((40, 50, 3), 90, dtype=np.uint8)), "PNG", pnginfo=info)
    manifest = manifest_of(write_zip(tmp_path / "a.zip", {"train/cat.0.jpg": png}))
    assert manifest.loc["train/cat.0.jpg", "status"] == "ok", manifest.loc["train/cat.0.jpg", "reason"]
    assert load_rgb(png, 32).shape == (32, 32, 3)


@pytest.mark.parametrize(
    ("members", "labels", "hint"),
    [
        ({"train/cat.0.jpg": jpeg_bytes(0), "train/dog.0.jpg": jpeg_bytes(1)}, "folder", "data.labels: filename"),
        ({"Cat/0.jpg": jpeg_bytes(0), "Dog/0.jpg": jpeg_bytes(1)}, "filename", "data.labels: folder"),
        ({"download/train.zip": b"PK\x05\x06" + bytes(18)}, "filename", "it holds download/train.zip, an archive"),
    ],
)
def test_no_usable_image_names_the_likely_fix(tmp_path: Path, members: dict, labels: str, hint: str) -> None:
    from cvpipe.config import DataConfig

    params = Params(data=DataConfig(labels=labels), ingest=IngestConfig(workers=1))
    with pytest.raises(DataError, match="no usable image") as caught:
        ingest_module.run(params, IngestPaths(write_zip(tmp_path / "a.zip", members), tmp_path / "m"))
    assert hint in str(caught.value)
