"""The ``cvpipe`` command: one thin subcommand per stage (what dvc.yaml calls), plus helpers.

The CLI is a shell around the library: it parses options, loads params, sets up logging and progress bars,
calls the stage function and maps failures to exit codes: 0 success, 2 a problem the user can fix (one
line on stderr saying what to do), 1 a bug (one line; ``--debug`` shows the traceback).
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated

import click
import typer

from cvpipe.config import Params, load_params
from cvpipe.errors import CvpipeError

app = typer.Typer(
    help="cvpipe: dogs-vs-cats convnet and VGG16 transfer learning as a versioned, auditable pipeline.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
log = logging.getLogger("cvpipe")

# Recent typer vendors its own click; catch usage errors from either.
_USAGE_ERRORS: tuple[type[Exception], ...] = (click.ClickException,)
if hasattr(typer, "exceptions") and hasattr(typer.exceptions, "TyperException"):
    _USAGE_ERRORS += (typer.exceptions.TyperException,)
_ABORTS: tuple[type[BaseException], ...] = (click.exceptions.Abort, typer.Abort)

ParamsOption = Annotated[Path, typer.Option("--params", help="The params file.", dir_okay=False)]
_state = {"debug": False}


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors.")] = False,
) -> None:
    _state["debug"] = debug
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("PIL", "urllib3", "h5py", "absl"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


@contextlib.contextmanager
def progress_bar(label: str, total: int) -> Iterator[Callable[[int], None]]:
    """A progress callback: a live bar on a terminal, a log line every 10% otherwise (DVC, CI, Prefect)."""
    if sys.stderr.isatty():
        from rich.progress import Progress

        with Progress(transient=True) as bar:
            task = bar.add_task(label, total=total)
            yield lambda done: bar.advance(task, done)
        return
    seen = {"done": 0, "next": 0.1}

    def advance(done: int) -> None:
        seen["done"] += done
        if total and seen["done"] / total >= seen["next"]:
            log.info("%s: %d/%d", label, seen["done"], total)
            while seen["done"] / total >= seen["next"]:
                seen["next"] += 0.1

    yield advance


def _params(path: Path) -> Params:
    return load_params(path)


@app.command()
def check(params: ParamsOption = Path("params.yaml")) -> None:
    """Validate the params file and print the effective configuration."""
    import yaml

    typer.echo(yaml.safe_dump(_params(params).model_dump(mode="json"), sort_keys=False).rstrip())


@app.command()
def download(
    out: Annotated[Path, typer.Option(help="Output folder (archive + SOURCE.json).")] = Path("data/raw"),
    staging: Annotated[Path, typer.Option(help="Download cache outside DVC outputs.")] = Path("data/staging"),
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Download stage: fetch the source (Kaggle, synthetic, local) into one archive + SOURCE.json."""
    from cvpipe.sources import fetch

    record = fetch(_params(params).data, out, staging)
    log.info("download: %s archive sha256 %s", record["source"], record["archive"]["sha256"])


