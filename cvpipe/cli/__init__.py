"""The ``cvpipe`` command: one module per command group; importing them registers their commands."""

from cvpipe.cli import demo, lineage, metrics, stages
from cvpipe.cli.core import app, main

__all__ = ["app", "demo", "lineage", "main", "metrics", "stages"]
