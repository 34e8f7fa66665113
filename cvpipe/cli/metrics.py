"""``cvpipe metrics``: the variants' test metrics next to the seed's figures."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cvpipe import layout
from cvpipe.cli.core import app
from cvpipe.errors import CvpipeError


@app.command("metrics")
def metrics_command(
    folder: Annotated[Path, typer.Option("--dir", help="Folder of <variant>.json metrics.")] = layout.METRICS_DIR,
) -> None:
    """Print the variants' test metrics next to the seed's figures (Markdown)."""
    from cvpipe.report.sections import metrics_table, read_metrics

    if not read_metrics(folder):
        raise CvpipeError(f"no metrics in {folder}/ yet: run `dvc repro` (or `dvc pull`) first")
    typer.echo(metrics_table(folder))
