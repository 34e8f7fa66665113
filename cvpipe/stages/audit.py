"""The audit stage: exact and near-duplicate images within and across splits, and whether any leaked.

The split stage keeps near-duplicates together by construction; the audit checks the result from the
outside, the way a reviewer would, and measures what a model could have memorised:

* **Exact duplicates**: archive members with the same sha256 (the split keeps one copy), and any sha256
  that appears in two splits (must be none).
* **Near-duplicates**: the split's rule (:mod:`cvpipe.imaging.confirm`), with its own params
  ``audit.near_duplicate.*`` (same defaults): pairs of distinct usable images whose 64-bit perceptual hashes,
  of the images or of one image's mirror, differ by at most ``hash_bits`` bits are candidates, confirmed when
  their grey thumbnails correlate. ``audit.hash: phash`` reads the manifest's hashes; ``dhash`` or
  ``average_hash`` recompute another hash from the archive for independent candidates. Each confirmed pair is
  classed by where its two images went: ``cross_split`` (a leak), ``within_split``, ``one_unused`` or
  ``unused``; pairs whose labels differ are flagged too.

Outputs (atomic): ``report.json`` (method, threshold, counts, the pairs), ``metrics.json`` (the counts,
for ``dvc metrics show``) and ``thumbnails/`` (side-by-side thumbnails of the first suspect pairs, with an
``index.json``). More than ``audit.max_cross_split_pairs`` cross-split pairs fails the stage after writing
the report, so the pipeline stops before a leaky split is trusted.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cvpipe import layout
from cvpipe.config import SPLITS, Params
from cvpipe.errors import DataError
from cvpipe.imaging.confirm import Confirmation, confirm_candidates, rule_from
from cvpipe.imaging.hashes import (
    HashMethod,
    HashPairs,
    TooManyCandidates,
    candidate_pairs,
    describe,
    hash_bytes,
    hex_to_uint64,
    shift_hashes_of,
)
from cvpipe.imaging.thumbnails import pair_strip
from cvpipe.io import write_bytes_atomic, write_json_atomic

log = logging.getLogger(__name__)

UNUSED = "unused"
# Pair classes, in the order the report lists them (leaks first).
KINDS = ("cross_split", "within_split", "one_unused", "unused")


@dataclass(frozen=True)
class AuditSummary:
    """The audit's counts, with the hash, the threshold and the verdict: the report's ``summary``.

    ``metrics.json`` holds the fields of :data:`METRIC_FIELDS`; OpenLineage facets read the rest too.
    """

    method: str
    hash: str
    threshold: int
    images: int
    images_in_splits: int
    exact_duplicate_groups: int
    exact_cross_split: int
    near_duplicate_pairs: int
    cross_split_pairs: int
    within_split_pairs: int
    one_unused_pairs: int
    unused_pairs: int
    label_conflict_pairs: int
    cross_split_pairs_by_splits: dict[str, int]
    max_cross_split_pairs: int
    passed: bool
    candidate_pairs: int = 0
    rule: dict[str, Any] = field(default_factory=dict)


# What ``metrics.json`` holds (for ``dvc metrics show``), of :class:`AuditSummary`.
METRIC_FIELDS = (
    "exact_duplicate_groups",
    "exact_cross_split",
    "near_duplicate_pairs",
    "cross_split_pairs",
    "within_split_pairs",
    "label_conflict_pairs",
    "passed",
)


@dataclass(frozen=True)
class AuditPaths:
    """What the audit stage reads and where it writes (defaults: :mod:`cvpipe.layout`)."""

    archive: Path = layout.ARCHIVE
    manifest: Path = layout.MANIFEST
    splits: Path = layout.SPLITS
    out: Path = layout.AUDIT_DIR

    @property
    def report(self) -> Path:
        """The report, ``<out>/report.json``."""
        return Path(self.out) / layout.REPORT_NAME

    @property
    def metrics(self) -> Path:
        """The counts for ``dvc metrics show``, ``<out>/metrics.json``."""
        return Path(self.out) / layout.AUDIT_METRICS_NAME

    @property
    def thumbnails(self) -> Path:
        """Thumbnails of the first suspect pairs, ``<out>/thumbnails/``."""
        return Path(self.out) / layout.THUMBNAILS_DIR_NAME


def image_hashes(images: pd.DataFrame, archive_path: Path, method: HashMethod) -> tuple[np.ndarray, np.ndarray]:
    """Each image's hash and its mirror's: the manifest's phash, or ``method`` recomputed from the archive."""
    if method == "phash":
        return hex_to_uint64(images["phash"]), hex_to_uint64(images["phash_flip"])
    pairs = []
    with zipfile.ZipFile(archive_path) as archive:
        for member in images["member"]:
            pairs.append(hash_bytes(archive.read(member), method))
    return hex_to_uint64([first for first, _ in pairs]), hex_to_uint64([second for _, second in pairs])


