from __future__ import annotations

import xml.etree.ElementTree as ET

from cvpipe.report.charts import histogram, line_chart


def test_charts_are_valid_svg_and_skip_non_finite_points() -> None:
    chart = line_chart({"train": [(1, 0.5), (2, float("nan")), (3, 0.4)]}, "loss", "epoch", "loss")
    root = ET.fromstring(chart)
    assert root.tag.endswith("svg") and chart.count("<polyline") == 1
    assert ET.fromstring(histogram({"w": [1.0, 2.0, 2.0, 9.0]}, "sizes", "px", bins=4)).tag.endswith("svg")
