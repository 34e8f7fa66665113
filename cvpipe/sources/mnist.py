"""Where the MNIST experiment (the seed's section 8.1) gets its digits: Keras's own file, a local file, or drawn.

Three sources, one result (:class:`MnistData`: uint8 images N x 28 x 28 and labels 0-9, train and test):

* ``keras``: the file ``keras.datasets.mnist.load_data()`` reads, fetched the way it fetches it
  (``keras.utils.get_file`` with the same origin, name and published sha256, into the Keras cache,
  ``$KERAS_HOME/datasets``), so a machine that ran ``load_data`` once reuses its copy. We make that call
  ourselves, not ``load_data``, to learn the file's path: its sha256 goes into the lineage record.
* ``local``: Keras's ``.npz`` layout (``x_train, y_train, x_test, y_test``) or a folder holding the four original
  IDX files (``train-images-idx3-ubyte.gz`` ... ``t10k-labels-idx1-ubyte.gz``; uncompressed ones too).
* ``synthetic``: handwriting-like digits drawn here (:func:`synthetic_digits`), for ``make demo`` and tests
  offline. Each digit is a few strokes (polylines, smoothed), bent by a random affine map and per-point jitter,
  drawn with a random pen at 4x and box-downsampled to 28 x 28, as MNIST's 20 x 20 box inside a 28 x 28 frame.
  Strokes rather than a font, so that no font file decides the bytes (Pillow's default font changed between
  releases); code in cvpipe rather than scikit-learn's digits, which is a dev dependency only. A small convnet
  tells these apart well (the demo's MNIST accuracy is ~0.95 or more), which is the point: the stages run, the
  numbers are not MNIST's.

Every source is validated the same way (:func:`validate`): shapes, dtype, label range, counts, every digit
present. A bad file fails with one line naming the file and what is wrong (:class:`MnistFileError`).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from cvpipe.config import MnistConfig, MnistSyntheticConfig
from cvpipe.errors import SourceError
from cvpipe.io import sha256_bytes, sha256_file

log = logging.getLogger(__name__)

SIDE = 28
CLASSES: tuple[str, ...] = tuple(str(digit) for digit in range(10))
NPZ_MEMBERS: tuple[str, ...] = ("x_train", "y_train", "x_test", "y_test")
# keras.datasets.mnist.load_data's own file (keras 3.x: keras/src/datasets/mnist.py): origin, name and hash.
KERAS_ORIGIN = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"
KERAS_FILE = "mnist.npz"
KERAS_SHA256 = "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"
# The four files of yann.lecun.com/exdb/mnist, by the arrays they hold.
IDX_FILES: dict[str, str] = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
_IDX_UBYTE = 0x08  # IDX type code of unsigned bytes, the only one MNIST uses
GENERATOR = "cvpipe.mnist.synthetic"
# Bump when the drawing changes: the same seed then gives other bytes, and the summary says why.
GENERATOR_VERSION = 1


class MnistFileError(SourceError):
    """An MNIST source that cannot be read as MNIST: the message names the file and what is wrong."""


@dataclass(frozen=True)
class MnistData:
    """The four arrays: uint8 images N x 28 x 28 and uint8 labels 0-9, for train and test."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(images, labels) of ``train`` or ``test``."""
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")


@dataclass(frozen=True)
class MnistSource:
    """Where the digits came from: the kind, the file(s) and their sha256, or the generator and its seed."""

    source: str
    """``keras``, ``local`` or ``synthetic``."""
    path: str | None
    """The file or folder read (for ``keras``, the copy in the Keras cache); None for ``synthetic``."""
    sha256: str | None
    """The file's sha256 (``.npz``); for a folder of IDX files, the sha256 of their four sha256 lines
    (``<hash>  <name>``, as ``sha256sum`` prints them, in train-images, train-labels, t10k-images, t10k-labels
    order); for ``synthetic``, of the four arrays' bytes in that order."""
    files: dict[str, str] = field(default_factory=dict)
    """Each file read -> its sha256."""
    generator: dict[str, Any] | None = None
    """For ``synthetic``: generator name, version, seed and sizes."""


