"""HTML for the report: escaping, tables, the style sheet, the page skeleton, inline images.

The report is one self-contained file, readable offline and by mail: images are inline JPEG data URIs, and
a Content-Security-Policy forbids loading anything else. Table cells carry their exact value in
``data-value`` so that a test can compare them with the files they come from.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
_TILE_MIN = 96  # small caches (32 px) are enlarged so a person can see them


def esc(value: Any) -> str:
    """``value`` as text, escaped for HTML content and attribute values."""
    return html.escape(str(value), quote=True)


def number(value: Any, digits: int = 3) -> str:
    """A number for a person: ints with thousands separators, floats rounded, anything else escaped."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "-" if value is None else esc(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}f}" if math.isfinite(value) else "-"


def value_cell(value: Any, **data: str) -> str:
    """A table cell showing ``value`` rounded, with the exact value (and what it is) in data attributes."""
    attributes = "".join(f' data-{name}="{esc(text)}"' for name, text in data.items())
    exact = json.dumps(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else ""
    return f'<td class="num"{attributes} data-value="{esc(exact)}">{number(value)}</td>'


def table(header: Sequence[str], rows: Sequence[Sequence[str]], css: str = "") -> str:
    """A table; no header row when every header is empty (a list of facts)."""
    head = "".join(f"<th>{esc(name)}</th>" for name in header)
    thead = f"<thead><tr>{head}</tr></thead>" if any(header) else ""
    body = "".join("<tr>" + "".join(row) + "</tr>" for row in rows)
    return f'<table class="{css}">{thead}<tbody>{body}</tbody></table>'


def td(value: Any) -> str:
    """A plain table cell: ints right-aligned with thousands separators, anything else escaped."""
    if isinstance(value, int) and not isinstance(value, bool):
        return f'<td class="num">{value:,}</td>'
    return f"<td>{esc(value)}</td>"


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


def page(sections: Sequence[tuple[str, str, str]], subtitle: str) -> str:
    """The whole document: a navigation bar, then one ``<section>`` per ``(key, title, content)``.

    Args:
        sections: the sections in page order; ``content`` is HTML, ``key`` its anchor.
        subtitle: HTML under the heading (when and from which commit it was generated).
    """
    nav = "".join(f'<a href="#{key}">{esc(title.split(":")[0])}</a>' for key, title, _ in sections)
    body = "".join(f'<section id="{key}"><h2>{esc(title)}</h2>{content}</section>' for key, title, content in sections)
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>cvpipe report</title><style>{STYLE}</style></head><body>"
        f"<h1>cvpipe: dogs vs cats, convnet and VGG16</h1><p>{subtitle}</p><nav>{nav}</nav>{body}</body></html>\n"
    )
