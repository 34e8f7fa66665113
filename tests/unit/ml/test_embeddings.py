"""Cosine similarity of pooled embeddings across splits: the maths on planted vectors, then real digits."""

from __future__ import annotations

import numpy as np
import pytest

from cvpipe.errors import DataError
from cvpipe.ml import embeddings


def test_pool_and_normalise_give_unit_rows_and_keep_zero_rows_zero() -> None:
    maps = np.zeros((3, 2, 2, 4), np.float16)
    maps[0, :, :, 0] = 2.0
    maps[1, 0, 0, 1] = 4.0
    pooled = embeddings.pool(maps)
    assert pooled.dtype == np.float32 and pooled.shape == (3, 4)
    assert pooled[1, 1] == pytest.approx(1.0)  # one cell of four
    unit = embeddings.normalise(pooled)
    assert np.linalg.norm(unit, axis=1) == pytest.approx([1.0, 1.0, 0.0])


def test_planted_pairs_are_found_with_their_similarity_whatever_the_block() -> None:
    rng = np.random.default_rng(0)
    train, test = rng.normal(size=(50, 16)), rng.normal(size=(7, 16))
    train[12] = test[3] * 2.0  # the same direction: cosine 1
    train[40] = test[5] + 0.05 * rng.normal(size=16)
    groups = embeddings.embed({"train": train, "test": test}, center=False)
    whole = embeddings.cross_split_pairs(groups, 0.95)
    assert list(zip(whole.a_row, whole.b_row, strict=True)) == [(12, 3), (40, 5)]
    assert whole.similarity[0] == pytest.approx(1.0, abs=1e-6) and 0.95 <= whole.similarity[1] < 1.0
    assert list(whole.a_split) == ["train", "train"] and list(whole.b_split) == ["test", "test"]
    blocked = embeddings.cross_split_pairs(groups, 0.95, block=3)
    assert np.array_equal(blocked.a_row, whole.a_row) and np.array_equal(blocked.b_row, whole.b_row)
    with pytest.raises(embeddings.TooManyPairs):
        embeddings.cross_split_pairs(groups, -1.0, max_pairs=10)
    assert len(embeddings.cross_split_pairs(groups, 1.01)) == 0


def test_pairs_are_only_across_splits_in_the_order_given() -> None:
    same = np.ones((2, 4))
    pairs = embeddings.cross_split_pairs(embeddings.embed({"train": same, "val": same, "test": same}, False), 0.99)
    # No within-split pair; 4 pairs for each of train-val, train-test, val-test.
    assert len(pairs) == 12
    assert {(a, b) for a, b in zip(pairs.a_split, pairs.b_split, strict=True)} == {
        ("train", "val"),
        ("train", "test"),
        ("val", "test"),
    }


def test_centring_separates_non_negative_features_that_all_look_alike_uncentred() -> None:
    rng = np.random.default_rng(1)
    base = rng.uniform(5, 6, 32)  # ReLU-like: every vector shares a large positive mean
    train = base + rng.uniform(0, 1, (40, 32))
    test = base + rng.uniform(0, 1, (10, 32))
    assert len(embeddings.cross_split_pairs(embeddings.embed({"a": train, "b": test}, False), 0.95)) == 400
    assert len(embeddings.cross_split_pairs(embeddings.embed({"a": train, "b": test}, True), 0.95)) == 0


def test_empty_split_or_mismatched_widths_are_one_line() -> None:
    with pytest.raises(DataError, match="split b has no images"):
        embeddings.embed({"a": np.ones((2, 4)), "b": np.ones((0, 4))})
    with pytest.raises(DataError, match="widths differ"):
        embeddings.embed({"a": np.ones((2, 4)), "b": np.ones((2, 5))})
    with pytest.raises(DataError, match="expected N x H x W x C"):
        embeddings.pool(np.ones((2, 3, 4)))


def test_recolourings_of_real_digits_planted_across_splits_are_found() -> None:
    from bench.embedding_audit import planted_splits, score

    train, test, planted, kinds = planted_splits()
    rows = {
        row["threshold"]: row
        for row in score(train.reshape(len(train), -1), test.reshape(len(test), -1), planted, kinds)
    }
    # Pixels, centred: what bench/results/embedding-audit-2026-12-04.md reports (crops are not found this way).
    assert rows[0.8]["jitter"] >= 0.9
    assert rows[0.8]["crop"] < 0.5
    assert rows[0.98]["pairs"] == 0


def test_recall_precision() -> None:
    assert embeddings.recall_precision({(1, 2), (3, 4)}, {(1, 2)}) == (1.0, 0.5)
    assert embeddings.recall_precision(set(), set()) == (1.0, 1.0)
