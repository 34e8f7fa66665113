"""Reports a person reads: the metrics table next to the seed's figures, and ``reports/index.html``.

The HTML report is one self-contained file, readable offline and by mail: plots are inline SVG drawn here
(no plotting library, no JavaScript), images are inline JPEG data URIs, and a Content-Security-Policy forbids
loading anything else. Every figure comes from a pipeline output: metrics and confusion matrices from the
evaluate stages, curves from the train stages' ``history.json``, the data summary from the manifest and the
split report, suspect pairs from the audit, and the lineage table from the stages' records. Table cells
carry their exact value in ``data-value`` so that a test can compare them with the files.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import html
import io
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cvpipe.config import SPLITS, VARIANTS, ReportConfig
from cvpipe.io import write_bytes_atomic

log = logging.getLogger(__name__)

# Test accuracy the walkthrough reports for each variant (DESIGN.md): the anchors to beat on Kaggle data.
SEED_ACCURACY: dict[str, float] = {
    "scratch": 0.697,
    "scratch_aug": 0.744,
    "feature_extraction": 0.973,
    "feature_extraction_aug": 0.977,
    "fine_tuning": 0.977,
}
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
_MAX_TEXT_PAIRS = 50
_TILE_MIN = 96  # small caches (32 px) are enlarged so a person can see them


def read_metrics(metrics_dir: Path) -> dict[str, dict[str, Any]]:
    """Every ``<variant>.json`` in ``metrics_dir``, in the seed's variant order."""
    found = {path.stem: json.loads(path.read_text(encoding="utf-8")) for path in Path(metrics_dir).glob("*.json")}
    ordered = [name for name in VARIANTS if name in found] + sorted(set(found) - set(VARIANTS))
    return {name: found[name] for name in ordered}


def _cell(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "-"


def metrics_table(metrics_dir: Path) -> str:
    """A Markdown table: variant, test accuracy, loss, ROC AUC, test images, the seed's accuracy."""
    rows = [
        "| variant | test accuracy | test loss | ROC AUC | test images | seed accuracy |",
        "|---|---|---|---|---|---|",
    ]
    for name, metrics in read_metrics(metrics_dir).items():
        rows.append(
            f"| {name} | {_cell(metrics.get('accuracy'))} | {_cell(metrics.get('loss'))} | "
            f"{_cell(metrics.get('roc_auc'))} | {metrics.get('n_samples', '-')} | {_cell(SEED_ACCURACY.get(name))} |"
        )
    return "\n".join(rows)


# -- inputs ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportInputs:
    """Where the report reads from (``dvc.yaml`` lists the same paths as the report stage's deps)."""

    source: Path = Path("data/raw/SOURCE.json")
    manifest: Path = Path("data/manifest/images.parquet")
    manifest_report: Path = Path("data/manifest/report.json")
    split_report: Path = Path("data/splits/report.json")
    images: Path = Path("data/cache/images")
    metrics: Path = Path("reports/metrics")
    plots: Path = Path("reports/plots")
    train: Path = Path("reports/train")
    audit: Path = Path("reports/audit")
    lineage: Path = Path("reports/lineage")

    def under(self, root: Path) -> ReportInputs:
        """The same paths, relative to ``root`` when they are relative."""
        return ReportInputs(**{name: Path(root) / value for name, value in self.__dict__.items()})


def _json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _number(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "-" if value is None else _esc(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}f}" if math.isfinite(value) else "-"


def _value_cell(value: Any, **data: str) -> str:
    """A table cell showing ``value`` rounded, with the exact value (and what it is) in data attributes."""
    attributes = "".join(f' data-{name}="{_esc(text)}"' for name, text in data.items())
    exact = json.dumps(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else ""
    return f'<td class="num"{attributes} data-value="{_esc(exact)}">{_number(value)}</td>'


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], css: str = "") -> str:
    """A table; no header row when every header is empty (a list of facts)."""
    head = "".join(f"<th>{_esc(name)}</th>" for name in header)
    thead = f"<thead><tr>{head}</tr></thead>" if any(header) else ""
    body = "".join("<tr>" + "".join(row) + "</tr>" for row in rows)
    return f'<table class="{css}">{thead}<tbody>{body}</tbody></table>'


