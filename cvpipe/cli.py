"""The ``cvpipe`` command: one thin subcommand per stage (what dvc.yaml calls), plus helpers.

The CLI is a shell around the library: it parses options, loads params, sets up logging and progress bars,
calls the stage function and maps failures to exit codes: 0 success, 2 a problem the user can fix (one
line on stderr saying what to do), 1 a bug (one line; ``--debug`` shows the traceback).

Every stage runs inside :func:`cvpipe.lineage.track_stage`: an OpenLineage START event before it, then its
lineage record (``reports/lineage/<stage>/record.json``) and a COMPLETE event, or a FAIL event. The stage
modules themselves know nothing about lineage.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated

import click
import typer

from cvpipe.config import Params, load_params
from cvpipe.errors import CvpipeError
from cvpipe.io import disk_full_error, failed_path, is_disk_full
from cvpipe.lineage import track_stage

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
    for noisy in ("PIL", "urllib3", "h5py", "absl", "openlineage"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    # TensorFlow's C++ start-up lines ("Could not find cuda drivers", "failed call to cuInit" on a CPU
    # machine) drown the stage's own log; cvpipe logs the device it uses. An explicit setting wins.
    if not debug:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


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
    from cvpipe.sources import ARCHIVE_NAME, RECORD_NAME, fetch

    cfg = _params(params)
    outputs = [out / ARCHIVE_NAME, out / RECORD_NAME]
    with track_stage("download", inputs=[], outputs=outputs, params_file=params, sections=["data"]) as run:
        record = fetch(cfg.data, out, staging)
        run.summary = record  # SOURCE.json: where the archive came from, never a credential
    log.info("download: %s archive sha256 %s", record["source"], record["archive"]["sha256"])


@app.command()
def ingest(
    archive: Annotated[Path, typer.Option(help="The raw archive.")] = Path("data/raw/images.zip"),
    out: Annotated[Path, typer.Option(help="Output folder (manifest + report).")] = Path("data/manifest"),
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Ingest stage: validate every image of the archive into a manifest, quarantining bad files."""
    from cvpipe.ingest import MANIFEST_NAME, REPORT_NAME, list_members, run_ingest

    cfg = _params(params)
    outputs = [out / MANIFEST_NAME, out / REPORT_NAME]
    with (
        track_stage(
            "ingest", inputs=[archive], outputs=outputs, params_file=params, sections=["data", "ingest"]
        ) as run,
        progress_bar("ingest", len(list_members(archive))) as advance,
    ):
        run.summary = run_ingest(archive, out, cfg.ingest, cfg.data.labels, cfg.data.classes, advance)


