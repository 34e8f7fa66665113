"""The stage commands dvc.yaml calls: one thin shell per stage around :mod:`cvpipe.stages`.

Every stage runs inside :func:`cvpipe.lineage.track_stage`: an OpenLineage START event before it, then
its lineage record (``reports/lineage/<stage>/record.json``) and a COMPLETE event, or a FAIL event. The stage
modules themselves know nothing about lineage.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer

from cvpipe import layout
from cvpipe.cli.core import ParamsOption, app, load_keras, progress_bar, read_params
from cvpipe.config import RANDOM_WEIGHTS
from cvpipe.errors import ConfigError
from cvpipe.lineage import track_stage
from cvpipe.ml.variants import NAMES as VARIANT_NAMES
from cvpipe.ml.variants import get_variant

log = logging.getLogger(__name__)


@app.command()
def check(params: ParamsOption = layout.PARAMS_FILE) -> None:
    """Validate the whole params file (every key, and the files it names) and print the effective configuration.

    ``dvc repro`` only reruns stages whose listed keys changed, so a typo in a key no stage lists passes it
    silently: this is the check that sees it.
    """
    import yaml

    from cvpipe.config import missing_files

    cfg = read_params(params)
    if problems := missing_files(cfg, params.parent):
        raise ConfigError(
            f"{params}: "
            + (problems[0] if len(problems) == 1 else "\n  ".join([f"{len(problems)} problems", *problems]))
        )
    typer.echo(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False).rstrip())


@app.command()
def download(
    out: Annotated[Path, typer.Option(help="Output folder (archive + SOURCE.json).")] = layout.RAW_DIR,
    staging: Annotated[Path, typer.Option(help="Download cache outside DVC outputs.")] = layout.STAGING_DIR,
    params: ParamsOption = layout.PARAMS_FILE,
) -> None:
    """Download stage: fetch the source (Kaggle, synthetic, local) into one archive + SOURCE.json."""
    from cvpipe.stages import download as stage

    cfg = read_params(params)
    paths = stage.DownloadPaths(out=out, staging=staging)
    with track_stage(
        "download", inputs=[], outputs=[paths.archive, paths.source], params_file=params, sections=["data"]
    ) as run:
        summary = stage.run(cfg, paths)
        # The lineage record's summary is SOURCE.json itself (flat, per-source fields), never a credential.
        run.summary = summary.record()
    log.info("download: %s archive sha256 %s", summary.source, summary.archive["sha256"])


@app.command()
def ingest(
    archive: Annotated[Path, typer.Option(help="The raw archive.")] = layout.ARCHIVE,
    out: Annotated[Path, typer.Option(help="Output folder (manifest + report).")] = layout.MANIFEST_DIR,
    params: ParamsOption = layout.PARAMS_FILE,
) -> None:
    """Ingest stage: validate every image of the archive into a manifest, quarantining bad files."""
    from cvpipe.stages import ingest as stage

    cfg = read_params(params)
    paths = stage.IngestPaths(archive=archive, out=out)
    outputs = [paths.manifest, paths.report]
    with (
        track_stage(
            "ingest", inputs=[archive], outputs=outputs, params_file=params, sections=["data", "ingest"]
        ) as run,
        progress_bar("ingest", len(stage.list_members(archive))) as advance,
    ):
        run.summary = stage.run(cfg, paths, advance)


@app.command()
def split(
    manifest: Annotated[Path, typer.Option(help="The manifest.")] = layout.MANIFEST,
    out: Annotated[Path, typer.Option(help="Output folder (split table + report).")] = layout.SPLITS_DIR,
    archive: Annotated[Path, typer.Option(help="The raw archive (near-duplicate candidates' pixels).")] = (
        layout.ARCHIVE
    ),
    params: ParamsOption = layout.PARAMS_FILE,
) -> None:
    """Split stage: stratified, seeded train/val/test split with near-duplicates kept together."""
    from cvpipe.stages import split as stage

    cfg = read_params(params)
    paths = stage.SplitPaths(manifest=manifest, out=out, archive=archive)
    outputs = [paths.splits, paths.report, paths.thumbnails]
    with track_stage(
        "split", inputs=[archive, manifest], outputs=outputs, params_file=params, sections=["data", "split"]
    ) as run:
        run.summary = stage.run(cfg, paths)


@app.command()
def decode(
    archive: Annotated[Path, typer.Option(help="The raw archive.")] = layout.ARCHIVE,
    splits: Annotated[Path, typer.Option(help="The split table.")] = layout.SPLITS,
    out: Annotated[Path, typer.Option(help="Output folder (.npy caches).")] = layout.IMAGES_CACHE,
    params: ParamsOption = layout.PARAMS_FILE,
) -> None:
    """Decode stage: cache every split as a uint8 N x S x S x 3 .npy in split order."""
    from cvpipe.stages import decode as stage

    cfg = read_params(params)
    paths = stage.DecodePaths(archive=archive, splits=splits, out=out)
    with (
        track_stage("decode", inputs=[archive, splits], outputs=[out], params_file=params, sections=["image"]) as run,
        progress_bar("decode", stage.count_images(splits)) as advance,
    ):
        run.summary = stage.run(cfg, paths, advance)


@app.command()
def features(
    images: Annotated[Path, typer.Option(help="The decoded-image cache.")] = layout.IMAGES_CACHE,
    out: Annotated[Path, typer.Option(help="Output folder (VGG16 feature .npy files).")] = layout.FEATURES_CACHE,
    params: ParamsOption = layout.PARAMS_FILE,
) -> None:
    """Features stage: one streaming VGG16 conv-base pass per split over the decoded cache."""
    cfg = read_params(params)
    load_keras()  # after the params are checked: a usage error never waits for TensorFlow

    from cvpipe.stages import features as stage

    paths = stage.FeaturesPaths(images=images, out=out)
    with (
        track_stage("features", inputs=[images], outputs=[out], params_file=params, sections=["features"]) as run,
        progress_bar("features", stage.count_images(images)) as advance,
    ):
        # The summary carries the weights' identity: what a model's lineage names as its feature extractor.
        run.summary = stage.run(cfg, paths, advance)


def _check_variant(name: str) -> str:
    """Typer's check of a variant name, from the variants table and before anything imports Keras."""
    return get_variant(name).name  # ConfigError: one line listing the five (exit 2)


