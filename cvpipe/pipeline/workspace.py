"""Scratch workspaces: a copy of the project's DAG in its own git + DVC repo, with params overridden.

``make demo`` and the end-to-end tests use this, so the real ``dvc.yaml`` runs end to end offline while the
user's ``params.yaml`` and ``data/`` stay untouched.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from cvpipe.config import parse_params
from cvpipe.errors import ConfigError, CvpipeError

log = logging.getLogger(__name__)

# What a workspace needs from the project: the DAG, its params and the code files stages list as deps.
PROJECT_FILES = ("dvc.yaml", "params.yaml")
CODE_DIR = "cvpipe"
# An identity for machines that have none (a fresh CI runner); GIT_AUTHOR_*/GIT_COMMITTER_* still win.
_GIT_IDENTITY = ("git", "-c", "user.name=cvpipe", "-c", "user.email=cvpipe@localhost")


def deep_merge(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``base`` with ``overlay`` merged in, recursively for nested mappings."""
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def tool_env() -> dict[str, str]:
    """Environment for DVC and the stage commands: this interpreter's scripts first, no telemetry."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("DVC_NO_ANALYTICS", "1")
    env.setdefault("DO_NOT_TRACK", "1")
    return env


def run_tool(args: Sequence[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command (e.g. ``dvc repro``) in ``cwd``, streaming nothing, capturing text output."""
    result = subprocess.run(list(args), cwd=cwd, env=tool_env(), text=True, capture_output=True, check=False)
    if check and result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        raise CvpipeError(f"{' '.join(args)} failed in {cwd} (exit {result.returncode}): {' | '.join(tail)}")
    return result


def dvc(*args: str) -> list[str]:
    """The argv for this environment's DVC."""
    return [sys.executable, "-m", "dvc", *args]


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
    base = yaml.safe_load((project / "params.yaml").read_text(encoding="utf-8")) or {}
    merged = deep_merge(base, overrides)
    parse_params(merged, origin="demo params")
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for name in PROJECT_FILES:
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


def read_overlay(path: Path) -> dict[str, Any]:
    """Read a params overlay file (a partial params.yaml)."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such overlay file; run from the project root") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of params sections")
    return data


def run_demo(project: Path, dest: Path, overlay_path: Path) -> Path:
    """Build a demo workspace from ``params.demo.yaml`` and ``dvc repro`` it, showing DVC's output live."""
    started = time.monotonic()
    workspace = prepare_workspace(project, dest, read_overlay(Path(project) / overlay_path))
    log.info("demo workspace: %s", workspace)
    completed = subprocess.run(dvc("repro"), cwd=workspace, env=tool_env(), check=False)
    if completed.returncode != 0:
        raise CvpipeError(f"dvc repro failed in {workspace} (exit {completed.returncode}); see the output above")
    print(f"\nDemo finished in {time.monotonic() - started:.0f} s. Outputs in {workspace}:")
    for folder in ("data/raw", "data/manifest", "data/splits", "data/cache", "models", "reports"):
        if (workspace / folder).exists():
            print(f"  {workspace / folder}")
    metrics_dir = workspace / "reports/metrics"
    if metrics_dir.is_dir():
        from cvpipe.report.html import metrics_table

        print(f"\nTest metrics (synthetic data; the seed's column is its Kaggle figure):\n{metrics_table(metrics_dir)}")
    print(f"\nInspect with: cd {workspace} && dvc dag && dvc metrics show && dvc plots show")
    return workspace
