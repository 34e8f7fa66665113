"""The split stage: stratified, seeded, deterministic, and leak-free by construction.

1. Exact duplicates (same sha256) collapse to one image: the first member name keeps it, the others are
   listed in the report. Training on two copies of one photo only re-weights it. Copies under different
   labels are left out of every split and listed in the report's ``label_conflicts``.
2. Near-duplicates, by the rule the audit checks by (``split.near_duplicate.*``): pairs whose 64-bit perceptual
   hashes (of the image or of its mirror) are within ``hash_bits`` are candidates
   (:mod:`cvpipe.imaging.hashes`); the images of those pairs are read from the archive and a candidate is
   confirmed when their grey thumbnails correlate (:mod:`cvpipe.imaging.confirm`). Only confirmed pairs are
   joined into groups, and a group always lands in one split. A group whose images carry different labels is
   left out of every split and listed in the report.
   The guard (:mod:`cvpipe.imaging.guard`): groups larger than ``max_group_size``, or holding more than
   ``max_class_fraction`` of a class, look like a rule too loose for the data, not like copies; the stage
   then stops with one line after writing its report. So does a candidate count past ``max_candidates``.
3. Per class, groups are shuffled with a generator seeded by ``(split.seed, class index)`` and dealt to the
   split with the most room left that can take the whole group, until each split has its count.

Rows are ordered by split, then by sha256 (a stable, label-independent order); the decode stage caches
images in exactly this order, so row ``i`` of ``train.npy`` is the ``i``-th train row here.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from cvpipe import layout
from cvpipe.config import SPLITS, NearDuplicateConfig, Params, SplitConfig
from cvpipe.errors import DataError
from cvpipe.exclude import excluding
from cvpipe.imaging.confirm import Confirmation, confirm_candidates, rule_from
from cvpipe.imaging.guard import GroupGuard, group_problem
from cvpipe.imaging.hashes import (
    TooManyCandidates,
    candidate_pairs,
    connected_groups,
    hex_to_uint64,
    shift_hashes_of,
)
from cvpipe.imaging.thumbnails import write_group_thumbnails
from cvpipe.io import sha256_file, system_memory_pool, write_json_atomic, write_parquet

log = logging.getLogger(__name__)

# What the split reads of the manifest; the rest (sizes, modes, reasons) would only take memory.
MANIFEST_COLUMNS = ("member", "label", "label_index", "sha256", "phash", "phash_flip", "status")
# The shift-tolerant hash's columns, read when the manifest has them (one ingested before them has not).
SHIFT_COLUMNS = ("fourier", "fourier_flip")
# Groups listed with their members in the report's ``largest_groups`` (the HTML report shows their thumbnails).
LISTED_GROUPS = 10


@dataclass(frozen=True)
class SplitSummary:
    """What the split did: images per split and class, and how many near-duplicate groups it kept together."""

    counts: dict[str, dict[str, int]]
    near_duplicate_groups: int
    near_duplicate_candidates: int = 0
    near_duplicate_confirmed: int = 0
    near_duplicate_rule: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SplitPaths:
    """What the split stage reads and where it writes (defaults: :mod:`cvpipe.layout`)."""

    manifest: Path = layout.MANIFEST
    out: Path = layout.SPLITS_DIR
    # Last, so SplitPaths(manifest, out) still reads: the images of candidate pairs are read from here.
    archive: Path = layout.ARCHIVE

    @property
    def splits(self) -> Path:
        """The split table, ``<out>/splits.parquet``."""
        return Path(self.out) / layout.SPLITS_NAME

    @property
    def report(self) -> Path:
        """The split report, ``<out>/report.json``."""
        return Path(self.out) / layout.REPORT_NAME

    @property
    def thumbnails(self) -> Path:
        """Strips of the largest near-duplicate groups' members, ``<out>/thumbnails/``."""
        return Path(self.out) / layout.THUMBNAILS_DIR_NAME


def read_manifest(path: Path) -> pd.DataFrame:
    """The manifest's columns that the split uses (:data:`MANIFEST_COLUMNS`, :data:`SHIFT_COLUMNS`), no threads."""
    present = set(pq.read_schema(path).names)
    columns = [*MANIFEST_COLUMNS, *(name for name in SHIFT_COLUMNS if name in present)]
    table = pq.read_table(path, columns=columns, use_threads=False)
    return table.to_pandas(use_threads=False)


