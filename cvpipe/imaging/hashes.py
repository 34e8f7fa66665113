"""The near-duplicate rule: perceptual hashes of an image and of its mirror, close pairs, and groups.

One implementation for every stage that asks "are these two images the same photo?": ingest computes the
hashes (:func:`decode_for_hash`, :func:`hash_pair`); the split and the audit take candidate pairs from them
(:func:`candidate_pairs`), confirm them the same way (:func:`cvpipe.imaging.confirm.confirm_candidates`), and
the split joins the confirmed pairs into groups (:func:`connected_groups`), so the split and the audit agree
on what is a near-duplicate by construction.

The steps are ``candidates -> confirmed pairs -> groups``: :func:`candidate_pairs` finds every pair within
the hash threshold; the pixel-level confirmation (:mod:`cvpipe.imaging.confirm`) keeps a subset of them with
:meth:`HashPairs.take`; :func:`connected_groups` joins only the confirmed pairs into groups. A hash distance
is a candidate, never a verdict: on real datasets of similar-looking images thousands of distinct pairs sit
within 10 bits, and single linkage over them chained most of a dataset into one group.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

HashMethod = Literal["phash", "dhash", "average_hash"]
# Perceptual hashes are computed on a small decode: phash looks at a 32x32 greyscale thumbnail anyway.
HASH_DRAFT_SIZE = 64
# Hash comparisons made at once: a block of rows is compared with the N hashes after it, so each temporary
# (the uint64 XOR, 8 bytes an element) stays at ~8 MiB whatever N is. A fixed row count (1,024 x N) was
# 200 MB at N = 25,000: the stage's memory then grew with the dataset.
_BLOCK_ELEMENTS = 1 << 20


def describe(method: HashMethod) -> str:
    """The hash as the split and audit reports name it."""
    return f"imagehash.{method} 64-bit, also of the mirrored image"


# -- hashing --------------------------------------------------------------------------------------------------


def decode_for_hash(data: bytes) -> Image.Image:
    """The image, upright, decoded as small as a hash needs (:data:`HASH_DRAFT_SIZE`)."""
    # Imported here: the split only compares hashes, and its process need not load Pillow.
    from cvpipe.imaging.images import decode_oriented

    return decode_oriented(data, draft_size=HASH_DRAFT_SIZE)


def load_hashers() -> None:
    """Import ``imagehash`` (and SciPy) now: a process pool forked after this shares it, not one import each."""
    import imagehash  # noqa: F401


def hash_image(image: Image.Image, method: HashMethod = "phash") -> str:
    """A 64-bit perceptual hash of ``image``, as 16 hex digits (``imagehash``'s own string form)."""
    import imagehash  # it pulls in SciPy: the split, which only compares hashes, does not pay for it

    function = {"phash": imagehash.phash, "dhash": imagehash.dhash, "average_hash": imagehash.average_hash}[method]
    return str(function(image))


def hash_pair(upright: Image.Image, method: HashMethod = "phash") -> tuple[str, str]:
    """The hash of an (upright) image and of its mirror; a mirror's hash is only roughly the flipped bits."""
    from PIL import ImageOps

    return hash_image(upright, method), hash_image(ImageOps.mirror(upright), method)


def hash_bytes(data: bytes, method: HashMethod = "phash") -> tuple[str, str]:
    """:func:`hash_pair` of an encoded image, decoded as ingest decodes it for hashing."""
    return hash_pair(decode_for_hash(data), method)


def hex_to_uint64(hashes: Sequence[str]) -> np.ndarray:
    """Parse 16-hex-digit perceptual hashes into a uint64 array."""
    return np.array([int(value, 16) for value in hashes], dtype=np.uint64)


def hash_distance(first: str, second: str) -> int:
    """Bits in which two hex hashes differ."""
    return (int(first, 16) ^ int(second, 16)).bit_count()


# -- candidate pairs ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HashPairs:
    """Pairs ``i < j`` of images, sorted by ``(i, j)``, with their direct and (smaller) mirror distance."""

    i: np.ndarray
    j: np.ndarray
    direct: np.ndarray
    mirror: np.ndarray

    def __len__(self) -> int:
        return len(self.i)

    @property
    def distance(self) -> np.ndarray:
        """The smaller of the direct and the mirror distance, per pair."""
        return np.minimum(self.direct, self.mirror)

    @property
    def mirrored(self) -> np.ndarray:
        """Whether the smaller distance of each pair was through a mirror."""
        return self.mirror < self.direct

    def indices(self) -> np.ndarray:
        """The pairs as an ``n x 2`` int64 array of ``(i, j)``."""
        return np.stack([self.i, self.j], axis=1).astype(np.int64, copy=False)

    def take(self, keep: np.ndarray) -> HashPairs:
        """The pairs selected by ``keep`` (a boolean mask or indices): what a confirmation step returns."""
        return HashPairs(self.i[keep], self.j[keep], self.direct[keep], self.mirror[keep])


def close_hash_pairs(
    hashes: np.ndarray, flipped: np.ndarray, threshold: int
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Yield, block by block, the pairs ``i < j`` within ``threshold`` bits, image to image or through a mirror.

    The mirror is tried both ways (``flipped[i]`` against ``hashes[j]`` and ``hashes[i]`` against
    ``flipped[j]``): the hash of a mirror is only approximately symmetric. Only the upper triangle is computed,
    in blocks of about ``_BLOCK_ELEMENTS`` comparisons, so memory stays flat whatever N is; pairs come out
    sorted by ``(i, j)``.

    Yields:
        ``(i, j, direct, mirror)``: index arrays and, per pair, the direct and the smaller mirror distance.
    """
    count = len(hashes)
    rows_per_block = max(1, _BLOCK_ELEMENTS // max(count, 1))
    for start in range(0, count, rows_per_block):
        stop = min(start + rows_per_block, count)
        # Columns start at ``start`` too: block row r is image start + r, column c is image start + c.
        direct = np.bitwise_count(hashes[start:stop, None] ^ hashes[None, start:])
        mirror = np.minimum(
            np.bitwise_count(flipped[start:stop, None] ^ hashes[None, start:]),
            np.bitwise_count(hashes[start:stop, None] ^ flipped[None, start:]),
        )
        rows, cols = np.nonzero(np.minimum(direct, mirror) <= threshold)
        upper = rows < cols
        rows, cols = rows[upper], cols[upper]
        yield rows + start, cols + start, direct[rows, cols], mirror[rows, cols]


class TooManyCandidates(Exception):
    """More candidate pairs than the limit: confirming them all would take minutes (and their memory)."""

    def __init__(self, found: int, limit: int, scanned: float) -> None:
        super().__init__(f"{found:,} candidate pairs after {scanned:.0%} of the scan (limit {limit:,})")
        self.found, self.limit, self.scanned = found, limit, scanned


def candidate_pairs(hashes: np.ndarray, flipped: np.ndarray, threshold: int, limit: int | None = None) -> HashPairs:
    """Every pair of images within ``threshold`` bits, directly or through a mirror (:func:`close_hash_pairs`).

    Raises:
        TooManyCandidates: more than ``limit`` pairs; the scan stops there, so memory stays bounded.
    """
    parts: tuple[list[np.ndarray], ...] = ([], [], [], [])
    found = 0
    count = len(hashes)
    for block in close_hash_pairs(hashes, flipped, threshold):
        found += len(block[0])
        if limit is not None and found > limit:
            # Rows scanned so far: the upper triangle shrinks, so this is a fraction of the rows, not the work.
            done = int(block[0].max()) + 1 if len(block[0]) else 0
            raise TooManyCandidates(found, limit, done / max(count, 1))
        for column, values in zip(parts, block, strict=True):
            column.append(values)
    dtypes = (np.int64, np.int64, np.uint8, np.uint8)
    i, j, direct, mirror = (
        np.concatenate(column).astype(dtype, copy=False) if column else np.empty(0, dtype)
        for column, dtype in zip(parts, dtypes, strict=True)
    )
    return HashPairs(i, j, direct, mirror)


def near_duplicate_pairs(hashes: np.ndarray, flipped: np.ndarray, threshold: int) -> np.ndarray:
    """Index pairs ``(i, j), i < j``, sorted, whose images are close (:func:`candidate_pairs`)."""
    return candidate_pairs(hashes, flipped, threshold).indices()


# -- groups ---------------------------------------------------------------------------------------------------


def connected_groups(count: int, pairs: np.ndarray) -> np.ndarray:
    """Label each of ``count`` items with the smallest index of its connected component (union-find)."""
    parent = np.arange(count)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in pairs:
        a, b = root(int(i)), root(int(j))
        if a != b:
            parent[max(a, b)] = min(a, b)
    return np.array([root(i) for i in range(count)])
