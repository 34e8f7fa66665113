"""The ingest stage: one manifest row per archive member, read in place, never extracted.

Every file member of the raw archive gets a row: usable images with ``status = ok`` and their content hash,
size, mode, format and perceptual hashes; everything else with ``status = quarantined`` and a reason
(undecodable, empty, not an image, no label, unknown class, too small, decompression bomb, zip bomb, unsafe
path, archive debris, bad CRC, animated). Nothing is silently dropped. The manifest is validated with
pandera before it is written; a failed validation writes the failure table into the report and writes no
manifest.
"""

from __future__ import annotations

import collections
import functools
import logging
import stat
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import imagehash
import pandas as pd
from PIL import ImageOps

from cvpipe.config import IngestConfig
from cvpipe.errors import DataError, SourceError
from cvpipe.images import decode_oriented, open_image
from cvpipe.io import sha256_bytes, write_json_atomic, write_parquet
from cvpipe.parallel import map_chunks, worker_count

log = logging.getLogger(__name__)

MANIFEST_NAME = "images.parquet"
REPORT_NAME = "report.json"
# Perceptual hashes are computed on a small decode: phash looks at a 32x32 greyscale thumbnail anyway.
HASH_DRAFT_SIZE = 64
_DEBRIS_NAMES = {"thumbs.db", ".ds_store", "desktop.ini"}


@dataclass(frozen=True)
class Settings:
    """What a worker needs to judge one member (picklable)."""

    labels: str
    classes: tuple[str, ...]
    max_bytes: int
    max_pixels: int
    min_side: int
    max_compression_ratio: float


@dataclass
class Row:
    """One manifest row. Empty strings and zeros stand for 'not known' (e.g. for unreadable members)."""

    member: str
    label: str = ""
    label_index: int = -1
    sha256: str = ""
    bytes: int = 0
    width: int = 0
    height: int = 0
    mode: str = ""
    format: str = ""
    phash: str = ""
    phash_flip: str = ""
    status: str = "ok"
    reason: str = ""

    def quarantine(self, reason: str) -> Row:
        """Mark the row quarantined with ``reason`` and return it."""
        self.status = "quarantined"
        self.reason = reason
        return self


def label_of(member: str, scheme: str) -> str:
    """Class name encoded in a member path, lower-cased; '' when there is none.

    ``filename``: Kaggle's ``train/cat.12.jpg`` -> ``cat``. ``folder``: Microsoft's ``PetImages/Cat/12.jpg``
    -> ``cat``.
    """
    path = PurePosixPath(member)
    if scheme == "folder":
        return path.parent.name.lower() if len(path.parts) > 1 else ""
    stem_parts = path.name.split(".")
    return stem_parts[0].lower() if len(stem_parts) >= 3 else ""


def _unsafe_reason(info: zipfile.ZipInfo) -> str:
    name = info.filename
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in parts:
        return "unsafe member path (absolute or '..'); never extracted"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "symbolic link member; not followed"
    return ""


def _debris_reason(member: str) -> str:
    path = PurePosixPath(member)
    if (path.parts and path.parts[0] == "__MACOSX") or path.name.startswith("._") or path.name.lower() in _DEBRIS_NAMES:
        return "archive debris (__MACOSX, resource fork, Thumbs.db, .DS_Store)"
    return ""


def _precheck(info: zipfile.ZipInfo, settings: Settings) -> str:
    """A reason to quarantine the member without reading it, or ''."""
    reason = _unsafe_reason(info) or _debris_reason(info.filename)
    if reason:
        return reason
    if info.file_size > settings.max_bytes:
        return f"file of {info.file_size} bytes exceeds ingest.max_bytes={settings.max_bytes}"
    if info.compress_size and info.file_size / info.compress_size > settings.max_compression_ratio:
        return f"compression ratio {info.file_size / info.compress_size:.0f}:1 looks like a zip bomb"
    return ""


def _describe_image(row: Row, data: bytes, settings: Settings) -> Row:
    try:
        image = open_image(data)
        row.width, row.height = image.size
        row.mode, row.format = image.mode, image.format or ""
    except Exception as error:
        return row.quarantine(f"not a decodable image ({type(error).__name__})")
    if row.width * row.height > settings.max_pixels:
        return row.quarantine(
            f"declared size {row.width}x{row.height} exceeds ingest.max_pixels={settings.max_pixels} "
            "(decompression bomb?)"
        )
    if min(row.width, row.height) < settings.min_side:
        return row.quarantine(f"{row.width}x{row.height} is smaller than ingest.min_side={settings.min_side}")
    if getattr(image, "n_frames", 1) > 1:
        return row.quarantine(f"animated image with {image.n_frames} frames")
    try:
        upright = decode_oriented(data, draft_size=HASH_DRAFT_SIZE)
    except Exception as error:
        return row.quarantine(f"image data does not decode ({type(error).__name__}: {error})"[:200])
    row.phash = str(imagehash.phash(upright))
    row.phash_flip = str(imagehash.phash(ImageOps.mirror(upright)))
    return row


def _label(row: Row, settings: Settings) -> Row:
    label = label_of(row.member, settings.labels)
    if not label:
        return row.quarantine(f"no class label in the name (data.labels={settings.labels})")
    if label not in settings.classes:
        return row.quarantine(f"unknown class '{label}' (data.classes={list(settings.classes)})")
    row.label, row.label_index = label, settings.classes.index(label)
    return row


