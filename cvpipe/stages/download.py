"""The download stage: put the raw image archive at ``data/raw/images.zip`` with a ``SOURCE.json``.

Whatever the source (Kaggle, synthetic, a local zip or folder), the stage's output is one zip archive of
images, read in place by every later stage, and a provenance record (size, sha256, where it came from,
when; never a secret). The archive appears atomically, then the record.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

from cvpipe.config import DataConfig
from cvpipe.io import sha256_file, write_json_atomic

log = logging.getLogger(__name__)

ARCHIVE_NAME = "images.zip"
RECORD_NAME = "SOURCE.json"


def fetch(cfg: DataConfig, raw_dir: Path, staging_dir: Path) -> dict[str, Any]:
    """Fetch the configured source into ``raw_dir``.

    Args:
        cfg: the ``data`` section of params.
        raw_dir: the stage's output folder (``data/raw``).
        staging_dir: a folder outside DVC's outputs that keeps large downloads between runs, so that a
            rerun resumes or skips a download instead of starting it again.

    Returns:
        The provenance record, also written to ``raw_dir/SOURCE.json``.
    """
    archive = Path(raw_dir) / ARCHIVE_NAME
    if cfg.source == "kaggle":
        from cvpipe.sources.kaggle import fetch_kaggle

        provenance = fetch_kaggle(
            cfg.competition,
            cfg.member,
            archive,
            Path(staging_dir),
            retries=cfg.retries,
            backoff_seconds=cfg.backoff_seconds,
        )
    elif cfg.source == "synthetic":
        from cvpipe.sources.synthetic import generate_synthetic

        provenance = generate_synthetic(cfg.synthetic, cfg.classes, archive)
    else:
        from cvpipe.sources.local import fetch_local

        assert cfg.path is not None  # guaranteed by DataConfig's validator
        provenance = fetch_local(cfg.path, cfg.labels, archive)
    record = {
        "source": cfg.source,
        "archive": {"path": ARCHIVE_NAME, "bytes": archive.stat().st_size, "sha256": sha256_file(archive)},
        "retrieved_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        **provenance,
    }
    write_json_atomic(Path(raw_dir) / RECORD_NAME, record)
    log.info("source %s -> %s (%d bytes)", cfg.source, archive, record["archive"]["bytes"])
    return record
