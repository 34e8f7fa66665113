"""The report stage: ``reports/index.html``, one offline file with every figure of the pipeline's outputs.

The page is assembled from :mod:`cvpipe.report.sections` (which read the outputs), drawn with
:mod:`cvpipe.report.charts` and :mod:`cvpipe.report.html`, stamped with the commit and the flow run that
made it, redacted, and written atomically.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cvpipe import layout
from cvpipe.config import Params, ReportConfig
from cvpipe.io import write_bytes_atomic
from cvpipe.lineage.record import git_info, orchestrator
from cvpipe.lineage.secrets import redact
from cvpipe.report.html import esc, page
from cvpipe.report.sections import ReportInputs, all_sections, read_metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReportPaths:
    """What the report stage reads and where it writes (defaults: :mod:`cvpipe.layout`).

    Attributes:
        out: the HTML file.
        root: the project root; relative ``inputs`` are read from under it, and its git commit and lineage
            records go into the page.
        inputs: the pipeline outputs the page shows.
    """

    out: Path = layout.REPORT_HTML
    root: Path = Path(".")
    inputs: ReportInputs = field(default_factory=ReportInputs)


@dataclass(frozen=True)
class ReportSummary:
    """What the report shows: the variants with metrics, and the page's size in bytes."""

    variants: list[str]
    bytes: int


def render(
    root: Path, inputs: ReportInputs, cfg: ReportConfig, thumbnails: int = 24, classes: Sequence[str] = ()
) -> str:
    """The whole report as one HTML document (redacted).

    Args:
        root: the project root (its git commit and lineage records).
        inputs: where the pipeline's outputs are, already under ``root``.
        cfg: the ``report`` params.
        thumbnails: suspect pairs shown with thumbnails (``audit.thumbnails``).
        classes: class names by label index (``data.classes``), to caption the augmented images.
    """
    git = git_info(root)
    who = orchestrator()
    generated = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    commit = (git.get("commit") or "no commit") + (" (dirty)" if git.get("dirty") else "")
    run_by = f", Prefect flow run {esc(who['flow_run_id'])}" if who.get("flow_run_id") else ""
    subtitle = f"Generated {esc(generated)} from git {esc(commit)}{run_by}."
    document = page(all_sections(root, inputs, cfg, thumbnails, classes), subtitle)
    return str(redact(document))


def run(
    params: Params, paths: ReportPaths = ReportPaths(), progress: Callable[[int], None] | None = None
) -> ReportSummary:
    """The report stage: write ``paths.out`` (``reports/index.html``) atomically.

    Args:
        params: the pipeline's params; the stage reads ``report.*``, ``audit.thumbnails`` and ``data.classes``.
        paths: the page to write, the project root, and the outputs it shows.
        progress: unused (the page takes seconds); accepted so that every stage is called alike.

    Returns:
        The variants with metrics, and the page's size in bytes.
    """
    root = Path(paths.root)
    inputs = paths.inputs.under(root)
    document = render(root, inputs, params.report, params.audit.thumbnails, params.data.classes)
    write_bytes_atomic(Path(paths.out), document.encode("utf-8"))
    variants = list(read_metrics(inputs.metrics)) if Path(inputs.metrics).is_dir() else []
    log.info("report: %s (%d bytes, %d variants)", paths.out, len(document), len(variants))
    return ReportSummary(variants=variants, bytes=len(document.encode("utf-8")))
