"""The demo: the whole DAG offline on the synthetic dataset, in a scratch workspace (``cvpipe demo``).

This module talks to a person (the demo's outputs and what to type next), so it prints; the stages never do.
"""

from __future__ import annotations

import logging
import subprocess
import time
from pathlib import Path

from cvpipe import layout
from cvpipe.config import read_overlay
from cvpipe.errors import CvpipeError
from cvpipe.pipeline.commands import dvc, tool_env
from cvpipe.pipeline.workspace import prepare_workspace

log = logging.getLogger(__name__)

# The folders worth looking at after the demo, in the DAG's order.
OUTPUT_DIRS = (
    layout.RAW_DIR,
    layout.MANIFEST_DIR,
    layout.SPLITS_DIR,
    layout.IMAGES_CACHE.parent,
    layout.MODELS_DIR,
    layout.REPORT_HTML.parent,
)


def run_demo(project: Path, dest: Path, overlay_path: Path) -> Path:
    """Build a demo workspace from ``params.demo.yaml`` and ``dvc repro`` it, showing DVC's output live.

    Args:
        project: the cvpipe checkout (dvc.yaml, params.yaml, cvpipe/).
        dest: the scratch workspace to create (replaced if it exists).
        overlay_path: the demo's params overlay, relative to ``project``.

    Returns:
        The workspace.

    Raises:
        CvpipeError: ``dvc repro`` failed (its output is above).
    """
    started = time.monotonic()
    workspace = prepare_workspace(project, dest, read_overlay(Path(project) / overlay_path))
    log.info("demo workspace: %s", workspace)
    completed = subprocess.run(dvc("repro"), cwd=workspace, env=tool_env(), check=False)
    if completed.returncode != 0:
        raise CvpipeError(f"dvc repro failed in {workspace} (exit {completed.returncode}); see the output above")
    print(f"\nDemo finished in {time.monotonic() - started:.0f} s. Outputs in {workspace}:")
    for folder in OUTPUT_DIRS:
        if (workspace / folder).exists():
            print(f"  {workspace / folder}")
    metrics_dir = workspace / layout.METRICS_DIR
    if metrics_dir.is_dir():
        from cvpipe.report.sections import metrics_table

        print(f"\nTest metrics (synthetic data; the seed's column is its Kaggle figure):\n{metrics_table(metrics_dir)}")
    print(f"\nInspect with: cd {workspace} && dvc dag && dvc metrics show && dvc plots show")
    return workspace
