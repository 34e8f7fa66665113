"""The ``local`` source: an archive or a folder of images already on disk.

A zip is copied (or, if it is a Kaggle competition download holding ``train.zip``, that inner archive is
taken); a folder is packed into a deterministic, uncompressed zip (sorted names, fixed timestamps) so that
every later stage reads one archive, whatever the source.
"""

from __future__ import annotations

import logging
import shutil
import zipfile
from pathlib import Path
from typing import Any

from cvpipe.errors import SourceError
from cvpipe.io import atomic_path

log = logging.getLogger(__name__)

_FIXED_TIME = (1980, 1, 1, 0, 0, 0)
INNER_ARCHIVE = "train.zip"


def _copy_zip(path: Path, archive_path: Path) -> dict[str, Any]:
    try:
        with zipfile.ZipFile(path) as outer:
            names = outer.namelist()
            with atomic_path(archive_path) as tmp:
                if INNER_ARCHIVE in names:
                    with outer.open(INNER_ARCHIVE) as src, open(tmp, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
                else:
                    shutil.copyfile(path, tmp)
    except zipfile.BadZipFile as error:
        raise SourceError(f"{path}: not a readable zip archive ({error}); point data.path at a valid .zip") from None
    inner = INNER_ARCHIVE if INNER_ARCHIVE in names else None
    return {"local": {"path": str(path), "kind": "zip", "inner_member": inner}}


def _pack_folder(path: Path, archive_path: Path) -> dict[str, Any]:
    files = sorted(p for p in path.rglob("*") if p.is_file())
    if not files:
        raise SourceError(f"{path}: the folder holds no files; point data.path at a folder of images")
    with atomic_path(archive_path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as archive:
        for file in files:
            info = zipfile.ZipInfo(file.relative_to(path).as_posix(), date_time=_FIXED_TIME)
            info.external_attr = 0o644 << 16
            with open(file, "rb") as src, archive.open(info, "w") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    log.info("packed %d files from %s", len(files), path)
    return {"local": {"path": str(path), "kind": "folder", "files": len(files)}}


def fetch_local(path: Path, labels: str, archive_path: Path) -> dict[str, Any]:
    """Make ``archive_path`` from a local zip or folder.

    Args:
        path: ``data.path``: a .zip file or a folder.
        labels: ``data.labels`` (recorded; labels are read from names by the ingest stage).
        archive_path: where the stage's archive goes.

    Raises:
        SourceError: the path does not exist, or is neither a zip nor a folder of files.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        provenance = _pack_folder(path, archive_path)
    elif path.is_file():
        provenance = _copy_zip(path, archive_path)
    else:
        raise SourceError(f"data.path {path} does not exist; set data.path to a .zip archive or a folder of images")
    provenance["local"]["labels"] = labels
    return provenance
