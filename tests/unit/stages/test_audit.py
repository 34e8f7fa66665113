from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cvpipe.config import AuditConfig, IngestConfig, SplitConfig, SplitCounts
from cvpipe.errors import DataError
from cvpipe.stages.audit import classify, close_pairs, run_audit, split_pair


def _bits(*positions: int) -> int:
    return sum(1 << p for p in positions)


def test_close_pairs_measures_distance_through_the_mirror_both_ways() -> None:
    base = 0xF0F0_F0F0_0F0F_0F0F
    hashes = np.array([base, base ^ _bits(1, 2, 3), 0x1234_5678_9ABC_DEF0, 0], dtype=np.uint64)
    flipped = np.array([0xFFFF, 0xAAAA, 0x5555, 0x0123_4567_89AB_CDEF], dtype=np.uint64)
    # Image 3's mirror is exactly image 2's hash except 2 bits: found only through the mirror, from j's side.
    flipped[3] = np.uint64(int(hashes[2]) ^ _bits(5, 9))
    pairs = close_pairs(hashes, flipped, threshold=3)
    found = {(int(i), int(j)): (int(d), bool(m)) for i, j, d, m in pairs.itertuples(index=False)}
    assert found == {(0, 1): (3, False), (2, 3): (2, True)}
    assert close_pairs(hashes, flipped, threshold=2).shape[0] == 1


def test_close_pairs_is_blocked_and_empty_safe() -> None:
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**63, size=2100, dtype=np.uint64)
    hashes[2050] = hashes[3] ^ np.uint64(1)  # across a block boundary
    pairs = close_pairs(hashes, hashes.copy(), threshold=1)
    assert [(int(i), int(j)) for i, j in pairs[["i", "j"]].itertuples(index=False)] == [(3, 2050)]
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
    from cvpipe.stages.ingest import run_ingest
    from cvpipe.stages.split import run_split

    archive, provenance = synthetic_archive
    folder = tmp_path_factory.mktemp("audit")
    run_ingest(archive, folder / "manifest", IngestConfig(workers=1), "filename", ["cat", "dog"])
    split_cfg = SplitConfig(per_class=SplitCounts(train=30, val=10, test=15))
    run_split(folder / "manifest/images.parquet", folder / "splits", split_cfg, ["cat", "dog"])
    return {
        "archive": archive,
        "manifest": folder / "manifest/images.parquet",
        "splits": folder / "splits/splits.parquet",
        "planted": provenance["planted"],
        "folder": folder,
    }


def test_every_planted_duplicate_is_found_and_none_crosses_splits(staged: dict) -> None:
    out = staged["folder"] / "audit"
    summary = run_audit(staged["archive"], staged["manifest"], staged["splits"], out, AuditConfig())
    report = json.loads((out / "report.json").read_text())
    exact = {tuple(sorted(group["members"])) for group in report["exact_duplicates"]}
    assert {tuple(sorted(pair)) for pair in staged["planted"]["exact_duplicates"]} <= exact
    near = {tuple(sorted((pair["a"], pair["b"]))) for pair in report["pairs"]}
    assert {tuple(sorted(pair)) for pair in staged["planted"]["near_duplicates"]} <= near
    assert summary["cross_split_pairs"] == 0 and summary["exact_cross_split"] == 0 and summary["passed"]
    assert summary["method"].startswith("imagehash.phash") and summary["threshold"] == 10
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["near_duplicate_pairs"] == len(report["pairs"]) == summary["near_duplicate_pairs"]
    thumbnails = json.loads((out / "thumbnails/index.json").read_text())
    assert len(thumbnails) == len(report["pairs"])  # fewer pairs than audit.thumbnails
    assert all((out / "thumbnails" / entry["file"]).read_bytes()[:2] == b"\xff\xd8" for entry in thumbnails)


def test_a_recomputed_hash_agrees_on_the_planted_pairs(staged: dict) -> None:
    out = staged["folder"] / "audit-dhash"
    summary = run_audit(staged["archive"], staged["manifest"], staged["splits"], out, AuditConfig(hash="dhash"))
    report = json.loads((out / "report.json").read_text())
    near = {tuple(sorted((pair["a"], pair["b"]))) for pair in report["pairs"]}
    assert {tuple(sorted(pair)) for pair in staged["planted"]["near_duplicates"]} <= near
    assert summary["hash"] == "dhash" and "dhash" in summary["method"]


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
        run_audit(staged["archive"], staged["manifest"], leaky, out, AuditConfig())
    report = json.loads((out / "report.json").read_text())
    assert report["summary"]["cross_split_pairs"] == 1 and not report["summary"]["passed"]
    assert report["pairs"][0]["kind"] == "cross_split" and report["pairs"][0]["thumbnail"]
    allowed = run_audit(staged["archive"], staged["manifest"], leaky, out, AuditConfig(max_cross_split_pairs=1))
    assert allowed["passed"] and allowed["cross_split_pairs_by_splits"]