def close_pairs(hashes: np.ndarray, flipped: np.ndarray, threshold: int) -> pd.DataFrame:
    """Pairs ``i < j`` within ``threshold`` bits: columns ``i``, ``j``, ``distance``, ``mirrored``.

    The pairs the split stage keeps together (:func:`cvpipe.imaging.hashes.candidate_pairs`). The distance is
    the smallest of image-to-image and image-to-mirror; ``mirrored`` says the smallest was through a mirror.
    """
    return pair_table(candidate_pairs(hashes, flipped, threshold))


def pair_table(pairs: HashPairs, scores: np.ndarray | None = None) -> pd.DataFrame:
    """``pairs`` as a frame: columns ``i``, ``j``, ``distance`` (int64) and ``mirrored`` (+ ``score``, if given)."""
    table = pd.DataFrame(
        {
            "i": pairs.i.astype(np.int64),
            "j": pairs.j.astype(np.int64),
            "distance": pairs.distance.astype(np.int64),
            "mirrored": pairs.mirrored.astype(bool),
        }
    )
    if scores is not None:
        table["score"] = np.round(scores.astype(np.float64), 4)
    return table


def confirmed_pairs(images: pd.DataFrame, hashes: np.ndarray, flipped: np.ndarray, params: Params, archive: Path):
    """Hash candidates confirmed on their pixels, by the split's rule with ``audit.near_duplicate.*``.

    Raises:
        DataError: more candidates than ``audit.near_duplicate.max_candidates``.
    """
    rule = params.audit.near_duplicate
    try:
        shift = shift_hashes_of(images, rule.shift_bits)
        candidates = candidate_pairs(hashes, flipped, rule.hash_bits, rule.max_candidates, shift=shift)
    except TooManyCandidates as error:
        raise DataError(
            f"audit: over {error.found:,} near-duplicate candidate pairs within audit.near_duplicate.hash_bits="
            f"{rule.hash_bits} (or shift_bits={rule.shift_bits}) among {len(images):,} images (more than "
            "audit.near_duplicate.max_candidates="
            f"{rule.max_candidates:,}): lower audit.near_duplicate.hash_bits, or raise "
            "audit.near_duplicate.max_candidates"
        ) from None
    return confirm_candidates(candidates, images["member"].tolist(), archive, rule_from(rule))


def unique_images(manifest: pd.DataFrame, splits: pd.DataFrame) -> pd.DataFrame:
    """Usable images, one per sha256 (the first member by name, as the split keeps), with their split."""
    ok = manifest[manifest["status"] == "ok"].sort_values("member")
    images = ok.drop_duplicates("sha256", keep="first").sort_values("sha256").reset_index(drop=True)
    where = splits.drop_duplicates("sha256").set_index("sha256")
    images["split"] = images["sha256"].map(where["split"]).fillna(UNUSED).astype(str)
    images["row"] = images["sha256"].map(where["row"]).fillna(-1).astype("int64")
    return images


def exact_duplicates(manifest: pd.DataFrame, splits: pd.DataFrame) -> list[dict[str, Any]]:
    """Groups of usable members with one sha256, each with the split its single kept copy went to."""
    ok = manifest[manifest["status"] == "ok"].sort_values("member")
    split_of = splits.drop_duplicates("sha256").set_index("sha256")["split"]
    groups = []
    for sha256, rows in ok.groupby("sha256", sort=True):
        if len(rows) > 1:
            group = {"sha256": sha256, "members": rows["member"].tolist(), "split": str(split_of.get(sha256, UNUSED))}
            if rows["label"].nunique() > 1:  # the split leaves such a group out; flagged, as near-duplicates are
                group["labels"] = rows["label"].tolist()
                group["label_conflict"] = True
            groups.append(group)
    return groups


