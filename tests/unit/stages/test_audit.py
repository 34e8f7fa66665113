from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cvpipe.config import AuditConfig, IngestConfig, Params, SplitConfig, SplitCounts
from cvpipe.errors import DataError
from cvpipe.stages import audit as audit_module
from cvpipe.stages.audit import AuditPaths, classify, close_pairs, split_pair


def test_close_pairs_is_a_frame_of_the_candidate_pairs_and_empty_safe() -> None:
    hashes = np.array([0, 1, 0xFFFF_0000], dtype=np.uint64)
    flipped = np.array([0xFFFF_0000 ^ 1, 0xFF, 0xF0], dtype=np.uint64)
    pairs = close_pairs(hashes, flipped, threshold=1)
    assert [tuple(row) for row in pairs.itertuples(index=False)] == [(0, 1, 1, False), (0, 2, 1, True)]
    assert pairs.dtypes.astype(str).tolist() == ["int64", "int64", "int64", "bool"]
    empty = close_pairs(np.array([], dtype=np.uint64), np.array([], dtype=np.uint64), 10)
    assert empty.empty and list(empty.columns) == ["i", "j", "distance", "mirrored"]


def test_pairs_are_classed_by_where_their_images_went() -> None:
    assert classify("train", "test") == "cross_split"
    assert classify("val", "val") == "within_split"
    assert classify("train", "unused") == "one_unused"
    assert classify("unused", "unused") == "unused"
    assert split_pair("test", "train") == "train-test"


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory, synthetic_archive: tuple[Path, dict]) -> dict:
    """The small synthetic archive through ingest and split (no DVC)."""
    from cvpipe.stages import ingest as ingest_module
    from cvpipe.stages import split as split_module
    from cvpipe.stages.ingest import IngestPaths
    from cvpipe.stages.split import SplitPaths

    archive, provenance = synthetic_archive
    folder = tmp_path_factory.mktemp("audit")
    ingest_module.run(Params(ingest=IngestConfig(workers=1)), IngestPaths(archive, folder / "manifest"))
    split_cfg = SplitConfig(per_class=SplitCounts(train=30, val=10, test=15))
    split_module.run(
        Params(split=split_cfg), SplitPaths(folder / "manifest/images.parquet", folder / "splits", archive)
    )
    return {
        "archive": archive,
        "manifest": folder / "manifest/images.parquet",
        "splits": folder / "splits/splits.parquet",
        "planted": provenance["planted"],
        "folder": folder,
    }


def test_every_planted_duplicate_is_found_and_none_crosses_splits(staged: dict) -> None:
    out = staged["folder"] / "audit"
    summary = audit_module.run(
        Params(audit=AuditConfig()), AuditPaths(staged["archive"], staged["manifest"], staged["splits"], out)
    )
    report = json.loads((out / "report.json").read_text())
    exact = {tuple(sorted(group["members"])) for group in report["exact_duplicates"]}
    assert {tuple(sorted(pair)) for pair in staged["planted"]["exact_duplicates"]} <= exact
    near = {tuple(sorted((pair["a"], pair["b"]))) for pair in report["pairs"]}
    assert {tuple(sorted(pair)) for pair in staged["planted"]["near_duplicates"]} <= near
    assert summary.cross_split_pairs == 0 and summary.exact_cross_split == 0 and summary.passed
    assert summary.method.startswith("imagehash.phash") and summary.threshold == 10
    assert report["summary"] == dataclasses.asdict(summary)  # the typed summary is the report's, field for key
    assert summary.rule["measure"] == "ncc" and summary.candidate_pairs >= summary.near_duplicate_pairs
    assert all(pair["score"] >= summary.rule["threshold"] for pair in report["pairs"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["near_duplicate_pairs"] == len(report["pairs"]) == summary.near_duplicate_pairs
    thumbnails = json.loads((out / "thumbnails/index.json").read_text())
    assert len(thumbnails) == len(report["pairs"])  # fewer pairs than audit.thumbnails
    assert all((out / "thumbnails" / entry["file"]).read_bytes()[:2] == b"\xff\xd8" for entry in thumbnails)


def test_a_recomputed_hash_agrees_on_the_planted_pairs(staged: dict) -> None:
    out = staged["folder"] / "audit-dhash"
    summary = audit_module.run(
        Params(audit=AuditConfig(hash="dhash")),
        AuditPaths(staged["archive"], staged["manifest"], staged["splits"], out),
    )
    report = json.loads((out / "report.json").read_text())
    near = {tuple(sorted((pair["a"], pair["b"]))) for pair in report["pairs"]}
    assert {tuple(sorted(pair)) for pair in staged["planted"]["near_duplicates"]} <= near
    assert summary.hash == "dhash" and "dhash" in summary.method


def test_a_leak_fails_the_stage_after_writing_the_report(staged: dict) -> None:
    splits = pd.read_parquet(staged["splits"])
    # Plant a leak: move one image of a planted near-duplicate pair that the split kept together.
    together = [pair for pair in staged["planted"]["near_duplicates"] if splits["member"].isin(pair).sum() == 2]
    assert together, "the small synthetic split uses at least one planted pair"
    moved = splits["member"] == together[0][1]
    other = "test" if splits.loc[moved, "split"].iloc[0] != "test" else "train"
    leaked = splits.assign(split=splits["split"].where(~moved, other))
    leaky = staged["folder"] / "leaky.parquet"
    leaked.to_parquet(leaky, index=False)
    out = staged["folder"] / "audit-leak"
    with pytest.raises(DataError, match=r"1 near-duplicate pair\(s\) across splits"):
        audit_module.run(Params(audit=AuditConfig()), AuditPaths(staged["archive"], staged["manifest"], leaky, out))
    report = json.loads((out / "report.json").read_text())
    assert report["summary"]["cross_split_pairs"] == 1 and not report["summary"]["passed"]
    assert report["pairs"][0]["kind"] == "cross_split" and report["pairs"][0]["thumbnail"]
    allowed = audit_module.run(
        Params(audit=AuditConfig(max_cross_split_pairs=1)),
        AuditPaths(staged["archive"], staged["manifest"], leaky, out),
    )
    assert allowed.passed and allowed.cross_split_pairs_by_splits
