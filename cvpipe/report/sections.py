"""The report's sections, each from pipeline outputs: metrics, curves, confusion, data, augmentation, audit, lineage.

Every figure comes from a file a stage wrote: metrics and confusion matrices from the evaluate stages, curves
from the train stages' ``history.json``, the data summary from the manifest and the split report, suspect
pairs from the audit, and the lineage table from the stages' records. A section whose inputs are missing
says so instead of failing: a partial pipeline still gets a report. Also here: the metrics table
``cvpipe metrics`` prints.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cvpipe import layout
from cvpipe.config import SPLITS, VARIANTS, ReportConfig
from cvpipe.errors import CvpipeError
from cvpipe.io import read_json
from cvpipe.report.charts import bar_chart, histogram, line_chart
from cvpipe.report.html import esc, image_grid, jpeg_data_uri, table, td, value_cell
from cvpipe.report.verdicts import BOOK_AUGMENTED_ACCURACY, SCRATCH_AUG_NOTE, interval

log = logging.getLogger(__name__)

# Test accuracy the seed walkthrough reports for each variant (README's table of the five variants): the
# anchors to beat on Kaggle data.
SEED_ACCURACY: dict[str, float] = {
    "scratch": 0.697,
    "scratch_aug": 0.744,
    "feature_extraction": 0.973,
    "feature_extraction_aug": 0.977,
    "fine_tuning": 0.977,
    "mnist": 0.993,  # the seed's section 8.1 convnet on MNIST (104,202 params, 5 epochs)
}
_MAX_TEXT_PAIRS = 50


@dataclass(frozen=True)
class ReportInputs:
    """Where the report reads from (:mod:`cvpipe.layout`; ``dvc.yaml`` lists them as the report stage's deps)."""

    source: Path = layout.SOURCE
    manifest: Path = layout.MANIFEST
    manifest_report: Path = layout.MANIFEST_REPORT
    split_report: Path = layout.SPLIT_REPORT
    images: Path = layout.IMAGES_CACHE
    metrics: Path = layout.METRICS_DIR
    plots: Path = layout.PLOTS_DIR
    train: Path = layout.TRAIN_DIR
    audit: Path = layout.AUDIT_DIR
    lineage: Path = layout.LINEAGE_DIR
    predictions: Path = layout.PREDICTIONS_DIR
    mnist: Path = layout.MNIST_CACHE
    """The MNIST cache: its test digits are the thumbnails of ``mnist.parquet``'s mistakes."""

    def under(self, root: Path) -> ReportInputs:
        """The same paths, relative to ``root`` when they are relative."""
        return ReportInputs(**{name: Path(root) / value for name, value in self.__dict__.items()})


# -- metrics --------------------------------------------------------------------------------------------------


def read_metrics(metrics_dir: Path) -> dict[str, dict[str, Any]]:
    """Every ``<variant>.json`` in ``metrics_dir``, in the seed's variant order.

    Raises:
        CvpipeError: a metrics file is not readable JSON (named, with what to do).
    """
    found = {path.stem: _read_metrics_file(path) for path in Path(metrics_dir).glob("*.json")}
    ordered = [name for name in VARIANTS if name in found] + sorted(set(found) - set(VARIANTS))
    return {name: found[name] for name in ordered}


def _read_metrics_file(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError) as error:
        raise CvpipeError(
            f"{path}: not a readable metrics file ({type(error).__name__}: {error}); rerun its stage: "
            f"dvc repro -f evaluate@{path.stem}"
        ) from None


def _cell(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "-"


def metrics_table(metrics_dir: Path) -> str:
    """A Markdown table: variant, test accuracy, loss, ROC AUC (each figure's interval beside it), the seed's."""
    rows = [
        "| variant | test accuracy | 95% CI | test loss | ROC AUC | 95% CI | test images | seed accuracy |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, metrics in read_metrics(metrics_dir).items():
        rows.append(
            f"| {name} | {_cell(metrics.get('accuracy'))} | {interval(metrics, 'accuracy')} | "
            f"{_cell(metrics.get('loss'))} | {_cell(metrics.get('roc_auc'))} | {interval(metrics, 'roc_auc')} | "
            f"{metrics.get('n_samples', '-')} | {_cell(SEED_ACCURACY.get(name))} |"
        )
    return "\n".join(rows)


# -- augmentation ---------------------------------------------------------------------------------------------


def augmented_examples(
    images_dir: Path, count: int, per_image: int, seed: int
) -> tuple[list[list[np.ndarray]], list[int]]:
    """The first training images of each class, then what the augmentation layers make of them.

    The layers are the models' own (:func:`cvpipe.ml.models.augmentation`), run in training mode with
    ``seed``: this is what ``scratch_aug`` and ``feature_extraction_aug`` see before rescaling.

    Returns:
        Rows of tiles (original first), and each row's label index.
    """
    import keras

    from cvpipe.ml.models import augmentation

    images = np.load(layout.split_file(images_dir, "train"), mmap_mode="r")
    labels = np.load(layout.labels_file(images_dir, "train"))
    classes = sorted(set(labels.tolist()))
    picks: list[int] = []
    for rank in range(count):
        label = classes[rank % len(classes)]
        candidates = np.flatnonzero(labels == label)
        taken = [pick for pick in picks if labels[pick] == label]
        if len(taken) < len(candidates):
            picks.append(int(candidates[len(taken)]))
    batch = np.asarray(images[picks], dtype=np.float32)
    keras.utils.set_random_seed(seed)
    layer = augmentation()
    variants = [np.asarray(keras.ops.convert_to_numpy(layer(batch, training=True))) for _ in range(per_image)]
    rows = [[batch[i], *(variant[i] for variant in variants)] for i in range(len(batch))]
    return rows, [int(labels[i]) for i in picks]


# -- sections -------------------------------------------------------------------------------------------------


def metrics_section(inputs: ReportInputs) -> str:
    """Per-variant test metrics next to the seed's accuracy, and a bar chart of both."""
    metrics = read_metrics(inputs.metrics) if Path(inputs.metrics).is_dir() else {}
    if not metrics:
        return "<p>No evaluation yet (run the evaluate stages).</p>"
    keys = ("accuracy", "loss", "roc_auc", "precision_macro", "recall_macro", "f1_macro", "n_samples")
    rows = []
    for name, values in metrics.items():
        seed = SEED_ACCURACY.get(name)
        accuracy = values.get("accuracy")
        delta = accuracy - seed if isinstance(accuracy, (int, float)) and seed is not None else None
        rows.append(
            [f"<th>{esc(name)}</th>", value_cell(values.get("accuracy"), variant=name, metric="accuracy")]
            + [td(interval(values, "accuracy"))]
            + [value_cell(values.get(key), variant=name, metric=key) for key in keys[1:]]
            + [
                value_cell(seed, variant=name, metric="seed_accuracy"),
                value_cell(delta, variant=name, metric="delta"),
            ]
        )
    header = [
        "variant",
        "test accuracy",
        "95% CI",
        "test loss",
        "ROC AUC",
        "precision",
        "recall",
        "F1",
        "test images",
        "seed accuracy",
        "vs seed",
    ]
    chart = bar_chart(
        {
            name: {
                "this run": values.get("accuracy"),
                "seed": SEED_ACCURACY.get(name),
                # The seed's scratch_aug ran without its augmentation: the book's augmented model beside it.
                "book (augmented)": BOOK_AUGMENTED_ACCURACY if name == "scratch_aug" else None,
            }
            for name, values in metrics.items()
        },
        "Test accuracy: this run and the seed (Kaggle data)",
        "accuracy",
        y_max=1.0,
    )
    return table(header, rows, "metrics") + f"<p>{esc(SCRATCH_AUG_NOTE)}</p>" + f'<div class="fig">{chart}</div>'


def curves_section(inputs: ReportInputs) -> str:
    """Loss and accuracy per epoch, train and val, for each trained variant."""
    figures = []
    for name in VARIANTS:
        history = (read_json(Path(inputs.train) / name / layout.HISTORY_NAME) or {}).get("history") or {}
        if not history:
            continue
        for metric in ("loss", "accuracy"):
            series = {
                label: list(enumerate(history.get(key) or [], start=1))
                for label, key in (("train", metric), ("val", f"val_{metric}"))
                if history.get(key)
            }
            if series:
                accuracy = metric == "accuracy"  # rises: its legend goes below; loss falls: above
                figures.append(
                    line_chart(
                        series,
                        f"{name}: {metric}",
                        "epoch",
                        metric,
                        (0.0, 1.0) if accuracy else None,
                        legend="bottom" if accuracy else "top",
                    )
                )
    if not figures:
        return "<p>No training history yet.</p>"
    return "".join(f'<div class="fig">{figure}</div>' for figure in figures)


def confusion_section(inputs: ReportInputs) -> str:
    """Each variant's test confusion matrix (rows actual, columns predicted) and ROC curve."""
    parts = []
    for name in VARIANTS:
        folder = Path(inputs.plots) / name
        data = read_json(folder / layout.CONFUSION_MATRIX_NAME)
        if not data:
            continue
        labels, matrix = data["labels"], data["matrix"]
        peak = max(max(row) for row in matrix) or 1
        rows = []
        for actual, row in zip(labels, matrix, strict=True):
            cells = [f"<th>{esc(actual)}</th>"]
            for predicted, count in zip(labels, row, strict=True):
                shade = 0.15 + 0.6 * count / peak
                cells.append(
                    f'<td class="num" style="background:rgba(31,119,180,{shade:.2f})" data-variant="{esc(name)}" '
                    f'data-actual="{esc(actual)}" data-predicted="{esc(predicted)}" data-value="{count}">{count}</td>'
                )
            rows.append(cells)
        matrix_html = table(["actual \\ predicted", *labels], rows, "confusion")
        roc = _roc_points(folder / layout.ROC_NAME)
        chart = line_chart(
            {"ROC": roc, "chance": [(0.0, 0.0), (1.0, 1.0)]}, f"{name}: ROC", "FPR", "TPR", (0, 1), "bottom", (300, 240)
        )
        parts.append(f'<div class="card"><h3>{esc(name)}</h3>{matrix_html}<div class="fig">{chart}</div></div>')
    return "".join(parts) or "<p>No confusion matrices yet.</p>"


def _roc_points(path: Path) -> list[tuple[float, float]]:
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            return [(float(row["fpr"]), float(row["tpr"])) for row in csv.DictReader(handle) if "class" not in row]
    except (OSError, ValueError, KeyError):
        return []


def data_section(inputs: ReportInputs, cfg: ReportConfig) -> str:
    """Source, manifest counts, image sizes, quarantine list, split counts and duplicates."""
    parts = []
    source = read_json(inputs.source) or {}
    archive = source.get("archive") or {}
    facts = [
        ("source", source.get("source")),
        ("competition", source.get("competition")),
        ("archive sha256", archive.get("sha256")),
        ("archive bytes", archive.get("bytes")),
        ("Last-Modified", (source.get("download") or {}).get("last_modified")),
        ("retrieved", source.get("retrieved_at")),
    ]
    parts.append(table(["", ""], [[f"<th>{esc(k)}</th>", td(v)] for k, v in facts if v is not None], "facts"))
    report = read_json(inputs.manifest_report) or {}
    summary = report.get("summary") or {}
    if summary:
        counts = [
            ("archive members", summary.get("members")),
            ("usable", summary.get("ok")),
            ("quarantined", summary.get("quarantined")),
            ("unique (sha256)", summary.get("unique_sha256")),
        ]
        counts += [(f"usable {label}", count) for label, count in (summary.get("ok_per_class") or {}).items()]
        counts += [(f"quarantined: {reason}", n) for reason, n in (summary.get("quarantined_per_reason") or {}).items()]
        parts.append(
            table(
                ["manifest", "images"],
                [[f"<th>{esc(k)}</th>", value_cell(v, fact=k)] for k, v in counts if v is not None],
                "facts",
            )
        )
    parts.append(_size_histogram(inputs.manifest))
    quarantine = report.get("quarantine") or []
    if quarantine:
        shown = quarantine[: cfg.max_quarantine_rows]
        more = (
            f"<p>... and {len(quarantine) - len(shown)} more in the manifest's report.json.</p>"
            if len(quarantine) > len(shown)
            else ""
        )
        parts.append(
            "<h3>Quarantined members</h3>"
            + table(["member", "reason"], [[td(row.get("member")), td(row.get("reason"))] for row in shown])
            + more
        )
    parts.append(_split_summary(inputs.split_report))
    return "".join(parts)


def _size_histogram(manifest_path: Path) -> str:
    try:
        import pandas as pd

        manifest = pd.read_parquet(manifest_path, columns=["status", "width", "height"])
    except (OSError, ValueError):
        return ""
    ok = manifest[manifest["status"] == "ok"]
    chart = histogram(
        {"width": ok["width"].astype(float).tolist(), "height": ok["height"].astype(float).tolist()},
        "Image sizes (usable images)",
        "pixels",
    )
    return f'<div class="fig">{chart}</div>'


def _split_summary(split_report: Path) -> str:
    report = read_json(split_report) or {}
    counts = report.get("counts") or {}
    if not counts and not report.get("error"):
        return "<p>No split yet.</p>"
    labels = sorted({label for per_class in counts.values() for label in per_class})
    rows = [
        [f"<th>{esc(split)}</th>"]
        + [value_cell((counts.get(split) or {}).get(label, 0), split=split, label=label) for label in labels]
        for split in SPLITS
        if split in counts
    ]
    policy = report.get("policy") or {}
    facts = [
        (
            "exact duplicates collapsed",
            sum(len(group.get("dropped", [])) for group in report.get("exact_duplicates", [])),
        ),
        ("near-duplicate groups (kept in one split)", len(report.get("near_duplicate_groups") or [])),
        ("label conflicts left out", len(report.get("label_conflicts") or [])),
        ("seed", policy.get("seed")),
    ]
    rule = policy.get("near_duplicate") or {}
    near = report.get("near_duplicates") or {}
    if rule:
        facts += [
            (
                "near-duplicate rule",
                f"phash within {rule.get('hash_bits')} bits"
                + (f" or Fourier hash within {rule['shift_bits']} bits" if rule.get("shift_bits") else "")
                + f", then NCC >= {rule.get('threshold')} of "
                f"{rule.get('thumbnail')} px grey thumbnails (shift {rule.get('max_shift')} px, mirror)",
            ),
            ("candidate pairs / confirmed", f"{near.get('candidates', 0):,} / {near.get('confirmed', 0):,}"),
        ]
    groups = near.get("largest_groups") or []
    largest = [
        [td(group.get("size")), td(", ".join(group.get("labels") or [])), td(", ".join(group.get("members")[:8]))]
        for group in groups
    ]
    # The split stopped (the guard, or a class too short): no counts, but the groups are what to look at.
    error = f'<p class="verdict failed">Split stopped: {esc(report["error"])}</p>' if report.get("error") else ""
    return (
        "<h3>Split</h3>"
        + error
        + (table(["split", *labels], rows, "split") if rows else "")
        + table(["", ""], [[f"<th>{esc(k)}</th>", td(v)] for k, v in facts], "facts")
        + (table(["largest groups", "labels", "members"], largest, "groups") if largest else "")
        + _group_thumbnails(Path(split_report).parent, groups)
    )


def _group_thumbnails(folder: Path, groups: Sequence[Mapping[str, Any]]) -> str:
    """The split stage's strip of each listed group's first members (from the archive), as data URIs."""
    figures = []
    for number, group in enumerate(groups, start=1):
        path = folder / group["thumbnail"] if group.get("thumbnail") else None
        if path is None or not path.is_file():
            continue
        shown = list(group.get("thumbnail_members") or [])
        more = int(group.get("size") or len(shown)) - len(shown)
        caption = ", ".join(shown) + (f" and {more:,} more" if more > 0 else "")
        figures.append(
            f'<figure class="group"><img src="{jpeg_data_uri(path.read_bytes())}" alt="group {number}: '
            f'{esc(", ".join(shown))}"><figcaption>group {number} ({esc(group.get("size"))} images, '
            f"{esc(', '.join(group.get('labels') or []))}): {esc(caption)}</figcaption></figure>"
        )
    if not figures:
        return ""
    return "<h4>Largest near-duplicate groups</h4>" + "".join(figures)


def augmentation_section(inputs: ReportInputs, cfg: ReportConfig, classes: Sequence[str]) -> str:
    """A grid of training images through the augmentation layers, as the augmented variants see them."""
    if cfg.augmented_images == 0 or not layout.split_file(inputs.images, "train").is_file():
        return "<p>No decoded training images.</p>"
    rows, labels = augmented_examples(inputs.images, cfg.augmented_images, cfg.augmentations_per_image, cfg.seed)
    if not rows:
        return "<p>No decoded training images.</p>"
    # Two images side by side per grid row: the page stays wide rather than very tall.
    paired = [[tile for row in rows[i : i + 2] for tile in row] for i in range(0, len(rows), 2)]
    uri = jpeg_data_uri(image_grid(paired))
    names = [classes[label] if label < len(classes) else str(label) for label in labels]
    caption = ", ".join(f"{' / '.join(names[i : i + 2])}" for i in range(0, len(names), 2))
    return (
        f'<img class="grid" src="{uri}" alt="augmented training images"><p class="note">Each training image (as '
        f"cached at the decoded size) is followed by {cfg.augmentations_per_image} draws of RandomFlip, "
        f"RandomRotation(0.1) and RandomZoom(0.2) with seed {cfg.seed}; two images per row. Classes, row by row: "
        f"{esc(caption)}.</p>"
    )


def audit_section(inputs: ReportInputs, thumbnails: int) -> str:
    """The audit's verdict, counts, and the suspect pairs with their thumbnails."""
    report = read_json(Path(inputs.audit) / layout.REPORT_NAME)
    if not report:
        return "<p>No audit yet (run the audit stage).</p>"
    summary = report.get("summary") or {}
    verdict = "passed" if summary.get("passed") else "FAILED"
    keys = [
        ("hash", summary.get("method")),
        ("threshold (bits)", summary.get("threshold")),
        ("images audited", summary.get("images")),
        ("exact-duplicate groups", summary.get("exact_duplicate_groups")),
        ("exact duplicates across splits", summary.get("exact_cross_split")),
        ("near-duplicate pairs", summary.get("near_duplicate_pairs")),
        ("pairs within one split", summary.get("within_split_pairs")),
        ("pairs across splits (leaks)", summary.get("cross_split_pairs")),
        ("pairs with an unused image", (summary.get("one_unused_pairs") or 0) + (summary.get("unused_pairs") or 0)),
        ("pairs with different labels", summary.get("label_conflict_pairs")),
        ("allowed across splits", summary.get("max_cross_split_pairs")),
    ]
    rows = [[f"<th>{esc(k)}</th>", value_cell(v, audit=k) if isinstance(v, int) else td(v)] for k, v in keys]
    parts = [f'<p class="verdict {verdict.lower()}">Leakage audit {verdict}.</p>', table(["", ""], rows, "facts")]
    pairs = report.get("pairs") or []
    cards = []
    for pair in pairs[:thumbnails]:
        image = ""
        if pair.get("thumbnail"):
            path = Path(inputs.audit) / pair["thumbnail"]
            if path.is_file():
                image = f'<img src="{jpeg_data_uri(path.read_bytes())}" alt="{esc(pair["a"])} and {esc(pair["b"])}">'
        cards.append(
            f'<figure class="pair {esc(pair["kind"])}">{image}<figcaption>{esc(pair["a"])} ({esc(pair["a_split"])})'
            f" / {esc(pair['b'])} ({esc(pair['b_split'])}): {pair['distance']} bits"
            f"{' mirrored' if pair.get('mirrored') else ''}, {esc(pair['kind'].replace('_', ' '))}"
            f"{', labels differ' if pair.get('label_conflict') else ''}</figcaption></figure>"
        )
    if cards:
        parts.append('<div class="pairs">' + "".join(cards) + "</div>")
    rest = pairs[thumbnails : thumbnails + _MAX_TEXT_PAIRS]
    if rest:
        parts.append(
            table(
                ["a", "split", "b", "split", "bits", "kind"],
                [
                    [td(p["a"]), td(p["a_split"]), td(p["b"]), td(p["b_split"]), td(p["distance"]), td(p["kind"])]
                    for p in rest
                ],
            )
        )
    return "".join(parts)


def _run_by(who: Mapping[str, Any]) -> str:
    """``dvc``, ``manual``, or ``prefect <flow run name> (<id prefix>)``."""
    if not who.get("flow_run_id"):
        return str(who.get("kind", "-"))
    return f"prefect {who.get('flow_run_name') or ''} ({str(who['flow_run_id'])[:8]})".replace("  ", " ")


def lineage_section(inputs: ReportInputs, root: Path) -> str:
    """One row per stage record: when, by whom, which commit, and the hashes of what it produced."""
    from cvpipe.lineage.query import all_records, link

    records = all_records(root) if Path(inputs.lineage).is_dir() else {}
    if not records:
        return "<p>No lineage records yet.</p>"
    rows = []
    # In the order the stages last ran, which follows the DAG.
    for name, record in sorted(records.items(), key=lambda item: str(item[1].get("finished_at"))):
        git = record.get("git") or {}
        who = record.get("orchestrator") or {}
        links = [link(root, entry, records.get(entry.get("stage", ""))) for entry in record.get("inputs") or []]
        chain = "broken" if "broken" in links else "ok" if links and all(x == "ok" for x in links) else "-"
        outputs = "<br>".join(
            f"{esc(out.get('path'))} <code>{esc(str(out.get('md5', '-'))[:12])}</code>"
            for out in record.get("outputs") or []
        )
        commit = (git.get("commit") or "-")[:10] + (" (dirty)" if git.get("dirty") else "")
        rows.append(
            [
                f"<th>{esc(name)}</th>",
                td(record.get("finished_at")),
                td(record.get("seconds")),
                td(_run_by(who)),
                td(commit),
                td(chain),
                f"<td>{outputs}</td>",
            ]
        )
    return table(
        ["stage", "finished (UTC)", "seconds", "run by", "git commit", "inputs match", "outputs (md5)"], rows, "lineage"
    )


def verdict_sections(inputs: ReportInputs, cfg: ReportConfig, thumbnails: int) -> list[tuple[str, str, str]]:
    """Issue 13's sections: calibration, confident mistakes, the embedding and label-issue audits."""
    from cvpipe.report import verdicts

    metrics = read_metrics(inputs.metrics) if Path(inputs.metrics).is_dir() else {}
    audit = Path(inputs.audit)
    return [
        ("calibration", "Uncertainty and calibration (test split)", verdicts.calibration_section(metrics)),
        (
            "mistakes",
            "Each variant's most confident mistakes",
            verdicts.mistakes_section(inputs.predictions, inputs.images, cfg.mistakes, {layout.MNIST: inputs.mnist}),
        ),
        (
            "embedding",
            "Embedding leakage audit (VGG16 cosine similarity)",
            verdicts.embedding_section(audit / layout.EMBEDDING_AUDIT_REPORT.name, inputs.images, thumbnails),
        ),
        (
            "labels",
            "Label-issue audit (confident learning)",
            verdicts.label_issues_section(
                audit / layout.LABEL_ISSUES.name, audit / layout.LABEL_AUDIT_METRICS.name, inputs.images, thumbnails
            ),
        ),
    ]


def all_sections(
    root: Path, inputs: ReportInputs, cfg: ReportConfig, thumbnails: int = 24, classes: Sequence[str] = ()
) -> list[tuple[str, str, str]]:
    """Every section in page order, as ``(anchor, title, HTML)``."""
    return [
        ("metrics", "Test metrics and the seed's figures", metrics_section(inputs)),
        ("curves", "Training curves", curves_section(inputs)),
        ("confusion", "Confusion matrices and ROC curves (test split)", confusion_section(inputs)),
        ("data", "Data", data_section(inputs, cfg)),
        (
            "augmentation",
            "Augmented training images, as the model sees them",
            augmentation_section(inputs, cfg, classes),
        ),
        ("audit", "Leakage audit: exact and near-duplicates", audit_section(inputs, thumbnails)),
        *verdict_sections(inputs, cfg, thumbnails),
        ("lineage", "Lineage: every stage's last run", lineage_section(inputs, root)),
    ]
