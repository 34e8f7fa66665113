"""The built-in synthetic dataset: determinism, layout, planted faults, hash diversity, learnability."""

from __future__ import annotations

import io
import json
import logging
import zipfile
from pathlib import Path

import imagehash
import numpy as np
import pytest
from PIL import Image, ImageOps

from cvpipe.config import SyntheticConfig
from cvpipe.errors import ConfigError
from cvpipe.sources import synthetic
from cvpipe.sources.synthetic import (
    ImageSpec,
    generate_synthetic,
    member_name,
    phash_distance,
    plan_plants,
    render_image,
)

log = logging.getLogger(__name__)

CLASSES = ["cat", "dog"]
PER_CLASS = 40
# The pipeline's near-duplicate threshold (split.near_duplicate_threshold): distinct images must stay above it.
THRESHOLD = 10
# How many originals per class the hash-diversity and learnability checks draw (600 images in all).
SAMPLE_PER_CLASS = 300


def _cfg(**overrides: int) -> SyntheticConfig:
    return SyntheticConfig(**{"per_class": PER_CLASS, "seed": 7, **overrides})


def _members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _decode(data: bytes, draft: int | None = None) -> Image.Image:
    """Decode fully, or as ingest does for hashing: a JPEG draft decode with sides >= ``draft``."""
    with Image.open(io.BytesIO(data)) as image:
        if draft is not None:
            image.draft("RGB", (draft, draft))
        return image.convert("RGB")


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    path = tmp_path_factory.mktemp("synthetic") / "images.zip"
    provenance = generate_synthetic(_cfg(), CLASSES, path, workers=1)
    return path, provenance


@pytest.fixture(scope="module")
def sample() -> dict[str, np.ndarray]:
    """600 originals of the default config, hashed and thumbnailed the way the pipeline does."""
    hashes, flipped, thumbs, labels = [], [], [], []
    for k in range(len(CLASSES)):
        for n in range(SAMPLE_PER_CLASS):
            data, _ = render_image(ImageSpec(0, k, n, len(CLASSES), 300, 500))
            image = _decode(data, draft=64)
            hashes.append(imagehash.phash(image).hash.ravel())
            flipped.append(imagehash.phash(ImageOps.mirror(image)).hash.ravel())
            thumbs.append(np.asarray(image.resize((32, 32), Image.Resampling.BILINEAR)))
            labels.append(k)

    def pack(bits: list[np.ndarray]) -> np.ndarray:
        return np.packbits(np.array(bits), axis=1).view(">u8").ravel()

    return {"hash": pack(hashes), "flip": pack(flipped), "thumb": np.stack(thumbs), "label": np.array(labels)}


# --- determinism ------------------------------------------------------------------------------------------


def test_same_config_gives_byte_identical_archive(archive: tuple[Path, dict], tmp_path: Path) -> None:
    path, provenance = archive
    again = generate_synthetic(_cfg(), CLASSES, tmp_path / "again.zip", workers=1)
    assert (tmp_path / "again.zip").read_bytes() == path.read_bytes()
    assert again == provenance


def test_another_seed_gives_other_images(archive: tuple[Path, dict], tmp_path: Path) -> None:
    path, _ = archive
    generate_synthetic(_cfg(seed=8), CLASSES, tmp_path / "other.zip", workers=1)
    first, other = _members(path), _members(tmp_path / "other.zip")
    assert all(first[member_name(c, n)] != other[member_name(c, n)] for c in CLASSES for n in range(PER_CLASS))


def test_process_pool_output_matches_serial(tmp_path: Path) -> None:
    cfg = _cfg(per_class=12)
    serial = generate_synthetic(cfg, CLASSES, tmp_path / "serial.zip", workers=1)
    pooled = generate_synthetic(cfg, CLASSES, tmp_path / "pooled.zip", workers=2)
    assert (tmp_path / "pooled.zip").read_bytes() == (tmp_path / "serial.zip").read_bytes()
    assert pooled == serial


def test_an_image_does_not_depend_on_generation_order(archive: tuple[Path, dict]) -> None:
    members = _members(archive[0])
    specs = [ImageSpec(7, k, n, 2, 300, 500) for k in range(2) for n in (5, 0, 3)]
    for spec in reversed(specs):
        assert render_image(spec)[0] == members[member_name(CLASSES[spec.class_index], spec.number)]