@dataclass(frozen=True)
class Groups:
    """Unique images with their near-duplicate group key (the smallest sha256 in the group)."""

    images: pd.DataFrame
    exact_duplicates: list[dict[str, Any]]
    near_duplicate_groups: list[list[str]]
    label_conflicts: list[list[str]]
    candidates: int = 0
    confirmed: int = 0
    thumbnailed: int = 0
    largest_groups: list[dict[str, Any]] = field(default_factory=list)
    # Every unique image with its group key and label, mixed-label groups included: what the guard judges.
    grouped: pd.DataFrame | None = None


def _shared_groups(frame: pd.DataFrame, key: str) -> list[list[str]]:
    """Sorted members of each group of ``frame`` by ``key`` that has more than one row, in key order.

    Rows without a partner are dropped before grouping: iterating 25,000 one-row groups took pandas ~20 s.
    """
    shared = frame[frame[key].duplicated(keep=False)]
    return [sorted(members) for _, members in shared.groupby(key, sort=True)["member"]]


def confirmed_pairs(images: pd.DataFrame, cfg: NearDuplicateConfig, archive: Path | None) -> Confirmation:
    """Hash candidates among ``images`` confirmed on their pixels (the rule of :mod:`cvpipe.imaging.confirm`).

    Raises:
        DataError: more candidates than ``split.near_duplicate.max_candidates``.
    """
    try:
        candidates = candidate_pairs(
            hex_to_uint64(images["phash"]),
            hex_to_uint64(images["phash_flip"]),
            cfg.hash_bits,
            cfg.max_candidates,
            shift=shift_hashes_of(images, cfg.shift_bits),
        )
    except TooManyCandidates as error:
        raise DataError(
            f"split: over {error.found:,} near-duplicate candidate pairs within split.near_duplicate.hash_bits="
            f"{cfg.hash_bits} (or shift_bits={cfg.shift_bits}) among {len(images):,} images after "
            f"{error.scanned:.0%} of the scan (more than "
            f"split.near_duplicate.max_candidates={cfg.max_candidates:,}, ~30 us each to confirm): lower "
            "split.near_duplicate.hash_bits, or raise split.near_duplicate.max_candidates"
        ) from None
    return confirm_candidates(candidates, images["member"].tolist(), Path(archive or layout.ARCHIVE), rule_from(cfg))


def largest_groups(images: pd.DataFrame, limit: int = LISTED_GROUPS) -> list[dict[str, Any]]:
    """The ``limit`` largest groups (ties by key): members in name order, their labels, and the size."""
    sizes = images["group"].value_counts()
    shared = sizes[sizes > 1]
    order = sorted(shared.index, key=lambda key: (-int(shared[key]), key))[:limit]
    listed = []
    for key in order:
        rows = images[images["group"] == key].sort_values("member")
        listed.append(
            {"size": len(rows), "members": rows["member"].tolist(), "labels": sorted(set(rows["label"].tolist()))}
        )
    return listed


def group_images(
    manifest: pd.DataFrame, rule: NearDuplicateConfig | None = None, archive: Path | None = None
) -> Groups:
    """Collapse exact duplicates and group confirmed near-duplicates among the manifest's ok rows."""
    rule = rule or NearDuplicateConfig()
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
    confirmation = confirmed_pairs(images, rule, archive)
    roots = connected_groups(len(images), confirmation.pairs.indices())
    images["group"] = images["sha256"].to_numpy()[roots]
    near = _shared_groups(images, "group")
    mixed = images.groupby("group", sort=True)["label"].transform("nunique") > 1
    conflicts = _shared_groups(images[mixed], "group")
    log.info(
        "split: %d unique images, %d candidate pairs within %d bits, %d confirmed, %d near-duplicate groups (%d "
        "images)",
        len(images),
        len(confirmation.candidates),
        rule.hash_bits,
        int(confirmation.confirmed.sum()),
        len(near),
        sum(len(members) for members in near),
    )
    return Groups(
        images[~mixed].reset_index(drop=True),
        duplicates,
        near,
        exact_conflicts + conflicts,
        candidates=len(confirmation.candidates),
        confirmed=int(confirmation.confirmed.sum()),
        thumbnailed=confirmation.thumbnailed,
        largest_groups=largest_groups(images),
        grouped=images[["member", "label", "group"]],
    )


