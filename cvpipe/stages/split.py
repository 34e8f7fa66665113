"""The split stage: stratified, seeded, deterministic, and leak-free by construction.

1. Exact duplicates (same sha256) collapse to one image: the first member name keeps it, the others are
   listed in the report. Training on two copies of one photo only re-weights it. Copies under different
   labels are left out of every split and listed in the report's ``label_conflicts``.
2. Near-duplicates (64-bit perceptual hash, of the image or of its mirror, within
   ``split.near_duplicate_threshold`` bits: :mod:`cvpipe.imaging.hashes`, the rule the audit checks by) are
   joined into groups, and a group always lands in one split.
   A group whose images carry different labels is left out of every split and listed in the report.
3. Per class, groups are shuffled with a generator seeded by ``(split.seed, class index)`` and dealt to the
   split with the most room left that can take the whole group, until each split has its count.

Rows are ordered by split, then by sha256 (a stable, label-independent order); the decode stage caches
images in exactly this order, so row ``i`` of ``train.npy`` is the ``i``-th train row here.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from cvpipe import layout
from cvpipe.config import SPLITS, Params, SplitConfig
from cvpipe.errors import DataError
from cvpipe.imaging.hashes import connected_groups, describe, hex_to_uint64, near_duplicate_pairs
from cvpipe.io import sha256_file, system_memory_pool, write_json_atomic, write_parquet

log = logging.getLogger(__name__)

# What the split reads of the manifest; the rest (sizes, modes, reasons) would only take memory.
MANIFEST_COLUMNS = ("member", "label", "label_index", "sha256", "phash", "phash_flip", "status")


@dataclass(frozen=True)
class SplitSummary:
    """What the split did: images per split and class, and how many near-duplicate groups it kept together."""

    counts: dict[str, dict[str, int]]
    near_duplicate_groups: int


@dataclass(frozen=True)
class SplitPaths:
    """What the split stage reads and where it writes (defaults: :mod:`cvpipe.layout`)."""

    manifest: Path = layout.MANIFEST
    out: Path = layout.SPLITS_DIR

    @property
    def splits(self) -> Path:
        """The split table, ``<out>/splits.parquet``."""
        return Path(self.out) / layout.SPLITS_NAME

    @property
    def report(self) -> Path:
        """The split report, ``<out>/report.json``."""
        return Path(self.out) / layout.REPORT_NAME


def read_manifest(path: Path) -> pd.DataFrame:
    """The manifest's columns that the split uses (:data:`MANIFEST_COLUMNS`), read without threads."""
    table = pq.read_table(path, columns=list(MANIFEST_COLUMNS), use_threads=False)
    return table.to_pandas(use_threads=False)


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
    # The same bytes under two labels: which label is right is not ours to guess (by name order it was). Such
    # a group is left out and listed with the near-duplicate label conflicts.
    exact_mixed = ok.groupby("sha256", sort=False)["label"].transform("nunique") > 1
    exact_conflicts = _shared_groups(ok[exact_mixed], "sha256")
    ok = ok[~exact_mixed]
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
    return Groups(images[~mixed].reset_index(drop=True), duplicates, near, exact_conflicts + conflicts)


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


def run(
    params: Params, paths: SplitPaths = SplitPaths(), progress: Callable[[int], None] | None = None
) -> SplitSummary:
    """The split stage: write the split table and its report (``paths.splits``, ``paths.report``).

    Args:
        params: the pipeline's params; the stage reads ``data.classes`` and ``split.*``.
        paths: the manifest to read and the folder to write.
        progress: unused (the split takes seconds); accepted as every stage's ``run`` does.

    Raises:
        DataError: too few images for the requested counts, or the split fails validation.
    """
    from cvpipe.schemas import validate_split

    cfg = params.split
    # The system allocator: mimalloc kept ~30 MB more resident at 25,000 rows (see system_memory_pool).
    with system_memory_pool():
        table, groups = make_splits(read_manifest(paths.manifest), cfg, params.data.classes)
        failures = validate_split(table)
    counts = split_counts(table)
    report = {
        "counts": counts,
        "policy": {
            "seed": cfg.seed,
            "per_class": cfg.per_class.model_dump() if cfg.per_class else None,
            "fractions": cfg.fractions.model_dump() if cfg.fractions else None,
            "near_duplicate_threshold": cfg.near_duplicate_threshold,
            "hash": describe("phash"),
        },
        "manifest_sha256": sha256_file(paths.manifest),
        "exact_duplicates": groups.exact_duplicates,
        "near_duplicate_groups": groups.near_duplicate_groups,
        "label_conflicts": groups.label_conflicts,
        "unused_unique_images": int(len(groups.images) - len(table)),
        "schema_failures": failures,
    }
    write_json_atomic(paths.report, report)
    if failures:
        raise DataError(f"split failed validation with {len(failures)} problem(s); see {paths.report}")
    write_parquet(table, paths.splits)
    log.info("split: %s", counts)
    return SplitSummary(counts=counts, near_duplicate_groups=len(groups.near_duplicate_groups))
