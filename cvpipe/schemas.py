"""pandera schemas for the manifest and the split, validated lazily so every failure is reported at once.

A validation failure never raises from here: the failures come back as a list of records, which the stage
writes into its report (one row per failing check and value) before failing with a summary line.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors
from pandera.typing import Series

from cvpipe.config import SPLITS

_SHA256 = r"^[0-9a-f]{64}$"
_SHA256_OR_EMPTY = r"^([0-9a-f]{64})?$"
_PHASH_OR_EMPTY = r"^([0-9a-f]{16})?$"


class ManifestSchema(pa.DataFrameModel):
    """One row per archive member (``data/manifest/images.parquet``)."""

    # An empty name is allowed on a quarantined row only (a hostile archive's entry, reported, never read).
    member: Series[str] = pa.Field(unique=True)
    label: Series[str]
    label_index: Series[int] = pa.Field(ge=-1)
    sha256: Series[str] = pa.Field(str_matches=_SHA256_OR_EMPTY)
    bytes: Series[int] = pa.Field(ge=0)
    width: Series[int] = pa.Field(ge=0)
    height: Series[int] = pa.Field(ge=0)
    mode: Series[str]
    format: Series[str]
    phash: Series[str] = pa.Field(str_matches=_PHASH_OR_EMPTY)
    phash_flip: Series[str] = pa.Field(str_matches=_PHASH_OR_EMPTY)
    # The shift-tolerant second candidate hash (cvpipe.imaging.hashes.fourier_hash_pair), same form.
    fourier: Series[str] = pa.Field(str_matches=_PHASH_OR_EMPTY)
    fourier_flip: Series[str] = pa.Field(str_matches=_PHASH_OR_EMPTY)
    status: Series[str] = pa.Field(isin=["ok", "quarantined"])
    reason: Series[str]

    class Config:
        """Only these columns, in this order."""

        strict = True
        ordered = True

    @pa.dataframe_check
    def reason_iff_quarantined(cls, frame: pd.DataFrame) -> Series[bool]:
        """A quarantined row says why; an ok row has no reason."""
        return (frame["status"] == "quarantined") == (frame["reason"] != "")

    @pa.dataframe_check
    def ok_rows_are_complete(cls, frame: pd.DataFrame) -> Series[bool]:
        """An ok row has a content hash, a label, a size and both perceptual hashes."""
        ok = frame["status"] == "ok"
        complete = (
            frame["sha256"].str.len().eq(64)
            & frame["member"].ne("")
            & frame["label"].ne("")
            & frame["label_index"].ge(0)
            & frame["width"].gt(0)
            & frame["height"].gt(0)
            & frame["phash"].str.len().eq(16)
            & frame["fourier"].str.len().eq(16)
        )
        return ~ok | complete


class SplitSchema(pa.DataFrameModel):
    """One row per image in a split (``data/splits/splits.parquet``); sha256 unique makes splits disjoint."""

    split: Series[str] = pa.Field(isin=list(SPLITS))
    row: Series[int] = pa.Field(ge=0)
    member: Series[str] = pa.Field(unique=True)
    sha256: Series[str] = pa.Field(unique=True, str_matches=_SHA256)
    label: Series[str]
    label_index: Series[int] = pa.Field(ge=0)
    group: Series[str] = pa.Field(str_matches=_SHA256)

    class Config:
        """Only these columns, in this order."""

        strict = True
        ordered = True

    @pa.dataframe_check
    def group_in_one_split(cls, frame: pd.DataFrame) -> Series[bool]:
        """Near-duplicate groups never straddle splits (the leak this stage exists to prevent)."""
        splits_per_group = frame.groupby("group")["split"].transform("nunique")
        return splits_per_group == 1


def _failure_records(error: SchemaErrors) -> list[dict[str, Any]]:
    cases = error.failure_cases
    columns = [name for name in ("schema_context", "column", "check", "failure_case", "index") if name in cases]
    records = cases[columns].astype(str).to_dict(orient="records")
    return sorted(records, key=lambda record: tuple(record.values()))


def validate_manifest(manifest: pd.DataFrame, classes: Sequence[str], min_side: int) -> list[dict[str, Any]]:
    """Validate a manifest; return the failure table as records (empty when valid)."""
    failures: list[dict[str, Any]] = []
    try:
        ManifestSchema.validate(manifest, lazy=True)
    except SchemaErrors as error:
        failures = _failure_records(error)
    ok = manifest[manifest["status"] == "ok"]
    unknown = ok[~ok["label"].isin(list(classes))]
    for member, label in zip(unknown["member"], unknown["label"], strict=True):
        case = f"{member}: '{label}'"
        failures.append({"column": "label", "check": f"isin({list(classes)})", "failure_case": case})
    small = ok[(ok["width"] < min_side) | (ok["height"] < min_side)]
    for member, width, height in zip(small["member"], small["width"], small["height"], strict=True):
        case = f"{member}: {width}x{height}"
        failures.append({"column": "width/height", "check": f">= {min_side}", "failure_case": case})
    return failures


def validate_split(split: pd.DataFrame) -> list[dict[str, Any]]:
    """Validate a split table; return the failure table as records (empty when valid)."""
    try:
        SplitSchema.validate(split, lazy=True)
    except SchemaErrors as error:
        return _failure_records(error)
    return []
