"""The built-in synthetic dataset: an offline stand-in for Kaggle's dogs-vs-cats ``train.zip``.

The archive has Kaggle's layout (``train/<class>.<N>.jpg``), so every later stage runs unchanged on it. Each
class is a family of shapes (``FAMILIES``: ellipses, striped bars, rings, checkerboards), one big and a few
small, at random places, sizes, angles and colours on a busy random background. The families differ in
outline and in local texture, so a small convnet learns them even after a squash to 32x32 (a 4-layer
convnet trained on 1,400 images for 15 epochs: 0.97-0.99 test accuracy); colour leans a little per class
but alone is far from enough. The backgrounds carry random structure at the scale a perceptual hash looks
at, so hashes of distinct images stay far apart (the pipeline groups images within 10 phash bits as
near-duplicates; among the default 2 x 1,300 images the closest distinct pair, flips included, is 12 bits
apart).

On top of the originals it plants the faults a real scrape has, as ordinary-looking extra members whose
provenance is returned: byte-identical copies, re-encoded and resized near-duplicates, and members that
cannot be decoded. The audit and ingest tests then check that the pipeline finds exactly those.

Everything is derived from ``cfg.seed``: each image from its own RNG stream keyed by (seed, class, number),
so an image does not depend on generation order or on the worker that drew it, and the zip is
byte-identical across runs and across worker counts (for one Pillow/libjpeg build).
"""

from __future__ import annotations

import colorsys
import contextlib
import io
import logging
import math
import multiprocessing
import os
import re
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageStat

from cvpipe.config import SyntheticConfig
from cvpipe.errors import ConfigError
from cvpipe.imaging.hashes import HASH_DRAFT_SIZE, hash_distance, hash_image
from cvpipe.io import atomic_path

log = logging.getLogger(__name__)

GENERATOR = "cvpipe.synthetic"
# Bump when the drawing changes: the same seed then gives different bytes, and provenance says why.
GENERATOR_VERSION = 1

FAMILIES = ("ellipse", "stripes", "ring", "checks")
MAX_CLASSES = len(FAMILIES)
CORRUPT_KINDS = ("truncated", "empty", "text")

# A near-duplicate is resized by this factor and re-encoded at another quality, the kind of copy a scrape
# collects; the contract is a phash at most this many bits away (see plant_bytes).
NEAR_DUPLICATE_SCALE = 0.9
NEAR_DUPLICATE_MAX_BITS = 4

_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # the earliest date a zip can hold: no clock in the bytes
_ZIP_ATTR = 0o100644 << 16  # a regular file, rw-r--r--, whatever the umask
_ZIP_UNIX = 3
_QUALITY_RANGE = (75, 95)
# Below this many images a process pool costs more to start than it saves.
_MIN_IMAGES_FOR_POOL = 400
_CHUNKSIZE = 16
# The planting RNG is keyed by (seed, this) and an image's by (seed, class, number): the streams differ.
_PLAN_STREAM = 0x504C414E  # "PLAN"
_CLASS_NAME = re.compile(r"[A-Za-z0-9_-]+")
_TEXT_BODY = b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head><body>Not Found</body></html>\n"


@dataclass(frozen=True)
class ImageSpec:
    """What fixes one original image; hashable and picklable so a worker can render it alone."""

    seed: int
    class_index: int
    number: int
    n_classes: int
    min_side: int
    max_side: int


@dataclass(frozen=True)
class Plant:
    """One planted extra member: what it is, which original it comes from, and its own member number."""

    kind: str  # "exact", "near", or one of CORRUPT_KINDS
    class_index: int
    source_number: int
    number: int


def member_name(class_name: str, number: int) -> str:
    """Return the archive member for image ``number`` of a class, as in Kaggle's train.zip."""
    return f"train/{class_name}.{number}.jpg"


def _entropy(seed: int) -> int:
    """Map any int seed to the non-negative entropy numpy's SeedSequence requires."""
    return seed % (1 << 64)


# --- drawing ------------------------------------------------------------------------------------------------


