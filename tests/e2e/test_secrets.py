"""A fake Kaggle key, in the environment and in ``kaggle.json``, is written into no file, log or report.

The full runs are checked where they already happen, with the helpers here:

- ``test_kaggle_repro``: ``dvc repro`` with the key in ``kaggle.json`` only; a refused download (``dvc repro
  -v``) then a complete one; every file of the workspace (``dvc.lock``, ``.dvc/tmp``, DVC's cache, lineage
  records, reports), DVC's site cache (state and index databases) and the home folder.
- ``test_prefect_flow``: flow runs with the key in the environment and in ``kaggle.json``, one failing and one
  retried by Prefect; the runs' logs, artifacts, states and parameters read back through the server's API,
  the server's database, the run record, every file of the workspace.
- ``test_lineage_e2e``: the whole DAG with the key in the environment; every file of the workspace.

Here: the stage command by hand with ``--debug`` (debug logs, tracebacks) failing in two ways.

A key is looked for as written and inside the HTTP Basic credentials the client sends (base64 of
``user:key``), which is how it would appear if request headers were logged. Git's objects are compressed,
so ``.git`` is not searched; everything it holds is also a file of the workspace.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest
import yaml

from cvpipe.config import deep_merge
from tests.e2e.test_dvc_pipeline import ROOT
from tests.support.fake_kaggle import DROP, FakeKaggle, Reply, competition_archive

pytestmark = pytest.mark.slow


def secret_forms(username: str, key: str) -> list[bytes]:
    """The key as written, and the ``Authorization: Basic`` value that carries it."""
    return [key.encode(), base64.b64encode(f"{username}:{key}".encode())]


def assert_no_secret(text: str | bytes, secrets: Iterable[bytes], where: str) -> None:
    """Fail naming ``where`` if ``text`` holds any of ``secrets``."""
    data = text.encode() if isinstance(text, str) else text
    for secret in secrets:
        assert secret not in data, f"a Kaggle secret is written in {where}"


def assert_no_secret_in_files(roots: Iterable[Path], secrets: Iterable[bytes], allowed: Iterable[Path] = ()) -> int:
    """Search every file under ``roots`` (``.git`` aside) for ``secrets``; return how many files were read.

    Args:
        roots: folders (or files) to search; missing ones are skipped.
        secrets: from :func:`secret_forms`.
        allowed: files that hold the secret by design (the user's ``kaggle.json``).
    """
    forms, skip = list(secrets), {Path(path).resolve() for path in allowed}
    checked = 0
    for root in map(Path, roots):
        paths = [root] if root.is_file() else root.rglob("*") if root.is_dir() else []
        for path in paths:
            if path.is_file() and not path.is_symlink() and ".git" not in path.parts and path.resolve() not in skip:
                assert_no_secret(path.read_bytes(), forms, str(path))
                checked += 1
    return checked


def write_kaggle_json(config_dir: Path, username: str, key: str) -> Path:
    """Save ``kaggle.json`` as Kaggle's settings page gives it, readable by its owner only."""
    config_dir.mkdir(parents=True, exist_ok=True)
    path = config_dir / "kaggle.json"
    path.write_text(json.dumps({"username": username, "key": key}))
    path.chmod(0o600)
    return path


def kaggle_client_env(kaggle: FakeKaggle, home: Path) -> dict[str, str]:
    """The client's environment: the key in it and in ``home/.kaggle/kaggle.json``, the fake server, no proxy.

    Both places at once, as a user may well have it.
    """
    key_file = write_kaggle_json(home / ".kaggle", kaggle.username, kaggle.key)
    return {
        "HOME": str(home),
        "KAGGLE_CONFIG_DIR": str(key_file.parent),
        "KAGGLE_USERNAME": kaggle.username,
        "KAGGLE_KEY": kaggle.key,
        "CVPIPE_KAGGLE_ENDPOINT": kaggle.endpoint,
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }


def test_the_download_stage_with_debug_failing_writes_the_key_nowhere(tmp_path: Path) -> None:
    outer, _ = competition_archive(per_class=3)
    project, home = tmp_path / "project", tmp_path / "home"
    project.mkdir()
    # The project's dvc.yaml and params: the stage then records its lineage as under `dvc repro`.
    shutil.copy2(ROOT / "dvc.yaml", project / "dvc.yaml")
    params = deep_merge(
        yaml.safe_load((ROOT / "params.yaml").read_text()), {"data": {"source": "kaggle", "retries": 0}}
    )
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    with FakeKaggle(outer) as kaggle:
        env = {**os.environ, **kaggle_client_env(kaggle, home)}
        secrets = secret_forms(kaggle.username, kaggle.key)
        # Kaggle turns the key down; then the connection drops: each ends in a traceback.
        kaggle.script("download", Reply(401, "Unauthenticated"))
        rejected = _debug_download(project, env)
        kaggle.script("download", DROP)
        dropped = _debug_download(project, env)
    assert rejected.returncode == 1 and "Kaggle rejected the credentials (401)" in rejected.stderr
    assert dropped.returncode == 1 and "connection to 127.0.0.1" in dropped.stderr
    for run in (rejected, dropped):
        assert "Traceback (most recent call last)" in run.stderr and " DEBUG " in run.stderr
        assert_no_secret(run.stdout + run.stderr, secrets, "the output of cvpipe --debug download")
    events = (project / "reports/lineage/download/events.jsonl").read_text().splitlines()
    assert [json.loads(line)["eventType"] for line in events][-1] == "FAIL"  # lineage of the failures: searched
    assert assert_no_secret_in_files([project, home], secrets, allowed=[home / ".kaggle" / "kaggle.json"]) >= 3


def _debug_download(project: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "cvpipe.cli", "--debug", "download"]
    return subprocess.run(argv, cwd=project, env=env, capture_output=True, text=True, timeout=300, check=False)