def inspect_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, settings: Settings) -> Row:
    """Judge one archive member and return its manifest row."""
    row = Row(member=info.filename, bytes=info.file_size)
    reason = _precheck(info, settings)
    if reason:
        return row.quarantine(reason)
    try:
        data = archive.read(info)
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as error:
        return row.quarantine(f"member cannot be read from the archive ({type(error).__name__}: {error})"[:200])
    row.sha256 = sha256_bytes(data)
    if not data:
        return row.quarantine("empty file (0 bytes)")
    row = _describe_image(row, data, settings)
    if row.status != "ok":
        return row
    return _label(row, settings)


def _inspect_chunk(archive_path: Path, settings: Settings, names: Sequence[str]) -> list[Row]:
    with zipfile.ZipFile(archive_path) as archive:
        return [inspect_member(archive, archive.getinfo(name), settings) for name in names]


def list_members(archive_path: Path) -> list[str]:
    """File members of the archive in sorted order (directories are not members).

    Raises:
        SourceError: the file is not a readable zip archive.
    """
    try:
        with zipfile.ZipFile(archive_path) as archive:
            names = [info.filename for info in archive.infolist() if not info.is_dir()]
    except (zipfile.BadZipFile, OSError) as error:
        raise SourceError(f"{archive_path}: not a readable zip archive ({error}); rerun the download stage") from None
    duplicates = [name for name, count in collections.Counter(names).items() if count > 1]
    if duplicates:
        raise SourceError(
            f"{archive_path}: member names occur more than once ({duplicates[:3]}); the archive is ambiguous, "
            "rebuild it without duplicate names"
        )
    return sorted(names)


def build_manifest(
    archive_path: Path,
    cfg: IngestConfig,
    labels: str,
    classes: Sequence[str],
    progress: Callable[[int], None] | None = None,
) -> pd.DataFrame:
    """Inspect every member of the archive (in parallel) and return the manifest, sorted by member."""
    names = list_members(archive_path)
    settings = Settings(
        labels=labels,
        classes=tuple(classes),
        max_bytes=cfg.max_bytes,
        max_pixels=cfg.max_pixels,
        min_side=cfg.min_side,
        max_compression_ratio=cfg.max_compression_ratio,
    )
    work = functools.partial(_inspect_chunk, Path(archive_path), settings)
    rows = map_chunks(work, names, worker_count(cfg.workers), progress)
    return pd.DataFrame([asdict(row) for row in rows], columns=list(Row.__dataclass_fields__))


def summarize(manifest: pd.DataFrame) -> dict[str, Any]:
    """Counts a person reads first: totals, per class, per quarantine reason, formats, sizes."""
    ok = manifest[manifest["status"] == "ok"]
    quarantined = manifest[manifest["status"] == "quarantined"]
    reason_kinds = quarantined["reason"].str.replace(r"\s*\(.*$", "", regex=True)
    return {
        "members": len(manifest),
        "ok": len(ok),
        "quarantined": len(quarantined),
        "ok_per_class": {str(k): int(v) for k, v in ok["label"].value_counts().sort_index().items()},
        "quarantined_per_reason": {str(k): int(v) for k, v in reason_kinds.value_counts().sort_index().items()},
        "formats": {str(k): int(v) for k, v in ok["format"].value_counts().sort_index().items()},
        "unique_sha256": int(ok["sha256"].nunique()),
        "width": _quantiles(ok["width"]),
        "height": _quantiles(ok["height"]),
    }


def _quantiles(column: pd.Series) -> dict[str, int]:
    if column.empty:
        return {}
    points = column.quantile([0.0, 0.5, 1.0]).round().astype(int).tolist()
    return {"min": points[0], "median": points[1], "max": points[2]}


def run_ingest(
    archive_path: Path,
    out_dir: Path,
    cfg: IngestConfig,
    labels: str,
    classes: Sequence[str],
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """The ingest stage: write ``images.parquet`` and ``report.json`` into ``out_dir``.

    Raises:
        DataError: the manifest fails validation (the report lists every failure) or has no usable image.
    """
    from cvpipe.schemas import validate_manifest  # pandera is slow to import; only stages that validate pay

    started = time.monotonic()
    manifest = build_manifest(archive_path, cfg, labels, classes, progress)
    summary = summarize(manifest)
    failures = validate_manifest(manifest, classes, cfg.min_side)
    quarantine = manifest.loc[manifest["status"] == "quarantined", ["member", "reason"]]
    report = {
        "summary": summary,
        "quarantine": quarantine.to_dict(orient="records"),
        "schema_failures": failures,
        "params": {"labels": labels, "classes": list(classes), **cfg.model_dump(exclude={"workers"})},
    }
    out_dir = Path(out_dir)
    write_json_atomic(out_dir / REPORT_NAME, report)
    if failures:
        raise DataError(
            f"manifest failed validation with {len(failures)} problem(s), e.g. {failures[0]}; "
            f"see {out_dir / REPORT_NAME}"
        )
    if summary["ok"] == 0:
        raise DataError(
            f"{archive_path}: no usable image among {summary['members']} members; see {out_dir / REPORT_NAME}"
        )
    write_parquet(manifest, out_dir / MANIFEST_NAME)
    log.info(
        "ingest: %d members, %d ok, %d quarantined in %.1f s",
        summary["members"], summary["ok"], summary["quarantined"], time.monotonic() - started,
    )
    return summary
