from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import pytest

from cvpipe.config import DataConfig, Params
from cvpipe.errors import SourceError
from cvpipe.sources import local as local_module
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


# Issue 15: silent drops and leaks.


def test_a_zip_with_images_and_an_inner_train_zip_fails_naming_both(tmp_path: Path) -> None:
    inner = write_zip(tmp_path / "train.zip", {"train/cat.0.jpg": jpeg_bytes(0)})
    members = {"train.zip": inner.read_bytes(), **{f"train/dog.{n}.jpg": jpeg_bytes(n) for n in range(24)}}
    outer = write_zip(tmp_path / "mixed.zip", members)
    with pytest.raises(SourceError, match=r"holds train.zip and 24 image\(s\) beside it \(e.g. train/dog.0.jpg\)"):
        fetch_local(outer, "filename", tmp_path / "out.zip")
    assert not (tmp_path / "out.zip").exists()


@pytest.mark.parametrize("given", ["", ".", "sub/.."])
def test_a_path_holding_the_workspace_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, given: str) -> None:
    """``data.path: ""`` packed .git, .env and .dvc/ into the DVC-tracked archive."""
    (tmp_path / "sub").mkdir()
    (tmp_path / ".env").write_text("KAGGLE_KEY=secret")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SourceError, match=r"holds the workspace|data\.path is empty"):
        fetch_local(Path(given) if given else given, "filename", tmp_path / "data/raw/images.zip")  # type: ignore[arg-type]
    assert not (tmp_path / "data/raw/images.zip").exists()
    with pytest.raises(SourceError, match=r"data\.path '\.' holds the workspace"):  # pydantic reads "" as "."
        download.run(Params(data=DataConfig(source="local", path="")), download.DownloadPaths(tmp_path / "raw"))


def test_symlinks_in_a_folder_are_packed_as_links_never_followed(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("the secret")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "cat.5.jpg").write_bytes(jpeg_bytes(5))
    folder = tmp_path / "images" / "train"
    folder.mkdir(parents=True)
    (folder / "cat.0.jpg").write_bytes(jpeg_bytes(0))
    (folder / "dog.0.jpg").symlink_to(secret)
    (folder / "linked").symlink_to(elsewhere, target_is_directory=True)
    provenance = fetch_local(folder.parent, "filename", tmp_path / "out.zip")
    assert provenance["local"]["files"] == 1 and provenance["local"]["symlinks"] == 2
    assert b"the secret" not in (tmp_path / "out.zip").read_bytes()
    from cvpipe.config import IngestConfig
    from cvpipe.stages.ingest import build_manifest

    manifest = build_manifest(tmp_path / "out.zip", IngestConfig(workers=1), "filename", ["cat", "dog"])
    reasons = dict(zip(manifest["member"], manifest["reason"], strict=True))
    assert reasons["train/dog.0.jpg"].startswith("symbolic link") and reasons["train/linked"].startswith("symbolic")
    assert reasons["train/cat.0.jpg"] == ""


def test_a_folder_holding_only_kaggles_train_zip_names_the_fix(tmp_path: Path) -> None:
    folder = tmp_path / "download"
    folder.mkdir()
    write_zip(folder / "train.zip", {"train/cat.0.jpg": jpeg_bytes(0)})
    (folder / "sampleSubmission.csv").write_text("id,label\n")
    with pytest.raises(SourceError, match=f"point data.path at {folder / 'train.zip'} itself"):
        fetch_local(folder, "filename", tmp_path / "out.zip")


def test_unreadable_files_and_non_utf8_names_fail_with_one_line_naming_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "cat.0.jpg").write_bytes(jpeg_bytes(0))
    odd = os.fsdecode(b"cat.1.\xff.jpg")
    (folder / odd).write_bytes(jpeg_bytes(1))
    with pytest.raises(SourceError, match=r"b'cat.1.\\xff.jpg' is not valid UTF-8"):
        fetch_local(folder, "filename", tmp_path / "out.zip")
    (folder / odd).unlink()
    locked = folder / "cat.2.jpg"
    locked.write_bytes(jpeg_bytes(2))
    real_open = open

    def refusing(file: Path, *args: object, **kwargs: object) -> object:
        if Path(file) == locked:  # as chmod 000 does (this test may run as root, which ignores modes)
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(local_module, "open", refusing, raising=False)
    with pytest.raises(SourceError, match=r"cat\.2\.jpg: permission denied"):
        fetch_local(folder, "filename", tmp_path / "out.zip")
    assert not (tmp_path / "out.zip").exists()
