from __future__ import annotations

import dataclasses
import json
import stat
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cvpipe.config import IngestConfig, Params
from cvpipe.errors import DataError, SourceError
from cvpipe.imaging import archive as archive_module
from cvpipe.io import write_parquet
from cvpipe.stages import ingest as ingest_module
from cvpipe.stages.ingest import IngestPaths, build_manifest, label_of
from tests.conftest import FIXED_TIME, image_bytes, jpeg_bytes

CLASSES = ["cat", "dog"]


def manifest_of(path: Path, cfg: IngestConfig | None = None, labels: str = "filename") -> pd.DataFrame:
    return build_manifest(path, cfg or IngestConfig(workers=1), labels, CLASSES).set_index("member")


@pytest.mark.parametrize(
    ("member", "scheme", "label"),
    [
        ("train/cat.12.jpg", "filename", "cat"),
        ("train/Dog.7.JPG", "filename", "dog"),
        ("train/12.jpg", "filename", ""),
        ("PetImages/Cat/12.jpg", "folder", "cat"),
        ("12.jpg", "folder", ""),
        ("PetImages\\Cat\\12.jpg", "folder", "cat"),  # PowerShell 5's Compress-Archive
        ("train\\cat.12.jpg", "filename", "cat"),
    ],
)
def test_label_of(member: str, scheme: str, label: str) -> None:
    assert label_of(member, scheme) == label


def test_good_images_get_full_rows(make_zip) -> None:
    archive = make_zip({"train/cat.0.jpg": jpeg_bytes(0), "train/dog.0.jpg": jpeg_bytes(1, size=(90, 120))})
    manifest = manifest_of(archive)
    assert list(manifest["status"]) == ["ok", "ok"]
    cat = manifest.loc["train/cat.0.jpg"]
    assert (cat["label"], cat["label_index"], cat["width"], cat["height"]) == ("cat", 0, 120, 90)
    assert manifest.loc["train/dog.0.jpg", "label_index"] == 1
    assert cat["format"] == "JPEG" and cat["mode"] == "RGB"
    assert len(cat["sha256"]) == 64 and len(cat["phash"]) == 16 and len(cat["phash_flip"]) == 16


def bad_members() -> dict[str, tuple[bytes, str]]:
    """Member -> (bytes, expected reason fragment)."""
    good = jpeg_bytes(5)
    return {
        "train/cat.1.jpg": (good[: len(good) // 2], "does not decode"),
        "train/cat.2.jpg": (b"", "empty file"),
        "train/cat.3.jpg": (b"this is not an image\n", "not a decodable image"),
        "train/cat.4.jpg": (image_bytes(Image.new("RGB", (1, 1)), "PNG"), "smaller than ingest.min_side"),
        "train/horse.5.jpg": (jpeg_bytes(6), "unknown class 'horse'"),
        "train/nolabel.jpg": (jpeg_bytes(7), "no class label"),
        "__MACOSX/train/._cat.6.jpg": (b"\x00\x05\x16\x07", "archive debris"),
        "train/Thumbs.db": (b"\x00" * 32, "archive debris"),
    }


def test_bad_members_are_quarantined_with_reasons(make_zip) -> None:
    cases = bad_members()
    archive = make_zip({"train/dog.0.jpg": jpeg_bytes(0)} | {name: data for name, (data, _) in cases.items()})
    manifest = manifest_of(archive)
    assert manifest.loc["train/dog.0.jpg", "status"] == "ok"
    for member, (_, fragment) in cases.items():
        row = manifest.loc[member]
        assert row["status"] == "quarantined", member
        assert fragment in row["reason"], (member, row["reason"])


def test_animated_gif_and_decompression_bomb_are_quarantined(make_zip) -> None:
    frames = [Image.new("RGB", (40, 40), colour) for colour in ("red", "blue")]
    gif = image_bytes(frames[0], "GIF", save_all=True, append_images=frames[1:])
    archive = make_zip({"train/cat.0.jpg": gif, "train/dog.0.jpg": jpeg_bytes(1, size=(400, 300))})
    manifest = manifest_of(archive, IngestConfig(workers=1, max_pixels=100_000))
    assert "animated image with 2 frames" in manifest.loc["train/cat.0.jpg", "reason"]
    assert "decompression bomb" in manifest.loc["train/dog.0.jpg", "reason"]


def test_other_formats_and_modes_are_accepted_and_recorded(make_zip) -> None:
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 60, 3), dtype=np.uint8))
    palette = rgb.convert("P")
    palette.info["transparency"] = 0
    members = {
        "train/cat.0.jpg": image_bytes(rgb, "PNG"),
        "train/cat.1.jpg": jpeg_bytes(1, mode="CMYK"),
        "train/cat.2.jpg": jpeg_bytes(2, mode="L"),
        "train/cat.3.jpg": image_bytes(palette, "PNG", transparency=0),
        "train/cat.4.jpg": image_bytes(Image.fromarray(np.full((40, 40), 40000, dtype=np.uint16)), "PNG"),
        "train/cat.5.jpg": image_bytes(rgb, "WEBP"),
        "train/cat.6.jpg": image_bytes(rgb, "BMP"),
    }
    manifest = manifest_of(make_zip(members))
    assert set(manifest["status"]) == {"ok"}, manifest["reason"].to_dict()
    assert manifest["format"].tolist() == ["PNG", "JPEG", "JPEG", "PNG", "PNG", "WEBP", "BMP"]
    assert manifest["mode"].tolist()[1:4] == ["CMYK", "L", "P"]


