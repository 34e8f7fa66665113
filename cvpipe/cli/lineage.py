"""``cvpipe lineage``: trace models, images and splits through the pipeline's lineage records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cvpipe.cli.core import app

lineage_app = typer.Typer(
    help="Trace models, images and splits through the pipeline's lineage records.", no_args_is_help=True
)
app.add_typer(lineage_app, name="lineage")
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable JSON.")]


@lineage_app.command("model")
def lineage_model(
    artifact: Annotated[Path, typer.Argument(help="A model (models/fine_tuning.keras) or any pipeline output.")],
    as_json: JsonOption = False,
) -> None:
    """The chain behind a model: source, manifest, split, features, params, code, environment and runs."""
    from cvpipe.lineage.query import model_lineage
    from cvpipe.lineage.record import project_root
    from cvpipe.lineage.text import format_model

    answer = model_lineage(project_root(), artifact)
    typer.echo(json.dumps(answer, indent=2, sort_keys=True) if as_json else format_model(answer))


@lineage_app.command("image")
def lineage_image(
    query: Annotated[str, typer.Argument(help="An archive member (train/cat.12.jpg) or a sha256 (8+ hex digits).")],
    as_json: JsonOption = False,
) -> None:
    """Which split an image is in, its row in the caches, and which models trained, validated or tested on it."""
    from cvpipe.lineage.query import image_lineage
    from cvpipe.lineage.record import project_root
    from cvpipe.lineage.text import format_image

    answer = image_lineage(project_root(), query)
    typer.echo(json.dumps(answer, indent=2, sort_keys=True) if as_json else format_image(answer))


@lineage_app.command("diff")
def lineage_diff(
    rev1: Annotated[str, typer.Argument(help="A git revision (HEAD~1, a tag, a commit).")],
    rev2: Annotated[str | None, typer.Argument(help="Another revision; default: the workspace.")] = None,
    limit: Annotated[int, typer.Option(help="Images listed per split and direction (--json lists all).")] = 20,
    as_json: JsonOption = False,
) -> None:
    """Images that entered or left each split between two git revisions, with counts per class."""
    from cvpipe.lineage.query import lineage_diff
    from cvpipe.lineage.record import project_root
    from cvpipe.lineage.text import format_diff

    answer = lineage_diff(project_root(), rev1, rev2)
    typer.echo(json.dumps(answer, indent=2, sort_keys=True) if as_json else format_diff(answer, limit))
