"""Pixel-level confirmation of near-duplicate candidates: the second stage of the near-duplicate rule.

A 64-bit perceptual hash within a few bits is a *candidate*, not a verdict: on real datasets of similar-looking
images (scanned digits, product shots) thousands of distinct pairs fall within 10 bits, and single linkage over
them chains most of a dataset into one group (``notes/near-duplicates.md``). A candidate pair is confirmed only
when its grey thumbnails match:

1. **Thumbnail.** Each image is converted to grey, squashed to ``thumbnail x thumbnail`` (48; antialiased
   bilinear) and blurred (Gaussian, sigma 1.5 thumbnail px): a resize of the image (90%, 2x) gives the same
   thumbnail, JPEG noise averages out, and the blur makes a shift by a fraction of a thumbnail pixel (a 1 px
   shift of an 80 px image is 0.6 px at 48) cost little.
2. **Measure.** Normalised cross-correlation (Pearson's r) between the central ``(thumbnail - 2 m) ** 2``
   window of the first image's thumbnail and every window of the second's shifted by up to ``m = max_shift``
   pixels (1), and of its mirror; the score is the best of these. Subtracting the mean and dividing by the
   spread makes it blind to brightness and contrast changes (+-10%); the shift search absorbs a shift of a
   pixel or two; the mirror catches flipped copies.
3. **Verdict.** A pair is a near-duplicate when its score is at least ``threshold`` (0.993).

Measured (``bench/near_duplicates.py``, ``bench/results/near-duplicates-2026-12-04.md``) on the UCI digits
upscaled to 80 px: planted copies (JPEG q75, 1-2 px shift, 90% / 2x resize, +-10% brightness, mirror) score
>= 0.994 in 95% of cases, while the closest distinct scans reach 0.995 (8x8 scans of one digit by one writer
can be near-identical); at 0.993 fewer than 1% of the distinct scans are grouped, against 91% when hash
candidates are joined unconfirmed. The thresholds are tight because the digits carry only 64 pixels of
information; photos' copies score 0.998-1.0 and distinct photos far lower.

Choices measured and left: 16-32 px thumbnails (distinct digits and shifted copies overlap: 2-80% of the
scans grouped at the recall goal), a +-2 px search (more distinct look-alikes pass, at twice the cost), SSIM
(local windows per shift, ~10x the work for the same separation of aligned copies). Pixel RMS moves with
brightness; NCC does not.

Cost: one (2, window) x (window, 18) product per pair on the window stack of the second image, ~15-30 us of
CPU per candidate pair here (most of it building the stack); pairs are scored in batches, so memory stays at a
few MB whatever the pair count.

A flat thumbnail (no spread: a blank image) carries no content to correlate; two flat thumbnails score 1 (they
look the same), a flat one against anything else 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from cvpipe.imaging.archive import ArchiveReader, locate_members
from cvpipe.imaging.hashes import SHIFT_HASH, HashPairs
from cvpipe.imaging.images import decode_oriented

MEASURE = "ncc"
# Pairs scored per batch: the window stack of one pair is (2 m + 1) ** 2 windows of (size - 2 m) ** 2 float32,
# ~76 KB at 48 px and m = 1, so a batch stays at ~10 MB whatever the pair count.
_BATCH_PAIRS = 128
# Below this spread (grey levels, RMS over the window) a window counts as flat.
_FLAT_SPREAD = 1e-3
# JPEGs are decoded at a small DCT scale first (as ingest does for the hash): the thumbnail is 32 px anyway.
_DRAFT_SIZE = 64


@dataclass(frozen=True)
class NearDuplicateRule:
    """The near-duplicate rule: hash candidates, then a pixel-level confirmation.

    Its fields are the ``split.near_duplicate.*`` params and are written to the lineage record as they are.

    Attributes:
        hash_bits: candidates are pairs whose 64-bit phashes (of the image, or of one image's mirror) differ
            by at most this many bits. 10 by default, for the cost: every image in some candidate pair is read
            and thumbnailed, and at 25,000 synthetic images 10 bits gives 106 candidates (the split takes 15%
            longer), 12 bits 1,680 (77% longer), 14 bits 16,898 involving 17,362 images (5x), 16 bits 132,864
            involving all of them. A 2 px shift of an 80 px scan moves the phash by up to 20 bits, so such
            copies are found at 0.58 recall at 10 bits and 0.98 at 16: raise it where shifted copies matter
            more than the time. The confirmation, not the hash, is what keeps distinct images apart.
        shift_bits: pairs whose shift-tolerant Fourier hashes (:func:`cvpipe.imaging.hashes.fourier_hash_pair`,
            of the image or one image's mirror) differ by at most this many bits are candidates too; 0 turns
            them off. At 2, 98-100% of the 2 px shifted copies of the UCI digits are candidates (bench/results).
        measure: the confirmation measure; ``ncc``: normalised cross-correlation of grey thumbnails.
        thumbnail: side of the grey thumbnails, pixels.
        blur: Gaussian blur of the thumbnails (its sigma, thumbnail pixels), so that a shift by a fraction
            of a thumbnail pixel, which the whole-pixel search cannot undo, costs little.
        max_shift: the shift search, in thumbnail pixels each way.
        threshold: a candidate is confirmed when its score is at least this.
    """

    hash_bits: int = 10
    shift_bits: int = 2
    measure: str = MEASURE
    thumbnail: int = 48
    blur: float = 1.5
    max_shift: int = 1
    threshold: float = 0.993

    def __post_init__(self) -> None:
        if self.measure != MEASURE:
            raise ValueError(f"unknown near-duplicate measure {self.measure!r}; known: {MEASURE}")
        if not 0 <= self.hash_bits <= 64:
            raise ValueError(f"hash_bits must be within 0-64, got {self.hash_bits}")
        if not 0 <= self.shift_bits <= 64:
            raise ValueError(f"shift_bits must be within 0-64, got {self.shift_bits}")
        if self.max_shift < 0 or self.thumbnail - 2 * self.max_shift < 4:
            raise ValueError(f"max_shift {self.max_shift} leaves no window in a {self.thumbnail} px thumbnail")
        if self.blur < 0:
            raise ValueError(f"blur must not be negative, got {self.blur}")
        if not -1.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be within -1 and 1 (a correlation), got {self.threshold}")

    def as_record(self) -> dict[str, Any]:
        """The rule as a JSON-friendly dict, for the split report and the lineage record."""
        return {**asdict(self), "hash": "imagehash.phash 64-bit, also of the mirrored image", "shift_hash": SHIFT_HASH}


def thumbnail(image: Image.Image, size: int, blur: float) -> np.ndarray:
    """A grey ``size x size`` uint8 thumbnail of ``image``: grey, squashed (antialiased), then blurred."""
    small = image.convert("L").resize((size, size), Image.Resampling.BILINEAR)
    if blur > 0:
        small = small.filter(ImageFilter.GaussianBlur(blur))
    return np.asarray(small, dtype=np.uint8)


def thumbnail_of_bytes(data: bytes, size: int, blur: float) -> np.ndarray:
    """The thumbnail of encoded image bytes, decoded upright (a JPEG at a small DCT scale) as ingest does."""
    return thumbnail(decode_oriented(data, draft_size=max(_DRAFT_SIZE, size)), size, blur)


def thumbnails(images: Iterable[Image.Image | bytes | np.ndarray], rule: NearDuplicateRule) -> np.ndarray:
    """The rule's thumbnails of images given as Pillow images, encoded bytes or decoded arrays: ``(N, size, size)``.

    Raises:
        Whatever Pillow raises for bytes that do not decode (the split only sees images ingest decoded).
    """
    rows = []
    for image in images:
        if isinstance(image, bytes | bytearray):
            rows.append(thumbnail_of_bytes(bytes(image), rule.thumbnail, rule.blur))
        elif isinstance(image, np.ndarray):
            rows.append(thumbnail(Image.fromarray(image), rule.thumbnail, rule.blur))
        else:
            rows.append(thumbnail(image, rule.thumbnail, rule.blur))
    size = rule.thumbnail
    return np.stack(rows) if rows else np.zeros((0, size, size), dtype=np.uint8)


def _window_spreads(thumbs: np.ndarray, side: int) -> np.ndarray:
    """Per thumbnail and shift, the norm of the mean-centred ``side x side`` window: ``(N, shifts)``.

    From summed-area tables of the values and their squares, so no window is materialised. A mirrored
    window has the same pixels as a direct one, so the same spreads serve both (read with ``dx`` reversed).
    """
    values = thumbs.astype(np.float64)
    count = len(values)

    def box_sums(array: np.ndarray) -> np.ndarray:
        table = np.zeros((count, array.shape[1] + 1, array.shape[2] + 1))
        table[:, 1:, 1:] = array.cumsum(1).cumsum(2)
        return table[:, side:, side:] - table[:, :-side, side:] - table[:, side:, :-side] + table[:, :-side, :-side]

    sums, squares = box_sums(values), box_sums(values * values)
    spread = np.sqrt(np.maximum(squares - sums * sums / (side * side), 0.0))
    return spread.reshape(count, -1).astype(np.float32)


def pair_scores(thumbs: np.ndarray, pairs: np.ndarray, max_shift: int) -> tuple[np.ndarray, np.ndarray]:
    """Score candidate pairs: the best NCC over shifts of up to ``max_shift`` pixels, image or mirror.

    The central window of the first image's thumbnail, centred and scaled to unit norm, is correlated with
    every shifted window of the second's; correlating its mirror image with those windows gives the scores
    against the second's mirror (``r . flip(w) = flip(r) . w``), so no mirrored windows are built.

    Args:
        thumbs: ``(N, size, size)`` grey thumbnails (:func:`thumbnails`).
        pairs: ``(P, 2)`` indices into ``thumbs``.
        max_shift: shift search in thumbnail pixels, each way.

    Returns:
        ``(scores, mirrored)``: per pair the best correlation (float32, -1..1) and whether it was reached
        against the mirror of the second image.
    """
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    size = thumbs.shape[1]
    side = size - 2 * max_shift
    reach = 2 * max_shift + 1
    scores = np.zeros(len(pairs), dtype=np.float32)
    mirrored = np.zeros(len(pairs), dtype=bool)
    if not len(pairs):
        return scores, mirrored
    # Spreads of the images in some pair only: (involved, reach * reach), shift (dy, dx) at dy * reach + dx.
    involved, positions = np.unique(pairs, return_inverse=True)
    positions = positions.reshape(pairs.shape)
    spreads = _window_spreads(thumbs[involved], side)
    flat_limit = _FLAT_SPREAD * side
    centre = slice(max_shift, max_shift + side)
    for start in range(0, len(pairs), _BATCH_PAIRS):
        first, second = pairs[start : start + _BATCH_PAIRS, 0], pairs[start : start + _BATCH_PAIRS, 1]
        at_first, at_second = positions[start : start + _BATCH_PAIRS, 0], positions[start : start + _BATCH_PAIRS, 1]
        reference = thumbs[first, centre, centre].astype(np.float32)
        reference -= reference.mean(axis=(1, 2), keepdims=True)
        norm = spreads[at_first, (reach * reach) // 2]
        reference_flat = norm <= flat_limit
        reference /= np.where(reference_flat, 1.0, norm)[:, None, None]
        both = np.stack([reference, reference[:, :, ::-1]], axis=1).reshape(len(first), 2, side * side)
        windows = np.lib.stride_tricks.sliding_window_view(thumbs[second], (side, side), axis=(1, 2))
        windows = windows.reshape(len(second), reach * reach, side * side).astype(np.float32)
        dots = np.matmul(both, windows.transpose(0, 2, 1))  # (P, 2, shifts): direct, then mirror
        # The mirror's windows hold the same pixels as the direct ones, so they share the spreads.
        spread = np.concatenate([spreads[at_second], spreads[at_second]], axis=1)
        flat = spread <= flat_limit
        ncc = dots.reshape(len(second), -1) / np.where(flat, 1.0, spread)
        # Flat against flat looks the same; flat against texture has nothing in common.
        ncc = np.where(flat, np.where(reference_flat[:, None], 1.0, 0.0), np.where(reference_flat[:, None], 0.0, ncc))
        best = np.argmax(ncc, axis=1)
        # Rounding can take a perfect match a hair past 1.
        scores[start : start + len(first)] = np.clip(ncc[np.arange(len(first)), best], -1.0, 1.0)
        mirrored[start : start + len(first)] = best >= reach * reach
    return scores, mirrored


def confirm_pairs(thumbs: np.ndarray, pairs: np.ndarray, rule: NearDuplicateRule) -> tuple[np.ndarray, np.ndarray]:
    """Which candidate pairs the rule confirms as near-duplicates.

    Returns:
        ``(confirmed, scores)``: a boolean mask over ``pairs`` and each pair's score (:func:`pair_scores`).
    """
    scores, _ = pair_scores(thumbs, pairs, rule.max_shift)
    return scores >= rule.threshold, scores


def rule_from(cfg: Any) -> NearDuplicateRule:
    """The rule of a params section holding its fields (``split.near_duplicate``, ``audit.near_duplicate``)."""
    return NearDuplicateRule(
        hash_bits=cfg.hash_bits,
        shift_bits=cfg.shift_bits,
        measure=cfg.measure,
        thumbnail=cfg.thumbnail,
        blur=cfg.blur,
        max_shift=cfg.max_shift,
        threshold=cfg.threshold,
    )


def read_members(archive_path: Path, members: Sequence[str]) -> list[bytes]:
    """The bytes of ``members`` of the archive, read in place by offset (as the decode stage reads them)."""
    if not members:
        return []
    located = locate_members(Path(archive_path), list(members))
    with ArchiveReader(Path(archive_path)) as reader:
        return [reader.read(member) for member in located]


@dataclass(frozen=True)
class Confirmation:
    """Candidate pairs with their scores and the rule's verdict on each.

    Attributes:
        candidates: the hash candidates (:func:`cvpipe.imaging.hashes.candidate_pairs`).
        scores: per candidate, its best NCC (:func:`pair_scores`).
        confirmed: per candidate, whether the score reaches the rule's threshold.
        thumbnailed: images decoded for a thumbnail (those in some candidate pair).
    """

    candidates: HashPairs
    scores: np.ndarray
    confirmed: np.ndarray
    thumbnailed: int

    @property
    def pairs(self) -> HashPairs:
        """The confirmed pairs: the only ones that join groups."""
        return self.candidates.take(self.confirmed)

    @property
    def confirmed_scores(self) -> np.ndarray:
        """The scores of :attr:`pairs`."""
        return self.scores[self.confirmed]


def confirm_candidates(
    candidates: HashPairs, members: Sequence[str], archive_path: Path, rule: NearDuplicateRule
) -> Confirmation:
    """Confirm hash candidates on the pixels: the one implementation the split and the audit share.

    Only the images in some candidate pair are read from the archive and thumbnailed: on data whose images are
    far apart in hash space that is a handful, and the confirmation costs next to nothing.

    Args:
        candidates: pairs of indices into ``members``.
        members: archive member names, one per image (the indices of ``candidates``).
        archive_path: the raw archive the members are read from.
        rule: the near-duplicate rule.
    """
    indices = candidates.indices()
    involved = np.unique(indices)
    thumbs = thumbnails(read_members(archive_path, [members[i] for i in involved.tolist()]), rule)
    # Indices into the compact stack of the involved images' thumbnails, not into all N images.
    local = np.searchsorted(involved, indices).reshape(-1, 2)
    confirmed, scores = confirm_pairs(thumbs, local, rule)
    return Confirmation(candidates, scores, confirmed, len(involved))
