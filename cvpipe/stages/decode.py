"""The decode stage: each split's images, decoded once, as one uint8 ``N x S x S x 3`` .npy (memmap-able).

Images are read straight from the raw archive in the split table's order and decoded in a process pool
(:func:`cvpipe.imaging.images.load_rgb`: one resize policy). The archive's central directory is parsed once per split
by :func:`cvpipe.imaging.archive.locate_members`, into a table stored by column (NumPy offsets, sizes and CRCs);
workers are sent row ranges of it and read their members with positioned reads (CRC checked), rather than every
chunk parsing the directory again into ``ZipInfo`` objects. Each worker decodes a contiguous range of rows (at most
``_CHUNK_BYTES`` of output) into a reused buffer and writes it ``_WRITE_BYTES`` at a time with positioned writes
into the output file, which is renamed into place only once every row is written. Writing through the file
rather than a memory map keeps each process's resident memory flat however many images a split has (dirty pages
of a shared mapping count as the writer's resident memory until it is unmapped). Labels go to
``<split>_labels.npy`` (int32) in the same order. Training then reads these arrays instead of re-decoding JPEGs
every epoch. The memory and time figures behind these choices are in ``docs/performance.md``.

What the main process holds grows with the number of images, so it is kept small: the split table is read
with the system allocator into Arrow columns (one string buffer, not a Python string per member) and a
split's names become Python strings only while that split is decoded.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cvpipe import layout
from cvpipe.config import SPLITS, ImageConfig, Params
from cvpipe.errors import DataError
from cvpipe.imaging.archive import ArchiveReader, Member, MemberTable, locate_members
from cvpipe.imaging.images import load_decoders, load_rgb
from cvpipe.io import atomic_path, system_memory_pool, write_json_atomic, write_npy_atomic
from cvpipe.parallel import map_chunks, start_pool, worker_count

log = logging.getLogger(__name__)

RESIZE_POLICY = (
    "JPEG DCT-domain downscale to the smallest power-of-two scale >= size (libjpeg-turbo, as Pillow's draft), "
    "EXIF transpose, RGB, squash with OpenCV INTER_LINEAR_EXACT (bilinear, half-pixel centres)"
)
# A worker's chunk: at most this many rows and bytes of output buffer (16 MiB = 172 rows at 180 px), however
# large the split, so that a worker's memory does not grow with it; ~100 chunks for 25,000 images is cheap.
_CHUNK_ROWS = 256
_CHUNK_BYTES = 16 << 20
# A worker writes its rows this many bytes at a time (21 rows at 180 px), from a buffer that fits in L2.
_WRITE_BYTES = 2 << 20


@dataclass(frozen=True)
class DecodeSummary:
    """What the decode stage cached: the side, the resize policy, per split its image count and shape.

    ``images.json`` holds every field but ``seconds`` (a time would make the cache's folder change each run).
    """

    size: int
    resize: str
    splits: dict[str, dict[str, Any]]
    seconds: float


@dataclass(frozen=True)
class DecodePaths:
    """What the decode stage reads and where it writes (defaults: :mod:`cvpipe.layout`)."""

    archive: Path = layout.ARCHIVE
    splits: Path = layout.SPLITS
    out: Path = layout.IMAGES_CACHE

    def images(self, split: str) -> Path:
        """One split's images, ``<out>/<split>.npy``."""
        return layout.split_file(self.out, split)

    def labels(self, split: str) -> Path:
        """One split's labels, ``<out>/<split>_labels.npy``."""
        return layout.labels_file(self.out, split)

    @property
    def meta(self) -> Path:
        """What was cached, ``<out>/images.json``."""
        return Path(self.out) / layout.IMAGES_META_NAME


def _write_at(fd: int, data: memoryview, offset: int) -> None:
    """Write all of ``data`` at ``offset`` (``os.pwrite`` may write less than asked)."""
    while data:
        written = os.pwrite(fd, data, offset)
        data, offset = data[written:], offset + written


_buffers: dict[int, np.ndarray] = {}


def _chunk_buffer(rows: int, size: int) -> np.ndarray:
    """A ``rows x size x size x 3`` view of this worker's output buffer, reused from chunk to chunk.

    Fresh memory for every chunk would be paid again in page faults and zeroing (~15% of the stage's CPU).
    """
    buffer = _buffers.get(size)
    if buffer is None or len(buffer) < rows:
        buffer = _buffers[size] = np.empty((rows, size, size, 3), dtype=np.uint8)
    return buffer[:rows]


class _Rows(Sequence[Member]):
    """Consecutive rows of a split's output, from row ``start``, and their members: a worker's job.

    Sliced (as :func:`cvpipe.parallel.map_chunks` hands out chunks) into views, so that every chunk of a
    split can be queued at once without a copy of its members; only a chunk being pickled is copied.
    """

    def __init__(self, start: int, members: MemberTable) -> None:
        """Rows ``start``, ``start + 1``, ... for ``members``, in order."""
        self.start = start
        self.members = members

    def __len__(self) -> int:
        return len(self.members)

    @overload
    def __getitem__(self, index: int) -> Member: ...

    @overload
    def __getitem__(self, index: slice) -> _Rows: ...

    def __getitem__(self, index: int | slice) -> Member | _Rows:
        if not isinstance(index, slice):
            return self.members[index]
        begin, end, step = index.indices(len(self))
        if step != 1:
            raise ValueError("decode jobs are contiguous ranges of rows")  # one positioned write per job
        return _Rows(self.start + begin, self.members.rows(begin, end))


def _decode_rows(archive_path: Path, array_path: Path, data_offset: int, size: int, jobs: _Rows) -> list[int]:
    """Decode ``jobs``, a contiguous range of rows, into the .npy at ``array_path``.

    Rows are written ``_WRITE_BYTES`` at a time: the buffer is then still in the CPU's cache when the kernel
    copies it into the file, and a worker's buffer stays small however large its chunk.

    Args:
        archive_path: the raw archive.
        array_path: the (temporary) output .npy, already of full size.
        data_offset: where its array data starts (after the .npy header).
        size: the side of the decoded images.
        jobs: consecutive rows and their archive members.

    Returns:
        The rows written.
    """
    row_bytes = size * size * 3
    buffer = _chunk_buffer(max(1, min(len(jobs), _WRITE_BYTES // row_bytes)), size)
    fd = os.open(array_path, os.O_WRONLY)
    try:
        with ArchiveReader(archive_path) as archive:  # one ZipFile per chunk for members off the fast path
            filled, first = 0, jobs.start
            for index, member in enumerate(jobs.members):
                try:
                    load_rgb(archive.read(member), size, out=buffer[filled])
                except Exception as error:
                    raise DataError(
                        f"{member.name}: passed ingest but failed to decode ({type(error).__name__}: {error}); "
                        "rerun ingest (dvc repro -f ingest) and report this file"
                    ) from None
                filled += 1
                if filled == len(buffer) or index == len(jobs) - 1:
                    _write_at(fd, memoryview(buffer[:filled]).cast("B"), data_offset + first * row_bytes)
                    first, filled = first + filled, 0
    finally:
        os.close(fd)
    return list(range(jobs.start, jobs.start + len(jobs)))


def decode_split(
    archive_path: Path,
    members: Sequence[str],
    out_path: Path,
    cfg: ImageConfig,
    progress: Callable[[int], None] | None = None,
    pool: Executor | None = None,
) -> None:
    """Decode ``members`` into ``out_path`` (N x size x size x 3 uint8), atomically.

    ``pool``: a running process pool to decode in (see :func:`cvpipe.parallel.start_pool`); by default one of
    ``cfg.workers`` processes is started for this call.
    """
    shape = (len(members), cfg.size, cfg.size, 3)
    with atomic_path(out_path) as tmp:
        # Writes the header and sizes the file (sparse until the workers fill it); only the offset is kept.
        header = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        data_offset = int(header.offset)
        del header
        work = functools.partial(_decode_rows, Path(archive_path), tmp, data_offset, cfg.size)
        max_rows = max(1, min(_CHUNK_ROWS, _CHUNK_BYTES // (cfg.size * cfg.size * 3)))
        load_decoders()
        jobs = _Rows(0, locate_members(archive_path, members))
        # 16 chunks a worker (~60 rows for 2,000 images): the last chunk, run while the other workers may already
        # be idle, is then half as long; handing out a chunk costs ~0.1-0.2 ms of CPU.
        workers = worker_count(cfg.workers)
        map_chunks(work, jobs, workers, progress, chunks_per_worker=16, max_chunk=max_rows, pool=pool)


@contextlib.contextmanager
def _readable_splits(splits_path: Path) -> Iterator[None]:
    """Turn pyarrow's error for a truncated or corrupt split table into one line naming it and the fix."""
    try:
        yield
    except pa.ArrowInvalid as error:
        raise DataError(
            f"{splits_path}: not a readable parquet file ({error}); rerun the split stage (dvc repro -f split)"
        ) from None


def count_images(splits_path: Path) -> int:
    """How many rows the split table has (what the stage decodes), from the parquet footer: no column is read.

    Raises:
        DataError: the file is truncated or not parquet.
    """
    with _readable_splits(splits_path):
        return int(pq.read_metadata(splits_path).num_rows)


def read_splits(splits_path: Path) -> dict[str, tuple[pa.ChunkedArray, np.ndarray]]:
    """Read the split table as, per split, its member names (Arrow strings) and int32 label indices in row order.

    Arrow columns from the system allocator, without threads, pandas or Python objects per row, so that
    the stage's resident memory barely grows with the number of rows. Rows of other splits than
    :data:`~cvpipe.config.SPLITS` are left out.
    """
    with system_memory_pool(), _readable_splits(splits_path):
        table = pq.read_table(splits_path, columns=["split", "row", "member", "label_index"], use_threads=False)
        splits: dict[str, tuple[pa.ChunkedArray, np.ndarray]] = {}
        for name in SPLITS:
            # A stable sort: rows that share a number keep the table's order.
            rows = table.filter(pc.equal(table["split"], name)).sort_by("row")
            splits[name] = (rows["member"], rows["label_index"].to_numpy().astype(np.int32))
        return splits


def run(
    params: Params, paths: DecodePaths = DecodePaths(), progress: Callable[[int], None] | None = None
) -> DecodeSummary:
    """The decode stage: ``<split>.npy`` and ``<split>_labels.npy`` for every split, plus ``images.json``.

    One pool of workers serves every split. It is started before the split table is read, so the workers
    (forked) do not carry a copy of it: their memory does not depend on how many images there are. A caller
    that wants the number of images first (a progress bar) should use :func:`count_images`: whatever reading
    the table leaves resident in the caller is inherited by every worker.

    Args:
        params: the pipeline's params; the stage reads ``image.*``.
        paths: the archive and split table to read, and the cache folder to write.
        progress: called with the number of images decoded, as they are.
    """
    cfg = params.image
    meta: dict[str, Any] = {"size": cfg.size, "resize": RESIZE_POLICY, "splits": {}}
    started = time.monotonic()
    load_decoders()
    pool = start_pool(worker_count(cfg.workers))
    with pool if pool is not None else contextlib.nullcontext():
        splits = read_splits(paths.splits)
        total = sum(len(members) for members, _ in splits.values())
        for name in SPLITS:
            members, labels = splits.pop(name)
            # Python strings for this split only, freed when it is done.
            decode_split(paths.archive, members.to_pylist(), paths.images(name), cfg, progress, pool)
            write_npy_atomic(paths.labels(name), labels)
            meta["splits"][name] = {"images": len(members), "shape": [len(members), cfg.size, cfg.size, 3]}
    seconds = time.monotonic() - started
    write_json_atomic(paths.meta, meta)
    log.info("decode: %d images in %.1f s (%.0f images/s)", total, seconds, total / seconds if seconds else 0.0)
    return DecodeSummary(size=cfg.size, resize=RESIZE_POLICY, splits=meta["splits"], seconds=round(seconds, 3))