def exact_label_conflict_pairs(groups: list[dict[str, Any]]) -> int:
    """Pairs of members with the same bytes and different labels, over ``groups`` (:func:`exact_duplicates`)."""
    pairs = 0
    for group in groups:
        labels = pd.Series(group.get("labels", []))
        counts = labels.value_counts()
        pairs += (len(labels) ** 2 - int((counts**2).sum())) // 2
    return pairs


def classify(first: str, second: str) -> str:
    """Where a pair's two images went: a leak across splits, one split, or not (both) used."""
    if first == UNUSED and second == UNUSED:
        return "unused"
    if UNUSED in (first, second):
        return "one_unused"
    return "within_split" if first == second else "cross_split"


def split_pair(first: str, second: str) -> str:
    """Two split names in the pipeline's order (``train-test``), naming where a leak runs."""
    order = {name: rank for rank, name in enumerate(SPLITS)}
    low, high = sorted((first, second), key=lambda name: order.get(name, len(order)))
    return f"{low}-{high}"


def describe_pairs(images: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
    """One row per pair: both members, hashes, labels, splits, distance and class; leaks first."""
    first, second = pairs["i"].to_numpy(), pairs["j"].to_numpy()
    # Name order within a pair (cat.11 before cat.62) reads better than hash order.
    swap = images["member"].to_numpy()[first] > images["member"].to_numpy()[second]
    first, second = np.where(swap, second, first), np.where(swap, first, second)
    a, b = images.iloc[first], images.iloc[second]
    table = pd.DataFrame(
        {
            "a": a["member"].to_numpy(),
            "b": b["member"].to_numpy(),
            "a_sha256": a["sha256"].to_numpy(),
            "b_sha256": b["sha256"].to_numpy(),
            "a_label": a["label"].to_numpy(),
            "b_label": b["label"].to_numpy(),
            "a_split": a["split"].to_numpy(),
            "b_split": b["split"].to_numpy(),
            "distance": pairs["distance"].to_numpy(),
            "mirrored": pairs["mirrored"].to_numpy(),
        }
    )
    if "score" in pairs:
        table["score"] = pairs["score"].to_numpy()
    table["kind"] = [classify(x, y) for x, y in zip(table["a_split"], table["b_split"], strict=True)]
    table["label_conflict"] = table["a_label"] != table["b_label"]
    table["order"] = table["kind"].map({kind: rank for rank, kind in enumerate(KINDS)})
    table = table.sort_values(["order", "distance", "a", "b"]).drop(columns="order").reset_index(drop=True)
    return table


def write_thumbnails(archive_path: Path, pairs: list[dict[str, Any]], out_dir: Path, limit: int) -> None:
    """Thumbnails of the first ``limit`` pairs into ``out_dir``; each pair gets its ``thumbnail`` name."""
    out_dir.mkdir(parents=True, exist_ok=True)
    index = []
    with zipfile.ZipFile(archive_path) as archive:
        for number, pair in enumerate(pairs[:limit], start=1):
            name = f"pair-{number:04d}.jpg"
            write_bytes_atomic(out_dir / name, pair_strip(archive, pair["a"], pair["b"]))
            pair["thumbnail"] = f"{layout.THUMBNAILS_DIR_NAME}/{name}"
            index.append({"file": name, "a": pair["a"], "b": pair["b"], "kind": pair["kind"]})
    # Always written, so the folder exists (a DVC output) even when there is nothing suspect.
    write_json_atomic(out_dir / "index.json", index)


def run(
    params: Params, paths: AuditPaths = AuditPaths(), progress: Callable[[int], None] | None = None
) -> AuditSummary:
    """The audit stage: write the report, ``metrics.json`` and ``thumbnails/`` into ``paths.out``.

    Args:
        params: the pipeline's params; the stage reads ``audit.*``.
        paths: the archive, manifest and split table to read, and the folder to write.
        progress: unused; accepted as every stage's ``run`` does.

    Returns:
        The counts (also in ``metrics.json``), with the method and threshold.

    Raises:
        DataError: more cross-split near-duplicate pairs than ``audit.max_cross_split_pairs``, or an exact
            duplicate across splits; the report is written first.
    """
    cfg = params.audit
    manifest = pd.read_parquet(paths.manifest)
    splits = pd.read_parquet(paths.splits, columns=["split", "row", "member", "sha256", "label"])
    images = unique_images(manifest, splits)
    hashes, flipped = image_hashes(images, paths.archive, cfg.hash)
    confirmation: Confirmation = confirmed_pairs(images, hashes, flipped, params, paths.archive)
    table = describe_pairs(images, pair_table(confirmation.pairs, confirmation.confirmed_scores))
    rule = {**rule_from(cfg.near_duplicate).as_record(), "hash": describe(cfg.hash)}
    duplicates = exact_duplicates(manifest, splits)
    split_count = splits.groupby("sha256")["split"].nunique()
    exact_cross = sorted(split_count[split_count > 1].index)
    counts = table["kind"].value_counts().reindex(list(KINDS), fill_value=0)
    cross = table[table["kind"] == "cross_split"]
    by_splits = pd.Series([split_pair(a, b) for a, b in zip(cross["a_split"], cross["b_split"], strict=True)])
    cross_split_pairs = int(counts["cross_split"])
    summary = AuditSummary(
        method=describe(cfg.hash),
        hash=cfg.hash,
        threshold=cfg.near_duplicate.hash_bits,
        images=len(images),
        images_in_splits=int((images["split"] != UNUSED).sum()),
        exact_duplicate_groups=len(duplicates),
        exact_cross_split=len(exact_cross),
        near_duplicate_pairs=len(table),
        cross_split_pairs=cross_split_pairs,
        within_split_pairs=int(counts["within_split"]),
        one_unused_pairs=int(counts["one_unused"]),
        unused_pairs=int(counts["unused"]),
        label_conflict_pairs=int(table["label_conflict"].sum()) + exact_label_conflict_pairs(duplicates),
        cross_split_pairs_by_splits={str(k): int(v) for k, v in sorted(by_splits.value_counts().items())},
        max_cross_split_pairs=cfg.max_cross_split_pairs,
        passed=bool(cross_split_pairs <= cfg.max_cross_split_pairs and not exact_cross),
        candidate_pairs=len(confirmation.candidates),
        rule=rule,
    )
    pairs = table.head(cfg.max_listed_pairs).to_dict(orient="records")
    for pair in pairs:
        pair["distance"], pair["mirrored"] = int(pair["distance"]), bool(pair["mirrored"])
        pair["label_conflict"] = bool(pair["label_conflict"])
        if "score" in pair:
            pair["score"] = float(pair["score"])
    write_thumbnails(paths.archive, pairs, paths.thumbnails, cfg.thumbnails)
    report = {
        "summary": asdict(summary),
        "splits": list(SPLITS),
        "exact_duplicates": duplicates,
        "exact_cross_split": exact_cross,
        "pairs": pairs,
        "pairs_listed": len(pairs),
    }
    write_json_atomic(paths.report, report)
    write_json_atomic(paths.metrics, {name: getattr(summary, name) for name in METRIC_FIELDS})
    log.info(
        "audit (%s, %d bits, NCC >= %g): %d exact-duplicate groups, %d candidates, %d near-duplicate pairs, %d "
        "across splits",
        cfg.hash,
        cfg.near_duplicate.hash_bits,
        cfg.near_duplicate.threshold,
        len(duplicates),
        len(confirmation.candidates),
        len(table),
        summary.cross_split_pairs,
    )
    if not summary.passed:
        raise DataError(
            f"audit: {summary.cross_split_pairs} near-duplicate pair(s) across splits (allowed "
            f"{cfg.max_cross_split_pairs}) and {len(exact_cross)} exact duplicate(s) across splits; see "
            f"{paths.report}; give split.near_duplicate the rule of audit.near_duplicate (hash_bits at least as "
            "high, threshold at most as high) so the split keeps such pairs together, or raise "
            "audit.max_cross_split_pairs"
        )
    return summary