def test_unsafe_and_symlink_members_are_never_read(tmp_path: Path) -> None:
    path = tmp_path / "images.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(zipfile.ZipInfo("../evil/cat.0.jpg", FIXED_TIME), jpeg_bytes(0))
        archive.writestr(zipfile.ZipInfo("/abs/cat.1.jpg", FIXED_TIME), jpeg_bytes(1))
        link = zipfile.ZipInfo("train/cat.2.jpg", FIXED_TIME)
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc/passwd")
        archive.writestr(zipfile.ZipInfo("train/dog.0.jpg", FIXED_TIME), jpeg_bytes(2))
    manifest = manifest_of(path)
    # zipfile normalises leading '/' away on write; either way the member never reaches the decoder.
    unsafe = manifest[manifest["reason"].str.contains("unsafe member path")]
    assert "../evil/cat.0.jpg" in unsafe.index
    assert "symbolic link" in manifest.loc["train/cat.2.jpg", "reason"]
    assert manifest.loc["train/cat.2.jpg", "sha256"] == ""  # not even read
    assert manifest.loc["train/dog.0.jpg", "status"] == "ok"


def test_zip_bomb_ratio_and_size_limit(make_zip) -> None:
    members = {"train/cat.0.jpg": b"\x00" * 2_000_000, "train/dog.0.jpg": jpeg_bytes(1)}
    archive = make_zip(members, compression=zipfile.ZIP_DEFLATED)
    manifest = manifest_of(archive, IngestConfig(workers=1, max_bytes=3_000_000))
    assert "zip bomb" in manifest.loc["train/cat.0.jpg", "reason"]
    small_limit = manifest_of(archive, IngestConfig(workers=1, max_bytes=1000))
    assert "exceeds ingest.max_bytes=1000" in small_limit.loc["train/dog.0.jpg", "reason"]


def test_bad_crc_member_is_quarantined(make_zip) -> None:
    archive = make_zip({"train/cat.0.jpg": jpeg_bytes(0), "train/dog.0.jpg": jpeg_bytes(1)})
    data = bytearray(archive.read_bytes())
    offset = data.index(jpeg_bytes(0)[200:216])
    data[offset] ^= 0xFF
    archive.write_bytes(bytes(data))
    manifest = manifest_of(archive)
    assert "cannot be read from the archive (BadZipFile" in manifest.loc["train/cat.0.jpg", "reason"]
    assert manifest.loc["train/dog.0.jpg", "status"] == "ok"


def test_encrypted_and_corrupt_deflate_members_are_quarantined(make_zip) -> None:
    # Both used to stop the whole stage (zipfile raises RuntimeError and zlib.error for them).
    members = {"train/cat.0.jpg": jpeg_bytes(0), "train/cat.1.jpg": jpeg_bytes(1), "train/dog.0.jpg": jpeg_bytes(2)}
    archive = make_zip(members, compression=zipfile.ZIP_DEFLATED)
    data = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as reading:
        encrypted, corrupt = reading.getinfo("train/cat.0.jpg"), reading.getinfo("train/cat.1.jpg")
    data[encrypted.header_offset + 6] |= 0x1  # the encryption flag, in the local header and the directory
    data[data.rindex(b"train/cat.0.jpg") - 46 + 8] |= 0x1
    start = corrupt.header_offset + 30 + len(corrupt.filename)
    data[start : start + 8] = b"\xff" * 8  # an invalid deflate block
    archive.write_bytes(bytes(data))
    manifest = manifest_of(archive)
    assert "(RuntimeError: File 'train/cat.0.jpg' is encrypted" in manifest.loc["train/cat.0.jpg", "reason"]
    assert "(error: Error -3 while decompressing" in manifest.loc["train/cat.1.jpg", "reason"]
    assert manifest.loc["train/dog.0.jpg", "status"] == "ok"


