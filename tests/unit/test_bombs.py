"""Bombs and hostile containers of issue 15: each is quarantined within a memory and time bound.

The bounds are measured in a fresh subprocess (``_measured``): its peak resident memory while it judges the
archive, over what it held before, and the seconds it took; nothing here times the test suite itself.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import textwrap
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cvpipe.config import IngestConfig
from cvpipe.imaging import archive as archive_module
from cvpipe.imaging.images import MAX_JPEG_SCANS, jpeg_scans, load_rgb, open_image, pixel_limit
from cvpipe.stages.ingest import build_manifest
from tests.conftest import image_bytes, jpeg_bytes, write_zip

ROOT = Path(__file__).resolve().parents[2]
CLASSES = ["cat", "dog"]
MB = 1 << 20


def manifest_of(path: Path, **ingest: Any) -> pd.DataFrame:
    return build_manifest(path, IngestConfig(workers=1, **ingest), "filename", CLASSES).set_index("member")


def _measured(archive: Path, **ingest: Any) -> dict[str, Any]:
    """Judge ``archive`` in a fresh process; its extra peak memory (MB), seconds, and the rows' reasons."""
    script = textwrap.dedent(
        f"""
        import json, resource, sys, time
        from cvpipe.config import IngestConfig
        from cvpipe.imaging.hashes import load_hashers
        from cvpipe.imaging.images import load_decoders
        from cvpipe.stages.ingest import build_manifest
        load_hashers(); load_decoders()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        started = time.monotonic()
        frame = build_manifest({str(archive)!r}, IngestConfig(workers=1, **{ingest!r}), "filename", ["cat", "dog"])
        seconds = time.monotonic() - started
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        json.dump({{"mb": (peak - before) / 1024, "seconds": seconds,
                    "rows": dict(zip(frame["member"], zip(frame["status"], frame["reason"])))}}, sys.stdout)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bilevel_png(width: int, height: int) -> bytes:
    """A real 1-bit PNG of ``width x height`` zeros: tiny on disk, one byte a pixel once Pillow decodes it."""
    row = b"\0" * (1 + (width + 7) // 8)
    deflate = zlib.compressobj(9)
    body = b"".join(deflate.compress(row * 1000) for _ in range(height // 1000)) + deflate.compress(
        row * (height % 1000)
    )
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = body + deflate.flush()
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def ico_with(frame: bytes, declared: int = 16) -> bytes:
    """An ICO whose directory declares ``declared`` px but whose one frame is the PNG ``frame``."""
    directory = struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", declared, declared, 0, 0, 1, 32, len(frame), 22)
    return directory + frame


def test_an_ico_bomb_named_jpg_is_quarantined_without_decoding_its_frame(tmp_path: Path) -> None:
    """16x16 declared, a 20000x20000 PNG frame (400 MB decoded): Pillow's ICO plugin decodes it at open."""
    members = {"train/cat.0.jpg": ico_with(bilevel_png(20000, 20000)), "train/dog.0.jpg": jpeg_bytes(1)}
    measured = _measured(write_zip(tmp_path / "a.zip", members))
    status, reason = measured["rows"]["train/cat.0.jpg"]
    assert status == "quarantined" and "not a decodable image" in reason
    assert measured["rows"]["train/dog.0.jpg"][0] == "ok"
    assert measured["mb"] < 100, measured  # was ~400 MB (the frame, one byte a pixel)
    assert measured["seconds"] < 5, measured


def test_pillows_own_limit_holds_for_a_frame_any_container_decodes_at_open() -> None:
    """The guard under the allow-list: inside :func:`pixel_limit` even an ICO's hidden frame is refused."""
    bomb = io.BytesIO(ico_with(bilevel_png(2000, 2000)))
    with pixel_limit(1_000_000), pytest.raises((Image.DecompressionBombError, Image.DecompressionBombWarning)):
        Image.open(bomb, formats=["ICO"])
    assert Image.MAX_IMAGE_PIXELS is None  # restored: decode lifts Pillow's limit


def test_a_frame_over_max_pixels_is_quarantined_by_pillows_check(tmp_path: Path) -> None:
    members = {"train/cat.0.jpg": bilevel_png(2000, 2000), "train/dog.0.jpg": jpeg_bytes(1)}
    manifest = manifest_of(write_zip(tmp_path / "a.zip", members), max_pixels=1_000_000)
    assert "of 4000000 pixels exceeds ingest.max_pixels=1000000" in manifest.loc["train/cat.0.jpg", "reason"]
    assert manifest.loc["train/dog.0.jpg", "status"] == "ok"


def scan_bomb(scans: int) -> bytes:
    """A progressive JPEG with ``scans`` extra (repeated refinement) scans before its EOI."""
    progressive = image_bytes(Image.open(io.BytesIO(jpeg_bytes(5, size=(256, 256)))), "JPEG", progressive=True)
    last_scan = progressive.rindex(b"\xff\xda")
    body, tail = progressive[:-2], progressive[-2:]
    assert tail == b"\xff\xd9"
    return body + body[last_scan:] * scans + tail


def test_jpeg_scans_counts_scans_not_bytes_in_thumbnails() -> None:
    plain = jpeg_bytes(1)
    assert jpeg_scans(plain) == 1
    progressive = image_bytes(Image.open(io.BytesIO(plain)), "JPEG", progressive=True)
    assert 2 <= jpeg_scans(progressive) <= 20
    assert jpeg_scans(scan_bomb(500)) == MAX_JPEG_SCANS + 1  # counted only up to the limit and one


def test_a_jpeg_scan_bomb_is_quarantined_in_bounded_time(tmp_path: Path) -> None:
    members = {"train/cat.0.jpg": scan_bomb(20_000), "train/dog.0.jpg": jpeg_bytes(1)}
    measured = _measured(write_zip(tmp_path / "a.zip", members))
    status, reason = measured["rows"]["train/cat.0.jpg"]
    assert status == "quarantined" and f"more than {MAX_JPEG_SCANS} scans" in reason
    assert measured["seconds"] < 3, measured  # 20,000 scans took ~20 s to decode


def overlapping_zip(path: Path, entries: int, kernel: bytes) -> Path:
    """Fifield's overlapping-entry zip bomb: every entry's deflate data quotes the next local headers, then
    ends in one shared kernel, so each entry inflates the whole kernel (with a correct CRC)."""
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    packed = deflate.compress(kernel) + deflate.flush()
    names = [f"train/cat.{n}.jpg".encode() for n in range(entries)]
    headers: list[bytes] = [b""] * entries
    content, data = kernel, packed
    for index in reversed(range(entries)):
        crc = zlib.crc32(content)
        headers[index] = (
            struct.pack(
                "<4s5H3L2H", b"PK\x03\x04", 20, 0, 8, 0, 0x21, crc, len(data), len(content), len(names[index]), 0
            )
            + names[index]
        )
        quote = struct.pack("<BHH", 0, len(headers[index]), len(headers[index]) ^ 0xFFFF)
        content, data = headers[index] + content, quote + headers[index] + data
    body, offsets = bytearray(), []
    for index in range(entries):
        offsets.append(len(body) + (5 if index else 0))  # the header, after the quote before it
        body += (
            headers[index]
            if index == 0
            else struct.pack("<BHH", 0, len(headers[index]), len(headers[index]) ^ 0xFFFF) + headers[index]
        )
    body += packed
    directory = bytearray()
    for index in range(entries):
        local = struct.unpack("<4s5H3L2H", headers[index][:30])
        directory += struct.pack(
            "<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 8, 0, 0x21, local[6], local[7], local[8],
            len(names[index]), 0, 0, 0, 0, 0o644 << 16, offsets[index],
        ) + names[index]  # fmt: skip
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, entries, entries, len(directory), len(body), 0)
    path.write_bytes(bytes(body) + bytes(directory) + end)
    return path


