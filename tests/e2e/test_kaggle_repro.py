"""`dvc repro` with data.source=kaggle: the real client, through the CLI and DVC, against a fake Kaggle."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from cvpipe.pipeline.commands import dvc, run_tool
from cvpipe.pipeline.workspace import prepare_workspace
from tests.conftest import jpeg_bytes, write_zip
from tests.e2e.test_dvc_pipeline import DATA_STAGES, ROOT
from tests.e2e.test_secrets import assert_no_secret, assert_no_secret_in_files, secret_forms, write_kaggle_json
from tests.support.fake_kaggle import FakeKaggle, Reply

pytestmark = pytest.mark.slow


def test_kaggle_source_end_to_end_without_leaking_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    members = {
        f"train/{label}.{n}.jpg": jpeg_bytes(2 * n + k) for k, label in enumerate(("cat", "dog")) for n in range(16)
    }
    train = write_zip(tmp_path / "train.zip", members).read_bytes()
    outer = write_zip(tmp_path / "outer.zip", {"sampleSubmission.csv": b"id,label\n", "train.zip": train}).read_bytes()
    overrides = {"data": {"source": "kaggle"}, "split": {"per_class": {"train": 8, "val": 3, "test": 4}}}
    workspace = prepare_workspace(ROOT, tmp_path / "ws", overrides)
    home, site_cache = tmp_path / "home", tmp_path / "dvc-site-cache"
    with FakeKaggle(outer) as fake:
        # The credentials come from kaggle.json only (the environment's are covered by test_prefect_flow).
        key_file = write_kaggle_json(home / ".kaggle", fake.username, fake.key)
        monkeypatch.setenv("HOME", str(home))
        monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(key_file.parent))
        monkeypatch.setenv("CVPIPE_KAGGLE_ENDPOINT", fake.endpoint)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
        # DVC's state and index databases, outside the workspace: searched too.
        monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(site_cache))
        # First the rules are not accepted (403): the stage fails, DVC verbose.
        fake.script("download", Reply(403, "You must accept this competition's rules before you can download"))
        refused = run_tool(dvc("repro", "-v", "decode"), workspace, check=False)
        assert refused.returncode != 0 and "accept the competition rules" in refused.stdout + refused.stderr
        completed = run_tool(dvc("repro", "decode"), workspace)
        assert set(re.findall(r"Running stage '([^']+)'", completed.stdout)) == set(DATA_STAGES)
        assert "Running stage" not in run_tool(dvc("repro", "decode"), workspace).stdout
    assert (workspace / "data/raw/images.zip").read_bytes() == train
    record = json.loads((workspace / "data/raw/SOURCE.json").read_text())
    assert record["competition"] == "dogs-vs-cats"
    assert record["download"]["last_modified"] == "Wed, 21 Oct 2015 07:28:00 GMT"
    secrets = secret_forms(fake.username, fake.key)
    for run in (refused, completed):
        assert_no_secret(run.stdout + run.stderr, secrets, "dvc repro's output")
    assert (workspace / ".dvc/tmp").is_dir() and any(site_cache.rglob("*.db"))
    assert assert_no_secret_in_files([workspace, site_cache, home], secrets, allowed=[key_file]) > 50
    assert "KAGGLE_KEY" not in os.environ
