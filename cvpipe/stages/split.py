"""The split stage: stratified, seeded, deterministic, and leak-free by construction.

1. Exact duplicates (same sha256) collapse to one image: the first member name keeps it, the others are
   listed in the report. Training on two copies of one photo only re-weights it.
2. Near-duplicates (64-bit perceptual hash, of the image or of its mirror, within
   ``split.near_duplicate_threshold`` bits) are joined into groups, and a group always lands in one split.
   A group whose images carry different labels is left out of every split and listed in the report.
3. Per class, groups are shuffled with a generator seeded by ``(split.seed, class index)`` and dealt to the
   split with the most room left that can take the whole group, until each split has its count.

Rows are ordered by split, then by sha256 (a stable, label-independent order); the decode stage caches
images in exactly this order, so row ``i`` of ``train.npy`` is the ``i``-th train row here.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from cvpipe.config import SPLITS, SplitConfig
from cvpipe.errors import DataError
from cvpipe.io import sha256_file, system_memory_pool, write_json_atomic, write_parquet

log = logging.getLogger(__name__)

SPLITS_NAME = "splits.parquet"
REPORT_NAME = "report.json"
# Hash comparisons made at once: a block of rows is compared with the N hashes after it, so each temporary
# (the uint64 XOR, 8 bytes an element) stays at ~8 MiB whatever N is. A fixed row count (1,024 x N) was
# 200 MB at N = 25,000: the stage's memory then grew with the dataset.
_BLOCK_ELEMENTS = 1 << 20
# What the split reads of the manifest; the rest (sizes, modes, reasons) would only take memory.
MANIFEST_COLUMNS = ("member", "label", "label_index", "sha256", "phash", "phash_flip", "status")


def read_manifest(path: Path) -> pd.DataFrame:
    """The manifest's columns that the split uses (:data:`MANIFEST_COLUMNS`), read without threads."""
    table = pq.read_table(path, columns=list(MANIFEST_COLUMNS), use_threads=False)
    return table.to_pandas(use_threads=False)


def hex_to_uint64(hashes: Sequence[str]) -> np.ndarray:
    """Parse 16-hex-digit perceptual hashes into a uint64 array."""
    return np.array([int(value, 16) for value in hashes], dtype=np.uint64)


