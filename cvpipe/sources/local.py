"""The ``local`` source: an archive or a folder of images already on disk.

A zip is copied (or, if it is a Kaggle competition download holding ``train.zip``, that inner archive is
taken); a folder is packed into a deterministic, uncompressed zip (sorted names, fixed timestamps) so that
every later stage reads one archive, whatever the source.

What is refused, with one line (issue 15): a path that holds the workspace (``data.path: ""`` or ``.`` would
pack ``.git``, ``.env`` and ``.dvc/`` into the DVC-tracked archive); a zip holding images *and* ``train.zip``
(which of the two is meant is not ours to guess); a folder holding only Kaggle's ``train.zip`` (point
``data.path`` at it); an unreadable file or a file name that is not UTF-8. Symbolic links in a folder are
packed as zip symlink members (never followed: a link can point at a secret outside the folder), which the
ingest stage quarantines as it does any symlink member.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from cvpipe.errors import SourceError
from cvpipe.io import atomic_path

log = logging.getLogger(__name__)

_FIXED_TIME = (1980, 1, 1, 0, 0, 0)
INNER_ARCHIVE = "train.zip"
# What counts as an image beside an inner train.zip (names only: the archive is not read here).
_IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".mpo"})


def _images_besides(names: list[str], inner: str) -> list[str]:
    """Members other than ``inner`` whose names look like images (debris and folders aside)."""
    found = []
    for name in names:
        path = PurePosixPath(name.replace("\\", "/"))
        if name == inner or name.endswith("/") or "__MACOSX" in path.parts or path.name.startswith("._"):
            continue
        if path.suffix.lower() in _IMAGE_SUFFIXES:
            found.append(name)
    return found


def _copy_zip(path: Path, archive_path: Path) -> dict[str, Any]:
    try:
        with zipfile.ZipFile(path) as outer:
            names = outer.namelist()
            images = _images_besides(names, INNER_ARCHIVE) if INNER_ARCHIVE in names else []
            if images:
                raise SourceError(
                    f"{path} holds {INNER_ARCHIVE} and {len(images)} image(s) beside it (e.g. {images[0]}); "
                    f"point data.path at one archive of images: extract {INNER_ARCHIVE}, or remove it from the zip"
                )
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


def _member_name(file: Path, folder: Path) -> str:
    name = file.relative_to(folder).as_posix()
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes, kept by Python as surrogates
        raise SourceError(
            f"{folder}: the file name {os.fsencode(name)!r} is not valid UTF-8; rename it (or remove it) and rerun"
        ) from None
    return name


def _listing(path: Path) -> tuple[list[Path], list[Path]]:
    """The folder's regular files and its symbolic links (to files or folders, never followed), sorted.

    Anything else (a FIFO, a socket, a device) is left out with a warning: opening a FIFO would block.
    """
    files, links = [], []
    for entry in sorted(path.rglob("*")):
        if entry.is_symlink():
            links.append(entry)
        elif entry.is_file():
            files.append(entry)
        elif not entry.is_dir():
            log.warning("%s: not a regular file, folder or link; left out of the archive", entry)
    return files, links


def _pack_folder(path: Path, archive_path: Path) -> dict[str, Any]:
    files, links = _listing(path)
    if not files and not links:
        raise SourceError(f"{path}: the folder holds no files; point data.path at a folder of images")
    inner = [file for file in files if file.name == INNER_ARCHIVE]
    if inner and not _images_besides([file.relative_to(path).as_posix() for file in files], INNER_ARCHIVE):
        raise SourceError(f"{path} holds {INNER_ARCHIVE} and no images; point data.path at {inner[0]} itself")
    members = sorted([(_member_name(file, path), file) for file in files + links])
    with atomic_path(archive_path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as archive:
        for name, file in members:
            info = zipfile.ZipInfo(name, date_time=_FIXED_TIME)
            if file.is_symlink():
                # As Info-ZIP stores a link: its target as the data, S_IFLNK in the mode. Never followed.
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
                archive.writestr(info, os.readlink(file))
                continue
            info.external_attr = 0o644 << 16
            try:
                with open(file, "rb") as src, archive.open(info, "w") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
            except PermissionError:
                raise SourceError(f"{file}: permission denied; make it readable (or remove it) and rerun") from None
    log.info("packed %d files from %s", len(files), path)
    if links:
        log.warning("%s: %d symbolic link(s) packed as links, not followed (ingest quarantines them)", path, len(links))
    record: dict[str, Any] = {"path": str(path), "kind": "folder", "files": len(files)}
    if links:
        record["symlinks"] = len(links)
    return {"local": record}


def _refuse_workspace(path: Path, archive_path: Path) -> None:
    """Refuse a folder that holds the workspace or the archive being written (``data.path: ""`` or ``.``)."""
    folder = path.resolve()
    for inside in (Path.cwd().resolve(), Path(archive_path).resolve()):
        if inside == folder or folder in inside.parents:
            raise SourceError(
                f"data.path {str(path) or '(empty)'!r} holds the workspace ({inside}): packing it would put .git, "
                ".env and .dvc/ into the tracked archive; point data.path at the folder of images"
            )


def fetch_local(path: Path, labels: str, archive_path: Path) -> dict[str, Any]:
    """Make ``archive_path`` from a local zip or folder.

    Args:
        path: ``data.path``: a .zip file or a folder.
        labels: ``data.labels`` (recorded; labels are read from names by the ingest stage).
        archive_path: where the stage's archive goes.

    Raises:
        SourceError: the path does not exist, is neither a zip nor a folder of files, holds the workspace,
            or is ambiguous (see the module's docs).
    """
    if not str(path).strip():
        raise SourceError("data.path is empty; set it to a .zip archive or a folder of images")
    path = Path(path).expanduser()
    if path.is_dir():
        _refuse_workspace(path, archive_path)
        provenance = _pack_folder(path, archive_path)
    elif path.is_file():
        provenance = _copy_zip(path, archive_path)
    else:
        raise SourceError(f"data.path {path} does not exist; set data.path to a .zip archive or a folder of images")
    provenance["local"]["labels"] = labels
    return provenance