def _grey_field(rng: np.random.Generator, cells: tuple[int, int], sigma: float, size: tuple[int, int]) -> np.ndarray:
    """Return zero-mean grey noise on a ``cells`` grid (rows, columns), smoothly upsampled to ``size``."""
    noise = rng.normal(0.0, sigma, size=cells).astype(np.float32)
    return np.asarray(Image.fromarray(noise, "F").resize(size, Image.Resampling.BICUBIC))


def _background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Return an RGB background: random low-frequency colour fields with mottled texture.

    A few random colours on a small grid give the broad layout; grey noise on a ~8x8 grid adds structure
    at the scale a perceptual hash looks at (its 32x32 DCT keeps frequencies up to 4 cycles per image), so
    the hashes of distinct images stay far apart even when their big shapes sit in the same place; grey
    noise at 1/8 size adds texture for the convnet to ignore. Everything is composed at a quarter of the
    size and upsampled once, because full-size array work dominated the cost.
    """
    quarter = (max(2, width // 4), max(2, height // 4))
    grid_h, grid_w = (int(v) for v in rng.integers(2, 6, size=2))
    # An image-wide base colour plus per-cell swings as wide as the whole range, clipped: about half the
    # channel values saturate, and the strong luminance layout this gives spreads the hashes further apart
    # than plain uniform colours did.
    swing = rng.uniform(-1.0, 1.0, size=(grid_h, grid_w, 3)) * rng.uniform(255.0, 256.0)
    grid = np.clip(rng.uniform(0.0, 256.0, size=3) + swing, 0, 255).astype(np.uint8)
    field = np.asarray(Image.fromarray(grid, "RGB").resize(quarter, Image.Resampling.BICUBIC), dtype=np.float32)
    medium = _grey_field(rng, tuple(int(v) for v in rng.integers(6, 11, size=2)), rng.uniform(30.0, 50.0), quarter)
    fine = _grey_field(rng, (max(2, height // 8), max(2, width // 8)), rng.uniform(5.0, 15.0), quarter)
    small = np.clip(field + (medium + fine)[..., None], 0, 255).astype(np.uint8)
    return Image.fromarray(small, "RGB").resize((width, height), Image.Resampling.BILINEAR)


Polygon = list[tuple[float, float]]


@dataclass(frozen=True)
class Shape:
    """One drawn object: a filled body with optional holes (background shows through) and accent stripes."""

    body: Polygon
    holes: tuple[Polygon, ...] = ()
    accents: tuple[Polygon, ...] = ()


def _ellipse_points(rx: float, ry: float) -> np.ndarray:
    """Return a 72-gon approximating an axis-aligned ellipse centred on the origin."""
    t = np.linspace(0.0, 2 * math.pi, 72, endpoint=False)
    return np.stack([rx * np.cos(t), ry * np.sin(t)], axis=1)


def _box_points(left: float, top: float, right: float, bottom: float) -> np.ndarray:
    """Return the corners of an axis-aligned box."""
    return np.array([[left, top], [right, top], [right, bottom], [left, bottom]])


def _local_shape(
    kind: str, rng: np.random.Generator, size: float
) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """Return one shape of a family centred on the origin, unrotated: body, holes, accents."""
    if kind == "ellipse":
        return _ellipse_points(size / 2, size / 2 * rng.uniform(0.55, 1.0)), [], []
    if kind == "ring":
        outer = _ellipse_points(size / 2, size / 2 * rng.uniform(0.7, 1.0))
        return outer, [outer * rng.uniform(0.45, 0.65)], []
    if kind == "stripes":
        # A rectangle crossed by 2-3 bars of another colour: stripes are a local texture a small convnet
        # picks up at 32x32, where corners against curves alone took it many more epochs.
        half_w, half_h = size / 2, size / 2 * rng.uniform(0.45, 0.9)
        bars = int(rng.integers(2, 4))
        step = 2 * half_w / (2 * bars + 1)
        accents = [
            _box_points(-half_w + (2 * i + 1) * step, -half_h, -half_w + (2 * i + 2) * step, half_h)
            for i in range(bars)
        ]
        return _box_points(-half_w, -half_h, half_w, half_h), [], accents
    # checks: a checkerboard patch, a texture unlike both the bars and the plain or holed ovals
    half_w, half_h = size / 2, size / 2 * rng.uniform(0.7, 1.0)
    cols, rows = (int(v) for v in rng.integers(3, 5, size=2))
    cell_w, cell_h = 2 * half_w / cols, 2 * half_h / rows
    accents = [
        _box_points(-half_w + i * cell_w, -half_h + j * cell_h, -half_w + (i + 1) * cell_w, -half_h + (j + 1) * cell_h)
        for i in range(cols)
        for j in range(rows)
        if (i + j) % 2
    ]
    return _box_points(-half_w, -half_h, half_w, half_h), [], accents


def _shape(kind: str, rng: np.random.Generator, cx: float, cy: float, size: float) -> Shape:
    """Return one shape of a family, rotated at random and centred on (cx, cy)."""
    body, holes, accents = _local_shape(kind, rng, size)
    angle = rng.uniform(0.0, math.pi)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])

    def place(points: np.ndarray) -> Polygon:
        return [(float(x) + cx, float(y) + cy) for x, y in points @ rot.T]

    return Shape(place(body), tuple(map(place, holes)), tuple(map(place, accents)))


def _shape_colour(rng: np.random.Generator, class_index: int, n_classes: int, luma: float) -> tuple[int, int, int]:
    """Return a fill colour that stands out from the backdrop, with a mild per-class hue tendency.

    The hue leans towards the class's own sector of the colour wheel but overlaps its neighbours, so colour
    helps a little and shape is what separates the classes.
    """
    hue = (class_index / n_classes + rng.uniform(-0.35, 0.35)) % 1.0
    saturation = rng.uniform(0.35, 1.0)
    # Bright shape on a dark backdrop and dark on a bright one: the outline is always visible.
    value = rng.uniform(0.8, 1.0) if luma < 128 else rng.uniform(0.05, 0.3)
    red, green, blue = colorsys.hsv_to_rgb(hue, saturation, value)
    return round(red * 255), round(green * 255), round(blue * 255)


def _paint(image: Image.Image, shape: Shape, pick: Callable[[float], tuple[int, int, int]]) -> None:
    """Fill a shape into ``image`` in place, its colours picked against the luma beneath it.

    Masks cover only the shape's bounding box: a full-size mask per shape cost more than the JPEG.
    """
    xs = [x for x, _ in shape.body]
    ys = [y for _, y in shape.body]
    left, top = max(0, math.floor(min(xs))), max(0, math.floor(min(ys)))
    right, bottom = min(image.width, math.ceil(max(xs)) + 1), min(image.height, math.ceil(max(ys)) + 1)
    if right <= left or bottom <= top:
        return
    box = (left, top, right, bottom)

    def mask_of(polygons: Sequence[Polygon], cut: Sequence[Polygon] = ()) -> Image.Image:
        mask = Image.new("L", (right - left, bottom - top), 0)
        draw = ImageDraw.Draw(mask)
        for polygon, fill in [(p, 255) for p in polygons] + [(p, 0) for p in cut]:
            draw.polygon([(x - left, y - top) for x, y in polygon], fill=fill)
        return mask

    body = mask_of([shape.body], shape.holes)
    if body.getbbox() is None:  # a sliver clipped away entirely: nothing to paint, no backdrop to measure
        return
    colour = pick(_luma(ImageStat.Stat(image.crop(box), body).mean))
    image.paste(colour, box, body)
    if shape.accents:
        # Dark accents on a bright body and bright on a dark one (by HSV value, as the body was picked).
        image.paste(pick(255.0 if max(colour) >= 128 else 0.0), box, mask_of(shape.accents))


def _luma(rgb: Sequence[float]) -> float:
    """Return the ITU-R 601 luma of an RGB colour, as Pillow's greyscale conversion computes it."""
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def _draw_shapes(rng: np.random.Generator, image: Image.Image, spec: ImageSpec) -> None:
    """Draw one big shape of the class's family and a few smaller ones, in place."""
    width, height = image.size
    kind = FAMILIES[spec.class_index]
    short = min(width, height)
    # The main shape spans about half the short side, so the cue survives a squash to 32x32.
    sizes = [rng.uniform(0.45, 0.7) * short] + [rng.uniform(0.15, 0.3) * short for _ in range(rng.integers(1, 4))]
    for size in sizes:
        # The centre may sit near an edge, so a shape is sometimes cut off, as a photo's subject is.
        cx = rng.uniform(size * 0.3, width - size * 0.3)
        cy = rng.uniform(size * 0.3, height - size * 0.3)
        shape = _shape(kind, rng, cx, cy, size)
        _paint(image, shape, lambda luma: _shape_colour(rng, spec.class_index, spec.n_classes, luma))


