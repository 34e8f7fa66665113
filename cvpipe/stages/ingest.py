"""The ingest stage: one manifest row per archive member, read in place, never extracted.

Every file member of the raw archive gets a row: usable images with ``status = ok`` and their content hash,
size, mode, format and perceptual hashes; everything else with ``status = quarantined`` and a reason
(undecodable, empty, not an image, no label, unknown class, too small, decompression bomb, zip bomb, unsafe
path, archive debris, bad CRC, animated). Nothing is silently dropped. The manifest is validated with
pandera before it is written; a failed validation writes the failure table into the report and writes no
manifest.

The archive's central directory is parsed once (:func:`cvpipe.imaging.archive.scan_archive`) and each worker reads
its members by offset (:func:`cvpipe.imaging.archive.read_member`), rather than every chunk opening a
``zipfile.ZipFile``, whose listing costs memory and time per entry each time (figures: ``docs/performance.md``).
Whatever is not an ordinary stored or deflated member is still read, and judged, by :mod:`zipfile` itself.
The pool is started before the archive is listed, so that its (forked) workers do not carry the listing.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import math
import re
import stat
import time
import unicodedata
import zipfile
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import asdict, dataclass, fields
from pathlib import Path, PurePosixPath

import pandas as pd
import pyarrow as pa
from PIL import Image

from cvpipe import layout
from cvpipe.config import IngestConfig, Params
from cvpipe.errors import DataError, SourceError
from cvpipe.imaging.archive import ArchiveReader, Member, MemberTable, data_overruns, scan_archive
from cvpipe.imaging.hashes import decode_for_hash, fourier_hash_pair, hash_pair, load_hashers
from cvpipe.imaging.images import (
    MAX_JPEG_SCANS,
    STILL_MULTIFRAME_FORMATS,
    jpeg_scans,
    open_image,
    pixel_limit,
)
from cvpipe.io import sha256_bytes, system_memory_pool, write_json_atomic, write_parquet
from cvpipe.parallel import chunked, map_chunks, start_pool, worker_count

log = logging.getLogger(__name__)

_DEBRIS_NAMES = {"thumbs.db", ".ds_store", "desktop.ini"}
# What reading a member may raise (zipfile's errors included: unusual members are read by zipfile). An
# encrypted member (RuntimeError) or a corrupt deflate stream (zlib.error) used to stop the whole stage.
_READ_ERRORS = (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError, zlib.error)
# Members judged per pool round, at most (see _judge), in small chunks: a worker left idle at the end of a
# round waits for one small chunk only.
_BATCH = 4096
_CHUNKS_PER_WORKER = 16
_BOMB_ERRORS = (Image.DecompressionBombError, Image.DecompressionBombWarning)
_FILE_SIZE = Member._fields.index("file_size") - 1  # its column in a MemberTable's numbers
_PIXELS = re.compile(r"\((\d+) pixels\)")


@dataclass(frozen=True)
class Settings:
    """What a worker needs to judge one member (picklable)."""

    labels: str
    classes: tuple[str, ...]
    max_bytes: int
    max_pixels: int
    min_side: int
    max_compression_ratio: float


@dataclass(slots=True)
class Row:
    """One manifest row. Empty strings and zeros stand for 'not known' (e.g. for unreadable members).

    Slotted (no per-row ``__dict__``): rows travel from the workers and wait in the main process by the
    thousand.
    """

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
    fourier: str = ""
    fourier_flip: str = ""
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
    # Windows archivers (PowerShell 5's Compress-Archive) write ``PetImages\\Cat\\0.jpg``.
    path = PurePosixPath(member.replace("\\", "/"))
    if scheme == "folder":
        label = path.parent.name if len(path.parts) > 1 else ""
    else:
        stem_parts = path.name.split(".")
        label = stem_parts[0] if len(stem_parts) >= 3 else ""
    # NFC: a macOS archiver writes names decomposed (NFD, ``Lo\u0308we``), params are typed composed.
    return unicodedata.normalize("NFC", label).lower()


def _unsafe_reason(member: Member) -> str:
    name = member.name
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in parts:
        return "unsafe member path (absolute or '..'); never extracted"
    if stat.S_ISLNK(member.external_attr >> 16):
        return "symbolic link member; not followed"
    return ""


def _debris_reason(member: str) -> str:
    path = PurePosixPath(member.replace("\\", "/"))
    if (path.parts and path.parts[0] == "__MACOSX") or path.name.startswith("._") or path.name.lower() in _DEBRIS_NAMES:
        return "archive debris (__MACOSX, resource fork, Thumbs.db, .DS_Store)"
    return ""


def _precheck(member: Member, settings: Settings) -> str:
    """A reason to quarantine the member without reading it, or ''."""
    if not member.name.strip("/"):
        return "member with an empty name"
    if member.name.endswith("/"):
        return f"directory entry carrying {member.file_size} bytes of data; never read"
    reason = _unsafe_reason(member) or _debris_reason(member.name)
    if reason:
        return reason
    if member.file_size > settings.max_bytes:
        return f"file of {member.file_size} bytes exceeds ingest.max_bytes={settings.max_bytes}"
    if member.compress_size > settings.max_bytes:  # a stored member declaring 1 kB can hold 300 MB
        return f"compressed data of {member.compress_size} bytes exceeds ingest.max_bytes={settings.max_bytes}"
    if member.compress_size and member.file_size / member.compress_size > settings.max_compression_ratio:
        return f"compression ratio {member.file_size / member.compress_size:.0f}:1 looks like a zip bomb"
    return ""


def _bomb_reason(error: Exception, settings: Settings) -> str:
    found = _PIXELS.search(str(error))
    size = f"an image or frame of {found.group(1)} pixels" if found else "an image or frame"
    return f"{size} exceeds ingest.max_pixels={settings.max_pixels} (decompression bomb?)"


def _describe_image(row: Row, data: bytes, settings: Settings) -> Row:
    try:
        image = open_image(data)
        row.width, row.height = image.size
        row.mode, row.format = image.mode, image.format or ""
    except _BOMB_ERRORS as error:  # Pillow's own check, on a frame a container decoded at open
        return row.quarantine(_bomb_reason(error, settings))
    except Exception as error:
        return row.quarantine(f"not a decodable image ({type(error).__name__})")
    if row.width * row.height > settings.max_pixels:
        return row.quarantine(
            f"declared size {row.width}x{row.height} exceeds ingest.max_pixels={settings.max_pixels} "
            "(decompression bomb?)"
        )
    if min(row.width, row.height) < settings.min_side:
        return row.quarantine(f"{row.width}x{row.height} is smaller than ingest.min_side={settings.min_side}")
    if getattr(image, "n_frames", 1) > 1 and row.format not in STILL_MULTIFRAME_FORMATS:
        return row.quarantine(f"animated image with {image.n_frames} frames")
    if row.format in ("JPEG", "MPO"):
        scans = jpeg_scans(data)
        if scans > MAX_JPEG_SCANS:
            return row.quarantine(f"JPEG with more than {MAX_JPEG_SCANS} scans (a scan bomb: each costs a full pass)")
    try:
        upright = decode_for_hash(data)
    except _BOMB_ERRORS as error:
        return row.quarantine(_bomb_reason(error, settings))
    except Exception as error:
        return row.quarantine(f"image data does not decode ({type(error).__name__}: {error})"[:200])
    row.phash, row.phash_flip = hash_pair(upright)
    row.fourier, row.fourier_flip = fourier_hash_pair(upright)
    return row


def _label(row: Row, settings: Settings) -> Row:
    label = label_of(row.member, settings.labels)
    if not label:
        return row.quarantine(f"no class label in the name (data.labels={settings.labels})")
    known = [unicodedata.normalize("NFC", name) for name in settings.classes]
    if label not in known:
        return row.quarantine(f"unknown class '{label}' (data.classes={list(settings.classes)})")
    row.label_index = known.index(label)
    row.label = settings.classes[row.label_index]  # as params spell it: the split and schema match on it
    return row


def inspect_member(reader: ArchiveReader, member: Member, settings: Settings) -> Row:
    """Judge one archive member and return its manifest row.

    Args:
        reader: the archive, open for reading.
        member: the member, from :func:`archive_members`.
        settings: the limits and labels to judge by.
    """
    row = Row(member=member.name, bytes=member.file_size)
    reason = _precheck(member, settings)
    if reason:
        return row.quarantine(reason)
    if data_overruns(reader.fd, member):
        return row.quarantine("data overlaps the next entry (overlapping-entry zip bomb); never inflated")
    try:
        data = reader.read(member)
    except _READ_ERRORS as error:
        return row.quarantine(f"member cannot be read from the archive ({type(error).__name__}: {error})"[:200])
    row.sha256 = sha256_bytes(data)
    if not data:
        return row.quarantine("empty file (0 bytes)")
    row = _describe_image(row, data, settings)
    if row.status != "ok":
        return row
    return _label(row, settings)


def _inspect_chunk(archive_path: Path, settings: Settings, members: Sequence[Member]) -> list[Row]:
    # Pillow's own bomb check at ingest.max_pixels, for every frame of every container it opens.
    with ArchiveReader(archive_path) as reader, pixel_limit(settings.max_pixels):
        return [inspect_member(reader, member, settings) for member in members]


def archive_members(archive_path: Path) -> MemberTable:
    """File members of the archive (directories are not members), sorted by name.

    Raises:
        SourceError: the file is not a readable zip archive, or a name occurs twice.
    """
    try:
        entries = scan_archive(archive_path)
    except (zipfile.BadZipFile, OSError) as error:
        raise SourceError(f"{archive_path}: not a readable zip archive ({error}); rerun the download stage") from None
    names = entries.names
    # Directory entries are not members (as ZipInfo.is_dir), unless they carry data: those get a row.
    files = [
        index for index, name in enumerate(names) if not name.endswith("/") or entries.numbers[index, _FILE_SIZE] > 0
    ]
    duplicates = [name for name, count in collections.Counter(names[index] for index in files).items() if count > 1]
    if duplicates:
        raise SourceError(
            f"{archive_path}: member names occur more than once ({duplicates[:3]}); the archive is ambiguous, "
            "rebuild it without duplicate names"
        )
    return entries.take(sorted(files, key=names.__getitem__))


def list_members(archive_path: Path) -> list[str]:
    """Names of the archive's file members, sorted (see :func:`archive_members`).

    Raises:
        SourceError: the file is not a readable zip archive, or a name occurs twice.
    """
    return archive_members(archive_path).names


def _frame(rows: Sequence[Row]) -> pd.DataFrame:
    """The manifest of ``rows``, column by column (a dict per row would double the rows' memory)."""
    columns = [field.name for field in fields(Row)]
    if not rows:
        return pd.DataFrame([], columns=columns)
    return pd.DataFrame({name: [getattr(row, name) for row in rows] for name in columns}, columns=columns)


def _judge(
    work: Callable[[Sequence[Member]], list[Row]],
    members: MemberTable,
    workers: int,
    progress: Callable[[int], None] | None,
    pool: Executor | None,
) -> list[pa.RecordBatch]:
    """Judge ``members`` batch by batch; return their manifest rows as Arrow record batches.

    Each batch is turned into Arrow columns (a few times smaller than rows as Python objects) as it comes
    back, so the main process holds at most one batch of rows.
    Batches are of even size, so that none is small enough for :func:`map_chunks` to run it in-process.
    """
    batches = []
    for start, stop in chunked(len(members), math.ceil(len(members) / _BATCH)):
        rows = map_chunks(work, members[start:stop], workers, progress, _CHUNKS_PER_WORKER, pool=pool)
        batches.append(pa.RecordBatch.from_pandas(_frame(rows), preserve_index=False))
    return batches


def build_manifest(
    archive_path: Path,
    cfg: IngestConfig,
    labels: str,
    classes: Sequence[str],
    progress: Callable[[int], None] | None = None,
) -> pd.DataFrame:
    """Inspect every member of the archive (in parallel) and return the manifest, sorted by member."""
    settings = Settings(
        labels=labels,
        classes=tuple(classes),
        max_bytes=cfg.max_bytes,
        max_pixels=cfg.max_pixels,
        min_side=cfg.min_side,
        max_compression_ratio=cfg.max_compression_ratio,
    )
    work = functools.partial(_inspect_chunk, Path(archive_path), settings)
    workers = worker_count(cfg.workers)
    load_hashers()  # before the pool forks: its workers then share the import
    pool = start_pool(workers)  # before the listing: forked workers then do not hold a copy of it
    with pool if pool is not None else contextlib.nullcontext():
        batches = _judge(work, archive_members(archive_path), workers, progress, pool)
    if not batches:
        return _frame([])
    # One contiguous table: the frame (and the parquet written from it) is the one built from all rows at once.
    return pa.Table.from_batches(batches).combine_chunks().to_pandas(use_threads=False)


@dataclass(frozen=True)
class IngestSummary:
    """Counts a person reads first: totals, per class, per quarantine reason, formats, sizes.

    The report's ``summary`` and the lineage record hold these fields; OpenLineage facets read them.
    """

    members: int
    ok: int
    quarantined: int
    ok_per_class: dict[str, int]
    quarantined_per_reason: dict[str, int]
    formats: dict[str, int]
    unique_sha256: int
    width: dict[str, int]
    height: dict[str, int]


@dataclass(frozen=True)
class IngestPaths:
    """What the ingest stage reads and where it writes (defaults: :mod:`cvpipe.layout`)."""

    archive: Path = layout.ARCHIVE
    out: Path = layout.MANIFEST_DIR

    @property
    def manifest(self) -> Path:
        """The manifest, ``<out>/images.parquet``."""
        return Path(self.out) / layout.MANIFEST_NAME

    @property
    def report(self) -> Path:
        """The validation report, ``<out>/report.json``."""
        return Path(self.out) / layout.REPORT_NAME


def summarize(manifest: pd.DataFrame) -> IngestSummary:
    """Count the manifest's members: totals, per class, per quarantine reason, formats, sizes."""
    # Only the columns counted here are copied: the manifest is the largest thing the stage holds.
    ok = manifest.loc[manifest["status"] == "ok", ["label", "format", "sha256", "width", "height"]]
    reasons = manifest.loc[manifest["status"] == "quarantined", "reason"]
    reason_kinds = reasons.str.replace(r"\s*\(.*$", "", regex=True)
    return IngestSummary(
        members=len(manifest),
        ok=len(ok),
        quarantined=len(reasons),
        ok_per_class={str(k): int(v) for k, v in ok["label"].value_counts().sort_index().items()},
        quarantined_per_reason={str(k): int(v) for k, v in reason_kinds.value_counts().sort_index().items()},
        formats={str(k): int(v) for k, v in ok["format"].value_counts().sort_index().items()},
        # A set of the strings: pandas' nunique on Arrow strings took ~10 MB at 25,000 rows, a set ~2 MB.
        unique_sha256=len(set(ok["sha256"])),
        width=_quantiles(ok["width"]),
        height=_quantiles(ok["height"]),
    )


def _likely_fix(manifest: pd.DataFrame, labels: str, classes: Sequence[str]) -> str:
    """What would most likely give usable images, as a clause for the no-usable-image error ('' if unknown)."""
    members = manifest["member"].tolist()
    nested = [member for member in members if PurePosixPath(member.replace("\\", "/")).name.lower() == "train.zip"]
    if nested:
        return f" (it holds {nested[0]}, an archive: point data.path at that archive, extracted)"
    other = "filename" if labels == "folder" else "folder"
    relabelled = sum(label_of(member, other) in classes for member in members)
    if relabelled:
        return f" ({relabelled} member(s) would carry a class with data.labels: {other}; set it)"
    return ""


def _quantiles(column: pd.Series) -> dict[str, int]:
    if column.empty:
        return {}
    points = column.quantile([0.0, 0.5, 1.0]).round().astype(int).tolist()
    return {"min": points[0], "median": points[1], "max": points[2]}


def run(
    params: Params, paths: IngestPaths = IngestPaths(), progress: Callable[[int], None] | None = None
) -> IngestSummary:
    """The ingest stage: write the manifest and its validation report (``paths.manifest``, ``paths.report``).

    Args:
        params: the pipeline's params; the stage reads ``data.labels``, ``data.classes`` and ``ingest.*``.
        paths: the archive to read and the folder to write.
        progress: called with the number of members judged, as they are.

    Raises:
        DataError: the manifest fails validation (the report lists every failure) or has no usable image.
    """
    from cvpipe.schemas import validate_manifest  # pandera is slow to import; only stages that validate pay

    cfg, labels, classes = params.ingest, params.data.labels, params.data.classes
    started = time.monotonic()
    # The manifest's Arrow columns and pandas' Arrow strings from malloc, not mimalloc (see system_memory_pool):
    # ~10 MB less for the stage's processes together, at 5,000 and at 25,000 images.
    with system_memory_pool():
        manifest = build_manifest(paths.archive, cfg, labels, classes, progress)
        summary = summarize(manifest)
        failures = validate_manifest(manifest, classes, cfg.min_side)
        quarantine = manifest.loc[manifest["status"] == "quarantined", ["member", "reason"]]
        report = {
            "summary": asdict(summary),
            "quarantine": quarantine.to_dict(orient="records"),
            "schema_failures": failures,
            "params": {"labels": labels, "classes": list(classes), **cfg.model_dump(exclude={"workers"})},
        }
        write_json_atomic(paths.report, report)
        # No usable image first: an empty manifest also fails the schema, but that would hide the real problem.
        if summary.ok == 0:
            raise DataError(
                f"{paths.archive}: no usable image among {summary.members} members"
                f"{_likely_fix(manifest, labels, classes)}; see {paths.report}"
            )
        if failures:
            raise DataError(
                f"manifest failed validation with {len(failures)} problem(s), e.g. {failures[0]}; see {paths.report}"
            )
        write_parquet(manifest, paths.manifest)
    log.info(
        "ingest: %d members, %d ok, %d quarantined in %.1f s",
        summary.members,
        summary.ok,
        summary.quarantined,
        time.monotonic() - started,
    )
    return summary