def test_negative_seed_is_accepted() -> None:
    assert render_image(ImageSpec(-1, 0, 0, 2, 64, 64))[0] != render_image(ImageSpec(1, 0, 0, 2, 64, 64))[0]


def test_zip_headers_carry_no_clock_or_umask(archive: tuple[Path, dict]) -> None:
    with zipfile.ZipFile(archive[0]) as zipped:
        infos = zipped.infolist()
    assert all(info.date_time == (1980, 1, 1, 0, 0, 0) for info in infos)
    assert all(info.compress_type == zipfile.ZIP_STORED for info in infos)
    assert {(info.create_system, info.external_attr >> 16) for info in infos} == {(3, 0o100644)}
    assert not any(info.is_dir() for info in infos)


def test_a_failed_run_leaves_no_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = iter(range(100))

    def failing(spec: ImageSpec) -> tuple[bytes, int]:
        if next(calls) == 5:
            raise RuntimeError("boom")
        return render_image(spec)

    monkeypatch.setattr(synthetic, "render_image", failing)
    with pytest.raises(RuntimeError, match="boom"):
        generate_synthetic(_cfg(per_class=4), CLASSES, tmp_path / "images.zip", workers=1)
    assert list(tmp_path.iterdir()) == []


# --- layout -----------------------------------------------------------------------------------------------


def test_members_follow_kaggle_layout_class_by_class(archive: tuple[Path, dict]) -> None:
    path, provenance = archive
    with zipfile.ZipFile(path) as zipped:
        names = zipped.namelist()
    planted = _cfg().exact_duplicates + _cfg().near_duplicates + _cfg().corrupt
    assert len(names) == provenance["members"] == 2 * PER_CLASS + planted
    for name in CLASSES:
        numbers = [int(member.split(".")[1]) for member in names if member.startswith(f"train/{name}.")]
        # Originals 0..per_class-1 first, then this class's planted extras with the next numbers.
        assert numbers == list(range(len(numbers)))
        assert len(numbers) >= PER_CLASS
    assert names == sorted(names, key=lambda m: (CLASSES.index(m[6:].split(".")[0]), int(m.split(".")[1])))


def test_originals_are_rgb_jpegs_of_varied_size_and_quality(archive: tuple[Path, dict]) -> None:
    members = _members(archive[0])
    sizes, tables = set(), set()
    for name in CLASSES:
        for n in range(PER_CLASS):
            with Image.open(io.BytesIO(members[member_name(name, n)])) as image:
                image.load()
                assert (image.format, image.mode) == ("JPEG", "RGB")
                assert all(300 <= side <= 500 for side in image.size)
                sizes.add(image.size)
                tables.add(tuple(image.quantization[0]))
    assert len(sizes) > PER_CLASS  # nearly every image has its own size
    assert len(tables) >= 8  # and the qualities (75-95) vary


def test_side_bounds_hold_for_every_decodable_member(tmp_path: Path) -> None:
    cfg = _cfg(per_class=3, min_side=64, max_side=64, corrupt=0)
    provenance = generate_synthetic(cfg, CLASSES, tmp_path / "a.zip")
    assert len(provenance["planted"]["near_duplicates"]) == 4
    for data in _members(tmp_path / "a.zip").values():
        assert _decode(data).size == (64, 64)


def test_four_classes_get_four_families_and_more_are_refused(tmp_path: Path) -> None:
    classes = ["a", "b", "c", "d"]
    cfg = _cfg(per_class=2, exact_duplicates=0, near_duplicates=0, corrupt=0)
    provenance = generate_synthetic(cfg, classes, tmp_path / "four.zip")
    assert provenance["families"] == ["ellipse", "stripes", "ring", "checks"]
    assert len(_members(tmp_path / "four.zip")) == 8
    with pytest.raises(ConfigError, match="at most 4 classes") as refused:
        generate_synthetic(cfg, [*classes, "e"], tmp_path / "five.zip")
    assert "\n" not in str(refused.value)
    assert not (tmp_path / "five.zip").exists()


