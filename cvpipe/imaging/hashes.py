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

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

log = logging.getLogger(__name__)

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


def candidate_pairs(
    hashes: np.ndarray,
    flipped: np.ndarray,
    threshold: int,
    limit: int | None = None,
    shift: ShiftHashes | None = None,
) -> HashPairs:
    """Every pair of images within ``threshold`` bits, directly or through a mirror (:func:`close_hash_pairs`).

    With ``shift``, also every pair within ``shift.bits`` of the Fourier hash (:func:`shift_pairs`): shifted
    copies that the phash misses. Their ``direct`` and ``mirror`` are still phash distances, so those pairs
    can be farther than ``threshold``.

    Raises:
        TooManyCandidates: more than ``limit`` pairs; the phash scan stops there, so memory stays bounded.
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
    pairs = HashPairs(i, j, direct, mirror)
    if shift is not None:
        pairs = _with_shift_pairs(pairs, hashes, flipped, shift)
        if limit is not None and len(pairs) > limit:
            raise TooManyCandidates(len(pairs), limit, 1.0)
    return pairs


def _with_shift_pairs(pairs: HashPairs, hashes: np.ndarray, flipped: np.ndarray, shift: ShiftHashes) -> HashPairs:
    """``pairs`` and the Fourier candidates not among them, sorted by ``(i, j)``, with their phash distances."""
    count = len(hashes)
    known = pairs.i * count + pairs.j
    extra = np.setdiff1d(shift_pairs(shift), known, assume_unique=True)
    if not len(extra):
        return pairs
    i, j = extra // count, extra % count
    direct = np.bitwise_count(hashes[i] ^ hashes[j]).astype(np.uint8)
    mirror = np.minimum(np.bitwise_count(flipped[i] ^ hashes[j]), np.bitwise_count(hashes[i] ^ flipped[j]))
    order = np.argsort(np.concatenate([known, extra]), kind="stable")
    return HashPairs(
        np.concatenate([pairs.i, i])[order],
        np.concatenate([pairs.j, j])[order],
        np.concatenate([pairs.direct, direct])[order],
        np.concatenate([pairs.mirror, mirror.astype(np.uint8)])[order],
    )


def near_duplicate_pairs(hashes: np.ndarray, flipped: np.ndarray, threshold: int) -> np.ndarray:
    """Index pairs ``(i, j), i < j``, sorted, whose images are close (:func:`candidate_pairs`)."""
    return candidate_pairs(hashes, flipped, threshold).indices()


# -- the shift-tolerant hash ----------------------------------------------------------------------------------

# A phash moves by up to ~20 bits when an 80 px scan shifts by 2 px: its DCT coefficients keep their signs only
# for shifts well under a pixel of its 32 px thumbnail. The magnitude of a Fourier transform does not change at
# all under a (circular) shift, and little under a small real one, so a hash of |FFT| is the second candidate.
FOURIER_SIZE = 32
FOURIER_BITS = 64
SHIFT_HASH = "|FFT2| of a 32 px grey thumbnail at 64 low frequencies vs their median, 64-bit, also of the mirror"


def _fourier_frequencies() -> tuple[np.ndarray, np.ndarray]:
    """The 64 lowest frequencies ``(ky, kx)`` of one half of the spectrum (the other half mirrors it)."""
    ky, kx = np.meshgrid(np.arange(0, 12), np.arange(-11, 12), indexing="ij")
    half = (ky > 0) | ((ky == 0) & (kx > 0))
    ky, kx = ky[half], kx[half]
    order = np.lexsort((np.abs(kx), ky**2 + kx**2))[:FOURIER_BITS]
    return ky[order], kx[order]


_FY, _FX = _fourier_frequencies()
# Two hashes within t bits agree exactly on at least one of t + 1 disjoint parts of their bits (pigeonhole),
# so a lookup by exact parts finds every candidate without the N^2 / 2 scan. Bit b goes to part b % (t + 1):
# the bits are ordered by frequency, and the lowest frequencies are above the median in most images, so
# consecutive bits in one part would make a few huge buckets; a frequency and its mirror (+-kx, adjacent
# bits) also land in different parts, which keeps the two nearly equal bits from spending one part's entropy.
_SHIFT_LOOKUP_MAX_BITS = 8


def fourier_hash_pair(upright: Image.Image) -> tuple[str, str]:
    """The shift-tolerant 64-bit hash of an (upright) image and of its mirror, as 16 hex digits each.

    A grey 32x32 Lanczos thumbnail (as phash's), mean removed; bit k says whether ``|FFT2|`` at the k-th of the
    64 lowest frequencies of one half-spectrum is above their median, so every hash has 32 ones and distances
    are even. The mirror's spectrum is the same one read at ``-kx`` (mirroring only adds a phase), so the
    mirror's hash costs no second transform. Measured on the UCI digits at 80 px, a 2 px shifted copy is
    within 2 bits of its original (phash: up to ~20); 0.26 ms an image.
    """
    from PIL import Image as PilImage

    grey = upright.convert("L").resize((FOURIER_SIZE, FOURIER_SIZE), PilImage.Resampling.LANCZOS)
    values = np.asarray(grey, dtype=np.float64)
    spectrum = np.abs(np.fft.fft2(values - values.mean()))
    return _median_bits(spectrum[_FY, _FX]), _median_bits(spectrum[_FY, -_FX])


def _median_bits(values: np.ndarray) -> str:
    bits = np.packbits(values > np.median(values))
    return bits.tobytes().hex()


@dataclass(frozen=True)
class ShiftHashes:
    """The Fourier hashes (:func:`fourier_hash_pair`) of the images, as uint64, and the bits they may differ by."""

    hashes: np.ndarray
    flipped: np.ndarray
    bits: int


def shift_hashes_of(columns: Mapping[str, Sequence[str]], bits: int) -> ShiftHashes | None:
    """The manifest's ``fourier`` and ``fourier_flip`` columns for the second candidate, or None.

    None when ``bits`` is 0 (disabled) or the manifest predates the columns (then only phash candidates).
    """
    if bits <= 0:
        return None
    if "fourier" not in columns or "fourier_flip" not in columns:
        log.warning("the manifest has no fourier hashes (ingested before them): no shift candidates; re-run ingest")
        return None
    return ShiftHashes(hex_to_uint64(columns["fourier"]), hex_to_uint64(columns["fourier_flip"]), bits)


def _pairs_within_runs(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``(a, b)`` into ``keys`` of every two different entries with the same key, each pair once."""
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    sizes = np.diff(np.r_[starts, len(keys)])
    # The entry at rank k of a run of size g starting at s pairs with the g - 1 - (k - s) entries after it.
    partners = sizes.repeat(sizes) - 1 - (np.arange(len(keys)) - np.repeat(starts, sizes))
    first = np.repeat(np.arange(len(keys)), partners)
    offsets = np.arange(len(first)) - np.repeat(np.cumsum(partners) - partners, partners)
    return order[first], order[first + 1 + offsets]


def _pairs_across(left: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``(a, b)``, ``a`` into ``left`` and ``b`` into ``right``, of every two entries with one key."""
    order = np.argsort(right, kind="stable")
    ordered = right[order]
    low = np.searchsorted(ordered, left, side="left")
    counts = np.searchsorted(ordered, left, side="right") - low
    first = np.repeat(np.arange(len(left)), counts)
    offsets = np.arange(len(first)) - np.repeat(np.cumsum(counts) - counts, counts)
    return first, order[np.repeat(low, counts) + offsets]


def shift_pairs(shift: ShiftHashes) -> np.ndarray:
    """Codes ``i * N + j``, ``i < j``, sorted, of the pairs within ``shift.bits`` Fourier bits, direct or mirrored.

    The same pairs as a scan of all of them would find (:func:`close_hash_pairs`: image against image, and
    either mirror against the other image), found by exact matches on ``bits + 1`` disjoint parts of the 64
    bits, image key against image key and mirror key against image key, then checked on all bits. Mirror
    against mirror is not compared, as in the phash scan: a mirror's hash is the image's read at mirrored
    frequencies, nearly a fixed permutation of its bits, so two mirrors are as far apart as the two images.
    At 25,000 synthetic images the lookup took 0.04 s of CPU where the scan took 1.3 s.
    """
    hashes, flipped, bits = shift.hashes.astype(np.uint64), shift.flipped.astype(np.uint64), shift.bits
    count = len(hashes)
    if count < 2:
        return np.empty(0, np.int64)
    if bits > _SHIFT_LOOKUP_MAX_BITS:
        # Parts of 64 / (bits + 1) bits hold large buckets; a plain scan is then no slower.
        codes = [rows * count + cols for rows, cols, _, _ in close_hash_pairs(hashes, flipped, bits)]
        return np.concatenate(codes) if codes else np.empty(0, np.int64)
    codes = []
    for part in range(bits + 1):
        mask = np.uint64(sum(1 << bit for bit in range(64) if bit % (bits + 1) == part))
        keys, keys_flipped = hashes & mask, flipped & mask
        for a, b in (_pairs_within_runs(keys), _pairs_across(keys_flipped, keys)):
            i, j = np.minimum(a, b).astype(np.int64), np.maximum(a, b).astype(np.int64)
            # Checked before de-duplication: a bucket match is rarely a candidate, and np.unique of all the
            # matches (~450,000 at 25,000 images) took 0.14 s of the lookup's 0.23 s.
            distance = np.minimum(
                np.bitwise_count(hashes[i] ^ hashes[j]),
                np.minimum(np.bitwise_count(flipped[i] ^ hashes[j]), np.bitwise_count(hashes[i] ^ flipped[j])),
            )
            close = (distance <= bits) & (i != j)
            codes.append(i[close] * count + j[close])
    return np.unique(np.concatenate(codes))


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
