"""``cvpipe demo``: the whole DAG offline on the synthetic dataset, in a scratch workspace."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cvpipe import layout
from cvpipe.cli.core import app


@app.command()
def demo(
    dest: Annotated[Path, typer.Option(help="Scratch workspace for the demo run.")] = layout.DEMO_DIR,
    project: Annotated[Path, typer.Option(help="The cvpipe checkout (dvc.yaml, params.yaml).")] = layout.PROJECT_DIR,
    overrides: Annotated[Path, typer.Option(help="Params overlay for the demo.")] = layout.DEMO_PARAMS,
) -> None:
    """Run the whole DAG offline on the synthetic dataset in a scratch copy (your params.yaml is untouched)."""
    from cvpipe.demo import run_demo

    run_demo(project, dest, overrides)