def _td(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return f'<td class="num">{value:,}</td>'
    return f"<td>{_esc(value)}</td>"


# -- inline SVG charts ----------------------------------------------------------------------------------------


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        return [low]
    step = 10 ** math.floor(math.log10((high - low) / count))
    for factor in (1, 2, 2.5, 5, 10):
        if (high - low) / (step * factor) <= count:
            step *= factor
            break
    start = math.ceil(low / step) * step
    return [round(start + i * step, 10) for i in range(int((high - start) / step + 1e-9) + 1)]


@dataclass(frozen=True)
class _Frame:
    """A chart's plotting area and the data ranges it maps."""

    x0: float
    x1: float
    y0: float
    y1: float
    width: int = 440
    height: int = 250
    left: int = 62
    right: int = 12
    top: int = 26
    bottom: int = 40

    def x(self, value: float) -> float:
        span = (self.x1 - self.x0) or 1.0
        return self.left + (value - self.x0) / span * (self.width - self.left - self.right)

    def y(self, value: float) -> float:
        span = (self.y1 - self.y0) or 1.0
        return self.height - self.bottom - (value - self.y0) / span * (self.height - self.top - self.bottom)


def _axes(frame: _Frame, title: str, x_label: str, y_label: str, x_ticks: bool = True) -> list[str]:
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{frame.width}" height="{frame.height}" '
        f'viewBox="0 0 {frame.width} {frame.height}" role="img" aria-label="{_esc(title)}">',
        f"<title>{_esc(title)}</title>",
        f'<text x="{frame.width / 2}" y="16" text-anchor="middle" class="t">{_esc(title)}</text>',
    ]
    bottom, top = frame.height - frame.bottom, frame.top
    for tick in _ticks(frame.y0, frame.y1):
        y = frame.y(tick)
        parts.append(f'<line x1="{frame.left}" x2="{frame.width - frame.right}" y1="{y:.1f}" y2="{y:.1f}" class="g"/>')
        parts.append(f'<text x="{frame.left - 4}" y="{y + 4:.1f}" text-anchor="end">{tick:g}</text>')
    for tick in _ticks(frame.x0, frame.x1) if x_ticks else []:
        x = frame.x(tick)
        parts.append(f'<text x="{x:.1f}" y="{bottom + 14}" text-anchor="middle">{tick:g}</text>')
    parts.append(f'<line x1="{frame.left}" x2="{frame.left}" y1="{top}" y2="{bottom}" class="a"/>')
    parts.append(f'<line x1="{frame.left}" x2="{frame.width - frame.right}" y1="{bottom}" y2="{bottom}" class="a"/>')
    parts.append(f'<text x="{frame.width / 2}" y="{frame.height - 6}" text-anchor="middle">{_esc(x_label)}</text>')
    parts.append(
        f'<text x="12" y="{frame.height / 2}" text-anchor="middle" transform="rotate(-90 12 {frame.height / 2})">'
        f"{_esc(y_label)}</text>"
    )
    return parts


def _legend(frame: _Frame, names: Sequence[str], where: str = "top") -> list[str]:
    """Colour keys in the plot's top-right or bottom-right corner (where the data usually is not)."""
    parts = []
    first = frame.top + 4 if where == "top" else frame.height - frame.bottom - 6 - 14 * len(names)
    for index, name in enumerate(names):
        y = first + 14 * index
        x = frame.width - frame.right - 120
        colour = PALETTE[index % len(PALETTE)]
        parts.append(f'<rect x="{x}" y="{y}" width="10" height="10" fill="{colour}"/>')
        parts.append(f'<text x="{x + 14}" y="{y + 9}">{_esc(name)}</text>')
    return parts


