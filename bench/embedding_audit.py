"""Embedding leakage audit on planted hard copies that the hash rule misses (issue 13 part 4).

Run ``python -m bench.embedding_audit``. scikit-learn's digits (1,797 real scans, 8 x 8) are enlarged to 32 x 32
RGB with a per-image tint and dealt into train and test; copies of 5% of the test images are planted in train,
half as 85% crops (resized back), half as colour jitter (per-channel gain 0.7-1.3 and offset). Each is scored by:

* the hash rule's candidate step: 64-bit phash (of the image or its mirror) within 10 bits (``hash_bits`` of
  params.yaml); the NCC confirmation only removes candidates, so this bounds the rule's recall from above;
* cvpipe's embedding rule (:mod:`cvpipe.ml.embeddings`: pooled, centred, L2-normalised, cosine >= threshold)
  on two kinds of vector: the pixels, and random-weight VGG16 features (``features.weights: none``) at 32 px.

ImageNet VGG16 weights were not at hand offline, so the pipeline's real features are NOT measured here.
"""

from __future__ import annotations

import io
import time

import numpy as np
from PIL import Image

from cvpipe.ml.embeddings import cross_split_pairs, embed, recall_precision

SIDE = 32
PLANT_FRACTION = 0.05
THRESHOLDS = (0.80, 0.90, 0.95, 0.98)


def digits_rgb(seed: int = 0) -> np.ndarray:
    """The 1,797 digits as N x 32 x 32 x 3 uint8, each with a random tint (a colour photo stand-in)."""
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(seed)
    grey = (load_digits().images / 16.0 * 255).astype(np.uint8)
    big = np.stack([np.asarray(Image.fromarray(g).resize((SIDE, SIDE), Image.Resampling.BICUBIC)) for g in grey])
    tint = rng.uniform(0.5, 1.0, (len(big), 1, 1, 3))
    return (big[..., None] * tint).astype(np.uint8)


def crop(image: np.ndarray, rng: np.random.Generator, keep: float = 0.85) -> np.ndarray:
    """A ``keep`` x ``keep`` crop at a random place, resized back to the image's size."""
    side = image.shape[0]
    cut = round(side * keep)
    top, left = rng.integers(0, side - cut + 1, 2)
    part = Image.fromarray(image[top : top + cut, left : left + cut])
    return np.asarray(part.resize((side, side), Image.Resampling.BICUBIC))


def jitter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per-channel gain 0.7-1.3 and offset -30..30: a recolouring."""
    gain, offset = rng.uniform(0.7, 1.3, 3), rng.uniform(-30, 30, 3)
    return np.clip(image.astype(np.float64) * gain + offset, 0, 255).astype(np.uint8)


def planted_splits(seed: int = 0) -> tuple[np.ndarray, np.ndarray, set[tuple[int, int]], list[str]]:
    """Train (with planted copies appended) and test images, the planted (train row, test row) pairs, kinds."""
    rng = np.random.default_rng(seed)
    images = digits_rgb(seed)
    order = rng.permutation(len(images))
    train, test = images[order[:1200]], images[order[1200:]]
    sources = rng.choice(len(test), round(PLANT_FRACTION * len(test)), replace=False)
    copies, kinds = [], []
    for number, row in enumerate(sources):
        kind = "crop" if number % 2 == 0 else "jitter"
        copies.append(crop(test[row], rng) if kind == "crop" else jitter(test[row], rng))
        kinds.append(kind)
    planted = {(len(train) + i, int(row)) for i, row in enumerate(sources)}
    return np.concatenate([train, np.stack(copies)]), test, planted, kinds


def phash_candidates(train: np.ndarray, test: np.ndarray, planted: set[tuple[int, int]], bits: int = 10) -> float:
    """The fraction of planted pairs whose phash (or the mirror's) is within ``bits``: the hash rule's ceiling."""
    from cvpipe.imaging.hashes import hash_bytes, hash_distance

    def hashes(image: np.ndarray) -> tuple[str, str]:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        return hash_bytes(buffer.getvalue())

    within = 0
    for a, b in planted:
        (first, _), (second, mirrored) = hashes(train[a]), hashes(test[b])
        within += min(hash_distance(first, second), hash_distance(first, mirrored)) <= bits
    return within / len(planted)


def vgg16_random(images: np.ndarray) -> np.ndarray:
    """Random-weight VGG16 conv features (seeded), as ``features.weights: none`` computes them."""
    import keras

    from cvpipe.ml.models import VGG16Preprocess, vgg16_conv_base

    keras.utils.set_random_seed(0)
    base = vgg16_conv_base((SIDE, SIDE, 3))
    x = VGG16Preprocess()(images.astype("float32"))
    return np.asarray(base.predict(x, batch_size=256, verbose=0))


def score(train: np.ndarray, test: np.ndarray, planted: set[tuple[int, int]], kinds: list[str]) -> list[dict]:
    """Recall (all, crops, recolourings) and precision per threshold for one kind of vector."""
    embedded = embed({"train": train, "test": test}, center=True)
    by_kind = {kind: {p for p, k in zip(sorted(planted), kinds, strict=True) if k == kind} for kind in set(kinds)}
    rows = []
    for threshold in THRESHOLDS:
        pairs = cross_split_pairs(embedded, threshold)
        found = {(int(a), int(b)) for a, b in zip(pairs.a_row, pairs.b_row, strict=True)}
        recall, precision = recall_precision(found, planted)
        rows.append(
            {
                "threshold": threshold,
                "recall": recall,
                "crop": recall_precision(found, by_kind["crop"])[0],
                "jitter": recall_precision(found, by_kind["jitter"])[0],
                "precision": precision,
                "pairs": len(found),
            }
        )
    return rows


def main() -> None:
    """Print the tables."""
    train, test, planted, kinds = planted_splits()
    # Sorted planted pairs line up with kinds: planted train rows increase with the copy number.
    print(f"{len(train)} train (incl. {len(planted)} planted copies), {len(test)} test images, {SIDE} px\n")
    started = time.perf_counter()
    print(f"hash rule ceiling (phash within 10 bits): {phash_candidates(train, test, planted):.2f} of planted pairs")
    print(f"({time.perf_counter() - started:.1f} s)\n")
    vectors = {
        "pixels (32x32x3, pooled as N x D)": (train.reshape(len(train), -1), test.reshape(len(test), -1)),
        "random-weight VGG16 (1x1x512)": (vgg16_random(train), vgg16_random(test)),
    }
    for name, (a, b) in vectors.items():
        print(
            f"### {name}\n\n| cosine >= | recall | crops | recolourings | precision | pairs |\n"
            "|---|---|---|---|---|---|"
        )
        for row in score(a, b, planted, kinds):
            print(
                f"| {row['threshold']:.2f} | {row['recall']:.2f} | {row['crop']:.2f} | {row['jitter']:.2f} | "
                f"{row['precision']:.2f} | {row['pairs']} |"
            )
        print()


if __name__ == "__main__":
    main()
