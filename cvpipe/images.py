"""Image decoding shared by the ingest and decode stages: one way to open, orient, convert and resize.

Resize policy (the only one in cvpipe): JPEGs are first decoded at the smallest DCT scale that is still at
least the target size on both sides (Pillow's ``draft``, libjpeg's scaled decode: far less work than a full
decode), then EXIF orientation is applied, the image is converted to RGB, and squashed to size x size with
Pillow's antialiased BILINEAR filter. Squashing (no crop, no padding) matches what the seed's
``image_dataset_from_directory(image_size=(180, 180))`` does; the filter differs slightly from TF's
non-antialiased bilinear (about 3.7 grey levels on average), which is why every stage uses this function.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps

# Decompression-bomb protection is ours (ingest.max_pixels checked on the header before decoding), so
# Pillow's global limit is lifted rather than raising from deep inside a worker.
Image.MAX_IMAGE_PIXELS = None

_WHITE = (255, 255, 255)


def open_image(data: bytes) -> Image.Image:
    """Open image bytes lazily (header only; pixels are decoded on ``load``)."""
    return Image.open(io.BytesIO(data))


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB.

    Transparent images are composited on white (not on black, which a plain convert would do), and
    16/32-bit greyscale is rescaled to 0-255 instead of being clipped.
    """
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        peak = array.max() if array.size and array.max() > 0 else 1.0
        scaled = np.clip(array * (255.0 / peak), 0, 255).astype(np.uint8)
        return Image.fromarray(scaled, mode="L").convert("RGB")
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    if has_alpha:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns that palette transparency goes through RGBA
            rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_WHITE, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def decode_oriented(data: bytes, draft_size: int | None = None) -> Image.Image:
    """Decode image bytes fully, upright and in RGB.

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


def load_rgb(data: bytes, size: int) -> np.ndarray:
    """Decode, orient and squash an image to a ``size x size x 3`` uint8 array (the cache's format)."""
    image = decode_oriented(data, draft_size=size)
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)
