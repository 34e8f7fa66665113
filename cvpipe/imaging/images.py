"""Image decoding shared by the ingest and decode stages: one way to open, orient, convert and resize.

Resize policy (the only one in cvpipe), what :func:`load_rgb` returns for ``size``:

1. **DCT-domain downscale.** A JPEG is decoded at the smallest power-of-two scale (1, 1/2, 1/4, 1/8) whose
   sides are still at least ``size``: Pillow's ``draft`` rule, libjpeg-turbo's scaled IDCT. This does most of
   the shrinking, with the low-pass filtering of the DCT, for far less work than a full decode.
2. **EXIF orientation** is applied, and the image converted to 8-bit RGB (transparency on white, 16-bit
   rescaled): :func:`to_rgb`.
3. **Squash** to ``size x size`` (no crop, no padding, as the seed's
   ``image_dataset_from_directory(image_size=(180, 180))`` squashes) with OpenCV's
   ``INTER_LINEAR_EXACT``: bilinear interpolation with half-pixel centres, the interpolation the seed's
   ``tf.image.resize`` uses, in fixed-point arithmetic that OpenCV guarantees bit-exact across CPUs and
   SIMD paths. The seed applies it to the full image (factors of 2-3 at Kaggle's 500 x 375, so it
   aliases); here step 1 has already brought the image to less than twice ``size`` on its short side.

Two decoders, one result. Plain JPEGs (YCbCr or greyscale, no EXIF rotation) go through simplejpeg, which
calls the same libjpeg-turbo with the same settings as Pillow (accurate integer IDCT, fancy upsampling) at
the same scale, straight into a NumPy array; everything else (other formats, CMYK, rotated, anything
simplejpeg refuses) goes through Pillow. Both give identical pixels for a JPEG that either can decode
(tested), so the choice never changes the cache. simplejpeg decodes to RGBX (a padding byte a pixel) and the
squash runs on four channels: OpenCV's exact resize is twice as fast there and gives the three-channel result
channel for channel (tested).

Why bilinear after the DCT downscale and not an antialiased resize: nearly the same pixels for a fraction of
the time (the measurements are in ``docs/performance.md``, "Where the stages' designs come from").
"""

from __future__ import annotations

import contextlib
import functools
import io
import struct
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
from PIL import Image, ImageOps, PngImagePlugin

# Outside ingest (which sets it to ingest.max_pixels for every frame any plugin opens: :func:`pixel_limit`),
# Pillow's global limit is lifted: decode only reads members that ingest accepted.
Image.MAX_IMAGE_PIXELS = None
# A PNG's compressed text (iTXt/zTXt: XMP, a camera's notes) may inflate to this much, as Pillow's total for all
# text chunks already does; its 1 MB default per chunk rejected photos whose pixels were fine.
PngImagePlugin.MAX_TEXT_CHUNK = PngImagePlugin.MAX_TEXT_MEMORY

# The formats cvpipe accepts; Pillow tries no other plugin. Containers that decode frames at open (ICO, ICNS),
# call out to other programs (EPS: Ghostscript) or are rarely photos (PSD, TGA, PCX, ...) are not images here.
# MPO (a JPEG with extra frames: camera and Android Ultra HDR photos; its primary image is frame 0) is opened
# by Pillow's JPEG plugin.
ACCEPTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")
# Formats whose extra frames are not animation.
STILL_MULTIFRAME_FORMATS = frozenset({"MPO"})
# Scans in a JPEG, at most: libjpeg writes 10 for a progressive colour image, mozjpeg a few more. Each scan costs
# a pass over every coefficient block: 20,000 empty scans in 0.8 MB took 20 s to decode (a scan bomb).
MAX_JPEG_SCANS = 100

_WHITE = (255, 255, 255)
_JPEG_SOI = b"\xff\xd8"
_EXIF_PREFIX = b"Exif\x00\x00"
_XMP_PREFIX = b"http://ns.adobe.com/xap/1.0/"
_ORIENTATION_TAG = 0x0112
_SHORT = 3
# Colour spaces simplejpeg's header reports that decode to RGB exactly as Pillow decodes them.
_FAST_COLORSPACES = frozenset({"YCbCr", "Gray"})
# Markers without a length field (SOI, TEM, RST0-7) and the ones after which no metadata can follow (SOS, EOI).
_STANDALONE_MARKERS = frozenset({0xD8, 0x01, *range(0xD0, 0xD8)})
_SCAN_MARKERS = frozenset({0xDA, 0xD9})
_MAX_DRAFT_SCALE = 8


