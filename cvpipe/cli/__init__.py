"""The ``cvpipe`` command: one module per command group; importing them registers their commands."""

from cvpipe.cli import demo, flow, lineage, metrics, stages
from cvpipe.cli.core import app, main

__all__ = ["app", "demo", "flow", "lineage", "main", "metrics", "stages"]
