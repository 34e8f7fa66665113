from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import numpy as np

from cvpipe.report.html import image_grid, page, value_cell


class Page(HTMLParser):
    """Every start tag with its attributes, and the page's text."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {name: value or "" for name, value in attrs}))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def cells(self, **wanted: str) -> list[dict[str, str]]:
        return [
            attrs
            for tag, attrs in self.tags
            if tag == "td" and all(attrs.get(f"data-{k}") == v for k, v in wanted.items())
        ]


def check_offline(text: str) -> Page:
    """A page that loads nothing from anywhere: a strict CSP, and no URL but data: in src/href."""
    page = Page(text)
    csp = [attrs for tag, attrs in page.tags if tag == "meta" and attrs.get("http-equiv") == "Content-Security-Policy"]
    assert csp and "default-src 'none'" in csp[0]["content"]
    assert not [tag for tag, _ in page.tags if tag in ("script", "link", "iframe", "object", "embed")]
    for _, attrs in page.tags:
        for name in ("src", "href"):
            value = attrs.get(name, "")
            assert not value or value.startswith(("data:", "#")), value
    for svg in re.findall(r"<svg.*?</svg>", text, flags=re.S):
        ET.fromstring(svg)  # well-formed
    return page


def test_image_grid_is_a_jpeg_with_enlarged_tiles() -> None:
    import io

    from PIL import Image

    data = image_grid([[np.full((32, 32, 3), 200, np.uint8)] * 3, [np.zeros((32, 32, 3), np.uint8)]])
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "JPEG" and image.size == (3 * 100 + 4, 2 * 100 + 4)


def test_page_is_offline_with_a_nav_entry_per_section() -> None:
    text = page([("metrics", "Test metrics: all", value_cell(0.5, metric="x")), ("data", "Data", "<p>x</p>")], "sub")
    parsed = check_offline(text)
    assert [attrs["href"] for tag, attrs in parsed.tags if tag == "a"] == ["#metrics", "#data"]
    (cell,) = parsed.cells(metric="x")
    assert cell["data-value"] == "0.5"