def open_image(data: bytes) -> Image.Image:
    """Open image bytes lazily (header only; pixels are decoded on ``load``), in an accepted format only.

    Raises:
        PIL.UnidentifiedImageError: not an image in one of :data:`ACCEPTED_FORMATS`.
    """
    return Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)


@contextlib.contextmanager
def pixel_limit(max_pixels: int) -> Iterator[None]:
    """Within the block, Pillow refuses any image or frame of more than ``max_pixels`` pixels.

    Pillow checks every frame its plugins open, declared or embedded (an ICO's PNG frame, a TIFF page), before
    decoding it; its warning between the limit and twice the limit is raised as an error here.

    Raises:
        PIL.Image.DecompressionBombError, PIL.Image.DecompressionBombWarning: from Pillow, for such an image.
    """
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def _entropy_end(data: bytes, position: int) -> int:
    """Where the entropy-coded data from ``position`` ends: the next marker that is not a restart or stuffing."""
    while True:
        position = data.find(b"\xff", position)
        if position < 0 or position + 1 >= len(data):
            return len(data)
        following = data[position + 1]
        if following == 0x00 or 0xD0 <= following <= 0xD7 or following == 0xFF:
            position += 1 if following == 0xFF else 2
            continue
        return position


def jpeg_scans(data: bytes, stop_after: int = MAX_JPEG_SCANS) -> int:
    """The number of scans (SOS segments) in a JPEG's first image, counted up to ``stop_after + 1``.

    ``bytes.count`` gives an upper bound at C speed (a thumbnail's scans are counted too); only a file above
    ``stop_after`` by that count is walked marker by marker.
    """
    if data.count(b"\xff\xda") <= stop_after:
        return data.count(b"\xff\xda")
    position, scans = 2, 0
    while position + 4 <= len(data) and scans <= stop_after:
        if data[position] != 0xFF:
            return scans
        marker = data[position + 1]
        if marker == 0xFF:
            position += 1
        elif marker == 0xD9:
            return scans
        elif marker in _STANDALONE_MARKERS:
            position += 2
        else:
            (length,) = struct.unpack_from(">H", data, position + 2)
            position += 2 + length
            if marker == 0xDA:
                scans += 1
                position = _entropy_end(data, position)
    return scans


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB.

    Transparent images are composited on white (not on black, which a plain convert would do), and
    16/32-bit greyscale is rescaled to 0-255 instead of being clipped.
    """
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return Image.fromarray(_rescale_to_uint8(np.asarray(image)), mode="L").convert("RGB")
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    if has_alpha:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns that palette transparency goes through RGBA
            rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_WHITE, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _rescale_to_uint8(array: np.ndarray, rows: int = 256) -> np.ndarray:
    """``array * 255 / max`` clipped to uint8, as float64 arithmetic gives it, a block of rows at a time.

    A float64 copy of a 16-bit 7000 x 7000 PNG is 392 MB (1.46 GB peak with the temporaries); by blocks the
    extra memory is a few MB. The arithmetic per pixel is the same float64 arithmetic, so the bytes are too.
    """
    peak = float(array.max()) if array.size and array.max() > 0 else 1.0
    factor = 255.0 / peak
    out = np.empty(array.shape, dtype=np.uint8)
    for start in range(0, array.shape[0], rows):
        block = array[start : start + rows].astype(np.float64)
        block *= factor
        np.clip(block, 0, 255, out=block)
        out[start : start + rows] = block.astype(np.uint8)
    return out


def decode_oriented(data: bytes, draft_size: int | None = None) -> Image.Image:
    """Decode image bytes fully, upright and in RGB, with Pillow.

    Args:
        data: the encoded file.
        draft_size: for JPEGs, decode at the smallest DCT scale whose sides are still >= this.

    Raises:
        Whatever Pillow raises for undecodable data (callers turn it into a quarantine reason).
    """
    image = open_image(data)
    if draft_size is not None and image.format == "JPEG":
        image.draft("RGB", (draft_size, draft_size))
    image.load()
    return to_rgb(ImageOps.exif_transpose(image))


def draft_scale(width: int, height: int, size: int) -> int:
    """Return the JPEG DCT scale denominator Pillow's ``draft`` picks.

    The largest of 1, 2, 4, 8 that keeps both sides >= ``size``; libjpeg rounds the scaled sides up.
    """
    fits = min(width // size, height // size)
    scale = 1
    while scale < _MAX_DRAFT_SCALE and fits >= 2 * scale:
        scale *= 2
    return scale


def _exif_orientation(tiff: bytes) -> int | None:
    """Return the Orientation tag of a TIFF block's first IFD (1 when absent), or None when unsure."""
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return None
    endian = "<" if tiff[:2] == b"II" else ">"
    magic, offset = struct.unpack_from(endian + "HI", tiff, 2)
    if magic != 42 or offset + 2 > len(tiff):
        return None
    (count,) = struct.unpack_from(endian + "H", tiff, offset)
    if offset + 2 + 12 * count > len(tiff):
        return None
    found = [
        struct.unpack_from(endian + "HHIH", tiff, offset + 2 + 12 * index)
        for index in range(count)
        if struct.unpack_from(endian + "H", tiff, offset + 2 + 12 * index)[0] == _ORIENTATION_TAG
    ]
    if not found:
        return 1
    if len(found) > 1:  # which one Pillow keeps is its business: let it decide
        return None
    _, kind, values, value = found[0]
    return value if kind == _SHORT and values == 1 else None


