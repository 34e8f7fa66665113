"""The download stage: put the raw image archive at ``data/raw/images.zip`` with a ``SOURCE.json``.

Whatever the source (Kaggle, synthetic, a local zip or folder), the stage's output is one zip archive of
images, read in place by every later stage, and a provenance record (size, sha256, where it came from,
when; never a secret). The archive appears atomically, then the record.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvpipe import layout
from cvpipe.config import DataConfig, Params
from cvpipe.io import sha256_file, write_json_atomic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DownloadPaths:
    """Where the download stage writes (defaults: :mod:`cvpipe.layout`)."""

    out: Path = layout.RAW_DIR
    # Outside DVC's outputs: it keeps large downloads between runs, so a rerun resumes or skips a download.
    staging: Path = layout.STAGING_DIR

    @property
    def archive(self) -> Path:
        """The raw archive, ``<out>/images.zip``."""
        return Path(self.out) / layout.ARCHIVE_NAME

    @property
    def source(self) -> Path:
        """The provenance record, ``<out>/SOURCE.json``."""
        return Path(self.out) / layout.SOURCE_NAME


@dataclass(frozen=True)
class DownloadSummary:
    """Where the archive came from: the fields every source has, and the source's own.

    ``provenance`` holds what only one kind of source knows (Kaggle: ``competition``, ``download``,
    ``member``; synthetic: ``generator``, ``seed``, ``planted``, ...; local: ``local``).
    """

    source: str
    archive: dict[str, Any]
    retrieved_at: str
    provenance: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """``SOURCE.json``: the common fields and the source's own side by side, in one flat object.

        Flat, as it always was: ``cvpipe lineage`` and the flows read ``competition`` or ``seed`` at the top.
        """
        return {"source": self.source, "archive": self.archive, "retrieved_at": self.retrieved_at, **self.provenance}


def _provenance(cfg: DataConfig, archive: Path, staging: Path) -> dict[str, Any]:
    """Fetch the configured source into ``archive``; return what the source records about itself."""
    if cfg.source == "kaggle":
        from cvpipe.sources.kaggle import fetch_kaggle

        return fetch_kaggle(
            cfg.competition,
            cfg.member,
            archive,
            Path(staging),
            retries=cfg.retries,
            backoff_seconds=cfg.backoff_seconds,
        )
    if cfg.source == "synthetic":
        from cvpipe.sources.synthetic import generate_synthetic

        return generate_synthetic(cfg.synthetic, cfg.classes, archive)
    from cvpipe.sources.local import fetch_local

    assert cfg.path is not None  # guaranteed by DataConfig's validator
    return fetch_local(cfg.path, cfg.labels, archive)


def run(
    params: Params, paths: DownloadPaths = DownloadPaths(), progress: Callable[[int], None] | None = None
) -> DownloadSummary:
    """The download stage: fetch the configured source into ``paths.archive``, then write ``paths.source``.

    Args:
        params: the pipeline's params; the stage reads ``data.*``.
        paths: the output folder and the staging folder for large downloads.
        progress: unused (the Kaggle client logs its own progress); accepted as every stage's ``run`` does.

    Returns:
        The provenance record, also written to ``SOURCE.json`` (see :meth:`DownloadSummary.record`).
    """
    cfg = params.data
    archive = paths.archive
    provenance = _provenance(cfg, archive, paths.staging)
    summary = DownloadSummary(
        source=cfg.source,
        archive={"path": layout.ARCHIVE_NAME, "bytes": archive.stat().st_size, "sha256": sha256_file(archive)},
        retrieved_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        provenance=provenance,
    )
    write_json_atomic(paths.source, summary.record())
    log.info("source %s -> %s (%d bytes)", cfg.source, archive, summary.archive["bytes"])
    return summary
