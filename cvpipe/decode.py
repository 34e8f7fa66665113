"""The decode stage: each split's images, decoded once, as one uint8 ``N x S x S x 3`` .npy (memmap-able).

Images are read straight from the raw archive in the split table's order and decoded in a process pool
(:func:`cvpipe.images.load_rgb`: one resize policy). The archive's central directory is parsed once, here;
workers get each member's location and read it with positioned reads (CRC checked) rather than every chunk
parsing the directory again (25,000 entries: ~30 MB of ``ZipInfo`` and ~0.1 s each time). Each worker
decodes a contiguous range of rows into a buffer of at most ``_CHUNK_BYTES`` and writes it with one
positioned write into the output file, which is renamed into place only once every row is written. Writing
through the file rather than a memory map keeps each process's resident memory flat however many images a
split has (dirty pages of a shared mapping count as the writer's resident memory until it is unmapped).
Labels go to ``<split>_labels.npy`` (int32) in the same order. Training then reads these arrays instead of
re-decoding JPEGs every epoch.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cvpipe.archive import Member, locate_members, read_member
from cvpipe.config import SPLITS, ImageConfig
from cvpipe.errors import DataError
from cvpipe.images import load_decoders, load_rgb
from cvpipe.io import atomic_path, write_json_atomic
from cvpipe.parallel import map_chunks, start_pool, worker_count

log = logging.getLogger(__name__)

META_NAME = "images.json"
RESIZE_POLICY = (
    "JPEG DCT-domain downscale to the smallest power-of-two scale >= size (libjpeg-turbo, as Pillow's draft), "
    "EXIF transpose, RGB, squash with OpenCV INTER_LINEAR_EXACT (bilinear, half-pixel centres)"
)
# A worker's chunk: at most this many rows and bytes of output buffer (16 MiB = 172 rows at 180 px), however
# large the split, so that a worker's memory does not grow with it; ~100 chunks for 25,000 images is cheap.
_CHUNK_ROWS = 256
_CHUNK_BYTES = 16 << 20


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


def _decode_rows(
    archive_path: Path, array_path: Path, data_offset: int, size: int, jobs: Sequence[tuple[int, Member]]
) -> list[int]:
    """Decode ``(row, member)`` jobs, a contiguous range of rows, into the .npy at ``array_path``.

    Args:
        archive_path: the raw archive.
        array_path: the (temporary) output .npy, already of full size.
        data_offset: where its array data starts (after the .npy header).
        size: the side of the decoded images.
        jobs: consecutive rows and their archive members.

    Returns:
        The rows written.
    """
    rows = [row for row, _ in jobs]
    if rows != list(range(rows[0], rows[0] + len(rows))):
        raise ValueError("decode jobs must be a contiguous range of rows")  # map_chunks hands out ranges
    buffer = _chunk_buffer(len(jobs), size)
    archive = os.open(archive_path, os.O_RDONLY)
    try:
        for index, (_, member) in enumerate(jobs):
            try:
                load_rgb(read_member(archive, member, archive_path), size, out=buffer[index])
            except Exception as error:
                raise DataError(
                    f"{member.name}: passed ingest but failed to decode ({type(error).__name__}: {error}); "
                    "rerun ingest (dvc repro -f ingest) and report this file"
                ) from None
    finally:
        os.close(archive)
    fd = os.open(array_path, os.O_WRONLY)
    try:
        _write_at(fd, memoryview(buffer).cast("B"), data_offset + rows[0] * buffer[0].nbytes)
    finally:
        os.close(fd)
    return rows


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
        jobs = list(enumerate(locate_members(archive_path, members)))
        map_chunks(work, jobs, worker_count(cfg.workers), progress, max_chunk=max_rows, pool=pool)


def read_splits(splits_path: Path) -> dict[str, tuple[list[str], list[int]]]:
    """Read the split table as, per split, its members and label indices in row order.

    Plain lists from pyarrow's system-allocator pool, without threads and without pandas: at 25,000 rows
    that is ~4 MB, where a DataFrame and its filtered copies kept ~20 MB more resident (pyarrow's mimalloc
    pool and per-thread arenas hold on to what they touched).
    """
    previous = pa.default_memory_pool()
    pa.set_memory_pool(pa.system_memory_pool())  # read_table takes no pool: swap the default for this read
    try:
        table = pq.read_table(splits_path, columns=["split", "row", "member", "label_index"], use_threads=False)
        columns = {name: table.column(name).to_pylist() for name in table.column_names}
        del table
    finally:
        pa.set_memory_pool(previous)
    order = sorted(range(len(columns["row"])), key=lambda index: (columns["split"][index], columns["row"][index]))
    splits: dict[str, tuple[list[str], list[int]]] = {name: ([], []) for name in SPLITS}
    for index in order:
        members, labels = splits.setdefault(columns["split"][index], ([], []))
        members.append(columns["member"][index])
        labels.append(int(columns["label_index"][index]))
    return splits


def run_decode(
    archive_path: Path,
    splits_path: Path,
    out_dir: Path,
    cfg: ImageConfig,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """The decode stage: ``<split>.npy`` and ``<split>_labels.npy`` for every split, plus ``images.json``.

    One pool of workers serves every split. It is started before the split table is read, so the workers
    (forked) do not carry a copy of it: their memory does not depend on how many images there are.
    """
    out_dir = Path(out_dir)
    summary: dict[str, Any] = {"size": cfg.size, "resize": RESIZE_POLICY, "splits": {}}
    started = time.monotonic()
    load_decoders()
    pool = start_pool(worker_count(cfg.workers))
    with pool if pool is not None else contextlib.nullcontext():
        splits = read_splits(splits_path)
        total = sum(len(members) for members, _ in splits.values())
        for name in SPLITS:
            members, labels = splits.pop(name)
            decode_split(archive_path, members, out_dir / f"{name}.npy", cfg, progress, pool)
            with atomic_path(out_dir / f"{name}_labels.npy") as tmp, open(tmp, "wb") as handle:
                np.save(handle, np.asarray(labels, dtype=np.int32))
            summary["splits"][name] = {"images": len(members), "shape": [len(members), cfg.size, cfg.size, 3]}
    seconds = time.monotonic() - started
    write_json_atomic(out_dir / META_NAME, summary)
    log.info("decode: %d images in %.1f s (%.0f images/s)", total, seconds, total / seconds if seconds else 0.0)
    return {**summary, "seconds": round(seconds, 3)}
