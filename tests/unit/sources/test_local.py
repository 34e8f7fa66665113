from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from cvpipe.config import DataConfig, Params
from cvpipe.errors import SourceError
from cvpipe.sources.local import fetch_local
from cvpipe.stages import download
from tests.conftest import jpeg_bytes, write_zip


def test_folder_is_packed_deterministically(tmp_path: Path) -> None:
    folder = tmp_path / "PetImages"
    for label in ("Cat", "Dog"):
        (folder / label).mkdir(parents=True)
        for n in range(3):
            (folder / label / f"{n}.jpg").write_bytes(jpeg_bytes(n + (10 if label == "Dog" else 0)))
    first = fetch_local(folder, "folder", tmp_path / "a.zip")
    fetch_local(folder, "folder", tmp_path / "b.zip")
    assert (tmp_path / "a.zip").read_bytes() == (tmp_path / "b.zip").read_bytes()
    with zipfile.ZipFile(tmp_path / "a.zip") as archive:
        assert archive.namelist() == [f"{label}/{n}.jpg" for label in ("Cat", "Dog") for n in range(3)]
    assert first["local"] == {"path": str(folder), "kind": "folder", "files": 6, "labels": "folder"}


def test_kaggle_style_download_yields_inner_train_zip(tmp_path: Path) -> None:
    inner = write_zip(tmp_path / "train.zip", {"train/cat.0.jpg": jpeg_bytes(0)})
    outer = write_zip(tmp_path / "dogs-vs-cats.zip", {"train.zip": inner.read_bytes(), "test1.zip": b"x"})
    provenance = fetch_local(outer, "filename", tmp_path / "out/images.zip")
    assert (tmp_path / "out/images.zip").read_bytes() == inner.read_bytes()
    assert provenance["local"]["inner_member"] == "train.zip"


def test_plain_zip_is_copied_and_source_record_written(tmp_path: Path) -> None:
    archive = write_zip(tmp_path / "mine.zip", {"train/cat.0.jpg": jpeg_bytes(0)})
    cfg = DataConfig(source="local", path=archive)
    summary = download.run(Params(data=cfg), download.DownloadPaths(tmp_path / "raw", tmp_path / "staging"))
    assert (tmp_path / "raw/images.zip").read_bytes() == archive.read_bytes()
    assert summary.source == "local" and len(summary.archive["sha256"]) == 64
    assert json.loads((tmp_path / "raw/SOURCE.json").read_text()) == summary.record()


@pytest.mark.parametrize("kind", ["missing", "not_zip", "empty_folder"])
def test_bad_local_paths_fail_with_one_line(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "thing"
    if kind == "not_zip":
        path.write_text("hello")
    elif kind == "empty_folder":
        path.mkdir()
    with pytest.raises(SourceError) as caught:
        fetch_local(path, "filename", tmp_path / "out.zip")
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "out.zip").exists()
