"""The download stage (cvpipe/stages/download.py): one archive and its SOURCE.json, from any source."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from cvpipe import layout
from cvpipe.config import DataConfig, Params
from cvpipe.stages import download
from tests.conftest import SMALL_SYNTHETIC


def test_paths_default_to_the_layout_table() -> None:
    paths = download.DownloadPaths()
    assert paths.archive == layout.ARCHIVE and paths.source == layout.SOURCE and paths.staging == layout.STAGING_DIR


def test_a_synthetic_source_writes_the_archive_and_a_flat_source_record(tmp_path: Path) -> None:
    params = Params(data=DataConfig(source="synthetic", synthetic=SMALL_SYNTHETIC))
    summary = download.run(params, download.DownloadPaths(tmp_path / "raw", tmp_path / "staging"))
    record = json.loads((tmp_path / "raw" / layout.SOURCE_NAME).read_text())
    assert record == summary.record()
    # Flat, as lineage queries read it: the source's own fields beside the common ones.
    assert {"source", "archive", "retrieved_at", "generator", "seed", "planted"} <= set(record)
    assert summary.provenance["seed"] == SMALL_SYNTHETIC.seed and "provenance" not in record
    assert record["archive"]["path"] == layout.ARCHIVE_NAME
    with zipfile.ZipFile(tmp_path / "raw" / layout.ARCHIVE_NAME) as archive:
        assert len(archive.namelist()) == record["members"]
    assert not (tmp_path / "staging").exists()  # only a Kaggle download is staged