def load_source(cfg: MnistConfig) -> tuple[MnistData, MnistSource]:
    """Read (or fetch, or draw) the digits ``cfg`` names, validated.

    Raises:
        MnistFileError: the file is not MNIST (shape, dtype, labels, counts, a missing member or file).
        SourceError: Keras's copy could not be fetched (offline); the message says how to use a local file.
    """
    if cfg.source == "synthetic":
        data = synthetic_digits(cfg.synthetic)
        validate(data, "synthetic digits")
        return data, MnistSource("synthetic", None, arrays_sha256(data), generator=_generator(cfg.synthetic))
    path = fetch_keras() if cfg.source == "keras" else Path(str(cfg.path))
    data, files = load_path(path)
    sha = next(iter(files.values())) if len(files) == 1 else _combined_sha256(files)
    return data, MnistSource(cfg.source, str(path), sha, files)


def load_path(path: Path) -> tuple[MnistData, dict[str, str]]:
    """Read a Keras-layout ``.npz`` or a folder of the four IDX files, validated; with each file's sha256.

    Raises:
        MnistFileError: missing, unreadable, or not MNIST.
    """
    path = Path(path)
    if path.is_dir():
        data, files = load_idx_folder(path), _idx_paths(path)
    elif path.is_file():
        data, files = load_npz(path), [path]
    else:
        raise MnistFileError(f"{path}: no such file or folder (mnist.path: a .npz or a folder of the 4 IDX files)")
    validate(data, str(path))
    return data, {file.name: sha256_file(file) for file in files}


def load_npz(path: Path) -> MnistData:
    """Read Keras's ``mnist.npz`` layout (``x_train, y_train, x_test, y_test``), not yet validated.

    Raises:
        MnistFileError: not an ``.npz``, a member missing, or an object array.
    """
    try:
        with np.load(path, allow_pickle=False) as archive:
            if not hasattr(archive, "files"):
                raise MnistFileError(f"{path}: a single .npy array, not an .npz with {', '.join(NPZ_MEMBERS)}")
            missing = [name for name in NPZ_MEMBERS if name not in archive.files]
            if missing:
                raise MnistFileError(
                    f"{path}: missing member {', '.join(missing)} (an MNIST .npz holds {', '.join(NPZ_MEMBERS)})"
                )
            return MnistData(*(np.asarray(archive[name]) for name in NPZ_MEMBERS))
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise MnistFileError(f"{path}: not a readable .npz ({_reason(error)})") from None


def load_idx_folder(folder: Path) -> MnistData:
    """Read the four IDX files (gzipped or not) from ``folder``, not yet validated.

    Raises:
        MnistFileError: a file is missing, truncated, or not an unsigned-byte IDX file of the right rank.
    """
    paths = _idx_paths(folder)
    arrays = [
        read_idx(path, ndim=3 if name.startswith("x_") else 1) for name, path in zip(IDX_FILES, paths, strict=True)
    ]
    return MnistData(*arrays)


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read one IDX file (``.gz`` or plain): magic ``0 0 0x08 ndim``, big-endian sizes, then the bytes.

    Raises:
        MnistFileError: truncated, a bad header, or not ``ndim`` dimensions.
    """
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise MnistFileError(f"{path}: cannot be read ({_reason(error)}); is it truncated?") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise MnistFileError(f"{path}: not an IDX file (its first bytes are not the IDX magic 00 00 08 0N)")
    if raw[2] != _IDX_UBYTE or raw[3] != ndim:
        raise MnistFileError(
            f"{path}: an IDX file of type 0x{raw[2]:02x} with {raw[3]} dimension(s); MNIST's has type 0x08 with {ndim}"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise MnistFileError(f"{path}: truncated IDX header ({len(raw)} bytes)")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = math.prod(shape)
    if len(raw) - header != expected:
        what = "truncated" if len(raw) - header < expected else "longer than its header says"
        raise MnistFileError(f"{path}: {what}: header says {shape} ({expected} bytes), {len(raw) - header} present")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def validate(data: MnistData, origin: str) -> None:
    """Check the four arrays are MNIST's kind: N x 28 x 28 uint8 images, N labels 0-9, every digit present.

    Raises:
        MnistFileError: one line naming ``origin``, the array and what is wrong.
    """
    for split in ("train", "test"):
        images, labels = data.split(split)
        if images.ndim != 3 or images.shape[1:] != (SIDE, SIDE):
            raise MnistFileError(f"{origin}: x_{split} is {images.shape}, expected N x {SIDE} x {SIDE}")
        if images.dtype != np.uint8:
            raise MnistFileError(f"{origin}: x_{split} is {images.dtype}, expected uint8 (0-255)")
        if len(images) == 0:
            raise MnistFileError(f"{origin}: x_{split} holds no images")
        if labels.ndim != 1 or len(labels) != len(images):
            raise MnistFileError(
                f"{origin}: y_{split} is {labels.shape} for {len(images)} images, expected ({len(images)},)"
            )
        if not np.issubdtype(labels.dtype, np.integer):
            raise MnistFileError(f"{origin}: y_{split} is {labels.dtype}, expected integer labels 0-9")
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high > 9:
            raise MnistFileError(f"{origin}: y_{split} labels span {low}..{high}, expected 0..9")
        absent = sorted(set(range(10)) - set(np.unique(labels).tolist()))
        if absent:
            raise MnistFileError(f"{origin}: y_{split} has no image of digit(s) {', '.join(map(str, absent))}")


def fetch_keras() -> Path:
    """The path of Keras's ``mnist.npz`` in the Keras cache, fetched (and hash-checked) if it is not there.

    Raises:
        SourceError: the fetch failed (offline, or a body with the wrong hash, which Keras does not keep).
    """
    import keras  # here: only this source needs it

    try:
        return Path(keras.utils.get_file(fname=KERAS_FILE, origin=KERAS_ORIGIN, file_hash=KERAS_SHA256))
    except Exception as error:  # Keras raises plain Exception/ValueError for both network and hash failures
        raise SourceError(
            f"cannot fetch Keras's {KERAS_FILE} from {KERAS_ORIGIN} ({_reason(error)}); offline, put a copy in "
            "the Keras cache (~/.keras/datasets/) or set mnist.source: local and mnist.path"
        ) from None


def arrays_sha256(data: MnistData) -> str:
    """The sha256 of the four arrays' bytes (C order) in ``x_train, y_train, x_test, y_test`` order."""
    digest = hashlib.sha256()
    for name in NPZ_MEMBERS:
        digest.update(np.ascontiguousarray(getattr(data, name)).tobytes())
    return digest.hexdigest()


