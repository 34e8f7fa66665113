from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cvpipe.config import IngestConfig, NearDuplicateConfig, Params, SplitConfig, SplitCounts, SplitFractions
from cvpipe.errors import DataError
from cvpipe.imaging.confirm import Confirmation
from cvpipe.stages import ingest as ingest_module
from cvpipe.stages import split as split_module
from cvpipe.stages.ingest import IngestPaths
from cvpipe.stages.split import SplitPaths, make_splits

CLASSES = ["cat", "dog"]


def fake_manifest(rows: list[tuple[str, str, str, str]]) -> pd.DataFrame:
    """Rows of (member, label, sha256 seed char, phash hex)."""
    return pd.DataFrame(
        {
            "member": [r[0] for r in rows],
            "label": [r[1] for r in rows],
            "label_index": [CLASSES.index(r[1]) for r in rows],
            "sha256": [r[2] * 64 if len(r[2]) == 1 else r[2] for r in rows],
            "phash": [r[3] for r in rows],
            "phash_flip": ["ffffffffffffffff"] * len(rows),
            "status": ["ok"] * len(rows),
        }
    )


def distinct_hashes(count: int, seed: int = 0) -> list[str]:
    """Random 64-bit hashes; at 64 bits random pairs sit ~32 bits apart, far from any threshold."""
    rng = np.random.default_rng(seed)
    return [f"{int(v):016x}" for v in rng.integers(0, 2**63, size=count, dtype=np.int64)]


def manifest_with(count_per_class: int, seed: int = 0) -> pd.DataFrame:
    hashes = iter(distinct_hashes(2 * count_per_class, seed))
    rows = []
    for label in CLASSES:
        for n in range(count_per_class):
            digest = hashlib.sha256(f"{label}.{n}.{seed}".encode()).hexdigest()
            rows.append((f"train/{label}.{n}.jpg", label, digest, next(hashes)))
    return fake_manifest(rows)


def cfg(train: int = 6, val: int = 2, test: int = 2, seed: int = 1, threshold: int = 10) -> SplitConfig:
    counts = SplitCounts(train=train, val=val, test=test)
    return SplitConfig(seed=seed, per_class=counts, near_duplicate=NearDuplicateConfig(hash_bits=threshold))


