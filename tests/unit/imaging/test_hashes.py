"""The near-duplicate rule (cvpipe/imaging/hashes.py): hashes of an image and its mirror, close pairs, groups."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
from PIL import Image, ImageOps

from cvpipe.imaging import hashes as hashes_module
from cvpipe.imaging.hashes import (
    candidate_pairs,
    connected_groups,
    hash_bytes,
    hash_distance,
    hash_image,
    hex_to_uint64,
    near_duplicate_pairs,
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