def guard_problem(groups: Groups, rule: NearDuplicateConfig) -> str | None:
    """The guard's one line on the groups (:func:`cvpipe.imaging.guard.group_problem`), or None."""
    if groups.grouped is None:
        return None
    guard = GroupGuard(max_class_fraction=rule.max_class_fraction, max_group_size=rule.max_group_size)
    return group_problem(groups.grouped["group"].tolist(), groups.grouped["label"].tolist(), guard)


def left_out_of_class(groups: Groups, label: str) -> int:
    """Unique images of class ``label`` left out in groups with another label (near or exact duplicates)."""
    members = {member for group in groups.label_conflicts for member in group}
    if groups.grouped is None:
        return 0
    rows = groups.grouped[groups.grouped["label"] == label]
    return int(rows["member"].isin(members).sum())


def target_counts(available: int, cfg: SplitConfig) -> dict[str, int]:
    """Images per split for a class with ``available`` usable images."""
    if cfg.per_class is not None:
        return {name: getattr(cfg.per_class, name) for name in SPLITS}
    assert cfg.fractions is not None
    val = math.floor(available * cfg.fractions.val)
    test = math.floor(available * cfg.fractions.test)
    return {"train": available - val - test, "val": val, "test": test}


def deal_groups(
    group_sizes: pd.Series, targets: dict[str, int], rng: np.random.Generator, largest_first: bool = False
) -> dict[str, str]:
    """Deal shuffled groups to splits; return group -> split for the groups used.

    ``largest_first``: groups of several images go first (shuffled among equal sizes), so single images fill
    whatever room is left exactly. With ``split.fractions`` the targets use every image, and a pair dealt last
    into one free place each of val and test used to fail the class.
    """
    order = rng.permutation(len(group_sizes))
    if largest_first:
        order = order[np.argsort(-group_sizes.to_numpy()[order], kind="stable")]
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


def split_class(
    images: pd.DataFrame, label_index: int, label: str, cfg: SplitConfig, left_out: int = 0
) -> pd.DataFrame:
    """Assign one class's images to splits; raise if the class cannot fill the requested counts.

    Args:
        images: the class's usable unique images, with their group.
        label_index: the class's index (seeds its shuffle).
        label: the class's name.
        cfg: the split params.
        left_out: the class's images left out in groups with another label, named when the class falls short.
    """
    targets = target_counts(len(images), cfg)
    wanted = sum(targets.values())
    if wanted > len(images):
        cause = (
            f"; {left_out:,} of its images were left out in near-duplicate groups with another label (see the "
            "report's label_conflicts; raise split.near_duplicate.threshold if they are not copies)"
            if left_out
            else ""
        )
        raise DataError(
            f"class '{label}' has {len(images)} usable unique images but the split asks for {wanted} "
            f"({targets}){cause}; lower split.per_class or use split.fractions"
        )
    sizes = images.groupby("group", sort=True).size()
    rng = np.random.default_rng([cfg.seed, label_index])
    assignment = deal_groups(sizes, targets, rng, largest_first=cfg.fractions is not None)
    chosen = images[images["group"].isin(assignment)].copy()
    chosen["split"] = chosen["group"].map(assignment)
    got = chosen["split"].value_counts().reindex(list(SPLITS), fill_value=0).to_dict()
    if got != targets:
        raise DataError(
            f"class '{label}': near-duplicate groups are too large to fill {targets} exactly (got {got}); "
            "lower split.per_class, or raise split.near_duplicate.threshold for smaller groups"
        )
    return chosen


def make_splits(
    manifest: pd.DataFrame, cfg: SplitConfig, classes: Sequence[str], archive: Path | None = None
) -> tuple[pd.DataFrame, Groups]:
    """Return the split table (one row per image used) and the grouping it was built from."""
    groups = group_images(manifest, cfg.near_duplicate, archive)
    return deal_splits(groups, cfg, classes), groups


def deal_splits(groups: Groups, cfg: SplitConfig, classes: Sequence[str]) -> pd.DataFrame:
    """The split table (one row per image used) dealt from ``groups``, per class."""
    parts = [
        split_class(
            groups.images[groups.images["label_index"] == index], index, label, cfg, left_out_of_class(groups, label)
        )
        for index, label in enumerate(classes)
    ]
    table = pd.concat(parts, ignore_index=True)
    table["split"] = pd.Categorical(table["split"], categories=list(SPLITS), ordered=True)
    table = table.sort_values(["split", "sha256"]).reset_index(drop=True)
    table["split"] = table["split"].astype(str)
    table["row"] = table.groupby("split").cumcount().astype("int64")
    columns = ["split", "row", "member", "sha256", "label", "label_index", "group"]
    return table[columns].astype({"label_index": "int64"})