def test_overlapping_entries_are_quarantined_without_inflating(tmp_path: Path) -> None:
    """Python 3.11's zipfile inflates each entry in full (3.12 refuses them); cvpipe refuses them on any Python."""
    path = overlapping_zip(tmp_path / "a.zip", 50, bytes(20 * MB))
    with zipfile.ZipFile(path) as archive:  # the construction is sound: each entry reads the shared kernel
        assert archive.testzip() is None if sys.version_info < (3, 12) else True
    measured = _measured(path, max_compression_ratio=1e9)  # the ratio alone would catch this kernel
    reasons = [reason for member, (_, reason) in measured["rows"].items() if member != "train/cat.49.jpg"]
    assert len(reasons) == 49 and all("overlaps the next entry" in reason for reason in reasons)
    assert measured["seconds"] < 3 and measured["mb"] < 60, measured  # 49 x 20 MB inflated before


def test_off_the_fast_path_one_zipfile_serves_a_whole_chunk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """bzip2 members: each one used to reopen the archive (and parse its directory): quadratic in members."""
    members = {f"train/{label}.{n}.jpg": jpeg_bytes(n) for label in CLASSES for n in range(150)}
    path = write_zip(tmp_path / "a.zip", members, compression=zipfile.ZIP_BZIP2)
    opened = []
    original = archive_module.zipfile.ZipFile

    class Counting(original):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            opened.append(args[0])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(archive_module.zipfile, "ZipFile", Counting)
    manifest = manifest_of(path)
    assert (manifest["status"] == "ok").all()
    assert len(opened) <= 2, len(opened)  # was 300


