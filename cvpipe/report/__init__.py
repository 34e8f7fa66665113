"""The offline HTML report: SVG charts, HTML helpers and its sections."""
