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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cvpipe.config import SPLITS, SplitConfig
from cvpipe.errors import DataError
from cvpipe.io import sha256_file, write_json_atomic, write_parquet

log = logging.getLogger(__name__)

SPLITS_NAME = "splits.parquet"
REPORT_NAME = "report.json"
_BLOCK = 1024


def hex_to_uint64(hashes: Sequence[str]) -> np.ndarray:
    """Parse 16-hex-digit perceptual hashes into a uint64 array."""
    return np.array([int(value, 16) for value in hashes], dtype=np.uint64)


def near_duplicate_pairs(hashes: np.ndarray, flipped: np.ndarray, threshold: int) -> np.ndarray:
    """Index pairs ``(i, j), i < j`` whose hashes (or one's mirror hash) differ by at most ``threshold`` bits.

    Blocked so memory stays at ``_BLOCK x N`` whatever N is; 25,000 images take about two seconds.
    """
    found: list[np.ndarray] = []
    count = len(hashes)
    for start in range(0, count, _BLOCK):
        block = slice(start, min(start + _BLOCK, count))
        close = np.bitwise_count(hashes[block, None] ^ hashes[None, :]) <= threshold
        close |= np.bitwise_count(flipped[block, None] ^ hashes[None, :]) <= threshold
        rows, cols = np.nonzero(close)
        rows += start
        keep = rows < cols
        found.append(np.stack([rows[keep], cols[keep]], axis=1))
    return np.concatenate(found) if found else np.empty((0, 2), dtype=np.int64)


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


def group_images(manifest: pd.DataFrame, threshold: int) -> Groups:
    """Collapse exact duplicates and group near-duplicates among the manifest's ok rows."""
    ok = manifest[manifest["status"] == "ok"].sort_values("member")
    firsts = ok.drop_duplicates("sha256", keep="first")
    duplicates = [
        {"kept": kept, "dropped": sorted(set(rows["member"]) - {kept})}
        for kept, rows in ((rows["member"].iloc[0], rows) for _, rows in ok.groupby("sha256", sort=True))
        if len(rows) > 1
    ]
    images = firsts.sort_values("sha256").reset_index(drop=True)
    pairs = near_duplicate_pairs(hex_to_uint64(images["phash"]), hex_to_uint64(images["phash_flip"]), threshold)
    roots = connected_groups(len(images), pairs)
    images["group"] = images["sha256"].to_numpy()[roots]
    grouped = images.groupby("group", sort=True)
    sizes = grouped["sha256"].transform("size")
    near = [sorted(rows["member"]) for _, rows in grouped if len(rows) > 1]
    mixed = grouped["label"].transform("nunique") > 1
    conflicts = [sorted(rows["member"]) for _, rows in images[mixed].groupby("group", sort=True)]
    log.info(
        "split: %d unique images, %d near-duplicate groups (%d images)", len(images), len(near), int((sizes > 1).sum())
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


def split_class(images: pd.DataFrame, label_index: int, cfg: SplitConfig) -> pd.DataFrame:
    """Assign one class's images to splits; raise if the class cannot fill the requested counts."""
    targets = target_counts(len(images), cfg)
    label = images["label"].iloc[0] if len(images) else f"#{label_index}"
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
        split_class(groups.images[groups.images["label_index"] == index], index, cfg) for index in range(len(classes))
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

    manifest = pd.read_parquet(manifest_path)
    table, groups = make_splits(manifest, cfg, classes)
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