@app.command()
def ingest(
    archive: Annotated[Path, typer.Option(help="The raw archive.")] = Path("data/raw/images.zip"),
    out: Annotated[Path, typer.Option(help="Output folder (manifest + report).")] = Path("data/manifest"),
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Ingest stage: validate every image of the archive into a manifest, quarantining bad files."""
    from cvpipe.ingest import list_members, run_ingest

    cfg = _params(params)
    with progress_bar("ingest", len(list_members(archive))) as advance:
        run_ingest(archive, out, cfg.ingest, cfg.data.labels, cfg.data.classes, advance)


@app.command()
def split(
    manifest: Annotated[Path, typer.Option(help="The manifest.")] = Path("data/manifest/images.parquet"),
    out: Annotated[Path, typer.Option(help="Output folder (split table + report).")] = Path("data/splits"),
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Split stage: stratified, seeded train/val/test split with near-duplicates kept together."""
    from cvpipe.split import run_split

    cfg = _params(params)
    run_split(manifest, out, cfg.split, cfg.data.classes)


@app.command()
def decode(
    archive: Annotated[Path, typer.Option(help="The raw archive.")] = Path("data/raw/images.zip"),
    splits: Annotated[Path, typer.Option(help="The split table.")] = Path("data/splits/splits.parquet"),
    out: Annotated[Path, typer.Option(help="Output folder (.npy caches).")] = Path("data/cache/images"),
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Decode stage: cache every split as a uint8 N x S x S x 3 .npy in split order."""
    import pandas as pd

    from cvpipe.decode import run_decode

    cfg = _params(params)
    with progress_bar("decode", len(pd.read_parquet(splits, columns=["member"]))) as advance:
        run_decode(archive, splits, out, cfg.image, advance)


@app.command()
def features(
    images: Annotated[Path, typer.Option(help="The decoded-image cache.")] = Path("data/cache/images"),
    out: Annotated[Path, typer.Option(help="Output folder (VGG16 feature .npy files).")] = Path("data/cache/vgg16"),
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Features stage: one streaming VGG16 conv-base pass per split over the decoded cache."""
    import numpy as np

    from cvpipe.features import extract_features

    total = sum(len(np.load(path, mmap_mode="r")) for path in Path(images).glob("*_labels.npy"))
    with progress_bar("features", total) as advance:
        extract_features(images, out, _params(params).features, progress=advance)


VariantArgument = Annotated[str, typer.Argument(help="scratch | scratch_aug | feature_extraction | "
                                                     "feature_extraction_aug | fine_tuning")]


@app.command()
def train(
    variant: VariantArgument,
    inputs: Annotated[Path, typer.Option(help="Cache folder: decoded images, or VGG16 features.")],
    model: Annotated[Path, typer.Option(help="The .keras file to write (best epoch by val_loss).")],
    out: Annotated[Path, typer.Option(help="Folder for history and training curves.")],
    init: Annotated[Path | None, typer.Option(help="Starting model (fine_tuning).")] = None,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Train stage: fit one variant on the train split, keep the best epoch on val."""
    from cvpipe.modelling import train_stage

    train_stage(variant, _params(params), inputs, model, out, init)


@app.command()
def evaluate(
    variant: VariantArgument,
    inputs: Annotated[Path, typer.Option(help="Cache folder the variant was trained on.")],
    model: Annotated[Path, typer.Option(help="The trained .keras model.")],
    metrics: Annotated[Path, typer.Option(help="Metrics JSON to write.")],
    plots: Annotated[Path, typer.Option(help="Folder for confusion and ROC data.")],
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Evaluate stage: test accuracy, loss, per-class precision/recall/F1, ROC AUC, confusion matrix."""
    from cvpipe.modelling import evaluate_stage

    result = evaluate_stage(_params(params), inputs, model, metrics, plots)
    log.info("evaluate %s: accuracy %.4f", variant, result["accuracy"])


@app.command("metrics")
def metrics_command(
    folder: Annotated[Path, typer.Option("--dir", help="Folder of <variant>.json metrics.")] = Path("reports/metrics"),
) -> None:
    """Print the variants' test metrics next to the seed's figures (Markdown)."""
    from cvpipe.report import metrics_table

    typer.echo(metrics_table(folder))


@app.command()
def demo(
    dest: Annotated[Path, typer.Option(help="Scratch workspace for the demo run.")] = Path("demo"),
    project: Annotated[Path, typer.Option(help="The cvpipe checkout (dvc.yaml, params.yaml).")] = Path("."),
    overrides: Annotated[Path, typer.Option(help="Params overlay for the demo.")] = Path("params.demo.yaml"),
) -> None:
    """Run the whole DAG offline on the synthetic dataset in a scratch copy (your params.yaml is untouched)."""
    from cvpipe.workspace import run_demo

    run_demo(project, dest, overrides)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app and map failures to exit codes and one clear line."""
    try:
        app(args=argv, standalone_mode=False)
    except CvpipeError as error:
        if _state["debug"]:
            raise
        typer.echo(f"error: {error}", err=True)
        return error.exit_code
    except _ABORTS:
        typer.echo("aborted", err=True)
        return 130
    except _USAGE_ERRORS as error:
        error.show()  # type: ignore[attr-defined]
        return int(getattr(error, "exit_code", 2))
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        return 130
    except Exception as error:
        if _state["debug"]:
            raise
        typer.echo(f"internal error: {type(error).__name__}: {error} (rerun with --debug for the traceback)", err=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