def split_counts(table: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Images per split and class."""
    counts = table.groupby(["split", "label"]).size()
    return {name: {str(k): int(v) for k, v in counts[name].items()} for name in SPLITS if name in counts}


def policy(cfg: SplitConfig) -> dict[str, Any]:
    """The split's policy as the report and the lineage record hold it: counts, seed and the near-duplicate rule."""
    rule = cfg.near_duplicate
    return {
        "seed": cfg.seed,
        "per_class": cfg.per_class.model_dump() if cfg.per_class else None,
        "fractions": cfg.fractions.model_dump() if cfg.fractions else None,
        "near_duplicate": {
            **rule_from(rule).as_record(),
            "max_candidates": rule.max_candidates,
            "max_class_fraction": rule.max_class_fraction,
            "max_group_size": rule.max_group_size,
        },
    }


def build_report(
    cfg: SplitConfig, manifest: Path, groups: Groups, table: pd.DataFrame | None, **extra: Any
) -> dict[str, Any]:
    """The split report: counts, policy, duplicates and groups (the largest with members), and ``extra``."""
    return {
        "counts": split_counts(table) if table is not None else {},
        "policy": policy(cfg),
        "manifest_sha256": sha256_file(manifest),
        "near_duplicates": {
            "candidates": groups.candidates,
            "confirmed": groups.confirmed,
            "thumbnailed": groups.thumbnailed,
            "groups": len(groups.near_duplicate_groups),
            "images_in_groups": sum(len(members) for members in groups.near_duplicate_groups),
            "largest_groups": groups.largest_groups,
        },
        "exact_duplicates": groups.exact_duplicates,
        "near_duplicate_groups": groups.near_duplicate_groups,
        "label_conflicts": groups.label_conflicts,
        "unused_unique_images": int(len(groups.images) - len(table)) if table is not None else None,
        **extra,
    }


def write_report(paths: SplitPaths, report: dict[str, Any]) -> None:
    """Write the largest groups' thumbnails (each listed group gets its ``thumbnail``), then the report."""
    write_group_thumbnails(paths.archive, report["near_duplicates"]["largest_groups"], paths.thumbnails)
    write_json_atomic(paths.report, report)


def run(
    params: Params, paths: SplitPaths = SplitPaths(), progress: Callable[[int], None] | None = None
) -> SplitSummary:
    """The split stage: write the split table, its report and the groups' thumbnails (``paths``).

    Args:
        params: the pipeline's params; the stage reads ``data.classes`` and ``split.*``.
        paths: the manifest and archive to read and the folder to write.
        progress: unused (the split takes seconds); accepted as every stage's ``run`` does.

    Raises:
        DataError: too many near-duplicate candidates; groups past the guard's bounds or a class too short to
            fill its counts (both after writing the report); or the split fails validation.
    """
    from cvpipe.schemas import validate_split

    cfg = params.split
    # The system allocator: mimalloc kept ~30 MB more resident at 25,000 rows (see system_memory_pool).
    with system_memory_pool():
        groups = group_images(excluding(read_manifest(paths.manifest), cfg.exclude), cfg.near_duplicate, paths.archive)
        problem = guard_problem(groups, cfg.near_duplicate)
        if problem:
            write_report(paths, build_report(cfg, paths.manifest, groups, None, error=problem))
            raise DataError(f"split: {problem}; see {paths.report}")
        try:
            table = deal_splits(groups, cfg, params.data.classes)
        except DataError as error:
            write_report(paths, build_report(cfg, paths.manifest, groups, None, error=str(error)))
            raise
        failures = validate_split(table)
    report = build_report(cfg, paths.manifest, groups, table, schema_failures=failures)
    write_report(paths, report)
    if failures:
        raise DataError(f"split failed validation with {len(failures)} problem(s); see {paths.report}")
    write_parquet(table, paths.splits)
    counts = report["counts"]
    log.info("split: %s", counts)
    return SplitSummary(
        counts=counts,
        near_duplicate_groups=len(groups.near_duplicate_groups),
        near_duplicate_candidates=groups.candidates,
        near_duplicate_confirmed=groups.confirmed,
        near_duplicate_rule=report["policy"]["near_duplicate"],
    )
