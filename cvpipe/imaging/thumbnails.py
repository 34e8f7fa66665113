"""Thumbnails of near-duplicate groups, read from the archive: what the HTML report shows of the split's groups.

The split report lists its largest groups with their members (:func:`cvpipe.stages.split.largest_groups`);
a list of names does not show whether a group is copies of one image or a rule too loose for the data. Each
listed group gets one JPEG strip here: its first members side by side on grey, in the order the report lists
them, small enough to embed in the offline report as a data URI (~5-15 kB a strip at 96 px).
"""

from __future__ import annotations

import io
import logging
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from cvpipe.imaging.images import decode_oriented
from cvpipe.io import write_bytes_atomic, write_json_atomic

log = logging.getLogger(__name__)

SIDE = 96
"""Side of each member's square slot, pixels."""
MEMBERS_SHOWN = 8
"""Members drawn per group: a group of 2,000 is shown by its first eight (the report lists the count)."""
PAIR_SIDE = 128
PAIR_GAP = 8
INDEX_NAME = "index.json"
_GAP = 4
_GREY = (128, 128, 128)


def group_strip(archive: zipfile.ZipFile, members: Sequence[str], side: int = SIDE, gap: int = _GAP) -> bytes:
    """``members`` side by side, each fitted into a ``side`` px square on grey, ``gap`` px apart, as one JPEG."""
    canvas = Image.new("RGB", (len(members) * (side + gap) - gap, side), _GREY)
    for slot, member in enumerate(members):
        image = decode_oriented(archive.read(member), draft_size=side)
        image.thumbnail((side, side), Image.Resampling.LANCZOS)
        left = slot * (side + gap) + (side - image.width) // 2
        canvas.paste(image.convert("RGB"), (left, (side - image.height) // 2))
    buffer = io.BytesIO()
    canvas.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def pair_strip(archive: zipfile.ZipFile, first: str, second: str) -> bytes:
    """The two images of a suspect pair side by side: the audits' thumbnails (larger than a group's)."""
    return group_strip(archive, (first, second), side=PAIR_SIDE, gap=PAIR_GAP)


def write_group_thumbnails(
    archive_path: Path, groups: list[dict[str, Any]], out_dir: Path, shown: int = MEMBERS_SHOWN
) -> int:
    """One strip per group into ``out_dir`` (``group-01.jpg`` ...); each group dict gets its file and members.

    A group gets ``thumbnail`` (the file, relative to ``out_dir``'s parent, as the audit's pairs do) and
    ``thumbnail_members`` (the members drawn, left to right). ``index.json`` is always written, so the folder
    exists (a DVC output) when there is no group. An image that cannot be read leaves its group without a
    strip, with a warning: a thumbnail never fails the split.

    Returns:
        The number of strips written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("group-*.jpg"):
        stale.unlink()  # a rerun with fewer groups must not leave the last run's strips behind
    index = []
    if groups and not Path(archive_path).is_file():
        log.warning("split: %s is missing: no thumbnails of the near-duplicate groups", archive_path)
    elif groups:
        with zipfile.ZipFile(archive_path) as archive:
            for number, group in enumerate(groups, start=1):
                members = list(group.get("members") or [])[:shown]
                name = f"group-{number:02d}.jpg"
                if not members:
                    continue
                try:
                    strip = group_strip(archive, members)
                except (KeyError, OSError, ValueError, Image.DecompressionBombError) as error:
                    log.warning("split: no thumbnail for group %d (%s: %s)", number, type(error).__name__, error)
                    continue
                write_bytes_atomic(out_dir / name, strip)
                group["thumbnail"] = f"{out_dir.name}/{name}"
                group["thumbnail_members"] = members
                index.append({"file": name, "size": group.get("size"), "members": members})
    write_json_atomic(out_dir / INDEX_NAME, index)
    return len(index)
