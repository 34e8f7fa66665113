"""The embedding_audit stage: near-duplicates across splits that hashing misses, by VGG16 cosine similarity.

After the features stage, every image's cached VGG16 map (``data/cache/vgg16/{split}.npy``, N x 5 x 5 x 512 at
180 px) is global-average-pooled, centred (``audit.embedding.center``) and L2-normalised
(:mod:`cvpipe.ml.embeddings`); pairs of images from two different splits with cosine similarity at least
``audit.embedding.threshold`` are listed, with their members and sha256 from the split table (rows in
``row`` order, as the caches hold them) and side-by-side thumbnails read from the archive, as the hash audit's.

Outputs (atomic): ``reports/audit/embedding.json`` (summary + pairs), ``reports/audit/embedding_metrics.json``
(the counts, for ``dvc metrics show``) and ``reports/audit/embedding_thumbnails/``. More than
``audit.embedding.max_cross_split_pairs`` pairs fails the stage after writing them, like the hash audit.

With ``features.weights: none`` (random weights: the offline demo) similar vectors do not mean similar images:
the report and summary say the audit is not meaningful and the stage never fails on it.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cvpipe import layout
from cvpipe.config import RANDOM_WEIGHTS, SPLITS, Params
from cvpipe.errors import DataError
from cvpipe.imaging.thumbnails import pair_strip
from cvpipe.io import write_bytes_atomic, write_json_atomic
from cvpipe.ml.embeddings import TooManyPairs, cross_split_pairs, embed, features_weights

logger = logging.getLogger(__name__)

METHOD = "cosine similarity of global-average-pooled, L2-normalised VGG16 features"
METRIC_FIELDS = ("images", "cross_split_pairs", "meaningful", "passed")


@dataclass(frozen=True)
class EmbeddingAuditPaths:
    """Where ``embedding_audit`` reads and writes (defaults: :mod:`cvpipe.layout`)."""

    features: Path = layout.FEATURES_CACHE
    splits: Path = layout.SPLITS
    archive: Path = layout.ARCHIVE
    report: Path = layout.EMBEDDING_AUDIT_REPORT
    metrics: Path = layout.EMBEDDING_AUDIT_METRICS
    thumbnails: Path = layout.EMBEDDING_AUDIT_THUMBNAILS


@dataclass(frozen=True)
class EmbeddingAuditSummary:
    """What the embedding audit found: the report's ``summary``."""

    method: str
    weights: str | None
    """The features' weights spec (``features.json``): imagenet, none (random) or a file."""
    meaningful: bool
    """False with random weights: then the pairs say nothing and the stage does not fail."""
    threshold: float
    center: bool
    images: int
    images_per_split: dict[str, int]
    cross_split_pairs: int
    cross_split_pairs_by_splits: dict[str, int]
    label_conflict_pairs: int
    max_cross_split_pairs: int
    passed: bool


def run(
    params: Params, paths: EmbeddingAuditPaths = EmbeddingAuditPaths(), progress: Callable[[int], None] | None = None
) -> EmbeddingAuditSummary:
    """The ``embedding_audit`` stage: write the cross-split pairs, their thumbnails and the counts.

    Raises:
        DataError: a features split is missing or empty, the split table disagrees with the cache, more than
            ``audit.embedding.max_pairs`` pairs, or (after writing the report) more cross-split pairs than
            ``audit.embedding.max_cross_split_pairs`` with meaningful features.
    """
    cfg = params.audit.embedding
    features = {split: _load(paths.features, split) for split in SPLITS}
    names = {split: _names(paths.splits, split, len(features[split])) for split in SPLITS}
    weights = features_weights(paths.features)
    meaningful = weights != RANDOM_WEIGHTS
    try:
        pairs = cross_split_pairs(embed(features, cfg.center), cfg.threshold, max_pairs=cfg.max_pairs)
    except TooManyPairs as error:
        raise DataError(
            f"embedding audit: over {error.limit:,} cross-split pairs at cosine >= audit.embedding.threshold="
            f"{cfg.threshold} (more than audit.embedding.max_pairs): raise the threshold, or max_pairs"
        ) from None
    table = _describe(pairs, names)
    by_splits = (table["a_split"] + "-" + table["b_split"]).value_counts() if len(table) else pd.Series(dtype=int)
    summary = EmbeddingAuditSummary(
        method=METHOD,
        weights=weights,
        meaningful=meaningful,
        threshold=cfg.threshold,
        center=cfg.center,
        images=sum(len(array) for array in features.values()),
        images_per_split={split: len(array) for split, array in features.items()},
        cross_split_pairs=len(table),
        cross_split_pairs_by_splits={str(k): int(v) for k, v in sorted(by_splits.items())},
        label_conflict_pairs=int((table["a_label"] != table["b_label"]).sum()) if len(table) else 0,
        max_cross_split_pairs=cfg.max_cross_split_pairs,
        passed=not meaningful or len(table) <= cfg.max_cross_split_pairs,
    )
    listed = table.head(params.audit.max_listed_pairs).to_dict(orient="records")
    _write_thumbnails(paths.archive, listed, paths.thumbnails, params.audit.thumbnails)
    report: dict[str, Any] = {"summary": asdict(summary), "pairs": listed, "pairs_listed": len(listed)}
    if not meaningful:
        report["note"] = (
            "not meaningful: features.weights is none (random VGG16 weights), so similar vectors do not mean "
            "similar images; set features.weights to imagenet or a weights file"
        )
    write_json_atomic(paths.report, report)
    write_json_atomic(paths.metrics, {name: getattr(summary, name) for name in METRIC_FIELDS})
    if progress is not None:
        progress(summary.images)
    logger.info(
        "embedding audit (cosine >= %g%s): %d cross-split pair(s) among %d images",
        cfg.threshold,
        "" if meaningful else ", random weights: not meaningful",
        summary.cross_split_pairs,
        summary.images,
    )
    if not summary.passed:
        raise DataError(
            f"embedding audit: {summary.cross_split_pairs} image pair(s) across splits at VGG16 cosine >= "
            f"{cfg.threshold} (allowed audit.embedding.max_cross_split_pairs={cfg.max_cross_split_pairs}); see "
            f"{paths.report}: leave one of each out (split.exclude), raise audit.embedding.threshold if they are "
            "not copies, or raise the bound"
        )
    return summary


