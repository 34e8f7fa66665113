from __future__ import annotations

import pandas as pd

from cvpipe.schemas import validate_manifest, validate_split

SHA = "a" * 64


def manifest_row(**overrides: object) -> dict:
    row = {
        "member": "train/cat.0.jpg",
        "label": "cat",
        "label_index": 0,
        "sha256": SHA,
        "bytes": 10,
        "width": 50,
        "height": 40,
        "mode": "RGB",
        "format": "JPEG",
        "phash": "0" * 16,
        "phash_flip": "f" * 16,
        "fourier": "0" * 16,
        "fourier_flip": "f" * 16,
        "status": "ok",
        "reason": "",
    }
    return row | overrides


def test_valid_manifest_has_no_failures() -> None:
    frame = pd.DataFrame(
        [
            manifest_row(),
            manifest_row(
                member="x",
                status="quarantined",
                reason="empty file",
                sha256="",
                phash="",
                phash_flip="",
                label="",
                label_index=-1,
            ),
        ]
    )
    assert validate_manifest(frame, ["cat", "dog"], 16) == []


def test_manifest_failures_are_all_collected() -> None:
    frame = pd.DataFrame(
        [
            manifest_row(),
            manifest_row(),  # duplicate member
            manifest_row(member="b", sha256="xyz"),  # bad hash
            manifest_row(member="c", status="quarantined"),  # quarantined without a reason
            manifest_row(member="d", label="horse"),  # unknown class
            manifest_row(member="e", width=3),  # smaller than min_side
            manifest_row(member="f", phash=""),  # ok row without a perceptual hash
        ]
    )
    failures = validate_manifest(frame, ["cat", "dog"], 16)
    text = str(failures)
    for needle in ("member", "sha256", "reason_iff_quarantined", "ok_rows_are_complete", "d: 'horse'", "e: 3x40"):
        assert needle in text, needle
    assert len(failures) >= 6


def split_row(**overrides: object) -> dict:
    row = {"split": "train", "row": 0, "member": "m0", "sha256": SHA, "label": "cat", "label_index": 0, "group": SHA}
    return row | overrides


def test_split_schema_catches_overlap_and_straddling_groups() -> None:
    ok = pd.DataFrame([split_row(), split_row(split="val", member="m1", sha256="b" * 64, group="b" * 64)])
    assert validate_split(ok) == []
    overlap = pd.DataFrame([split_row(), split_row(split="test", member="m1")])
    assert "sha256" in str(validate_split(overlap))
    straddle = pd.DataFrame([split_row(), split_row(split="val", member="m1", sha256="b" * 64)])
    assert "group_in_one_split" in str(validate_split(straddle))
    unknown = pd.DataFrame([split_row(split="holdout")])
    assert "isin" in str(validate_split(unknown))