VariantArgument = Annotated[str, typer.Argument(help=" | ".join(VARIANT_NAMES), callback=_check_variant)]


@app.command()
def train(
    variant: VariantArgument,
    inputs: Annotated[Path, typer.Option(help="Cache folder: decoded images, or VGG16 features.")],
    model: Annotated[Path, typer.Option(help="The .keras file to write (best epoch by val_loss).")],
    out: Annotated[Path, typer.Option(help="Folder for history and training curves.")],
    init: Annotated[
        Path | None, typer.Option(help="The model to start from: required for fine_tuning (its parent's .keras).")
    ] = None,
    params: ParamsOption = layout.PARAMS_FILE,
) -> None:
    """Train stage: fit one variant on the train split, keep the best epoch on val."""
    parent = get_variant(variant).parent
    if parent and init is None:
        raise ConfigError(f"{variant} starts from {parent}'s model: pass --init {layout.model_file(parent)}")
    if init is not None and not parent:
        raise ConfigError(f"{variant} starts from no trained model: drop --init {init}")
    cfg = read_params(params)
    load_keras()  # after the checks above

    from cvpipe.stages import train as stage

    paths = stage.TrainPaths(inputs=inputs, model=model, out=out, init=init)
    with track_stage(
        "train",
        stage=f"train@{variant}",
        inputs=[inputs, *([init] if init else [])],
        outputs=[model, out],
        params_file=params,
        sections=["train", "image", "features", "data"],
    ) as run:
        run.summary = stage.run(variant, cfg, paths)