def write_npz(path: Path, data: MnistData) -> Path:
    """Write ``data`` as Keras's ``mnist.npz`` layout (for a local copy of the synthetic set, and tests)."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **{name: getattr(data, name) for name in NPZ_MEMBERS})
    Path(path).write_bytes(buffer.getvalue())
    return Path(path)


# -- the drawn digits ---------------------------------------------------------------------------------------------

_RENDER = 4  # drawn at 4x, then box-averaged: anti-aliased strokes like MNIST's
_BOX = 20  # MNIST's digits fit a 20 x 20 box, centred in the 28 x 28 frame


def _loop(
    cx: float, cy: float, rx: float, ry: float, start: float = 0.0, turn: float = 1.0
) -> list[tuple[float, float]]:
    """Points of an ellipse arc, from angle ``start`` (radians) over ``turn`` full turns."""
    steps = max(int(24 * turn), 4)
    angles = [start + 2 * math.pi * turn * i / steps for i in range(steps + 1)]
    return [(cx + rx * math.cos(a), cy + ry * math.sin(a)) for a in angles]


# Each digit as strokes in a unit box (x right, y down), roughly as people write them.
STROKES: dict[int, list[list[tuple[float, float]]]] = {
    0: [_loop(0.5, 0.5, 0.3, 0.45)],
    1: [[(0.32, 0.22), (0.55, 0.03), (0.55, 0.97)]],
    2: [[(0.18, 0.28), (0.3, 0.08), (0.55, 0.03), (0.78, 0.16), (0.76, 0.4), (0.18, 0.96), (0.86, 0.95)]],
    3: [
        [
            (0.18, 0.12),
            (0.5, 0.03),
            (0.78, 0.17),
            (0.72, 0.4),
            (0.42, 0.5),
            (0.76, 0.6),
            (0.82, 0.82),
            (0.5, 0.97),
            (0.16, 0.86),
        ]
    ],
    4: [[(0.66, 0.97), (0.66, 0.03), (0.12, 0.68), (0.9, 0.68)]],
    5: [[(0.82, 0.04), (0.3, 0.04), (0.24, 0.45), (0.55, 0.38), (0.8, 0.56), (0.78, 0.85), (0.48, 0.97), (0.16, 0.86)]],
    6: [
        [
            (0.74, 0.06),
            (0.45, 0.14),
            (0.24, 0.48),
            (0.24, 0.78),
            (0.5, 0.97),
            (0.76, 0.8),
            (0.72, 0.57),
            (0.46, 0.5),
            (0.25, 0.63),
        ]
    ],
    7: [[(0.14, 0.04), (0.86, 0.04), (0.38, 0.97)]],
    8: [_loop(0.5, 0.26, 0.24, 0.22, math.pi / 2), _loop(0.5, 0.71, 0.3, 0.26, -math.pi / 2)],
    9: [_loop(0.48, 0.3, 0.27, 0.26, 0.0), [(0.75, 0.3), (0.72, 0.97)]],
}


def synthetic_digits(cfg: MnistSyntheticConfig) -> MnistData:
    """Draw ``cfg.train`` + ``cfg.test`` digits, labels cycling 0-9, each from its own RNG stream.

    Image ``i`` of a split depends only on (seed, split, i), so the arrays are the same whatever the sizes
    asked for before it (for one Pillow build).
    """
    arrays = []
    for split_id, count in enumerate((cfg.train, cfg.test)):
        labels = (np.arange(count) % 10).astype(np.uint8)
        images = np.stack(
            [_draw(int(label), np.random.default_rng([cfg.seed, split_id, i])) for i, label in enumerate(labels)]
        )
        arrays += [images, labels]
    return MnistData(*arrays)


def _draw(digit: int, rng: np.random.Generator) -> np.ndarray:
    angle = rng.uniform(-0.25, 0.25)  # radians, ~+-14 degrees
    shear = rng.uniform(-0.3, 0.3)
    sx, sy = rng.uniform(0.6, 1.0), rng.uniform(0.8, 1.05)
    cos, sin = math.cos(angle), math.sin(angle)
    dx, dy = rng.uniform(-1.5, 1.5, size=2)
    scale = _BOX * _RENDER
    offset = (SIDE * _RENDER) / 2

    def place(x: float, y: float) -> tuple[float, float]:
        u, v = (x - 0.5) * sx + shear * (y - 0.5) * sy, (y - 0.5) * sy
        return (
            offset + scale * (cos * u - sin * v) + dx * _RENDER,
            offset + scale * (sin * u + cos * v) + dy * _RENDER,
        )

    canvas = Image.new("L", (SIDE * _RENDER, SIDE * _RENDER), 0)
    pen = ImageDraw.Draw(canvas)
    width = int(rng.integers(6, 12))  # 1.5-3 px at 28 x 28
    for stroke in STROKES[digit]:
        jittered = np.asarray(stroke) + rng.normal(0.0, 0.035, size=(len(stroke), 2))
        points = [place(x, y) for x, y in _smooth(jittered)]
        pen.line(points, fill=255, width=width, joint="curve")
        radius = width / 2  # round pen ends
        for x, y in (points[0], points[-1]):
            pen.ellipse((x - radius, y - radius, x + radius, y + radius), fill=255)
    return np.asarray(canvas.resize((SIDE, SIDE), Image.Resampling.BOX), dtype=np.uint8)


def _smooth(points: np.ndarray, rounds: int = 2) -> np.ndarray:
    """Chaikin's corner cutting: a polyline becomes a curve through its midpoints; the ends stay put."""
    for _ in range(rounds):
        if len(points) < 3:
            return points
        left, right = points[:-1], points[1:]
        cut = np.empty((2 * len(left), 2))
        cut[0::2], cut[1::2] = 0.75 * left + 0.25 * right, 0.25 * left + 0.75 * right
        points = np.vstack([points[:1], cut, points[-1:]])
    return points


def _generator(cfg: MnistSyntheticConfig) -> dict[str, Any]:
    return {"name": GENERATOR, "version": GENERATOR_VERSION, "seed": cfg.seed, "train": cfg.train, "test": cfg.test}


def _idx_paths(folder: Path) -> list[Path]:
    """The four IDX files in ``folder`` (``.gz`` preferred), in ``IDX_FILES`` order.

    Raises:
        MnistFileError: one is missing.
    """
    found = []
    for stem in IDX_FILES.values():
        gz, plain = folder / f"{stem}.gz", folder / stem
        if not gz.is_file() and not plain.is_file():
            raise MnistFileError(
                f"{folder}: missing {stem}.gz (an MNIST folder holds {', '.join(IDX_FILES.values())} .gz)"
            )
        found.append(gz if gz.is_file() else plain)
    return found


def _combined_sha256(files: dict[str, str]) -> str:
    lines = "".join(f"{sha}  {name}\n" for name, sha in files.items())
    return sha256_bytes(lines.encode("utf-8"))


def _reason(error: BaseException) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__
