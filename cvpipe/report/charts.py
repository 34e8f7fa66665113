"""Inline SVG charts for the report: axes with round ticks, line and grouped bar charts, histograms.

No plotting library and no JavaScript: each chart is one ``<svg>`` element, drawn from the numbers, that any
browser or mail client shows offline.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from cvpipe.report.html import esc

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")


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
        f'viewBox="0 0 {frame.width} {frame.height}" role="img" aria-label="{esc(title)}">',
        f"<title>{esc(title)}</title>",
        f'<text x="{frame.width / 2}" y="16" text-anchor="middle" class="t">{esc(title)}</text>',
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
    parts.append(f'<text x="{frame.width / 2}" y="{frame.height - 6}" text-anchor="middle">{esc(x_label)}</text>')
    parts.append(
        f'<text x="12" y="{frame.height / 2}" text-anchor="middle" transform="rotate(-90 12 {frame.height / 2})">'
        f"{esc(y_label)}</text>"
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
        parts.append(f'<text x="{x + 14}" y="{y + 9}">{esc(name)}</text>')
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
            f"{esc(name)}</title></polyline>"
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
                f'height="{frame.y(0) - y:.1f}" fill="{PALETTE[index % len(PALETTE)]}"><title>{esc(group)} '
                f"{esc(name)}: {value:.3f}</title></rect>"
            )
        label_x = start + slot / 2
        parts.append(
            f'<text x="{label_x:.1f}" y="{frame.y(0) + 26:.1f}" text-anchor="middle" class="s">{esc(group)}</text>'
        )
    for index, name in enumerate(names):  # the legend goes above the plot: the bars fill it to the top
        x = frame.left + 8 + 110 * index
        parts.append(f'<rect x="{x}" y="24" width="10" height="10" fill="{PALETTE[index % len(PALETTE)]}"/>')
        parts.append(f'<text x="{x + 14}" y="33">{esc(name)}</text>')
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
                    f'height="{frame.y(0) - y:.1f}" fill="{colour}" fill-opacity="0.55"><title>{esc(name)} '
                    f"{left:.0f}-{right:.0f}: {count}</title></rect>"
                )
    parts += _legend(frame, list(counts))
    parts.append("</svg>")
    return "".join(parts)
