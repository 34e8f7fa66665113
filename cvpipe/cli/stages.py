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
from cvpipe.cli.core import ParamsOption, app, progress_bar, read_params
from cvpipe.lineage import track_stage

log = logging.getLogger(__name__)


@app.command()
def check(params: ParamsOption = Path("params.yaml")) -> None:
    """Validate the params file and print the effective configuration."""
    import yaml

    typer.echo(yaml.safe_dump(read_params(params).model_dump(mode="json"), sort_keys=False).rstrip())


@app.command()
def download(
    out: Annotated[Path, typer.Option(help="Output folder (archive + SOURCE.json).")] = layout.RAW_DIR,
    staging: Annotated[Path, typer.Option(help="Download cache outside DVC outputs.")] = layout.STAGING_DIR,
    params: ParamsOption = Path("params.yaml"),
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
    params: ParamsOption = Path("params.yaml"),
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
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Split stage: stratified, seeded train/val/test split with near-duplicates kept together."""
    from cvpipe.stages import split as stage

    cfg = read_params(params)
    paths = stage.SplitPaths(manifest=manifest, out=out)
    outputs = [paths.splits, paths.report]
    with track_stage(
        "split", inputs=[manifest], outputs=outputs, params_file=params, sections=["data", "split"]
    ) as run:
        run.summary = stage.run(cfg, paths)


@app.command()
def decode(
    archive: Annotated[Path, typer.Option(help="The raw archive.")] = layout.ARCHIVE,
    splits: Annotated[Path, typer.Option(help="The split table.")] = layout.SPLITS,
    out: Annotated[Path, typer.Option(help="Output folder (.npy caches).")] = layout.IMAGES_CACHE,
    params: ParamsOption = Path("params.yaml"),
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
    images: Annotated[Path, typer.Option(help="The decoded-image cache.")] = Path("data/cache/images"),
    out: Annotated[Path, typer.Option(help="Output folder (VGG16 feature .npy files).")] = Path("data/cache/vgg16"),
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Features stage: one streaming VGG16 conv-base pass per split over the decoded cache."""
    import numpy as np

    from cvpipe.stages.features import FEATURES_JSON, extract_features

    cfg = read_params(params)
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
    from cvpipe.stages.modelling import train_stage

    cfg = read_params(params)
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
    from cvpipe.stages.modelling import LABEL_FILES, SPLIT_FILES, evaluate_stage

    cfg = read_params(params)
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
    from cvpipe.io import sha256_file
    from cvpipe.stages.features import resolve_weights

    path = resolve_weights(spec)
    if path is None:
        return {"spec": spec, "file": "random (none)"}
    return {"spec": spec, "file": path.name, "sha256": sha256_file(path)}


@app.command()
def audit(
    archive: Annotated[Path, typer.Option(help="The raw archive (for thumbnails).")] = layout.ARCHIVE,
    manifest: Annotated[Path, typer.Option(help="The manifest.")] = layout.MANIFEST,
    splits: Annotated[Path, typer.Option(help="The split table.")] = layout.SPLITS,
    out: Annotated[Path, typer.Option(help="Output folder (report, metrics, thumbnails).")] = layout.AUDIT_DIR,
    params: ParamsOption = Path("params.yaml"),
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
        f"audit ({summary.method}, {summary.threshold} bits): {summary.exact_duplicate_groups} exact-"
        f"duplicate group(s), {summary.near_duplicate_pairs} near-duplicate pair(s): "
        f"{summary.within_split_pairs} within a split, {summary.cross_split_pairs} across splits, "
        f"{summary.one_unused_pairs + summary.unused_pairs} with an unused image; passed"
    )


@app.command()
def report(
    out: Annotated[Path, typer.Option(help="The HTML file to write.")] = layout.REPORT_HTML,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Report stage: reports/index.html (metrics vs the seed, curves, data, augmentation, audit, lineage)."""
    import dataclasses

    from cvpipe.lineage.record import project_root
    from cvpipe.stages import report as stage

    cfg = read_params(params)
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