@pytest.mark.parametrize("classes", [["cat"], ["cat", "big.dog"], ["cat", "dog/x"]])
def test_unusable_class_lists_are_refused(classes: list[str], tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        generate_synthetic(_cfg(per_class=2), classes, tmp_path / "x.zip")


# --- planted faults -----------------------------------------------------------------------------------------


def test_provenance_is_json_friendly_and_sorted(archive: tuple[Path, dict]) -> None:
    _, provenance = archive
    assert json.loads(json.dumps(provenance)) == provenance
    assert {k: provenance[k] for k in ("generator", "seed", "per_class", "classes")} == {
        "generator": "cvpipe.synthetic",
        "seed": 7,
        "per_class": PER_CLASS,
        "classes": CLASSES,
    }
    planted = provenance["planted"]
    assert [len(planted[k]) for k in ("exact_duplicates", "near_duplicates", "corrupt")] == [4, 4, 3]
    assert all(planted[k] == sorted(planted[k]) for k in planted)


def test_planted_originals_are_distinct_and_extras_are_numbered_after_them() -> None:
    cfg = _cfg(exact_duplicates=10, near_duplicates=10, corrupt=9)
    plants = plan_plants(cfg, 2)
    assert len({(p.class_index, p.source_number) for p in plants}) == len(plants)
    assert all(p.source_number < PER_CLASS for p in plants)
    for k in range(2):
        numbers = sorted(p.number for p in plants if p.class_index == k)
        assert numbers == list(range(PER_CLASS, PER_CLASS + len(numbers)))
    assert [p.kind for p in plants if p.kind not in ("exact", "near")] == ["truncated", "empty", "text"] * 3
    # More plants than originals still works (originals are then reused).
    assert len(plan_plants(_cfg(per_class=1), 2)) == 11


def test_exact_duplicates_are_byte_identical(archive: tuple[Path, dict]) -> None:
    path, provenance = archive
    members = _members(path)
    assert provenance["planted"]["exact_duplicates"]
    for original, copy in provenance["planted"]["exact_duplicates"]:
        assert int(copy.split(".")[1]) >= PER_CLASS
        assert members[copy] == members[original]


def test_near_duplicates_are_within_4_bits_but_not_the_same_file(archive: tuple[Path, dict]) -> None:
    path, provenance = archive
    members = _members(path)
    assert provenance["planted"]["near_duplicates"]
    for original, variant in provenance["planted"]["near_duplicates"]:
        assert members[variant] != members[original]
        assert phash_distance(members[original], members[variant]) <= 4
        small, big = _decode(members[variant]).size, _decode(members[original]).size
        scale = small[0] / big[0]
        assert abs(small[1] - big[1] * scale) <= 1
        # ~90%, or as near as keeping both sides >= min_side (300) allows, or a milder fallback.
        assert min(small) >= 300
        assert scale <= 0.91 or min(small) == 300 or abs(scale - 0.95) < 0.01 or scale == 1.0


def test_near_duplicate_bound_holds_over_many_images() -> None:
    distances = []
    for n in range(40):
        data, quality = render_image(ImageSpec(3, n % 2, n, 2, 300, 500))
        plant = synthetic.Plant("near", n % 2, n, 10_000)
        distances.append(phash_distance(data, synthetic.plant_bytes(plant, data, quality, 300)))
    log.info("near-duplicate phash distances: %s", np.bincount(distances))
    assert max(distances) <= 4


def test_corrupt_members_do_not_decode(archive: tuple[Path, dict]) -> None:
    path, provenance = archive
    members = _members(path)
    originals = [data for name, data in members.items() if int(name.split(".")[1]) < PER_CLASS]
    kinds = {}
    for member, kind in provenance["planted"]["corrupt"]:
        data = members[member]
        kinds[kind] = data
        with pytest.raises(OSError), Image.open(io.BytesIO(data)) as image:
            image.load()
    assert set(kinds) == {"truncated", "empty", "text"}
    assert kinds["empty"] == b""
    assert kinds["text"].startswith(b"<!DOCTYPE html>")
    # A truncated download: the first half of a real original, whose header still parses.
    assert len(kinds["truncated"]) > 1000 and any(data.startswith(kinds["truncated"]) for data in originals)
    with Image.open(io.BytesIO(kinds["truncated"])) as image:
        assert image.format == "JPEG"


# --- what the pipeline and the model see ----------------------------------------------------------------------


def test_distinct_images_are_far_apart_in_phash(sample: dict[str, np.ndarray]) -> None:
    hashes, flipped = sample["hash"], sample["flip"]
    direct = np.bitwise_count(hashes[:, None] ^ hashes[None, :]).astype(int)
    mirrored = np.bitwise_count(flipped[:, None] ^ hashes[None, :]).astype(int)
    np.fill_diagonal(direct, 64)
    self_flip = np.diag(mirrored).copy()
    np.fill_diagonal(mirrored, 64)
    # What the split groups on: either hash, or one image's mirror hash, within the threshold.
    closest = np.minimum(np.minimum(direct, mirrored), mirrored.T)
    pairs = closest[np.triu_indices(len(hashes), 1)]
    nearest = closest.min(axis=1)
    stats = {
        "pairs": pairs.size,
        "min": int(pairs.min()),
        "within_10": int((pairs <= THRESHOLD).sum()),
        "within_12": int((pairs <= 12).sum()),
        "mean": round(float(direct[np.triu_indices(len(hashes), 1)].mean()), 1),
        "nearest_median": float(np.median(nearest)),
        "nearest_p1": float(np.percentile(nearest, 1)),
        "self_flip_min": int(self_flip.min()),
    }
    log.info("phash distances among %d distinct images: %s", len(hashes), stats)
    assert stats["within_10"] == 0, stats
    assert stats["nearest_median"] >= 14, stats
    # An image and its own mirror image are not near-duplicates of each other either.
    assert stats["self_flip_min"] > THRESHOLD, stats


def _edge_features(thumbs: np.ndarray, bins: int = 18) -> np.ndarray:
    """Rotation-invariant edge statistics from the colour structure tensor of each thumbnail.

    A sorted, strength-weighted histogram of edge orientations and its first harmonics: stripes give a few
    strong peaks, ellipses a flat spread. No colour information.
    """
    x = thumbs.astype(np.float64) / 255.0
    dx, dy = np.zeros_like(x), np.zeros_like(x)
    dx[:, :, 1:-1] = x[:, :, 2:] - x[:, :, :-2]
    dy[:, 1:-1] = x[:, 2:] - x[:, :-2]
    gxx, gyy, gxy = (dx * dx).sum(-1), (dy * dy).sum(-1), (dx * dy).sum(-1)
    strength = np.sqrt((gxx - gyy) ** 2 + 4 * gxy**2)
    angle = (0.5 * np.arctan2(2 * gxy, gxx - gyy)) % np.pi
    index = np.minimum((angle / np.pi * bins).astype(int), bins - 1)
    hist = np.stack(
        [np.bincount(i.ravel(), weights=s.ravel(), minlength=bins) for i, s in zip(index, strength, strict=True)]
    )
    total = strength.sum(axis=(1, 2)) + 1e-12
    harmonics = [np.abs((strength * np.exp(2j * h * angle)).sum(axis=(1, 2))) / total for h in (1, 2, 3)]
    return np.concatenate([-np.sort(-hist / total[:, None], axis=1), np.stack(harmonics, axis=1)], axis=1)


def _colour_features(thumbs: np.ndarray) -> np.ndarray:
    x = thumbs.astype(np.float64) / 255.0
    return np.concatenate([x.mean(axis=(1, 2)), x.std(axis=(1, 2))], axis=1)


def _held_out_accuracy(features: np.ndarray, labels: np.ndarray) -> float:
    """Fit a logistic regression (plain gradient descent) on 2/3 of the rows; accuracy on the rest."""
    order = np.random.default_rng(0).permutation(len(labels))
    train, test = order[: len(order) * 2 // 3], order[len(order) * 2 // 3 :]
    mean, std = features[train].mean(0), features[train].std(0) + 1e-9
    a, b = (features[train] - mean) / std, (features[test] - mean) / std
    weights, bias = np.zeros(a.shape[1]), 0.0
    for _ in range(500):
        p = 1 / (1 + np.exp(-(a @ weights + bias)))
        grad = p - labels[train]
        weights -= 0.5 * (a.T @ grad / len(grad) + 1e-3 * weights)
        bias -= 0.5 * grad.mean()
    return float((((b @ weights + bias) > 0).astype(int) == labels[test]).mean())


def test_classes_are_learnable_at_32_pixels_from_shape_alone(sample: dict[str, np.ndarray]) -> None:
    labels = sample["label"]
    shape = _held_out_accuracy(_edge_features(sample["thumb"]), labels)
    colour = _held_out_accuracy(_colour_features(sample["thumb"]), labels)
    log.info("held-out accuracy at 32x32: edge features %.3f, colour features %.3f", shape, colour)
    assert shape > 0.90
    # The per-class colour tendency is mild: colour alone is far from enough.
    assert colour < 0.85