@app.command()
def evaluate(
    variant: VariantArgument,
    inputs: Annotated[Path, typer.Option(help="Cache folder the variant was trained on.")],
    model: Annotated[Path, typer.Option(help="The trained .keras model.")],
    metrics: Annotated[Path, typer.Option(help="Metrics JSON to write.")],
    plots: Annotated[Path, typer.Option(help="Folder for confusion and ROC data.")],
    predictions: Annotated[
        Path | None, typer.Option(help="Per-image predictions parquet to write (member, sha256, verdict).")
    ] = None,
    splits: Annotated[Path, typer.Option(help="The split table (names the test rows).")] = layout.SPLITS,
    params: ParamsOption = layout.PARAMS_FILE,
) -> None:
    """Evaluate stage: test accuracy, loss, per-class precision/recall/F1, ROC AUC, confusion matrix."""
    cfg = read_params(params)
    load_keras()  # after the params are checked

    from cvpipe.stages import evaluate as stage

    paths = stage.EvaluatePaths(
        inputs=inputs, model=model, metrics=metrics, plots=plots, predictions=predictions, splits=splits
    )
    with track_stage(
        "evaluate",
        stage=f"evaluate@{variant}",
        inputs=[model, layout.split_file(inputs, "test"), layout.labels_file(inputs, "test")]
        + ([splits] if predictions else []),
        outputs=[metrics, plots, *([predictions] if predictions else [])],
        params_file=params,
        sections=["evaluate", "data"],
    ) as run:
        summary = stage.run(variant, cfg, paths)
        run.summary = summary
    log.info("evaluate %s: accuracy %.4f", variant, summary.accuracy)