def line_chart(
    series: Mapping[str, Sequence[tuple[float, float]]],
    title: str,
    x_label: str,
    y_label: str,
    y_range: tuple[float, float] | None = None,
    legend: str = "top",
    size: tuple[int, int] = (440, 250),
) -> str:
    """An inline SVG line chart of named ``(x, y)`` series (non-finite points are skipped).

    Without ``y_range`` the y axis spans the data plus 5 % each side, so no point sits on the frame.
    """
    points = {
        name: [(x, y) for x, y in values if math.isfinite(x) and math.isfinite(y)] for name, values in series.items()
    }
    xs = [x for values in points.values() for x, _ in values] or [0.0, 1.0]
    ys = [y for values in points.values() for _, y in values] or [0.0, 1.0]
    if y_range is None:
        pad = (max(ys) - min(ys)) * 0.05 or 0.5
        y_range = (min(ys) - pad, max(ys) + pad)
    low, high = y_range
    frame = _Frame(min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1, low, high, width=size[0], height=size[1])
    parts = _axes(frame, title, x_label, y_label)
    for index, (name, values) in enumerate(points.items()):
        colour = PALETTE[index % len(PALETTE)]
        path = " ".join(f"{frame.x(x):.1f},{frame.y(y):.1f}" for x, y in values)
        parts.append(
            f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"><title>'
            f"{_esc(name)}</title></polyline>"
        )
        if len(values) == 1:
            x, y = values[0]
            parts.append(f'<circle cx="{frame.x(x):.1f}" cy="{frame.y(y):.1f}" r="3" fill="{colour}"/>')
    parts += _legend(frame, list(points), legend)
    parts.append("</svg>")
    return "".join(parts)


def bar_chart(
    groups: Mapping[str, Mapping[str, float | None]], title: str, y_label: str, y_max: float | None = None
) -> str:
    """An inline SVG grouped bar chart: one group per key, one bar per series name in it."""
    names = list(dict.fromkeys(name for bars in groups.values() for name in bars))
    values = [value for bars in groups.values() for value in bars.values() if value is not None]
    top = y_max if y_max is not None else max(values or [1.0]) * 1.1 or 1.0
    frame = _Frame(0, max(len(groups), 1), 0, top, width=max(440, 150 * len(groups) + 80), top=44)
    parts = _axes(frame, title, "", y_label, x_ticks=False)
    slot = (frame.x(1) - frame.x(0)) * 0.8
    bar = slot / max(len(names), 1)
    for position, (group, bars) in enumerate(groups.items()):
        start = frame.x(position) + (frame.x(1) - frame.x(0)) * 0.1
        for index, name in enumerate(names):
            value = bars.get(name)
            if value is None:
                continue
            y = frame.y(value)
            parts.append(
                f'<rect x="{start + index * bar:.1f}" y="{y:.1f}" width="{bar - 2:.1f}" '
                f'height="{frame.y(0) - y:.1f}" fill="{PALETTE[index % len(PALETTE)]}"><title>{_esc(group)} '
                f"{_esc(name)}: {value:.3f}</title></rect>"
            )
        label_x = start + slot / 2
        parts.append(
            f'<text x="{label_x:.1f}" y="{frame.y(0) + 26:.1f}" text-anchor="middle" class="s">{_esc(group)}</text>'
        )
    for index, name in enumerate(names):  # the legend goes above the plot: the bars fill it to the top
        x = frame.left + 8 + 110 * index
        parts.append(f'<rect x="{x}" y="24" width="10" height="10" fill="{PALETTE[index % len(PALETTE)]}"/>')
        parts.append(f'<text x="{x + 14}" y="33">{_esc(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def histogram(samples: Mapping[str, Sequence[float]], title: str, x_label: str, bins: int = 20) -> str:
    """An inline SVG histogram of one or more named samples, on shared bins."""
    everything = [value for values in samples.values() for value in values]
    if not everything:
        return "<p>No data.</p>"
    low, high = min(everything), max(everything)
    edges = np.linspace(low, high if high > low else low + 1, bins + 1)
    counts = {name: np.histogram(values, bins=edges)[0] for name, values in samples.items()}
    frame = _Frame(float(edges[0]), float(edges[-1]), 0, float(max(c.max() for c in counts.values())) * 1.1 or 1)
    parts = _axes(frame, title, x_label, "images")
    for index, (name, values) in enumerate(counts.items()):
        colour = PALETTE[index % len(PALETTE)]
        for left, right, count in zip(edges[:-1], edges[1:], values, strict=True):
            if count:
                y = frame.y(float(count))
                parts.append(
                    f'<rect x="{frame.x(left):.1f}" y="{y:.1f}" width="{frame.x(right) - frame.x(left):.1f}" '
                    f'height="{frame.y(0) - y:.1f}" fill="{colour}" fill-opacity="0.55"><title>{_esc(name)} '
                    f"{left:.0f}-{right:.0f}: {count}</title></rect>"
                )
    parts += _legend(frame, list(counts))
    parts.append("</svg>")
    return "".join(parts)


# -- images ---------------------------------------------------------------------------------------------------


def jpeg_data_uri(data: bytes) -> str:
    """A ``data:`` URI for JPEG bytes."""
    return "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")


