"""`dvc repro` with data.source=kaggle: the real client, through the CLI and DVC, against a fake Kaggle."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cvpipe.workspace import prepare_workspace
from tests.conftest import jpeg_bytes, write_zip
from tests.e2e.test_dvc_pipeline import ROOT, repro
from tests.support.fake_kaggle import FakeKaggle

pytestmark = pytest.mark.slow


def test_kaggle_source_end_to_end_without_leaking_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    members = {
        f"train/{label}.{n}.jpg": jpeg_bytes(2 * n + k) for k, label in enumerate(("cat", "dog")) for n in range(16)
    }
    train = write_zip(tmp_path / "train.zip", members).read_bytes()
    outer = write_zip(tmp_path / "outer.zip", {"sampleSubmission.csv": b"id,label\n", "train.zip": train}).read_bytes()
    overrides = {"data": {"source": "kaggle"}, "split": {"per_class": {"train": 8, "val": 3, "test": 4}}}
    workspace = prepare_workspace(ROOT, tmp_path / "ws", overrides)
    with FakeKaggle(outer) as fake:
        monkeypatch.setenv("HOME", str(tmp_path / "home"))
        monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "home/.kaggle"))
        monkeypatch.setenv("KAGGLE_USERNAME", fake.username)
        monkeypatch.setenv("KAGGLE_KEY", fake.key)
        monkeypatch.setenv("CVPIPE_KAGGLE_ENDPOINT", fake.endpoint)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
        ran, _ = repro(workspace, "decode")
        assert ran == {"download", "ingest", "split", "decode"}
        assert repro(workspace, "decode")[0] == set()
    assert (workspace / "data/raw/images.zip").read_bytes() == train
    record = json.loads((workspace / "data/raw/SOURCE.json").read_text())
    assert record["competition"] == "dogs-vs-cats"
    assert record["download"]["last_modified"] == "Wed, 21 Oct 2015 07:28:00 GMT"
    for path in workspace.rglob("*"):
        if path.is_file() and ".git" not in path.parts and path.stat().st_size < 5_000_000:
            data = path.read_bytes()
            assert fake.key.encode() not in data, path
            assert fake.username.encode() not in data or path.name == "params.yaml", path
    assert os.environ["KAGGLE_KEY"] == fake.key