@app.command()
def audit(
    archive: Annotated[Path, typer.Option(help="The raw archive (for thumbnails).")] = layout.ARCHIVE,
    manifest: Annotated[Path, typer.Option(help="The manifest.")] = layout.MANIFEST,
    splits: Annotated[Path, typer.Option(help="The split table.")] = layout.SPLITS,
    out: Annotated[Path, typer.Option(help="Output folder (report, metrics, thumbnails).")] = layout.AUDIT_DIR,
    params: ParamsOption = layout.PARAMS_FILE,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Audit stage: exact and near-duplicates within and across splits; fails on leaks beyond audit.*."""
    import dataclasses

    from cvpipe.stages import audit as stage

    cfg = read_params(params)
    paths = stage.AuditPaths(archive=archive, manifest=manifest, splits=splits, out=out)
    with track_stage(
        "audit",
        inputs=[archive, manifest, splits],
        outputs=[paths.report, paths.metrics, paths.thumbnails],
        params_file=params,
        sections=["audit"],
    ) as run:
        summary = run.summary = stage.run(cfg, paths)
    if as_json:
        typer.echo(json.dumps(dataclasses.asdict(summary), indent=2, sort_keys=True))
        return
    typer.echo(
        f"audit ({summary.method}, {summary.threshold} bits, NCC >= {summary.rule.get('threshold')}): "
        f"{summary.exact_duplicate_groups} exact-"
        f"duplicate group(s), {summary.near_duplicate_pairs} near-duplicate pair(s): "
        f"{summary.within_split_pairs} within a split, {summary.cross_split_pairs} across splits, "
        f"{summary.one_unused_pairs + summary.unused_pairs} with an unused image; passed"
    )


@app.command()
def report(
    out: Annotated[Path, typer.Option(help="The HTML file to write.")] = layout.REPORT_HTML,
    params: ParamsOption = layout.PARAMS_FILE,
) -> None:
    """Report stage: reports/index.html (metrics vs the seed, curves, data, augmentation, audit, lineage)."""
    import dataclasses

    from cvpipe.lineage.record import project_root
    from cvpipe.stages import report as stage

    cfg = read_params(params)
    if cfg.report.augmented_images:
        load_keras()  # the augmentation figure runs the models' own Keras layers
    paths = stage.ReportPaths(out=out, root=project_root())
    with track_stage(
        "report",
        inputs=[getattr(paths.inputs, item.name) for item in dataclasses.fields(paths.inputs)],
        outputs=[out],
        params_file=params,
        sections=["report", "audit", "data"],
    ) as run:
        run.summary = stage.run(cfg, paths)
    typer.echo(f"report: {out}")


# -- the MNIST experiment (the seed's section 8.1): stages of their own, sharing no input with dogs-vs-cats ------


@app.command("mnist-data")
def mnist_data(
    out: Annotated[Path, typer.Option(help="Output folder (the MNIST cache + SOURCE.json).")] = layout.MNIST_CACHE,
    params: ParamsOption = layout.PARAMS_FILE,
) -> None:
    """MNIST data stage: Keras's mnist.npz, a local .npz or IDX folder, or drawn digits, validated and cached."""
    from cvpipe.stages import mnist_data as stage

    cfg = read_params(params)
    if cfg.mnist.source == "keras":
        load_keras()  # Keras's own fetch of mnist.npz
    source = [cfg.mnist.path] if cfg.mnist.path is not None else []
    with track_stage(
        "mnist-data", stage="mnist_data", inputs=source, outputs=[out], params_file=params, sections=["mnist"]
    ) as run:
        summary = run.summary = stage.run(cfg, stage.MnistDataPaths(out=out))
    log.info("mnist_data: %s digits, sha256 %s", summary.source, summary.sha256)


@app.command("mnist-train")
def mnist_train(
    inputs: Annotated[Path, typer.Option(help="The MNIST cache.")] = layout.MNIST_CACHE,
    model: Annotated[Path, typer.Option(help="The .keras file to write.")] = layout.MNIST_MODEL,
    out: Annotated[Path, typer.Option(help="Folder for history and training curves.")] = layout.MNIST_TRAIN_DIR,
    params: ParamsOption = layout.PARAMS_FILE,
) -> None:
    """MNIST train stage: the seed's 8.1 convnet, 5 epochs of RMSprop on the 60,000 training digits."""
    cfg = read_params(params)
    load_keras()  # after the params are checked

    from cvpipe.stages import mnist_train as stage

    paths = stage.MnistTrainPaths(inputs=inputs, model=model, out=out)
    with (
        track_stage(
            "mnist-train",
            stage="mnist_train",
            inputs=[layout.split_file(inputs, "train"), layout.labels_file(inputs, "train")],
            outputs=[model, out],
            params_file=params,
            sections=["mnist"],
        ) as run,
        progress_bar("mnist_train", cfg.mnist.epochs) as advance,
    ):
        run.summary = stage.run(cfg, paths, advance)


@app.command("mnist-evaluate")
def mnist_evaluate(
    inputs: Annotated[Path, typer.Option(help="The MNIST cache.")] = layout.MNIST_CACHE,
    model: Annotated[Path, typer.Option(help="The trained .keras model.")] = layout.MNIST_MODEL,
    metrics: Annotated[Path, typer.Option(help="Metrics JSON to write.")] = layout.MNIST_METRICS,
    plots: Annotated[Path, typer.Option(help="Folder for confusion and ROC data.")] = layout.MNIST_PLOTS,
    predictions: Annotated[Path, typer.Option(help="Per-image test predictions (parquet).")] = layout.MNIST_PREDICTIONS,
    params: ParamsOption = layout.PARAMS_FILE,
) -> None:
    """MNIST evaluate stage: test accuracy, loss, per-digit precision/recall/F1, ROC AUC, 10 x 10 confusion."""
    cfg = read_params(params)
    load_keras()  # after the params are checked

    from cvpipe.stages import mnist_evaluate as stage

    paths = stage.MnistEvaluatePaths(inputs=inputs, model=model, metrics=metrics, plots=plots, predictions=predictions)
    with track_stage(
        "mnist-evaluate",
        stage="mnist_evaluate",
        inputs=[model, layout.split_file(inputs, "test"), layout.labels_file(inputs, "test")],
        outputs=[metrics, plots, predictions],
        params_file=params,
        sections=["mnist"],
    ) as run:
        summary = run.summary = stage.run(cfg, paths)
    log.info("mnist_evaluate: accuracy %.4f (the seed: 0.993 on MNIST)", summary.accuracy)


@app.command("label-audit")
def label_audit(
    cache: Annotated[Path, typer.Option("--features", help="The VGG16 features cache.")] = layout.FEATURES_CACHE,
    splits: Annotated[Path, typer.Option(help="The split table (names the rows).")] = layout.SPLITS,
    issues: Annotated[Path, typer.Option(help="Suspected mislabels to write.")] = layout.LABEL_ISSUES,
    metrics: Annotated[Path, typer.Option(help="Summary JSON to write.")] = layout.LABEL_AUDIT_METRICS,
    params: ParamsOption = layout.PARAMS_FILE,
) -> None:
    """Label-audit stage: suspected mislabels in train+val by confident learning; never changes a label."""
    from cvpipe.stages import label_audit as stage

    cfg = read_params(params)
    paths = stage.LabelAuditPaths(features=cache, splits=splits, issues=issues, metrics=metrics)
    with track_stage(
        "label_audit",
        inputs=[cache, splits],
        outputs=[issues, metrics],
        params_file=params,
        sections=["audit", "data"],
    ) as run:
        summary = run.summary = stage.run(cfg, paths)
    random = " (random VGG16 weights: not meaningful)" if summary.weights == RANDOM_WEIGHTS else ""
    log.info("label audit: %d suspected mislabel(s) of %d images%s", summary.issues, summary.images, random)


@app.command("embedding-audit")
def embedding_audit(
    cache: Annotated[Path, typer.Option("--features", help="The VGG16 features cache.")] = layout.FEATURES_CACHE,
    splits: Annotated[Path, typer.Option(help="The split table (names the rows).")] = layout.SPLITS,
    archive: Annotated[Path, typer.Option(help="The raw archive (for thumbnails).")] = layout.ARCHIVE,
    # Not named `report`: that is the report command's function in this module.
    report_file: Annotated[
        Path, typer.Option("--report", help="Report JSON to write.")
    ] = layout.EMBEDDING_AUDIT_REPORT,
    metrics: Annotated[Path, typer.Option(help="Counts JSON to write.")] = layout.EMBEDDING_AUDIT_METRICS,
    thumbnails: Annotated[
        Path, typer.Option(help="Folder for the pairs' thumbnails.")
    ] = layout.EMBEDDING_AUDIT_THUMBNAILS,
    params: ParamsOption = layout.PARAMS_FILE,
) -> None:
    """Embedding-audit stage: image pairs across splits by VGG16 cosine similarity; fails beyond audit.embedding.*."""
    from cvpipe.stages import embedding_audit as stage

    cfg = read_params(params)
    paths = stage.EmbeddingAuditPaths(
        features=cache, splits=splits, archive=archive, report=report_file, metrics=metrics, thumbnails=thumbnails
    )
    with track_stage(
        "embedding_audit",
        inputs=[cache, splits, archive],
        outputs=[report_file, metrics, thumbnails],
        params_file=params,
        sections=["audit"],
    ) as run:
        summary = run.summary = stage.run(cfg, paths)
    meaning = "" if summary.meaningful else " (random VGG16 weights: not meaningful)"
    log.info(
        "embedding audit: %d cross-split pair(s) of %d images%s", summary.cross_split_pairs, summary.images, meaning
    )