def close_hash_pairs(
    hashes: np.ndarray, flipped: np.ndarray, threshold: int
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Yield, block by block, the pairs ``i < j`` within ``threshold`` bits, image to image or through a mirror.

    The mirror is tried both ways (``flipped[i]`` against ``hashes[j]`` and ``hashes[i]`` against
    ``flipped[j]``): the hash of a mirror is only approximately symmetric. Only the upper triangle is computed,
    in blocks of about ``_BLOCK_ELEMENTS`` comparisons, so memory stays flat whatever N is; pairs come out
    sorted by ``(i, j)``. The split stage and the audit both use this, so they agree on what is close.

    Yields:
        ``(i, j, direct, mirror)``: index arrays and, per pair, the direct and the smaller mirror distance.
    """
    count = len(hashes)
    rows_per_block = max(1, _BLOCK_ELEMENTS // max(count, 1))
    for start in range(0, count, rows_per_block):
        stop = min(start + rows_per_block, count)
        # Columns start at ``start`` too: block row r is image start + r, column c is image start + c.
        direct = np.bitwise_count(hashes[start:stop, None] ^ hashes[None, start:])
        mirror = np.minimum(
            np.bitwise_count(flipped[start:stop, None] ^ hashes[None, start:]),
            np.bitwise_count(hashes[start:stop, None] ^ flipped[None, start:]),
        )
        rows, cols = np.nonzero(np.minimum(direct, mirror) <= threshold)
        upper = rows < cols
        rows, cols = rows[upper], cols[upper]
        yield rows + start, cols + start, direct[rows, cols], mirror[rows, cols]


def near_duplicate_pairs(hashes: np.ndarray, flipped: np.ndarray, threshold: int) -> np.ndarray:
    """Index pairs ``(i, j), i < j``, sorted, whose images are close (:func:`close_hash_pairs`)."""
    found = [np.stack([i, j], axis=1) for i, j, _, _ in close_hash_pairs(hashes, flipped, threshold)]
    return np.concatenate(found).astype(np.int64, copy=False) if found else np.empty((0, 2), dtype=np.int64)


def connected_groups(count: int, pairs: np.ndarray) -> np.ndarray:
    """Label each of ``count`` items with the smallest index of its connected component."""
    parent = np.arange(count)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in pairs:
        a, b = root(int(i)), root(int(j))
        if a != b:
            parent[max(a, b)] = min(a, b)
    return np.array([root(i) for i in range(count)])


@dataclass(frozen=True)
class Groups:
    """Unique images with their near-duplicate group key (the smallest sha256 in the group)."""

    images: pd.DataFrame
    exact_duplicates: list[dict[str, Any]]
    near_duplicate_groups: list[list[str]]
    label_conflicts: list[list[str]]


def _shared_groups(frame: pd.DataFrame, key: str) -> list[list[str]]:
    """Sorted members of each group of ``frame`` by ``key`` that has more than one row, in key order.

    Rows without a partner are dropped before grouping: iterating 25,000 one-row groups took pandas ~20 s.
    """
    shared = frame[frame[key].duplicated(keep=False)]
    return [sorted(members) for _, members in shared.groupby(key, sort=True)["member"]]


def group_images(manifest: pd.DataFrame, threshold: int) -> Groups:
    """Collapse exact duplicates and group near-duplicates among the manifest's ok rows."""
    ok = manifest[manifest["status"] == "ok"].sort_values("member")
    duplicates = [
        {"kept": members[0], "dropped": sorted(set(members) - {members[0]})} for members in _shared_groups(ok, "sha256")
    ]
    images = ok.drop_duplicates("sha256", keep="first").sort_values("sha256").reset_index(drop=True)
    del ok
    pairs = near_duplicate_pairs(hex_to_uint64(images["phash"]), hex_to_uint64(images["phash_flip"]), threshold)
    roots = connected_groups(len(images), pairs)
    images["group"] = images["sha256"].to_numpy()[roots]
    near = _shared_groups(images, "group")
    mixed = images.groupby("group", sort=True)["label"].transform("nunique") > 1
    conflicts = _shared_groups(images[mixed], "group")
    log.info(
        "split: %d unique images, %d near-duplicate groups (%d images)",
        len(images),
        len(near),
        sum(len(members) for members in near),
    )
    return Groups(images[~mixed].reset_index(drop=True), duplicates, near, conflicts)


def target_counts(available: int, cfg: SplitConfig) -> dict[str, int]:
    """Images per split for a class with ``available`` usable images."""
    if cfg.per_class is not None:
        return {name: getattr(cfg.per_class, name) for name in SPLITS}
    assert cfg.fractions is not None
    val = math.floor(available * cfg.fractions.val)
    test = math.floor(available * cfg.fractions.test)
    return {"train": available - val - test, "val": val, "test": test}


def deal_groups(group_sizes: pd.Series, targets: dict[str, int], rng: np.random.Generator) -> dict[str, str]:
    """Deal shuffled groups to splits; return group -> split for the groups used."""
    order = rng.permutation(len(group_sizes))
    room = dict(targets)
    assignment: dict[str, str] = {}
    for position in order:
        group, size = group_sizes.index[position], int(group_sizes.iloc[position])
        fitting = [name for name in SPLITS if room[name] >= size]
        if not fitting:
            continue
        chosen = max(fitting, key=lambda name: room[name])
        assignment[group] = chosen
        room[chosen] -= size
        if not any(room.values()):
            break
    return assignment


def split_class(images: pd.DataFrame, label_index: int, label: str, cfg: SplitConfig) -> pd.DataFrame:
    """Assign one class's images to splits; raise if the class cannot fill the requested counts."""
    targets = target_counts(len(images), cfg)
    wanted = sum(targets.values())
    if wanted > len(images):
        raise DataError(
            f"class '{label}' has {len(images)} usable unique images but the split asks for {wanted} "
            f"({targets}); lower split.per_class or use split.fractions"
        )
    sizes = images.groupby("group", sort=True).size()
    rng = np.random.default_rng([cfg.seed, label_index])
    assignment = deal_groups(sizes, targets, rng)
    chosen = images[images["group"].isin(assignment)].copy()
    chosen["split"] = chosen["group"].map(assignment)
    got = chosen["split"].value_counts().reindex(list(SPLITS), fill_value=0).to_dict()
    if got != targets:
        raise DataError(
            f"class '{label}': near-duplicate groups are too large to fill {targets} exactly (got {got}); "
            "lower split.per_class or split.near_duplicate_threshold"
        )
    return chosen


def make_splits(manifest: pd.DataFrame, cfg: SplitConfig, classes: Sequence[str]) -> tuple[pd.DataFrame, Groups]:
    """Return the split table (one row per image used) and the grouping it was built from."""
    groups = group_images(manifest, cfg.near_duplicate_threshold)
    parts = [
        split_class(groups.images[groups.images["label_index"] == index], index, label, cfg)
        for index, label in enumerate(classes)
    ]
    table = pd.concat(parts, ignore_index=True)
    table["split"] = pd.Categorical(table["split"], categories=list(SPLITS), ordered=True)
    table = table.sort_values(["split", "sha256"]).reset_index(drop=True)
    table["split"] = table["split"].astype(str)
    table["row"] = table.groupby("split").cumcount().astype("int64")
    columns = ["split", "row", "member", "sha256", "label", "label_index", "group"]
    return table[columns].astype({"label_index": "int64"}), groups


def split_counts(table: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Images per split and class."""
    counts = table.groupby(["split", "label"]).size()
    return {name: {str(k): int(v) for k, v in counts[name].items()} for name in SPLITS if name in counts}


def run_split(manifest_path: Path, out_dir: Path, cfg: SplitConfig, classes: Sequence[str]) -> dict[str, Any]:
    """The split stage: write ``splits.parquet`` and ``report.json`` into ``out_dir``.

    Raises:
        DataError: too few images for the requested counts, or the split fails validation.
    """
    from cvpipe.schemas import validate_split

    # The system allocator: mimalloc kept ~30 MB more resident at 25,000 rows (see system_memory_pool).
    with system_memory_pool():
        table, groups = make_splits(read_manifest(manifest_path), cfg, classes)
        failures = validate_split(table)
    counts = split_counts(table)
    report = {
        "counts": counts,
        "policy": {
            "seed": cfg.seed,
            "per_class": cfg.per_class.model_dump() if cfg.per_class else None,
            "fractions": cfg.fractions.model_dump() if cfg.fractions else None,
            "near_duplicate_threshold": cfg.near_duplicate_threshold,
            "hash": "imagehash.phash 64-bit, also of the mirrored image",
        },
        "manifest_sha256": sha256_file(manifest_path),
        "exact_duplicates": groups.exact_duplicates,
        "near_duplicate_groups": groups.near_duplicate_groups,
        "label_conflicts": groups.label_conflicts,
        "unused_unique_images": int(len(groups.images) - len(table)),
        "schema_failures": failures,
    }
    out_dir = Path(out_dir)
    write_json_atomic(out_dir / REPORT_NAME, report)
    if failures:
        raise DataError(f"split failed validation with {len(failures)} problem(s); see {out_dir / REPORT_NAME}")
    write_parquet(table, out_dir / SPLITS_NAME)
    log.info("split: %s", counts)
    return {"counts": counts, "near_duplicate_groups": len(groups.near_duplicate_groups)}
