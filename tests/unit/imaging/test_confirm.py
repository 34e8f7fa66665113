"""The near-duplicate confirmation on real images: scikit-learn's UCI digit scans and its two sample photos."""

from __future__ import annotations

import io

import imagehash
import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps
from sklearn.datasets import load_digits, load_sample_images

from cvpipe.imaging.confirm import NearDuplicateRule, confirm_pairs, pair_scores, thumbnail_of_bytes, thumbnails

RULE = NearDuplicateRule()
DIGITS = 500  # the first 500 scans: enough same-class look-alikes that the hash calls candidates


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg(image: Image.Image, quality: int = 75) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _copies(image: Image.Image) -> dict[str, bytes | Image.Image]:
    """The planted copies the rule must confirm (the bench's transforms, the crop aside)."""
    width, height = image.size
    return {
        "jpeg": _jpeg(image),
        "shift1": Image.fromarray(np.roll(np.asarray(image), (1, 1), axis=(0, 1))),
        "shift2": Image.fromarray(np.roll(np.asarray(image), (2, 2), axis=(0, 1))),
        "resize90": image.resize((round(width * 0.9), round(height * 0.9)), Image.Resampling.BICUBIC),
        "resize2x": image.resize((width * 2, height * 2), Image.Resampling.BICUBIC),
        "brighter": ImageEnhance.Brightness(image).enhance(1.1),
        "darker": ImageEnhance.Brightness(image).enhance(0.9),
        "mirror": ImageOps.mirror(image),
    }


@pytest.fixture(scope="module")
def digits() -> tuple[list[Image.Image], np.ndarray]:
    data = load_digits()
    images = [
        Image.fromarray((scan * (255 / 16)).round().astype(np.uint8), "L").resize((80, 80), Image.Resampling.NEAREST)
        for scan in data.images[:DIGITS]
    ]
    return images, data.target[:DIGITS]


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    return [Image.fromarray(array) for array in load_sample_images().images]  # china.jpg, flower.jpg


def _score_copies(originals: list[Image.Image]) -> dict[str, np.ndarray]:
    scores = {}
    copies = [_copies(image) for image in originals]
    for name in copies[0]:
        planted = [of_image[name] for of_image in copies]
        thumbs = thumbnails([_png(image) for image in originals] + planted, RULE)
        count = len(originals)
        pairs = np.stack([np.arange(count), np.arange(count) + count], axis=1)
        scores[name], _ = pair_scores(thumbs, pairs, RULE.max_shift)
    return scores


def test_planted_copies_of_digit_scans_are_confirmed(digits: tuple[list[Image.Image], np.ndarray]) -> None:
    images, _ = digits
    for name, scores in _score_copies(images[::25]).items():  # 20 scans, every class
        assert (scores >= RULE.threshold).all(), (name, scores.min())


def test_planted_copies_of_photos_are_confirmed_and_the_photos_are_not(photos: list[Image.Image]) -> None:
    for name, scores in _score_copies(photos).items():
        assert (scores >= RULE.threshold).all(), (name, scores)
    thumbs = thumbnails(photos, RULE)
    confirmed, scores = confirm_pairs(thumbs, np.array([[0, 1]]), RULE)
    assert not confirmed[0] and scores[0] < 0.5


def test_distinct_digits_the_hash_calls_candidates_are_not_confirmed(
    digits: tuple[list[Image.Image], np.ndarray],
) -> None:
    images, labels = digits
    hashes = np.array([int(str(imagehash.phash(image)), 16) for image in images], dtype=np.uint64)
    flipped = np.array([int(str(imagehash.phash(ImageOps.mirror(image))), 16) for image in images], dtype=np.uint64)
    distance = np.minimum(np.bitwise_count(hashes[:, None] ^ hashes), np.bitwise_count(flipped[:, None] ^ hashes))
    rows, cols = np.nonzero(np.triu(distance <= 16, k=1))  # the loosest hash_bits the bench sweeps
    same_class = labels[rows] == labels[cols]
    assert same_class.sum() > 300  # the hash alone would join hundreds of distinct scans of one digit
    confirmed, scores = confirm_pairs(thumbnails(images, RULE), np.stack([rows, cols], axis=1), RULE)
    # None of the first 500 scans is a copy of another; a pair or two of near-identical 8x8 scans may pass.
    assert confirmed.sum() <= 2, np.sort(scores)[-5:]
    assert np.median(scores[same_class]) < 0.97


def test_a_mirror_is_found_through_the_mirror_and_a_copy_directly(photos: list[Image.Image]) -> None:
    china = photos[0]
    thumbs = thumbnails([china, ImageOps.mirror(china), Image.open(io.BytesIO(_jpeg(china)))], RULE)
    scores, mirrored = pair_scores(thumbs, np.array([[0, 1], [1, 0], [0, 2]]), RULE.max_shift)
    assert (scores > 0.995).all()
    assert mirrored.tolist() == [True, True, False]


def test_scores_are_deterministic_symmetric_enough_and_inputs_agree(photos: list[Image.Image]) -> None:
    flower = photos[1]
    copy = ImageEnhance.Brightness(flower).enhance(1.1)
    as_bytes = thumbnails([_jpeg(flower, 95), _jpeg(copy, 95)], RULE)
    assert np.array_equal(as_bytes, thumbnails([_jpeg(flower, 95), _jpeg(copy, 95)], RULE))
    from_arrays = thumbnails([np.asarray(flower), np.asarray(copy)], RULE)
    assert np.array_equal(from_arrays, thumbnails([flower, copy], RULE))
    pairs = np.array([[0, 1], [1, 0]])
    first, _ = pair_scores(as_bytes, pairs, RULE.max_shift)
    second, _ = pair_scores(as_bytes, pairs, RULE.max_shift)
    assert np.array_equal(first, second)
    assert abs(float(first[0] - first[1])) < 1e-3


def test_flat_images_match_each_other_and_nothing_else(photos: list[Image.Image]) -> None:
    blank, grey = Image.new("L", (64, 64), 255), Image.new("L", (80, 60), 128)
    thumbs = thumbnails([blank, grey, photos[0]], RULE)
    scores, _ = pair_scores(thumbs, np.array([[0, 1], [0, 2], [2, 1]]), RULE.max_shift)
    assert scores.tolist() == [1.0, 0.0, 0.0]


def test_no_pairs_and_bytes_thumbnails() -> None:
    scores, mirrored = pair_scores(np.zeros((0, 48, 48), np.uint8), np.zeros((0, 2), np.int64), 1)
    assert scores.shape == mirrored.shape == (0,)
    assert thumbnails([], RULE).shape == (0, 48, 48)
    thumb = thumbnail_of_bytes(_png(Image.new("RGB", (100, 50), (10, 200, 30))), 48, 1.5)
    assert thumb.shape == (48, 48) and thumb.dtype == np.uint8


def test_the_rule_validates_and_records_itself() -> None:
    record = RULE.as_record()
    assert record["measure"] == "ncc" and record["threshold"] == RULE.threshold and "phash" in record["hash"]
    with pytest.raises(ValueError, match="measure"):
        NearDuplicateRule(measure="ssim")
    with pytest.raises(ValueError, match="max_shift"):
        NearDuplicateRule(thumbnail=8, max_shift=3)
    with pytest.raises(ValueError, match="threshold"):
        NearDuplicateRule(threshold=1.5)
    with pytest.raises(ValueError, match="hash_bits"):
        NearDuplicateRule(hash_bits=65)
