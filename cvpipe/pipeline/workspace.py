"""Scratch workspaces: a copy of the project's DAG in its own git + DVC repo, with params overridden.

``cvpipe demo`` and the end-to-end tests use this, so the real ``dvc.yaml`` runs end to end offline while the
user's ``params.yaml`` and ``data/`` stay untouched.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from cvpipe.config import deep_merge, parse_params, read_overlay
from cvpipe.pipeline.commands import dvc, run_tool

# What a workspace needs from the project: the DAG, its params and the code files stages list as deps.
PROJECT_FILES = ("dvc.yaml", "params.yaml", "bin/cvpipe")
CODE_DIR = "cvpipe"
# An identity for machines that have none (a fresh CI runner); GIT_AUTHOR_*/GIT_COMMITTER_* still win.
_GIT_IDENTITY = ("git", "-c", "user.name=cvpipe", "-c", "user.email=cvpipe@localhost")


def prepare_workspace(project: Path, dest: Path, overrides: Mapping[str, Any]) -> Path:
    """Create ``dest`` as a fresh git + DVC repo holding the project's DAG with ``overrides`` applied.

    Args:
        project: the cvpipe checkout (holds dvc.yaml, params.yaml, cvpipe/).
        dest: the workspace to create; an existing one is replaced.
        overrides: params to merge over the project's params.yaml (validated before anything is written).

    Returns:
        ``dest``.
    """
    project, dest = Path(project).resolve(), Path(dest).resolve()
    merged = deep_merge(read_overlay(project / "params.yaml"), overrides)
    parse_params(merged, origin="demo params")
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for name in PROJECT_FILES:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(project / name, dest / name)
    shutil.copytree(project / CODE_DIR, dest / CODE_DIR, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (dest / "params.yaml").write_text(yaml.safe_dump(merged, sort_keys=False), encoding="utf-8")
    shutil.copy2(project / ".gitignore", dest / ".gitignore")
    run_tool(["git", "init", "-q"], dest)
    run_tool(dvc("init", "-q"), dest)
    run_tool(dvc("config", "core.autostage", "false"), dest)
    # A first commit: dvclive and lineage records read the commit a run is based on.
    run_tool(["git", "add", "-A"], dest)
    run_tool([*_GIT_IDENTITY, "commit", "-qm", "cvpipe workspace"], dest)
    return dest
