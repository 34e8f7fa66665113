"""The near-duplicate rule (cvpipe/imaging/hashes.py): hashes of an image and its mirror, close pairs, groups."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
from PIL import Image, ImageOps

from cvpipe.imaging import hashes as hashes_module
from cvpipe.imaging.hashes import (
    ShiftHashes,
    candidate_pairs,
    connected_groups,
    fourier_hash_pair,
    hash_bytes,
    hash_distance,
    hash_image,
    hex_to_uint64,
    near_duplicate_pairs,
    shift_hashes_of,
    shift_pairs,
)
from tests.conftest import jpeg_bytes


def _bits(*positions: int) -> int:
    return sum(1 << p for p in positions)


def test_near_duplicate_pairs_match_brute_force() -> None:
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**63, size=300, dtype=np.int64).astype(np.uint64)
    hashes[7] = hashes[3] ^ np.uint64(0b1011)  # 3 bits away
    flipped = rng.integers(0, 2**63, size=300, dtype=np.int64).astype(np.uint64)
    flipped[10] = hashes[200]  # 10's mirror equals 200
    pairs = {tuple(p) for p in near_duplicate_pairs(hashes, flipped, threshold=8).tolist()}

    def dist(a: np.uint64, b: np.uint64) -> int:
        return bin(int(a) ^ int(b)).count("1")

    expected = {
        (i, j)
        for i, j in itertools.combinations(range(300), 2)
        if dist(hashes[i], hashes[j]) <= 8 or dist(flipped[i], hashes[j]) <= 8 or dist(flipped[j], hashes[i]) <= 8
    }
    assert (3, 7) in pairs and (10, 200) in pairs
    assert pairs == expected


@pytest.mark.parametrize("budget", [1, 7, 300, 10_000])
def test_near_duplicate_pairs_do_not_depend_on_the_block_size(budget: int, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    hashes = rng.integers(0, 2**63, size=120, dtype=np.int64).astype(np.uint64)
    hashes[60:] = hashes[:60] ^ rng.integers(0, 8, size=60).astype(np.uint64)  # a partner 0-3 bits away
    flipped = np.roll(hashes, 7)
    expected = near_duplicate_pairs(hashes, flipped, threshold=4)
    monkeypatch.setattr(hashes_module, "_BLOCK_ELEMENTS", budget)  # 1: one row per block; 10,000: one block
    pairs = near_duplicate_pairs(hashes, flipped, threshold=4)
    assert len(expected) >= 60 and pairs.dtype == np.int64
    np.testing.assert_array_equal(pairs, expected)
    assert pairs.tolist() == sorted(pairs.tolist())


def test_candidate_pairs_measure_distance_through_the_mirror_both_ways() -> None:
    base = 0xF0F0_F0F0_0F0F_0F0F
    hashes = np.array([base, base ^ _bits(1, 2, 3), 0x1234_5678_9ABC_DEF0, 0], dtype=np.uint64)
    flipped = np.array([0xFFFF, 0xAAAA, 0x5555, 0x0123_4567_89AB_CDEF], dtype=np.uint64)
    # Image 3's mirror is exactly image 2's hash except 2 bits: found only through the mirror, from j's side.
    flipped[3] = np.uint64(int(hashes[2]) ^ _bits(5, 9))
    pairs = candidate_pairs(hashes, flipped, threshold=3)
    found = {
        (int(i), int(j)): (int(d), bool(m))
        for i, j, d, m in zip(pairs.i, pairs.j, pairs.distance, pairs.mirrored, strict=True)
    }
    assert found == {(0, 1): (3, False), (2, 3): (2, True)}
    assert len(candidate_pairs(hashes, flipped, threshold=2)) == 1


def test_candidate_pairs_are_blocked_and_empty_safe() -> None:
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**63, size=2100, dtype=np.uint64)
    hashes[2050] = hashes[3] ^ np.uint64(1)  # across a block boundary
    pairs = candidate_pairs(hashes, hashes.copy(), threshold=1)
    assert pairs.indices().tolist() == [[3, 2050]]
    empty = candidate_pairs(np.array([], dtype=np.uint64), np.array([], dtype=np.uint64), 10)
    assert len(empty) == 0 and empty.indices().shape == (0, 2) and empty.i.dtype == np.int64


def test_a_confirmation_step_keeps_a_subset_of_the_candidates() -> None:
    hashes = np.array([0, 1, 3, 0xFFFF], dtype=np.uint64)
    pairs = candidate_pairs(hashes, hashes.copy(), threshold=2)
    kept = pairs.take(pairs.distance == 1)
    assert pairs.indices().tolist() == [[0, 1], [0, 2], [1, 2]]
    assert kept.indices().tolist() == [[0, 1], [1, 2]] and kept.direct.tolist() == [1, 1]


def test_connected_groups_are_transitive() -> None:
    roots = connected_groups(6, np.array([[4, 5], [1, 2], [2, 5]]))
    assert roots.tolist() == [0, 1, 1, 3, 1, 1]


def test_an_image_is_hashed_with_its_mirror_as_imagehash_writes_it() -> None:
    import imagehash

    data = jpeg_bytes(3, size=(120, 90))
    image_hash, mirror_hash = hash_bytes(data)
    assert len(image_hash) == len(mirror_hash) == 16 and image_hash != mirror_hash
    for method in ("phash", "dhash", "average_hash"):
        function = getattr(imagehash, method)
        full = Image.open(io.BytesIO(data)).convert("RGB")
        assert hash_image(full, method) == str(function(full))
        assert hash_distance(hash_image(full, method), hash_image(ImageOps.mirror(full), method)) == int(
            function(full) - function(ImageOps.mirror(full))
        )
    assert hex_to_uint64([image_hash]).tolist() == [int(image_hash, 16)]


# -- the shift-tolerant (Fourier) hash ------------------------------------------------------------------------


def _digit_images(count: int) -> list[Image.Image]:
    """The first ``count`` UCI digits (real 8x8 scans) at 80x80, nearest, as the digits bench plants them."""
    load_digits = pytest.importorskip("sklearn.datasets").load_digits
    scans = load_digits().images[:count]
    return [
        Image.fromarray((scan * (255 / 16)).round().astype(np.uint8), "L").resize((80, 80), Image.Resampling.NEAREST)
        for scan in scans
    ]


def _shifted(image: Image.Image, pixels: int) -> Image.Image:
    return Image.fromarray(np.roll(np.asarray(image), (pixels, pixels), axis=(0, 1)))


def test_a_2px_shifted_digit_is_a_fourier_candidate_where_phash_misses_some() -> None:
    images = _digit_images(60)
    fourier = [fourier_hash_pair(image) for image in images]
    shifted = [fourier_hash_pair(_shifted(image, 2)) for image in images]
    # As the split compares them: image to image, or either mirror to the other image.
    distances = np.array(
        [
            min(hash_distance(a[0], b[0]), hash_distance(a[1], b[0]), hash_distance(a[0], b[1]))
            for a, b in zip(fourier, shifted, strict=True)
        ]
    )
    # 59 of these 60 within 2 bits (198 of the first 200: the other two 4 bits away).
    assert np.mean(distances <= 2) >= 0.95 and np.median(distances) == 0, distances
    phash = [hash_distance(hash_image(image), hash_image(_shifted(image, 2))) for image in images]
    assert max(phash) > 10  # what the second candidate is for: some shifted copies are past hash_bits
    # Distinct digits are mostly not candidates (the confirmation judges the few that are).
    values = hex_to_uint64([first for first, _ in fourier])
    flipped = hex_to_uint64([second for _, second in fourier])
    close = shift_pairs(ShiftHashes(values, flipped, 2))
    assert len(close) <= 0.02 * len(images) * (len(images) - 1) / 2


def test_the_fourier_hash_has_32_ones_and_its_mirror_is_the_mirrors_hash() -> None:
    image = Image.open(io.BytesIO(jpeg_bytes(5, size=(96, 72)))).convert("RGB")
    direct, mirror = fourier_hash_pair(image)
    assert len(direct) == len(mirror) == 16
    assert int(direct, 16).bit_count() == int(mirror, 16).bit_count() == 32
    mirrored_direct, mirrored_mirror = fourier_hash_pair(ImageOps.mirror(image))
    # The mirror's hash is the spectrum read at -kx: the mirrored image's own hash up to resampling noise.
    assert hash_distance(mirror, mirrored_direct) <= 2 and hash_distance(direct, mirrored_mirror) <= 2


def _scan_codes(hashes: np.ndarray, flipped: np.ndarray, bits: int) -> list[int]:
    count = len(hashes)
    return [i * count + j for i, j in near_duplicate_pairs(hashes, flipped, bits).tolist()]


@pytest.mark.parametrize("bits", [1, 2, 3, 12])
def test_the_shift_lookup_finds_what_a_full_scan_finds(bits: int) -> None:
    rng = np.random.default_rng(bits)
    count = 400
    # Few distinct values per part, so buckets are crowded as on real data (low frequencies mostly set).
    hashes = (rng.integers(0, 2**63, size=count, dtype=np.int64) & 0x0F0F_0F0F_0F0F_0F0F).astype(np.uint64)
    flipped = (rng.integers(0, 2**63, size=count, dtype=np.int64) & 0x0F0F_0F0F_0F0F_0F0F).astype(np.uint64)
    noise = [np.uint64(_bits(*rng.choice(64, size=rng.integers(0, bits + 2), replace=False))) for _ in range(100)]
    hashes[300:] = hashes[:100] ^ np.array(noise, dtype=np.uint64)  # partners 0 .. bits + 1 bits away
    flipped[250:270] = hashes[20:40] ^ np.uint64(1)  # found through a mirror only
    found = shift_pairs(ShiftHashes(hashes, flipped, bits)).tolist()
    expected = _scan_codes(hashes, flipped, bits)
    assert len(expected) > 50 and found == expected


def test_shift_candidates_join_the_phash_candidates_sorted_with_their_phash_distances() -> None:
    hashes = np.array([0, 0xFFFF_FFFF, 1, 0xFFFF_0000_0000_0000], dtype=np.uint64)
    fourier = np.array([0xF0, 0xAB00, 0xAB00 ^ 0b11, 0xF1], dtype=np.uint64)
    shift = ShiftHashes(fourier, fourier.copy(), 2)
    pairs = candidate_pairs(hashes, hashes.copy(), threshold=3, shift=shift)
    # (0, 2): phash; (0, 3) and (1, 2): Fourier only, 16 and 31 phash bits apart.
    assert pairs.indices().tolist() == [[0, 2], [0, 3], [1, 2]]
    assert pairs.distance.tolist() == [1, 16, 31]
    assert candidate_pairs(hashes, hashes.copy(), threshold=3).indices().tolist() == [[0, 2]]
    with pytest.raises(hashes_module.TooManyCandidates):
        candidate_pairs(hashes, hashes.copy(), threshold=3, limit=2, shift=shift)


def test_shift_hashes_come_from_the_manifest_columns_unless_off_or_absent() -> None:
    columns = {"fourier": ["00000000ffffffff"], "fourier_flip": ["ffffffff00000000"]}
    shift = shift_hashes_of(columns, 2)
    assert shift is not None and shift.bits == 2 and shift.hashes.tolist() == [0xFFFF_FFFF]
    assert shift_hashes_of(columns, 0) is None
    assert shift_hashes_of({"phash": ["0" * 16]}, 2) is None