def _load(cache: Path, split: str) -> np.ndarray:
    path = layout.split_file(cache, split)
    if not path.is_file():
        raise DataError(f"embedding audit: {path} is missing; run the features stage (dvc repro features)")
    array = np.load(path, mmap_mode="r")
    if len(array) == 0:
        raise DataError(f"embedding audit: {path} has no images (an empty {split} split); rerun split and features")
    return array


def _names(splits: Path, split: str, count: int) -> pd.DataFrame:
    """The split table's rows of ``split`` in ``row`` order (the caches' order): member, sha256, label, row."""
    try:
        table = pd.read_parquet(splits, columns=["split", "row", "member", "sha256", "label"])
    except (OSError, ValueError) as error:
        raise DataError(f"embedding audit: cannot read the split table {splits} ({error}); rerun split") from None
    rows = table[table["split"] == split].sort_values("row").reset_index(drop=True)
    if len(rows) != count or not np.array_equal(rows["row"].to_numpy(), np.arange(count)):
        raise DataError(
            f"embedding audit: {splits} names {len(rows)} {split} images but the features cache has {count}; "
            "rerun decode and features (dvc repro features)"
        )
    return rows


def _describe(pairs: Any, names: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per pair: both members, sha256, labels, splits, rows and the similarity."""
    columns: dict[str, list[Any]] = {key: [] for key in ("a", "b", "a_sha256", "b_sha256", "a_label", "b_label")}
    for a_split, a_row, b_split, b_row in zip(pairs.a_split, pairs.a_row, pairs.b_split, pairs.b_row, strict=True):
        first, second = names[a_split].iloc[int(a_row)], names[b_split].iloc[int(b_row)]
        for side, row in (("a", first), ("b", second)):
            columns[side].append(str(row["member"]))
            columns[f"{side}_sha256"].append(str(row["sha256"]))
            columns[f"{side}_label"].append(str(row["label"]))
    table = pd.DataFrame(columns)
    table["a_split"] = [str(s) for s in pairs.a_split]
    table["a_row"] = [int(r) for r in pairs.a_row]
    table["b_split"] = [str(s) for s in pairs.b_split]
    table["b_row"] = [int(r) for r in pairs.b_row]
    table["similarity"] = [round(float(s), 6) for s in pairs.similarity]
    table["label_conflict"] = table["a_label"] != table["b_label"]
    return table


def _write_thumbnails(archive_path: Path, pairs: list[dict[str, Any]], out_dir: Path, limit: int) -> None:
    """Side-by-side thumbnails of the first ``limit`` pairs, from the archive; each pair gets its file name."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    index = []
    for pair in pairs:
        pair["label_conflict"] = bool(pair["label_conflict"])
    if pairs[:limit]:
        if not Path(archive_path).is_file():
            raise DataError(f"embedding audit: {archive_path} is missing (thumbnails are read from it); run download")
        with zipfile.ZipFile(archive_path) as archive:
            for number, pair in enumerate(pairs[:limit], start=1):
                name = f"pair-{number:04d}.jpg"
                write_bytes_atomic(out_dir / name, pair_strip(archive, pair["a"], pair["b"]))
                pair["thumbnail"] = f"{out_dir.name}/{name}"
                index.append({"file": name, "a": pair["a"], "b": pair["b"], "similarity": pair["similarity"]})
    # Always written, so the folder exists (a DVC output) even when no pair is listed.
    write_json_atomic(out_dir / "index.json", index)
