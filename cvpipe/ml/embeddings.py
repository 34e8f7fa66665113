"""Near-duplicates across splits by embedding: cosine similarity of pooled CNN feature vectors, in NumPy.

The hash rule (:mod:`cvpipe.imaging.hashes` + :mod:`cvpipe.imaging.confirm`) finds copies, resizes and mirrors;
a crop or a recolouring moves a perceptual hash by far more than its threshold. A CNN's pooled features move
little under both (FiftyOne Brain's ``compute_leaky_splits`` uses the same idea on ResNet-18 embeddings), so:

1. :func:`embed`: global-average-pool each N x H x W x C feature map to C values; optionally subtract the mean
   vector of all compared images (``center``: ReLU features are all non-negative, so uncentred cosines of
   unrelated images crowd near 1 and a threshold separates little); L2-normalise.
2. :func:`cross_split_pairs`: for every two splits, the products of blocks of rows (``block`` x ``block``
   similarities at a time, so memory stays bounded at any N), keeping the pairs at or above ``threshold``.

Only as meaningful as the features: with random VGG16 weights similar vectors do not mean similar images.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cvpipe import layout
from cvpipe.errors import DataError
from cvpipe.io import read_json

DEFAULT_BLOCK = 2048


@dataclass(frozen=True)
class CrossPairs:
    """Pairs of rows of two different splits whose embeddings' cosine similarity reached the threshold.

    Arrays of one length; ``a_split`` comes before ``b_split`` in the order the splits were given.
    """

    a_split: np.ndarray
    a_row: np.ndarray
    b_split: np.ndarray
    b_row: np.ndarray
    similarity: np.ndarray

    def __len__(self) -> int:
        return len(self.similarity)


class TooManyPairs(DataError):
    """More pairs reached the threshold than the caller allowed (a threshold too loose for these features)."""

    def __init__(self, found: int, limit: int) -> None:
        super().__init__(f"over {limit:,} embedding pairs (found {found:,} so far)")
        self.found, self.limit = found, limit


def pool(features: np.ndarray) -> np.ndarray:
    """Global-average-pool N x H x W x C maps to N x C float32 (N x C input is returned as float32)."""
    array = np.asarray(features)
    if array.ndim == 4:
        # Accumulate in float64: a float16 cache summed over 25 cells would lose digits.
        return array.mean(axis=(1, 2), dtype=np.float64).astype(np.float32)
    if array.ndim != 2:
        raise DataError(f"embedding audit: expected N x H x W x C or N x C features, got shape {array.shape}")
    return array.astype(np.float32)


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm; an all-zero row stays zero (similar to nothing)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


def embed(groups: Mapping[str, np.ndarray], center: bool = True) -> dict[str, np.ndarray]:
    """Each group's rows pooled, centred on the mean of all groups' rows (``center``) and L2-normalised.

    Raises:
        DataError: a group is empty, or the groups' vector widths differ.
    """
    pooled = {name: pool(features) for name, features in groups.items()}
    widths = {vectors.shape[1] for vectors in pooled.values()}
    empty = [name for name, vectors in pooled.items() if len(vectors) == 0]
    if empty:
        raise DataError(f"embedding audit: split {empty[0]} has no images; rerun the features stage")
    if len(widths) > 1:
        raise DataError(f"embedding audit: the splits' feature widths differ ({sorted(widths)}); rerun features")
    if center:
        mean = np.concatenate(list(pooled.values())).mean(axis=0, dtype=np.float64).astype(np.float32)
        pooled = {name: vectors - mean for name, vectors in pooled.items()}
    return {name: normalise(vectors) for name, vectors in pooled.items()}


def cross_split_pairs(
    embeddings: Mapping[str, np.ndarray],
    threshold: float,
    block: int = DEFAULT_BLOCK,
    max_pairs: int | None = None,
) -> CrossPairs:
    """Every pair of rows from two different splits with cosine similarity >= ``threshold``.

    Args:
        embeddings: split name -> unit-norm N x D rows (:func:`embed`), in the order pairs are named.
        threshold: the least cosine similarity that counts.
        block: rows per block on each side (a block product holds ``block`` x ``block`` float32 values).
        max_pairs: stop with :class:`TooManyPairs` past this many (None: no bound).

    Returns:
        The pairs, most similar first (ties by split, then row).
    """
    names = list(embeddings)
    found: list[tuple[np.ndarray, ...]] = []
    total = 0
    for first_index, first in enumerate(names):
        for second_index in range(first_index + 1, len(names)):
            second = names[second_index]
            left, right = embeddings[first], embeddings[second]
            for start in range(0, len(left), block):
                part = left[start : start + block]
                for other in range(0, len(right), block):
                    sims = part @ right[other : other + block].T
                    rows, cols = np.nonzero(sims >= threshold)
                    if len(rows) == 0:
                        continue
                    total += len(rows)
                    if max_pairs is not None and total > max_pairs:
                        raise TooManyPairs(total, max_pairs)
                    found.append(
                        (
                            np.full(len(rows), first_index),
                            rows + start,
                            np.full(len(rows), second_index),
                            cols + other,
                            sims[rows, cols].astype(np.float64),
                        )
                    )
    if not found:
        empty = np.zeros(0, dtype=np.int64)
        return CrossPairs(np.array([], dtype=object), empty, np.array([], dtype=object), empty, np.zeros(0))
    a_index, a_row, b_index, b_row, similarity = (np.concatenate(column) for column in zip(*found, strict=True))
    order = np.lexsort((b_row, a_row, b_index, a_index, -similarity))
    labels = np.array(names, dtype=object)
    return CrossPairs(
        a_split=labels[a_index[order]],
        a_row=a_row[order].astype(np.int64),
        b_split=labels[b_index[order]],
        b_row=b_row[order].astype(np.int64),
        similarity=similarity[order],
    )


def recall_precision(found: set[tuple[int, int]], planted: set[tuple[int, int]]) -> tuple[float, float]:
    """Recall (planted pairs found) and precision (found pairs that were planted); 1.0 for an empty side."""
    hits = len(found & planted)
    recall = hits / len(planted) if planted else 1.0
    precision = hits / len(found) if found else 1.0
    return recall, precision


def features_weights(cache: Path) -> str | None:
    """The weights spec a feature cache was computed with, as the features stage recorded it.

    Read from the cache's ``features.json`` (imagenet, none, a file); None when it is not recorded. Both audits
    over the cached vectors use it to say when their verdict means nothing (random weights).
    """
    meta = read_json(Path(cache) / layout.FEATURES_META_NAME)
    weights = meta.get("weights") if isinstance(meta, dict) else None
    return str(weights.get("spec")) if isinstance(weights, dict) else None