@pytest.fixture(autouse=True)
def confirm_every_candidate(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake manifests have no pixels: their hash candidates are confirmed as they are (real runs read images)."""
    if "real" in request.node.name:
        return

    def confirm(candidates, members, archive_path, rule):
        return Confirmation(candidates, np.ones(len(candidates), np.float32), np.ones(len(candidates), bool), 0)

    monkeypatch.setattr(split_module, "confirm_candidates", confirm)


def test_stratified_counts_and_determinism() -> None:
    manifest = manifest_with(20)
    table, _ = make_splits(manifest, cfg(), CLASSES)
    counts = table.groupby(["split", "label"]).size().to_dict()
    assert counts == {(s, c): n for s, n in (("train", 6), ("val", 2), ("test", 2)) for c in CLASSES}
    again, _ = make_splits(manifest.sample(frac=1.0, random_state=5), cfg(), CLASSES)
    pd.testing.assert_frame_equal(table, again)
    other, _ = make_splits(manifest, cfg(seed=2), CLASSES)
    assert set(other["sha256"]) != set(table["sha256"]) or not other["split"].equals(table["split"])
    for split in ("train", "val", "test"):
        rows = table[table["split"] == split]
        assert rows["row"].tolist() == list(range(len(rows)))
        assert rows["sha256"].is_monotonic_increasing


def test_exact_duplicates_collapse_and_near_duplicates_share_a_split() -> None:
    manifest = manifest_with(20)
    # an exact copy of cat.0 under another name, and a near-duplicate (2 bits) of cat.1
    copy = manifest.iloc[[0]].assign(member="train/cat.90.jpg")
    near_hash = f"{int(manifest.loc[1, 'phash'], 16) ^ 0b11:016x}"
    near = manifest.iloc[[1]].assign(member="train/cat.91.jpg", sha256="e" * 64, phash=near_hash)
    manifest = pd.concat([manifest, copy, near], ignore_index=True)
    for seed in range(8):
        table, groups = make_splits(manifest, cfg(train=10, val=4, test=4, seed=seed), CLASSES)
        assert table["sha256"].is_unique
        assert groups.exact_duplicates == [{"kept": "train/cat.0.jpg", "dropped": ["train/cat.90.jpg"]}]
        assert ["train/cat.1.jpg", "train/cat.91.jpg"] in groups.near_duplicate_groups
        pair = table[table["member"].isin(["train/cat.1.jpg", "train/cat.91.jpg"])]
        assert pair["split"].nunique() <= 1


def test_label_conflicts_are_left_out() -> None:
    manifest = manifest_with(12)
    dog_hash = manifest.loc[manifest["member"] == "train/dog.0.jpg", "phash"].iloc[0]
    manifest.loc[manifest["member"] == "train/cat.0.jpg", "phash"] = dog_hash
    table, groups = make_splits(manifest, cfg(), CLASSES)
    assert groups.label_conflicts == [["train/cat.0.jpg", "train/dog.0.jpg"]]
    assert not table["member"].isin(["train/cat.0.jpg", "train/dog.0.jpg"]).any()


def test_too_few_images_names_the_class_and_counts() -> None:
    manifest = manifest_with(9)
    with pytest.raises(DataError, match=r"class 'cat' has 9 usable unique images but the split asks for 10"):
        make_splits(manifest, cfg(), CLASSES)


def test_fractions() -> None:
    fractions = SplitConfig(per_class=None, fractions=SplitFractions(train=0.5, val=0.25, test=0.25))
    table, _ = make_splits(manifest_with(21), fractions, CLASSES)
    counts = table.groupby(["split", "label"]).size().to_dict()
    assert counts[("train", "cat")] == 11 and counts[("val", "cat")] == 5 and counts[("test", "cat")] == 5


def test_run_split_on_real_manifest(synthetic_archive, tmp_path: Path) -> None:
    archive, provenance = synthetic_archive
    ingest_module.run(Params(ingest=IngestConfig()), IngestPaths(archive, tmp_path / "manifest"))
    manifest_path = tmp_path / "manifest/images.parquet"
    split_cfg = cfg(train=30, val=10, test=15)
    split_module.run(Params(split=split_cfg), SplitPaths(manifest_path, tmp_path / "a", archive))
    split_module.run(Params(split=split_cfg), SplitPaths(manifest_path, tmp_path / "b", archive))
    assert (tmp_path / "a/splits.parquet").read_bytes() == (tmp_path / "b/splits.parquet").read_bytes()
    report = json.loads((tmp_path / "a/report.json").read_text())
    table = pd.read_parquet(tmp_path / "a/splits.parquet")
    manifest = pd.read_parquet(manifest_path).set_index("member")
    assert provenance["planted"]["exact_duplicates"] and provenance["planted"]["near_duplicates"]
    for original, copy in provenance["planted"]["exact_duplicates"]:
        kept = min(original, copy)
        assert {"kept": kept, "dropped": [max(original, copy)]} in report["exact_duplicates"]
    for original, variant in provenance["planted"]["near_duplicates"]:
        assert any({original, variant} <= set(group) for group in report["near_duplicate_groups"])
        in_split = table[table["member"].isin([original, variant])]
        assert in_split["split"].nunique() <= 1
    assert report["schema_failures"] == []
    assert manifest.loc[table["member"], "sha256"].tolist() == table["sha256"].tolist()


def test_a_candidate_explosion_fails_with_one_line_naming_the_parameter() -> None:
    manifest = manifest_with(20)
    manifest["phash"] = "0" * 16  # every pair a candidate: 780
    limited = cfg().model_copy(update={"near_duplicate": NearDuplicateConfig(max_candidates=100)})
    with pytest.raises(DataError) as error:
        make_splits(manifest, limited, CLASSES)
    message = str(error.value)
    assert "\n" not in message and "split.near_duplicate.max_candidates=100" in message
    assert "split.near_duplicate.hash_bits=10" in message and "among 40 images" in message


def test_the_guard_stops_the_split_after_writing_its_report(tmp_path: Path) -> None:
    manifest = manifest_with(40)
    # 30 cats share one hash: one confirmed group of 30 (mocked confirmation), past max_group_size=25.
    manifest.loc[:29, "phash"] = manifest.loc[0, "phash"]
    (tmp_path / "m").mkdir()
    manifest.to_parquet(tmp_path / "m/images.parquet")
    paths = SplitPaths(tmp_path / "m/images.parquet", tmp_path / "s", tmp_path / "no-archive.zip")
    with pytest.raises(DataError) as error:
        split_module.run(Params(split=cfg()), paths)
    message = str(error.value)
    assert "\n" not in message and "the largest group holds 30 images" in message
    assert (
        "split.near_duplicate.max_group_size=25" in message and "groups hold 30 of 40 images of class 'cat'" in message
    )
    report = json.loads(paths.report.read_text())
    assert report["error"] in message and report["near_duplicates"]["largest_groups"][0]["size"] == 30
    assert report["policy"]["near_duplicate"]["threshold"] == 0.993 and not paths.splits.exists()


def test_a_class_short_because_of_mixed_label_groups_names_that_cause() -> None:
    manifest = manifest_with(11)
    # cat.0 and cat.1 look like dog.0 and dog.1: both groups carry two labels and are left out, 9 cats are left.
    for n in (0, 1):
        dog = manifest.loc[manifest["member"] == f"train/dog.{n}.jpg", "phash"].iloc[0]
        manifest.loc[manifest["member"] == f"train/cat.{n}.jpg", "phash"] = dog
    with pytest.raises(DataError) as error:
        make_splits(manifest, cfg(), CLASSES)
    message = str(error.value)
    assert "class 'cat' has 9 usable unique images but the split asks for 10" in message
    assert "2 of its images were left out in near-duplicate groups with another label" in message


def test_real_split_writes_a_thumbnail_strip_per_listed_group(synthetic_archive, tmp_path: Path) -> None:
    from PIL import Image

    archive, _ = synthetic_archive
    ingest_module.run(Params(ingest=IngestConfig()), IngestPaths(archive, tmp_path / "manifest"))
    paths = SplitPaths(tmp_path / "manifest/images.parquet", tmp_path / "s", archive)
    split_module.run(Params(split=cfg(train=30, val=10, test=15)), paths)
    groups = json.loads(paths.report.read_text())["near_duplicates"]["largest_groups"]
    assert groups, "the synthetic archive plants near-duplicates"
    index = json.loads((paths.thumbnails / "index.json").read_text())
    assert [entry["file"] for entry in index] == [f"group-{n:02d}.jpg" for n in range(1, len(groups) + 1)]
    for group in groups:
        assert group["thumbnail_members"] == group["members"][:8]
        with Image.open(paths.out / group["thumbnail"]) as strip:
            assert strip.format == "JPEG" and strip.height == 96
            assert strip.width == len(group["thumbnail_members"]) * 100 - 4


def test_the_guard_report_has_thumbnails_of_the_largest_group(tmp_path: Path) -> None:
    import io
    import zipfile

    from PIL import Image

    manifest = manifest_with(40)
    manifest.loc[:29, "phash"] = manifest.loc[0, "phash"]  # one group of 30 cats, past max_group_size=25
    (tmp_path / "m").mkdir()
    manifest.to_parquet(tmp_path / "m/images.parquet")
    with zipfile.ZipFile(tmp_path / "images.zip", "w") as archive:
        for number, member in enumerate(manifest["member"]):
            buffer = io.BytesIO()
            Image.new("RGB", (40, 30), (number * 3, 100, 200)).save(buffer, format="JPEG")
            archive.writestr(member, buffer.getvalue())
    paths = SplitPaths(tmp_path / "m/images.parquet", tmp_path / "s", tmp_path / "images.zip")
    with pytest.raises(DataError, match="the largest group holds 30 images"):
        split_module.run(Params(split=cfg()), paths)
    (group,) = json.loads(paths.report.read_text())["near_duplicates"]["largest_groups"]
    assert group["size"] == 30 and group["thumbnail"] == "thumbnails/group-01.jpg"
    assert group["thumbnail_members"] == sorted(manifest["member"][:30])[:8]
    with Image.open(paths.out / group["thumbnail"]) as strip:
        assert strip.size == (8 * 100 - 4, 96)
    # A rerun with no group leaves no stale strip behind.
    manifest_with(40).to_parquet(tmp_path / "m/images.parquet")
    split_module.run(Params(split=cfg()), paths)
    assert json.loads((paths.thumbnails / "index.json").read_text()) == []
    assert not list(paths.thumbnails.glob("*.jpg"))