def _grain(rng: np.random.Generator, image: Image.Image) -> Image.Image:
    """Add grey sensor-like grain over everything, shapes included, so flat fills are not a give-away.

    Uniform noise from raw random bytes, scaled by a lookup table and added by Pillow in C: Gaussian noise
    through NumPy cost more than everything else together.
    """
    strength = int(rng.integers(4, 17))  # peak-to-peak grain, in grey levels
    noise = Image.frombytes("L", image.size, rng.bytes(image.width * image.height))
    noise = noise.point([(v * strength) >> 8 for v in range(256)]).convert("RGB")
    return ImageChops.add(image, noise, scale=1.0, offset=-(strength // 2))


def _encode_jpeg(image: Image.Image, quality: int) -> bytes:
    """Encode ``image`` as a baseline JPEG; no metadata, so equal pixels give equal bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def render_image(spec: ImageSpec) -> tuple[bytes, int]:
    """Render one original image; a pure function of ``spec``.

    Args:
        spec: the seed, class and number that fix the image, and the side bounds.

    Returns:
        The JPEG bytes and the quality they were encoded at.
    """
    rng = np.random.default_rng([_entropy(spec.seed), spec.class_index, spec.number])
    width, height = (int(v) for v in rng.integers(spec.min_side, spec.max_side + 1, size=2))
    quality = int(rng.integers(_QUALITY_RANGE[0], _QUALITY_RANGE[1] + 1))
    image = _background(rng, width, height)
    _draw_shapes(rng, image, spec)
    return _encode_jpeg(_grain(rng, image), quality), quality


def _render_task(spec: ImageSpec) -> tuple[bytes, int]:
    """Module-level wrapper so a process pool can pickle the work."""
    return render_image(spec)


# --- planted faults -----------------------------------------------------------------------------------------


def plan_plants(cfg: SyntheticConfig, n_classes: int) -> list[Plant]:
    """Choose which originals are copied, re-encoded or corrupted, and number the extra members.

    The choice draws from its own RNG stream, so it depends on the seed and counts only. Originals are
    distinct where there are enough, so no original ends up in two planted groups.

    Args:
        cfg: the synthetic section of params.
        n_classes: how many classes there are.

    Returns:
        The plants in the order exact duplicates, near-duplicates, corrupt members.
    """
    kinds = ["exact"] * cfg.exact_duplicates + ["near"] * cfg.near_duplicates
    kinds += [CORRUPT_KINDS[i % len(CORRUPT_KINDS)] for i in range(cfg.corrupt)]
    population = n_classes * cfg.per_class
    rng = np.random.default_rng([_entropy(cfg.seed), _PLAN_STREAM])
    picks = rng.choice(population, size=len(kinds), replace=len(kinds) > population)
    next_number = [cfg.per_class] * n_classes
    plants = []
    for kind, pick in zip(kinds, picks.tolist(), strict=True):
        class_index, source_number = divmod(pick, cfg.per_class)
        plants.append(Plant(kind, class_index, source_number, next_number[class_index]))
        next_number[class_index] += 1
    return plants


def near_duplicate(data: bytes, quality: int, scale: float = NEAR_DUPLICATE_SCALE) -> bytes:
    """Return ``data`` resized by ``scale`` and re-encoded at a quality 10 away from ``quality``."""
    with Image.open(io.BytesIO(data)) as original:
        original.load()
        size = (round(original.width * scale), round(original.height * scale))
        resized = original.resize(size, Image.Resampling.BICUBIC)
    new_quality = quality - 10 if quality >= 85 else quality + 10
    return _encode_jpeg(resized, new_quality)


def _phashes(data: bytes) -> list[str]:
    """Return an image's phash from a full decode and from the small draft decode that ingest hashes."""
    # ingest hashes a JPEG decoded at a small DCT scale (fast); planted near-duplicates are checked that way
    # too, as well as on a full decode.
    hashes = []
    for draft in (None, HASH_DRAFT_SIZE):
        with Image.open(io.BytesIO(data)) as image:
            if draft is not None:
                image.draft("RGB", (draft, draft))
            hashes.append(hash_image(image.convert("RGB")))
    return hashes


def phash_distance(first: bytes, second: bytes) -> int:
    """Return the larger phash distance between two encoded images over both decodes in ``_phashes``."""
    return max(hash_distance(a, b) for a, b in zip(_phashes(first), _phashes(second), strict=True))


def _near_duplicate_scales(original: bytes, min_side: int) -> list[float]:
    """Return the resize factors to try for a near-duplicate, the first ~90%, none shrinking below ``min_side``.

    A 90% resize moves a full-decode hash by <= 2 bits, but a draft-decode hash (what ingest computes) by
    5-6 bits in ~1% of images: a milder resize, then a plain re-encode, keep the contract for any seed.
    """
    with Image.open(io.BytesIO(original)) as image:
        short = min(image.size)
    first = min(1.0, max(NEAR_DUPLICATE_SCALE, min_side / short))
    return sorted({first, max(first, 0.95), 1.0})


def plant_bytes(plant: Plant, original: bytes, quality: int, min_side: int) -> bytes:
    """Return the bytes of a planted member made from its original.

    Args:
        plant: what to plant.
        original: the original's JPEG bytes.
        quality: the JPEG quality the original was encoded at.
        min_side: no decodable member may have a side shorter than this (``SyntheticConfig.min_side``).

    Raises:
        RuntimeError: no variant stayed within ``NEAR_DUPLICATE_MAX_BITS`` of its original (a bug in the
            generator: the audit tests rely on this bound).
    """
    if plant.kind == "exact":
        return original
    if plant.kind == "near":
        for scale in _near_duplicate_scales(original, min_side):
            variant = near_duplicate(original, quality, scale)
            if phash_distance(original, variant) <= NEAR_DUPLICATE_MAX_BITS:
                return variant
        raise RuntimeError(f"no near-duplicate of {plant} within {NEAR_DUPLICATE_MAX_BITS} phash bits")
    if plant.kind == "truncated":
        # Cut mid-scan: the header parses, so only a full decode notices, as with a broken download.
        return original[: len(original) // 2]
    if plant.kind == "empty":
        return b""
    return _TEXT_BODY


# --- the archive --------------------------------------------------------------------------------------------


def _zip_info(name: str) -> zipfile.ZipInfo:
    """Return a member header with every field fixed, so the archive bytes depend on content only."""
    info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
    info.compress_type = zipfile.ZIP_STORED  # JPEGs do not compress; storing is faster and exact
    info.create_system = _ZIP_UNIX
    info.external_attr = _ZIP_ATTR
    return info


def _worker_count(requested: int | None, n_images: int) -> int:
    """Return how many processes to render with: 1 for small jobs, else the CPUs this process may use."""
    if requested is not None:
        return max(1, requested)
    if n_images < _MIN_IMAGES_FOR_POOL:
        return 1
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        available = os.cpu_count() or 1
    return max(1, available)


def _rendered(specs: Sequence[ImageSpec], workers: int) -> Iterator[tuple[bytes, int]]:
    """Yield rendered originals in ``specs`` order, serially or from a process pool."""
    if workers == 1:
        yield from map(render_image, specs)
        return
    # spawn, not fork: the caller may be a threaded Prefect worker, and forking a threaded process can
    # leave a lock held forever in the child. An ordered imap keeps the output identical to serial.
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield from pool.imap(_render_task, specs, chunksize=_CHUNKSIZE)


def _check_classes(classes: list[str]) -> None:
    """Refuse class lists the generator cannot draw or name as Kaggle does."""
    if len(classes) > MAX_CLASSES:
        raise ConfigError(
            f"data.synthetic supports at most {MAX_CLASSES} classes ({', '.join(FAMILIES)}), got {len(classes)}: "
            "shorten data.classes"
        )
    if len(classes) < 2:
        raise ConfigError(f"data.synthetic needs at least 2 classes, got {classes}: extend data.classes")
    for name in classes:
        # Kaggle's labels are the text before the first dot of the file name, so a name cannot hold one.
        if not _CLASS_NAME.fullmatch(name):
            raise ConfigError(f"class name {name!r} must be letters, digits, '_' or '-' for data.source synthetic")


def generate_synthetic(
    cfg: SyntheticConfig, classes: list[str], archive_path: Path, *, workers: int | None = None
) -> dict[str, Any]:
    """Write the synthetic dataset as a zip in Kaggle's train.zip layout, atomically.

    Members are ``train/<class>.<N>.jpg``: N = 0..per_class-1 are originals, then each class's planted
    extras follow with the next numbers. Members are written class by class in number order.

    Args:
        cfg: the synthetic section of params.
        classes: class names, in label order; class k is drawn from shape family ``FAMILIES[k]``.
        archive_path: where the zip must appear.
        workers: processes to render with; None picks 1 for small jobs, else one per available CPU.
            The bytes are the same whatever the count.

    Returns:
        Provenance for SOURCE.json: generator, version, seed, per_class, classes, member count, and the
        planted members as sorted ``[original, copy]`` / ``[member, kind]`` pairs.

    Raises:
        ConfigError: fewer than 2 or more than ``MAX_CLASSES`` classes, or a class name with a dot or slash.
    """
    _check_classes(classes)
    n_classes = len(classes)
    plants = plan_plants(cfg, n_classes)
    needed = {(p.class_index, p.source_number) for p in plants}
    extras: dict[int, list[Plant]] = {
        k: sorted((p for p in plants if p.class_index == k), key=lambda p: p.number) for k in range(n_classes)
    }
    specs = [
        ImageSpec(cfg.seed, k, n, n_classes, cfg.min_side, cfg.max_side)
        for k in range(n_classes)
        for n in range(cfg.per_class)
    ]
    n_workers = _worker_count(workers, len(specs))
    log.info("rendering %d synthetic images for %s with %d process(es)", len(specs), classes, n_workers)
    kept: dict[tuple[int, int], tuple[bytes, int]] = {}
    with (
        contextlib.closing(_rendered(specs, n_workers)) as rendered,
        atomic_path(Path(archive_path)) as tmp,
        zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as archive,
    ):
        for k, name in enumerate(classes):
            for n in range(cfg.per_class):
                data, quality = next(rendered)
                if (k, n) in needed:
                    kept[(k, n)] = (data, quality)
                archive.writestr(_zip_info(member_name(name, n)), data)
            # Every original a plant needs precedes it: planted originals of class k were kept above.
            for plant in extras[k]:
                data = plant_bytes(plant, *kept[(k, plant.source_number)], cfg.min_side)
                archive.writestr(_zip_info(member_name(name, plant.number)), data)
    provenance = _provenance(cfg, classes, plants)
    log.info("wrote %s: %d members", archive_path, provenance["members"])
    return provenance


def _provenance(cfg: SyntheticConfig, classes: list[str], plants: list[Plant]) -> dict[str, Any]:
    """Return the JSON-friendly record of what was generated and planted."""

    def pair(plant: Plant) -> list[str]:
        name = classes[plant.class_index]
        return [member_name(name, plant.source_number), member_name(name, plant.number)]

    return {
        "generator": GENERATOR,
        "generator_version": GENERATOR_VERSION,
        "seed": cfg.seed,
        "per_class": cfg.per_class,
        "classes": list(classes),
        "families": list(FAMILIES[: len(classes)]),
        "members": len(classes) * cfg.per_class + len(plants),
        "planted": {
            "exact_duplicates": sorted(pair(p) for p in plants if p.kind == "exact"),
            "near_duplicates": sorted(pair(p) for p in plants if p.kind == "near"),
            "corrupt": sorted(
                [member_name(classes[p.class_index], p.number), p.kind] for p in plants if p.kind in CORRUPT_KINDS
            ),
        },
    }
