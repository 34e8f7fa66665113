"""``cvpipe demo``'s driver: the workspace from the overlay, ``dvc repro`` in it, a failure in one line."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from cvpipe import demo, layout
from cvpipe.errors import CvpipeError


@pytest.fixture
def fake_workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def prepare(project: Path, dest: Path, overrides: dict[str, Any]) -> Path:
        seen["overrides"] = overrides
        (dest / layout.MODELS_DIR).mkdir(parents=True)
        return dest

    def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        seen["argv"], seen["cwd"] = argv, kwargs["cwd"]
        return subprocess.CompletedProcess(argv, seen.get("returncode", 0))

    (tmp_path / "params.demo.yaml").write_text("data:\n  source: synthetic\n")
    monkeypatch.setattr(demo, "prepare_workspace", prepare)
    monkeypatch.setattr(demo.subprocess, "run", run)
    return seen


def test_demo_reproduces_the_workspace_built_from_the_overlay(
    tmp_path: Path, fake_workspace: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    workspace = demo.run_demo(tmp_path, tmp_path / "ws", Path("params.demo.yaml"))
    assert fake_workspace["overrides"] == {"data": {"source": "synthetic"}}
    assert fake_workspace["argv"][-1] == "repro" and fake_workspace["cwd"] == workspace
    out = capsys.readouterr().out
    assert f"  {workspace / layout.MODELS_DIR}\n" in out and "dvc metrics show" in out
    assert str(workspace / layout.RAW_DIR) not in out  # only the folders that exist


def test_a_failed_demo_names_the_workspace(tmp_path: Path, fake_workspace: dict[str, Any]) -> None:
    fake_workspace["returncode"] = 3
    with pytest.raises(CvpipeError, match=r"dvc repro failed in .*ws \(exit 3\)"):
        demo.run_demo(tmp_path, tmp_path / "ws", Path("params.demo.yaml"))