def jpeg_orientation(data: bytes) -> int | None:
    """Return the EXIF orientation Pillow would apply to a JPEG (1: none), or None when unsure.

    Walks the marker segments up to the first scan. None (the caller then lets Pillow decide) for anything
    this short parser does not model exactly as Pillow does: several EXIF blocks (Pillow joins them), XMP
    (Pillow reads an orientation from it when EXIF has none), malformed segments.
    """
    if not data.startswith(_JPEG_SOI):
        return None
    position, end = 2, len(data)
    exif: bytes | None = None
    while position + 4 <= end:
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in _SCAN_MARKERS:
            break
        if marker in _STANDALONE_MARKERS:
            position += 2
            continue
        (length,) = struct.unpack_from(">H", data, position + 2)
        segment = data[position + 4 : position + 2 + length]
        if length < 2 or position + 2 + length > end:
            return None
        if marker == 0xE1 and segment.startswith(_XMP_PREFIX):
            return None
        if marker == 0xE1 and segment.startswith(_EXIF_PREFIX):
            if exif is not None:
                return None
            exif = segment[len(_EXIF_PREFIX) :]
        position += 2 + length
    else:
        return None  # ran off the end before a scan: let Pillow report it
    return 1 if exif is None else _exif_orientation(exif)


@functools.cache
def _simplejpeg() -> Any:
    """Import simplejpeg on first use (ingest, which only hashes, never needs it)."""
    import simplejpeg

    return simplejpeg


@functools.cache
def _cv2() -> Any:
    """Import OpenCV on first use, single-threaded.

    Callers parallelise over images with processes; OpenCV's own thread pool in every worker would only
    oversubscribe the cores. The setting is process-wide, and cvpipe has no other OpenCV user.
    """
    import cv2

    cv2.setNumThreads(1)
    return cv2


def load_decoders() -> None:
    """Import the decoders now: a process pool forked afterwards starts with them loaded.

    Each worker would otherwise import OpenCV itself (~0.15 s of CPU), once per pool.
    """
    _simplejpeg()
    _cv2()


_buffers: dict[str, np.ndarray] = {}


def _reusable(name: str, nbytes: int) -> np.ndarray:
    """This process's reusable buffer ``name`` (flat uint8), grown to at least ``nbytes``.

    A fresh array per image (~0.3 MB) would come back from the allocator as new pages every time, and the
    kernel's page faults and zeroing cost a third as much as the decode itself.
    """
    buffer = _buffers.get(name)
    if buffer is None or buffer.nbytes < nbytes:
        buffer = _buffers[name] = np.empty(max(nbytes, 2 * (0 if buffer is None else buffer.nbytes)), dtype=np.uint8)
    return buffer