def test_a_stored_member_lying_about_its_size_is_not_read(tmp_path: Path) -> None:
    """The directory declares 1,000 bytes; the entry holds 300 kB (300 MB in the issue): compress_size is bounded."""
    path = write_zip(tmp_path / "a.zip", {"train/cat.0.jpg": bytes(300_000), "train/dog.0.jpg": jpeg_bytes(1)})
    raw = bytearray(path.read_bytes())
    central = raw.index(b"PK\x01\x02")
    struct.pack_into("<L", raw, central + 24, 1000)  # uncompressed size in the central directory
    path.write_bytes(bytes(raw))
    manifest = manifest_of(path, max_bytes=100_000)
    reason = manifest.loc["train/cat.0.jpg", "reason"]
    assert "compressed data of 300000 bytes exceeds ingest.max_bytes=100000" in reason
    assert manifest.loc["train/cat.0.jpg", "sha256"] == ""  # never read
    assert manifest.loc["train/dog.0.jpg", "status"] == "ok"


def test_a_16_bit_png_is_rescaled_in_bounded_memory_with_the_same_bytes(tmp_path: Path) -> None:
    """A 16-bit 4000x4000 PNG peaked at ~520 MB (float64 copies of the whole image); by rows it is a fraction."""
    values = np.random.default_rng(0).integers(0, 65535, (4000, 4000), dtype=np.uint16)
    image = Image.fromarray(values)
    image.info.clear()
    members = {"train/cat.0.jpg": image_bytes(Image.fromarray(values), "PNG"), "train/dog.0.jpg": jpeg_bytes(1)}
    measured = _measured(write_zip(tmp_path / "a.zip", members))
    assert measured["rows"]["train/cat.0.jpg"][0] == "ok"
    assert measured["mb"] < 300, measured
    small = Image.fromarray(values[:300, :400])
    expected = np.clip(values[:300, :400].astype(np.float64) * (255.0 / values[:300, :400].max()), 0, 255)
    rgb = load_rgb(image_bytes(small, "PNG"), 32)
    reference = np.asarray(Image.fromarray(expected.astype(np.uint8), "L").convert("RGB"))
    from cvpipe.imaging.images import squash

    assert np.array_equal(rgb, squash(reference, 32))


def test_an_mpo_photo_is_kept_and_decoded_from_its_primary_image(tmp_path: Path) -> None:
    primary = Image.open(io.BytesIO(jpeg_bytes(3, size=(160, 120))))
    second = Image.open(io.BytesIO(jpeg_bytes(4, size=(160, 120))))
    mpo = image_bytes(primary, "MPO", save_all=True, append_images=[second], quality=90)
    assert open_image(mpo).format == "MPO" and open_image(mpo).n_frames == 2
    manifest = manifest_of(write_zip(tmp_path / "a.zip", {"train/cat.0.jpg": mpo, "train/dog.0.jpg": jpeg_bytes(1)}))
    row = manifest.loc["train/cat.0.jpg"]
    assert (row["status"], row["format"], row["label"]) == ("ok", "MPO", "cat"), row["reason"]
    assert np.array_equal(load_rgb(mpo, 64), load_rgb(image_bytes(primary, "JPEG", quality=90), 64))
