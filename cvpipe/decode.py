"""The decode stage: each split's images, decoded once, as one uint8 ``N x S x S x 3`` .npy (memmap-able).

Images are read straight from the raw archive in the split table's order, decoded in a process pool (each
worker writes its rows into the same memory-mapped file), and the file is renamed into place only once
every row is written. Labels go to ``<split>_labels.npy`` (int32) in the same order. Training then reads
these arrays instead of re-decoding JPEGs every epoch.
"""

from __future__ import annotations

import functools
import logging
import time
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cvpipe.config import SPLITS, ImageConfig
from cvpipe.errors import DataError
from cvpipe.images import load_rgb
from cvpipe.io import atomic_path, write_json_atomic
from cvpipe.parallel import map_chunks, worker_count

log = logging.getLogger(__name__)

META_NAME = "images.json"
RESIZE_POLICY = "Pillow: JPEG draft (DCT scale >= size), EXIF transpose, RGB, squash with antialiased BILINEAR"


def _decode_rows(archive_path: Path, array_path: Path, size: int, jobs: Sequence[tuple[int, str]]) -> list[int]:
    """Decode ``(row, member)`` jobs into the memmap at ``array_path``; return the rows written."""
    target = np.load(array_path, mmap_mode="r+")
    with zipfile.ZipFile(archive_path) as archive:
        for row, member in jobs:
            try:
                target[row] = load_rgb(archive.read(member), size)
            except Exception as error:
                raise DataError(
                    f"{member}: passed ingest but failed to decode ({type(error).__name__}: {error}); "
                    "rerun ingest (dvc repro -f ingest) and report this file"
                ) from None
    target.flush()
    del target
    return [row for row, _ in jobs]


def decode_split(
    archive_path: Path,
    members: Sequence[str],
    out_path: Path,
    cfg: ImageConfig,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Decode ``members`` into ``out_path`` (N x size x size x 3 uint8), atomically."""
    shape = (len(members), cfg.size, cfg.size, 3)
    with atomic_path(out_path) as tmp:
        np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape).flush()
        work = functools.partial(_decode_rows, Path(archive_path), tmp, cfg.size)
        map_chunks(work, list(enumerate(members)), worker_count(cfg.workers), progress)


def run_decode(
    archive_path: Path,
    splits_path: Path,
    out_dir: Path,
    cfg: ImageConfig,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """The decode stage: ``<split>.npy`` and ``<split>_labels.npy`` for every split, plus ``images.json``."""
    table = pd.read_parquet(splits_path)
    out_dir = Path(out_dir)
    summary: dict[str, Any] = {"size": cfg.size, "resize": RESIZE_POLICY, "splits": {}}
    started = time.monotonic()
    for name in SPLITS:
        rows = table[table["split"] == name].sort_values("row")
        decode_split(archive_path, rows["member"].tolist(), out_dir / f"{name}.npy", cfg, progress)
        with atomic_path(out_dir / f"{name}_labels.npy") as tmp, open(tmp, "wb") as handle:
            np.save(handle, rows["label_index"].to_numpy(dtype=np.int32))
        summary["splits"][name] = {"images": len(rows), "shape": [len(rows), cfg.size, cfg.size, 3]}
    seconds = time.monotonic() - started
    write_json_atomic(out_dir / META_NAME, summary)
    total = len(table)
    log.info("decode: %d images in %.1f s (%.0f images/s)", total, seconds, total / seconds if seconds else 0.0)
    return {**summary, "seconds": round(seconds, 3)}
