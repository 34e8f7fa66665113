"""The decode policy's speed-ups change no pixel: each is held to the plain three-channel policy it replaces."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from cvpipe.imaging import images as images_module
from cvpipe.imaging.images import load_rgb, squash
from tests.conftest import image_bytes


def _reference_squash(rgb: np.ndarray, size: int) -> np.ndarray:
    """The policy as first written: OpenCV's INTER_LINEAR_EXACT on the three-channel RGB image."""
    if rgb.shape[:2] == (size, size):
        return rgb.copy()
    return cv2.resize(np.ascontiguousarray(rgb), (size, size), interpolation=cv2.INTER_LINEAR_EXACT)


def _reference_load(data: bytes, size: int) -> np.ndarray:
    """Pillow's decode at the draft scale, oriented, RGB, then the three-channel squash."""
    return _reference_squash(np.asarray(images_module.decode_oriented(data, draft_size=size), np.uint8), size)


def _texture(height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


# Down by factors below and above 2, up, one side equal, the target itself, one-pixel and odd shapes.
SHAPES = [(375, 500), (300, 400), (250, 333), (361, 359), (180, 181), (180, 180), (120, 150), (1, 1), (1, 97), (97, 2)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("size", [180, 64, 32])
def test_four_channel_squash_is_the_three_channel_resize(shape: tuple[int, int], size: int) -> None:
    rgb = _texture(*shape, seed=shape[0] * 1000 + shape[1])
    expected = _reference_squash(rgb, size)
    np.testing.assert_array_equal(squash(rgb, size), expected)
    rgbx = np.concatenate([rgb, np.full((*shape, 1), 7, np.uint8)], axis=2)  # the padding byte is ignored
    np.testing.assert_array_equal(squash(rgbx, size), expected)
    batch = np.zeros((3, size, size, 3), np.uint8)
    row = batch[1]
    assert squash(rgbx, size, out=row) is row
    np.testing.assert_array_equal(batch[1], expected)
    assert not batch[0].any() and not batch[2].any()


def _photo(width: int, height: int, seed: int, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(7, 9, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse, "RGB").resize((width, height), Image.Resampling.BICUBIC), np.int16)
    grain = rng.integers(-10, 11, size=smooth.shape, dtype=np.int16)
    return Image.fromarray(np.clip(smooth + grain, 0, 255).astype(np.uint8), "RGB").convert(mode)


def _rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return image_bytes(_photo(260, 200, 9), "JPEG", exif=exif.tobytes(), quality=90)


ENCODED = {
    "jpeg 420, scale 1/2": lambda: image_bytes(_photo(500, 375, 1), "JPEG", quality=90),
    "jpeg 444, scale 1": lambda: image_bytes(_photo(330, 250, 2), "JPEG", quality=95, subsampling=0),
    "jpeg progressive": lambda: image_bytes(_photo(480, 400, 3), "JPEG", quality=85, progressive=True),
    "jpeg greyscale": lambda: image_bytes(_photo(390, 370, 4, "L"), "JPEG", quality=90),
    "jpeg smaller than the target": lambda: image_bytes(_photo(150, 120, 5), "JPEG", quality=90),
    "jpeg CMYK (Pillow)": lambda: image_bytes(_photo(300, 220, 6, "CMYK"), "JPEG", quality=90),
    "jpeg rotated by EXIF (Pillow)": _rotated_jpeg,
    "png (Pillow)": lambda: image_bytes(_photo(211, 190, 7), "PNG"),
}


@pytest.mark.parametrize("name", sorted(ENCODED))
@pytest.mark.parametrize("size", [180, 64])
def test_load_rgb_gives_the_policys_pixels(name: str, size: int) -> None:
    data = ENCODED[name]()
    expected = _reference_load(data, size)
    np.testing.assert_array_equal(load_rgb(data, size), expected)
    row = np.empty((2, size, size, 3), np.uint8)
    load_rgb(data, size, out=row[1])
    np.testing.assert_array_equal(row[1], expected)


@pytest.mark.parametrize("name", [name for name in sorted(ENCODED) if "Pillow" not in name])
def test_rgbx_decode_is_pillows_rgb_with_padding(name: str) -> None:
    data = ENCODED[name]()
    rgbx = images_module._decode_plain_rgbx(data, 180)
    assert rgbx is not None and rgbx.shape[2] == 4, "a plain JPEG must take the fast path"
    pillow = np.asarray(images_module.decode_oriented(data, draft_size=180))
    assert rgbx.shape[:2] == pillow.shape[:2]
    np.testing.assert_array_equal(rgbx[..., :3], pillow)


def test_pillow_formats_stay_off_the_fast_path() -> None:
    for name in ("jpeg CMYK (Pillow)", "jpeg rotated by EXIF (Pillow)", "png (Pillow)"):
        assert images_module._decode_plain_rgbx(ENCODED[name](), 64) is None, name
