"""Shared fixtures: small archives built on the fly (nothing is downloaded), isolated environments."""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cvpipe.config import SyntheticConfig

ROOT = Path(__file__).resolve().parents[1]
FIXED_TIME = (1980, 1, 1, 0, 0, 0)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads the developer's Kaggle credentials, sends telemetry or fetches weights from the internet."""
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    monkeypatch.setenv("DO_NOT_TRACK", "1")
    monkeypatch.setenv("CVPIPE_WEIGHTS_ORIGIN", "off")  # 'imagenet' never downloads VGG16 weights in a test
    monkeypatch.setenv("GIT_AUTHOR_NAME", "cvpipe-tests")
    monkeypatch.setenv("GIT_AUTHOR_EMAIL", "tests@cvpipe.invalid")
    monkeypatch.setenv("GIT_COMMITTER_NAME", "cvpipe-tests")
    monkeypatch.setenv("GIT_COMMITTER_EMAIL", "tests@cvpipe.invalid")


def jpeg_bytes(seed: int, size: tuple[int, int] = (120, 90), quality: int = 90, mode: str = "RGB") -> bytes:
    """A JPEG of random smooth content (distinct seeds give perceptually distinct images)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
    image = Image.fromarray(coarse, "RGB").resize(size, Image.Resampling.BICUBIC)
    if mode != "RGB":
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def image_bytes(image: Image.Image, fmt: str, **options: object) -> bytes:
    """Encode a Pillow image."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def write_zip(path: Path, members: Mapping[str, bytes], compression: int = zipfile.ZIP_STORED) -> Path:
    """Write a zip with the given members (in the given order), fixed timestamps."""
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, data in members.items():
            info = zipfile.ZipInfo(name, date_time=FIXED_TIME)
            info.compress_type = compression
            archive.writestr(info, data)
    return path


@pytest.fixture
def make_zip(tmp_path: Path) -> Callable[..., Path]:
    """Build a zip in the test's temp folder."""

    def build(members: Mapping[str, bytes], name: str = "images.zip", **kwargs: int) -> Path:
        return write_zip(tmp_path / name, members, **kwargs)

    return build


SMALL_SYNTHETIC = SyntheticConfig(per_class=60, seed=3, min_side=64, max_side=96)


@pytest.fixture(scope="session")
def synthetic_archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A small synthetic archive (60 images per class + planted items) and its provenance."""
    from cvpipe.sources.synthetic import generate_synthetic

    path = tmp_path_factory.mktemp("synthetic") / "images.zip"
    provenance = generate_synthetic(SMALL_SYNTHETIC, ["cat", "dog"], path)
    return path, provenance


def cpu_count() -> int:
    return len(os.sched_getaffinity(0))