def image_grid(rows: Sequence[Sequence[np.ndarray]], quality: int = 85) -> bytes:
    """A JPEG of uint8 H x W x 3 tiles, one grid row per sequence, tiles enlarged to at least 96 px."""
    from PIL import Image

    side = max(int(tile.shape[0]) for row in rows for tile in row)
    scale = max(1, math.ceil(_TILE_MIN / side))
    cell, gap = side * scale, 4
    columns = max(len(row) for row in rows)
    canvas = Image.new("RGB", (columns * (cell + gap) + gap, len(rows) * (cell + gap) + gap), (255, 255, 255))
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            image = Image.fromarray(np.clip(tile, 0, 255).astype(np.uint8), "RGB")
            image = image.resize((cell, cell), Image.Resampling.BILINEAR)
            canvas.paste(image, (gap + c * (cell + gap), gap + r * (cell + gap)))
    buffer = io.BytesIO()
    canvas.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


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

    images = np.load(Path(images_dir) / "train.npy", mmap_mode="r")
    labels = np.load(Path(images_dir) / "train_labels.npy")
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
            [f"<th>{_esc(name)}</th>"]
            + [_value_cell(values.get(key), variant=name, metric=key) for key in keys]
            + [
                _value_cell(seed, variant=name, metric="seed_accuracy"),
                _value_cell(delta, variant=name, metric="delta"),
            ]
        )
    header = [
        "variant",
        "test accuracy",
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
            name: {"this run": values.get("accuracy"), "seed": SEED_ACCURACY.get(name)}
            for name, values in metrics.items()
        },
        "Test accuracy: this run and the seed (Kaggle data)",
        "accuracy",
        y_max=1.0,
    )
    return _table(header, rows, "metrics") + f'<div class="fig">{chart}</div>'