def _decode_plain_rgbx(data: bytes, size: int) -> np.ndarray | None:
    """Decode a YCbCr/greyscale JPEG without EXIF rotation at its draft scale as ``H x W x 4`` RGBX; else None.

    RGBX (the fourth byte is padding) because OpenCV's exact resize is twice as fast on four channels as on
    three; libjpeg-turbo writes the same R, G, B at the same cost. The array returned is a view of this
    process's decode buffer, valid until the next call.
    """
    if not data.startswith(_JPEG_SOI) or jpeg_orientation(data) != 1:
        return None
    simplejpeg = _simplejpeg()
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        if colorspace not in _FAST_COLORSPACES:
            return None
        scale = draft_scale(width, height, size)
        shape = (-(-height // scale), -(-width // scale), 4)
        # simplejpeg picks the smallest libjpeg-turbo scale giving at least these sides: 1/scale exactly.
        buffer = _reusable("decode", shape[0] * shape[1] * 4)
        array = simplejpeg.decode_jpeg(data, colorspace="RGBX", min_height=shape[0], min_width=shape[1], buffer=buffer)
    except ValueError:  # undecodable, or a warning in strict mode: Pillow decides (and reports) instead
        return None
    return array if array.shape == shape else None


def _decode_plain_jpeg(data: bytes, size: int) -> np.ndarray | None:
    """Decode a YCbCr/greyscale JPEG without EXIF rotation at its draft scale, as RGB; None for any other.

    The array returned views this process's decode buffer (its RGBX pixels), valid until the next call.
    """
    rgbx = _decode_plain_rgbx(data, size)
    return None if rgbx is None else rgbx[..., :3]


def squash(array: np.ndarray, size: int, out: np.ndarray | None = None) -> np.ndarray:
    """Resize an ``H x W x 3`` RGB (or ``H x W x 4`` RGBX) uint8 image to ``size x size x 3`` by the policy's bilinear.

    The result is OpenCV's ``INTER_LINEAR_EXACT`` of the RGB image, computed on four channels: that resize
    treats channels independently (bit-exact by design, and tested against the three-channel call) and its
    four-channel kernel takes half the time of the three-channel one in OpenCV's builds.

    Args:
        array: the image.
        size: the side of the result.
        out: a C-contiguous ``size x size x 3`` uint8 array to write the result into (e.g. a row of a
            batch); ``None``: a new array.
    """
    target = out if out is not None else np.empty((size, size, 3), dtype=np.uint8)
    if array.shape[:2] == (size, size):
        target[...] = array[..., :3]
        return target
    cv2 = _cv2()
    if array.shape[2] != 4:
        height, width = array.shape[:2]
        wide = _reusable("widen", height * width * 4)[: height * width * 4].reshape(height, width, 4)
        array = cv2.cvtColor(np.ascontiguousarray(array), cv2.COLOR_RGB2RGBA, dst=wide)
    small = _reusable("squash", size * size * 4)[: size * size * 4].reshape(size, size, 4)
    resized = cv2.resize(np.ascontiguousarray(array), (size, size), dst=small, interpolation=cv2.INTER_LINEAR_EXACT)
    narrowed = cv2.cvtColor(resized, cv2.COLOR_RGBA2RGB, dst=target)
    if narrowed is not target:  # OpenCV writes into dst when it fits; never rely on it silently
        target[...] = narrowed
    return target


def load_rgb(data: bytes, size: int, out: np.ndarray | None = None) -> np.ndarray:
    """Decode, orient and squash an image to a ``size x size x 3`` uint8 array (the cache's format).

    Args:
        data: the encoded image.
        size: the side of the result.
        out: where to write the result (see :func:`squash`); ``None``: a new array.

    Raises:
        Whatever Pillow raises for undecodable data.
    """
    array = _decode_plain_rgbx(data, size)
    if array is None:
        array = np.asarray(decode_oriented(data, draft_size=size), dtype=np.uint8)
    return squash(array, size, out)