def test_ordinary_members_are_listed_and_read_without_zipfile(make_zip, monkeypatch: pytest.MonkeyPatch) -> None:
    # The memory fix: no ZipFile (a ZipInfo per archive entry) per worker chunk, nor for the listing.
    archive = make_zip({"train/cat.0.jpg": jpeg_bytes(0), "train/dog.0.jpg": jpeg_bytes(1)})
    monkeypatch.setattr(archive_module.zipfile, "ZipFile", None)
    assert list(manifest_of(archive)["status"]) == ["ok", "ok"]


def test_batches_change_nothing(synthetic_archive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, _ = synthetic_archive
    whole = build_manifest(path, IngestConfig(workers=1), "filename", CLASSES)
    monkeypatch.setattr(ingest_module, "_BATCH", 7)
    batched = build_manifest(path, IngestConfig(workers=1), "filename", CLASSES)
    pd.testing.assert_frame_equal(batched, whole)
    write_parquet(whole, tmp_path / "whole.parquet")
    write_parquet(batched, tmp_path / "batched.parquet")
    assert (tmp_path / "whole.parquet").read_bytes() == (tmp_path / "batched.parquet").read_bytes()


def test_folder_labels(make_zip) -> None:
    archive = make_zip({"PetImages/Cat/1.jpg": jpeg_bytes(0), "PetImages/Dog/1.jpg": jpeg_bytes(1)})
    manifest = manifest_of(archive, labels="folder")
    assert manifest["label"].tolist() == ["cat", "dog"]


def test_windows_separators_in_member_names_are_read_as_folders(make_zip) -> None:
    """Issue 15: every image was rejected as ``unknown class 'train\\cat'``; the names stay as stored."""
    archive = make_zip({"PetImages\\Cat\\1.jpg": jpeg_bytes(0), "PetImages\\Dog\\1.jpg": jpeg_bytes(1)})
    manifest = manifest_of(archive, labels="folder")
    assert manifest["label"].tolist() == ["cat", "dog"] and (manifest["status"] == "ok").all()
    assert manifest.index.tolist() == ["PetImages\\Cat\\1.jpg", "PetImages\\Dog\\1.jpg"]
    debris = manifest_of(make_zip({"x\\__MACOSX\\._cat.1.jpg": b"x", "a\\Thumbs.db": b"x"}, name="d.zip"))
    assert debris["reason"].str.startswith("archive debris").all()


def test_not_a_zip_and_duplicate_names_fail_with_one_line(tmp_path: Path) -> None:
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(SourceError, match="not a readable zip archive"):
        build_manifest(broken, IngestConfig(workers=1), "filename", CLASSES)
    twice = tmp_path / "twice.zip"
    with pytest.warns(UserWarning), zipfile.ZipFile(twice, "w") as archive:
        archive.writestr("train/cat.0.jpg", jpeg_bytes(0))
        archive.writestr("train/cat.0.jpg", jpeg_bytes(1))
    with pytest.raises(SourceError, match="more than once"):
        build_manifest(twice, IngestConfig(workers=1), "filename", CLASSES)


def test_parallel_manifest_equals_serial(synthetic_archive) -> None:
    path, _ = synthetic_archive
    serial = build_manifest(path, IngestConfig(workers=1), "filename", CLASSES)
    parallel = build_manifest(path, IngestConfig(workers=2), "filename", CLASSES)
    pd.testing.assert_frame_equal(serial, parallel)


def test_run_ingest_writes_byte_identical_outputs(synthetic_archive, tmp_path: Path) -> None:
    path, provenance = synthetic_archive
    first = ingest_module.run(Params(ingest=IngestConfig(workers=2)), IngestPaths(path, tmp_path / "a"))
    ingest_module.run(Params(ingest=IngestConfig(workers=1)), IngestPaths(path, tmp_path / "b"))
    assert (tmp_path / "a/images.parquet").read_bytes() == (tmp_path / "b/images.parquet").read_bytes()
    assert (tmp_path / "a/report.json").read_bytes() == (tmp_path / "b/report.json").read_bytes()
    corrupt = {member for member, _ in provenance["planted"]["corrupt"]}
    report = json.loads((tmp_path / "a/report.json").read_text())
    assert {row["member"] for row in report["quarantine"]} == corrupt
    assert first.quarantined == len(corrupt) and first.ok == first.members - len(corrupt)
    assert report["summary"] == dataclasses.asdict(first)  # the typed summary is the report's, field for key


def test_archive_without_usable_images_fails_and_writes_no_manifest(make_zip, tmp_path: Path) -> None:
    archive = make_zip({"train/cat.0.jpg": b"", "notes.txt": b"hello"})
    with pytest.raises(DataError, match="no usable image among 2 members"):
        ingest_module.run(Params(ingest=IngestConfig(workers=1)), IngestPaths(archive, tmp_path / "out"))
    assert not (tmp_path / "out/images.parquet").exists()
    assert (tmp_path / "out/report.json").exists()