@app.command()
def split(
    manifest: Annotated[Path, typer.Option(help="The manifest.")] = Path("data/manifest/images.parquet"),
    out: Annotated[Path, typer.Option(help="Output folder (split table + report).")] = Path("data/splits"),
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Split stage: stratified, seeded train/val/test split with near-duplicates kept together."""
    from cvpipe.split import REPORT_NAME, SPLITS_NAME, run_split

    cfg = _params(params)
    outputs = [out / SPLITS_NAME, out / REPORT_NAME]
    with track_stage(
        "split", inputs=[manifest], outputs=outputs, params_file=params, sections=["data", "split"]
    ) as run:
        run.summary = run_split(manifest, out, cfg.split, cfg.data.classes)


@app.command()
def decode(
    archive: Annotated[Path, typer.Option(help="The raw archive.")] = Path("data/raw/images.zip"),
    splits: Annotated[Path, typer.Option(help="The split table.")] = Path("data/splits/splits.parquet"),
    out: Annotated[Path, typer.Option(help="Output folder (.npy caches).")] = Path("data/cache/images"),
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Decode stage: cache every split as a uint8 N x S x S x 3 .npy in split order."""
    from cvpipe.decode import count_images, run_decode

    cfg = _params(params)
    with (
        track_stage("decode", inputs=[archive, splits], outputs=[out], params_file=params, sections=["image"]) as run,
        progress_bar("decode", count_images(splits)) as advance,
    ):
        run.summary = run_decode(archive, splits, out, cfg.image, advance)


@app.command()
def features(
    images: Annotated[Path, typer.Option(help="The decoded-image cache.")] = Path("data/cache/images"),
    out: Annotated[Path, typer.Option(help="Output folder (VGG16 feature .npy files).")] = Path("data/cache/vgg16"),
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Features stage: one streaming VGG16 conv-base pass per split over the decoded cache."""
    import numpy as np

    from cvpipe.features import FEATURES_JSON, extract_features

    cfg = _params(params)
    total = sum(len(np.load(path, mmap_mode="r")) for path in Path(images).glob("*_labels.npy"))
    with (
        track_stage("features", inputs=[images], outputs=[out], params_file=params, sections=["features"]) as run,
        progress_bar("features", total) as advance,
    ):
        run.summary = extract_features(images, out, cfg.features, progress=advance)
        # The weights' identity (spec, file, sha256) is what a model's lineage names as its feature extractor.
        run.summary["weights"] = _json_field(out / FEATURES_JSON, "weights")


VariantArgument = Annotated[
    str, typer.Argument(help="scratch | scratch_aug | feature_extraction | feature_extraction_aug | fine_tuning")
]


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

    cfg = _params(params)
    with track_stage(
        "train",
        stage=f"train@{variant}",
        inputs=[inputs, *([init] if init else [])],
        outputs=[model, out],
        params_file=params,
        sections=["train", "image", "features", "data"],
    ) as run:
        run.summary = train_stage(variant, cfg, inputs, model, out, init)
        if variant == "feature_extraction_aug":
            run.summary["conv_base"] = _weights_identity(cfg.features.weights)


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
    from cvpipe.modelling import LABEL_FILES, SPLIT_FILES, evaluate_stage

    cfg = _params(params)
    with track_stage(
        "evaluate",
        stage=f"evaluate@{variant}",
        inputs=[model, inputs / SPLIT_FILES.format(split="test"), inputs / LABEL_FILES.format(split="test")],
        outputs=[metrics, plots],
        params_file=params,
        sections=["evaluate", "data"],
    ) as run:
        result = evaluate_stage(cfg, inputs, model, metrics, plots)
        run.summary = {key: value for key, value in result.items() if key != "per_class"}
    log.info("evaluate %s: accuracy %.4f", variant, result["accuracy"])


def _json_field(path: Path, key: str) -> object:
    """One field of a JSON file a stage wrote, for its lineage record; None when it is not there."""
    try:
        return json.loads(path.read_text(encoding="utf-8")).get(key)
    except (OSError, ValueError, AttributeError):
        return None


def _weights_identity(spec: str) -> dict[str, object]:
    """The VGG16 weights a model was built on: the spec, the file and its sha256 (random weights: none)."""
    from cvpipe.features import resolve_weights
    from cvpipe.io import sha256_file

    path = resolve_weights(spec)
    if path is None:
        return {"spec": spec, "file": "random (none)"}
    return {"spec": spec, "file": path.name, "sha256": sha256_file(path)}


@app.command()
def audit(
    archive: Annotated[Path, typer.Option(help="The raw archive (for thumbnails).")] = Path("data/raw/images.zip"),
    manifest: Annotated[Path, typer.Option(help="The manifest.")] = Path("data/manifest/images.parquet"),
    splits: Annotated[Path, typer.Option(help="The split table.")] = Path("data/splits/splits.parquet"),
    out: Annotated[Path, typer.Option(help="Output folder (report, metrics, thumbnails).")] = Path("reports/audit"),
    params: ParamsOption = Path("params.yaml"),
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Audit stage: exact and near-duplicates within and across splits; fails on leaks beyond audit.*."""
    from cvpipe.audit import METRICS_NAME, REPORT_NAME, THUMBNAILS_DIR, run_audit

    cfg = _params(params)
    with track_stage(
        "audit",
        inputs=[archive, manifest, splits],
        outputs=[out / REPORT_NAME, out / METRICS_NAME, out / THUMBNAILS_DIR],
        params_file=params,
        sections=["audit"],
    ) as run:
        run.summary = run_audit(archive, manifest, splits, out, cfg.audit)
    summary = run.summary
    if as_json:
        typer.echo(json.dumps(summary, indent=2, sort_keys=True))
        return
    typer.echo(
        f"audit ({summary['method']}, {summary['threshold']} bits): {summary['exact_duplicate_groups']} exact-"
        f"duplicate group(s), {summary['near_duplicate_pairs']} near-duplicate pair(s): "
        f"{summary['within_split_pairs']} within a split, {summary['cross_split_pairs']} across splits, "
        f"{summary['one_unused_pairs'] + summary['unused_pairs']} with an unused image; passed"
    )


@app.command()
def report(
    out: Annotated[Path, typer.Option(help="The HTML file to write.")] = Path("reports/index.html"),
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Report stage: reports/index.html (metrics vs the seed, curves, data, augmentation, audit, lineage)."""
    from cvpipe.lineage import project_root
    from cvpipe.report import ReportInputs, build_report

    cfg = _params(params)
    inputs = ReportInputs()
    with track_stage(
        "report",
        inputs=list(inputs.__dict__.values()),
        outputs=[out],
        params_file=params,
        sections=["report", "audit", "data"],
    ) as run:
        run.summary = build_report(project_root(), out, cfg.report, inputs, cfg.audit.thumbnails, cfg.data.classes)
    typer.echo(f"report: {out}")


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
    from cvpipe.lineage import project_root
    from cvpipe.lineage_query import format_model, model_lineage

    answer = model_lineage(project_root(), artifact)
    typer.echo(json.dumps(answer, indent=2, sort_keys=True) if as_json else format_model(answer))


@lineage_app.command("image")
def lineage_image(
    query: Annotated[str, typer.Argument(help="An archive member (train/cat.12.jpg) or a sha256 (8+ hex digits).")],
    as_json: JsonOption = False,
) -> None:
    """Which split an image is in, its row in the caches, and which models trained, validated or tested on it."""
    from cvpipe.lineage import project_root
    from cvpipe.lineage_query import format_image, image_lineage

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
    from cvpipe.lineage import project_root
    from cvpipe.lineage_query import format_diff, lineage_diff

    answer = lineage_diff(project_root(), rev1, rev2)
    typer.echo(json.dumps(answer, indent=2, sort_keys=True) if as_json else format_diff(answer, limit))


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
        if is_disk_full(error):
            # A full disk is the user's to fix, whichever library hit it (pyarrow, h5py, Keras, dvclive).
            full = disk_full_error(failed_path(error))
            typer.echo(f"error: {full}", err=True)
            return full.exit_code
        typer.echo(f"internal error: {type(error).__name__}: {error} (rerun with --debug for the traceback)", err=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