def curves_section(inputs: ReportInputs) -> str:
    """Loss and accuracy per epoch, train and val, for each trained variant."""
    figures = []
    for name in VARIANTS:
        history = (_json(Path(inputs.train) / name / "history.json") or {}).get("history") or {}
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
        data = _json(folder / "confusion_matrix.json")
        if not data:
            continue
        labels, matrix = data["labels"], data["matrix"]
        peak = max(max(row) for row in matrix) or 1
        rows = []
        for actual, row in zip(labels, matrix, strict=True):
            cells = [f"<th>{_esc(actual)}</th>"]
            for predicted, count in zip(labels, row, strict=True):
                shade = 0.15 + 0.6 * count / peak
                cells.append(
                    f'<td class="num" style="background:rgba(31,119,180,{shade:.2f})" data-variant="{_esc(name)}" '
                    f'data-actual="{_esc(actual)}" data-predicted="{_esc(predicted)}" data-value="{count}">{count}</td>'
                )
            rows.append(cells)
        table = _table(["actual \\ predicted", *labels], rows, "confusion")
        roc = _roc_points(folder / "roc.csv")
        chart = line_chart(
            {"ROC": roc, "chance": [(0.0, 0.0), (1.0, 1.0)]}, f"{name}: ROC", "FPR", "TPR", (0, 1), "bottom", (300, 240)
        )
        parts.append(f'<div class="card"><h3>{_esc(name)}</h3>{table}<div class="fig">{chart}</div></div>')
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
    source = _json(inputs.source) or {}
    archive = source.get("archive") or {}
    facts = [
        ("source", source.get("source")),
        ("competition", source.get("competition")),
        ("archive sha256", archive.get("sha256")),
        ("archive bytes", archive.get("bytes")),
        ("Last-Modified", (source.get("download") or {}).get("last_modified")),
        ("retrieved", source.get("retrieved_at")),
    ]
    parts.append(_table(["", ""], [[f"<th>{_esc(k)}</th>", _td(v)] for k, v in facts if v is not None], "facts"))
    report = _json(inputs.manifest_report) or {}
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
            _table(
                ["manifest", "images"],
                [[f"<th>{_esc(k)}</th>", _value_cell(v, fact=k)] for k, v in counts if v is not None],
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
            + _table(["member", "reason"], [[_td(row.get("member")), _td(row.get("reason"))] for row in shown])
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
    report = _json(split_report) or {}
    counts = report.get("counts") or {}
    if not counts:
        return "<p>No split yet.</p>"
    labels = sorted({label for per_class in counts.values() for label in per_class})
    rows = [
        [f"<th>{_esc(split)}</th>"]
        + [_value_cell((counts.get(split) or {}).get(label, 0), split=split, label=label) for label in labels]
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
        ("near-duplicate threshold (bits)", policy.get("near_duplicate_threshold")),
    ]
    return (
        "<h3>Split</h3>"
        + _table(["split", *labels], rows, "split")
        + _table(["", ""], [[f"<th>{_esc(k)}</th>", _td(v)] for k, v in facts], "facts")
    )


def augmentation_section(inputs: ReportInputs, cfg: ReportConfig, classes: Sequence[str]) -> str:
    """A grid of training images through the augmentation layers, as the augmented variants see them."""
    if cfg.augmented_images == 0 or not (Path(inputs.images) / "train.npy").is_file():
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
        f"{_esc(caption)}.</p>"
    )


def audit_section(inputs: ReportInputs, thumbnails: int) -> str:
    """The audit's verdict, counts, and the suspect pairs with their thumbnails."""
    report = _json(Path(inputs.audit) / "report.json")
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
    rows = [[f"<th>{_esc(k)}</th>", _value_cell(v, audit=k) if isinstance(v, int) else _td(v)] for k, v in keys]
    parts = [f'<p class="verdict {verdict.lower()}">Leakage audit {verdict}.</p>', _table(["", ""], rows, "facts")]
    pairs = report.get("pairs") or []
    cards = []
    for pair in pairs[:thumbnails]:
        image = ""
        if pair.get("thumbnail"):
            path = Path(inputs.audit) / pair["thumbnail"]
            if path.is_file():
                image = f'<img src="{jpeg_data_uri(path.read_bytes())}" alt="{_esc(pair["a"])} and {_esc(pair["b"])}">'
        cards.append(
            f'<figure class="pair {_esc(pair["kind"])}">{image}<figcaption>{_esc(pair["a"])} ({_esc(pair["a_split"])})'
            f" / {_esc(pair['b'])} ({_esc(pair['b_split'])}): {pair['distance']} bits"
            f"{' mirrored' if pair.get('mirrored') else ''}, {_esc(pair['kind'].replace('_', ' '))}"
            f"{', labels differ' if pair.get('label_conflict') else ''}</figcaption></figure>"
        )
    if cards:
        parts.append('<div class="pairs">' + "".join(cards) + "</div>")
    rest = pairs[thumbnails : thumbnails + _MAX_TEXT_PAIRS]
    if rest:
        parts.append(
            _table(
                ["a", "split", "b", "split", "bits", "kind"],
                [
                    [_td(p["a"]), _td(p["a_split"]), _td(p["b"]), _td(p["b_split"]), _td(p["distance"]), _td(p["kind"])]
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
            f"{_esc(out.get('path'))} <code>{_esc(str(out.get('md5', '-'))[:12])}</code>"
            for out in record.get("outputs") or []
        )
        commit = (git.get("commit") or "-")[:10] + (" (dirty)" if git.get("dirty") else "")
        rows.append(
            [
                f"<th>{_esc(name)}</th>",
                _td(record.get("finished_at")),
                _td(record.get("seconds")),
                _td(_run_by(who)),
                _td(commit),
                _td(chain),
                f"<td>{outputs}</td>",
            ]
        )
    return _table(
        ["stage", "finished (UTC)", "seconds", "run by", "git commit", "inputs match", "outputs (md5)"], rows, "lineage"
    )


STYLE = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1200px;padding:0 16px;
color:#222}
h1{margin-top:24px}h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
table{border-collapse:collapse;margin:8px 16px 8px 0;display:inline-table;vertical-align:top}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
thead th{background:#f4f4f4}.fig{display:inline-block;margin:4px}.card{display:inline-block;vertical-align:top;
margin:8px;padding:8px;border:1px solid #eee}
svg text{font-size:11px;fill:#333}svg text.t{font-size:13px;font-weight:600}svg .g{stroke:#eee}svg .a{stroke:#888}
svg text.s{font-size:10px}.pairs{display:flex;flex-wrap:wrap}.pair{margin:6px;width:272px;font-size:12px}
.pair.cross_split{outline:3px solid #d62728}.verdict{font-weight:600;font-size:16px}.passed{color:#2ca02c}
.failed{color:#d62728}img.grid{max-width:100%}.note{color:#555;font-size:12px}nav a{margin-right:12px}
code{font-size:12px}
"""


def render_report(
    root: Path, inputs: ReportInputs, cfg: ReportConfig, thumbnails: int = 24, classes: Sequence[str] = ()
) -> str:
    """The whole report as one HTML document."""
    from cvpipe.lineage.record import git_info, orchestrator, redact

    git = git_info(root)
    who = orchestrator()
    generated = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    sections = [
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
        ("lineage", "Lineage: every stage's last run", lineage_section(inputs, root)),
    ]
    nav = "".join(f'<a href="#{key}">{_esc(title.split(":")[0])}</a>' for key, title, _ in sections)
    body = "".join(f'<section id="{key}"><h2>{_esc(title)}</h2>{content}</section>' for key, title, content in sections)
    commit = (git.get("commit") or "no commit") + (" (dirty)" if git.get("dirty") else "")
    run = f", Prefect flow run {_esc(who['flow_run_id'])}" if who.get("flow_run_id") else ""
    document = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>cvpipe report</title><style>{STYLE}</style></head><body>"
        f"<h1>cvpipe: dogs vs cats, convnet and VGG16</h1><p>Generated {_esc(generated)} from git "
        f"{_esc(commit)}{run}.</p><nav>{nav}</nav>{body}</body></html>\n"
    )
    return str(redact(document))


def build_report(
    root: Path,
    out: Path,
    cfg: ReportConfig,
    inputs: ReportInputs | None = None,
    thumbnails: int = 24,
    classes: Sequence[str] = (),
) -> dict[str, Any]:
    """The report stage: write ``out`` (``reports/index.html``) atomically.

    Args:
        root: the project root the inputs' paths are relative to.
        out: the HTML file.
        cfg: the ``report`` params.
        inputs: where the pipeline's outputs are (default: dvc.yaml's paths).
        thumbnails: suspect pairs shown with thumbnails (``audit.thumbnails``).
        classes: class names by label index (``data.classes``), to caption the augmented images.

    Returns:
        What the report shows: the variants with metrics, and its size in bytes.
    """
    root = Path(root)
    inputs = (inputs or ReportInputs()).under(root)
    document = render_report(root, inputs, cfg, thumbnails, classes)
    write_bytes_atomic(Path(out), document.encode("utf-8"))
    variants = list(read_metrics(inputs.metrics)) if Path(inputs.metrics).is_dir() else []
    log.info("report: %s (%d bytes, %d variants)", out, len(document), len(variants))
    return {"variants": variants, "bytes": len(document.encode("utf-8"))}
