"""decode: JPEG -> 180 x 180 RGB, cvpipe's decode stage against the seed's loader and the decode limit.

On the same Kaggle-like JPEGs (cvpipe's synthetic generator, 300-500 px, ~30 KB each), in alternating rounds,
each contender in its own process, set up and warmed before its one timed pass:

- **cvpipe**: ``cvpipe.stages.decode.decode_split`` (the decode stage's work for one split: read from the zip,
  DCT-scaled decode, orient, squash, write the .npy), a process per core.
- **seed**: one epoch of ``keras.utils.image_dataset_from_directory(image_size=(180, 180), batch_size=32)``
  over the same files extracted to class folders (full decode + bilinear resize in tf.data, AUTOTUNE).
- **decode limit**: libjpeg-turbo's DCT-scaled decode alone (no resize, no write), on every core, two ways:
  simplejpeg at the policy's scale in a process per core, and ``tf.io.decode_jpeg(ratio=...)`` in tf.data
  with AUTOTUNE (libjpeg's fast integer IDCT there, so other pixels). The first is the limit the stage is held to.

Target (issue 16): within 1.3x of the decode limit's time, wall time and CPU time both, against the simplejpeg
limit (built like the stage: processes on every core, the policy's accurate IDCT, so a loaded machine bends both
alike); the tf.data limit and the seed are reported, not judged (issue 6 asked for 2x the seed; the decode limit
alone is ~1-2x the seed here, as the load goes).

    .venv/bin/python -m bench.decode_speed [--images 2000] [--rounds 3]
"""

from __future__ import annotations

import functools
import io
import os
import time
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench import common

SIZE = 180
BATCH = 32
LIMIT_TARGET = 1.3
TARGET = f"<= {LIMIT_TARGET}x the decode limit's time"
LIMIT = "simplejpeg_dct"
_WARM_IMAGES = 64


# ------------------------------------------------------------------------------------- contenders (children)


def seed(folder: str, size: int) -> dict[str, float]:
    """The seed's loader: one epoch of ``image_dataset_from_directory``, its functions built by a first batch."""
    dataset = common.seed_dataset(folder, size, BATCH)
    common.count_batches(dataset.take(1))
    return common.measure(lambda: common.count_batches(dataset))


def tf_dct(folder: str, size: int) -> dict[str, float]:
    """The decode limit in tf.data: ``tf.io.decode_jpeg`` at the decode stage's DCT scale, nothing else."""
    import tensorflow as tf

    def dct_decode(path: Any) -> Any:
        data = tf.io.read_file(path)
        shape = tf.io.extract_jpeg_shape(data)
        short = tf.minimum(shape[0], shape[1])
        # The largest of 1, 2, 4, 8 that keeps the short side >= size: the decode stage's DCT scale.
        branch = sum(tf.cast(short >= factor * size, tf.int32) for factor in (2, 4, 8))
        image = tf.switch_case(
            branch, [functools.partial(tf.io.decode_jpeg, data, channels=3, ratio=r) for r in (1, 2, 4, 8)]
        )
        return tf.shape(image)  # the pixels are decoded; only their shape leaves tf.data

    files = sorted(str(path) for path in Path(folder).glob("*/*.jpg"))
    limit = tf.data.Dataset.from_tensor_slices(files).map(dct_decode, num_parallel_calls=tf.data.AUTOTUNE)
    limit = limit.batch(BATCH).prefetch(tf.data.AUTOTUNE)
    common.count_batches(limit.take(1))
    return common.measure(lambda: common.count_batches(limit))


def cvpipe(archive: str, out: str, size: int) -> dict[str, float]:
    """The decode stage's work for one split, a process per core (its pool started inside the timing)."""
    from cvpipe.config import ImageConfig
    from cvpipe.stages.decode import decode_split

    members = common.image_members(Path(archive))
    cfg = ImageConfig(size=size, workers=0)
    decode_split(Path(archive), members[:_WARM_IMAGES], Path(out), cfg)  # imports and loads the decoders
    return common.measure(lambda: decode_split(Path(archive), members, Path(out), cfg))


def _dct_decode_chunk(archive_path: Path, size: int, members: Sequence[str]) -> list[int]:
    """Decode members at the policy's DCT scale with simplejpeg; nothing else (the decode limit)."""
    import simplejpeg

    from cvpipe.imaging.images import draft_scale

    sides = []
    with zipfile.ZipFile(archive_path) as archive:
        for member in members:
            data = archive.read(member)
            height, width, _, _ = simplejpeg.decode_jpeg_header(data)
            scale = draft_scale(width, height, size)
            image = simplejpeg.decode_jpeg(data, min_height=-(-height // scale), min_width=-(-width // scale))
            sides.append(min(image.shape[:2]))
    return sides


def simplejpeg_dct(archive: str, size: int) -> dict[str, float]:
    """The decode limit in processes: simplejpeg's DCT-scaled decode on every core, nothing else."""
    from cvpipe.parallel import map_chunks

    members = common.image_members(Path(archive))
    limit = functools.partial(_dct_decode_chunk, Path(archive), size)
    limit(members[:_WARM_IMAGES])
    return common.measure(lambda: map_chunks(limit, members, common.cores()))


SIDES = {"cvpipe": cvpipe, "simplejpeg_dct": simplejpeg_dct, "seed": seed, "tf_dct": tf_dct}


# ---------------------------------------------------------------------------------------------- per image


def _fresh_file_write(path: Path, rows: np.ndarray) -> None:
    """Write ``rows`` into a new file 2 MiB at a time, as a decode worker does (the page cache's first touch)."""
    path.unlink(missing_ok=True)
    flat = memoryview(rows).cast("B")
    step = 2 << 20
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        os.ftruncate(fd, len(flat))
        for offset in range(0, len(flat), step):
            os.pwrite(fd, flat[offset : offset + step], offset)
    finally:
        os.close(fd)


def per_image_costs(
    archive: Path, members: Sequence[str], size: int, scratch: Path, sample: int = 300
) -> dict[str, float]:
    """CPU milliseconds per image on one core for each step of the decode stage (best of 5 passes, thread time).

    CPU time, not wall time: on a shared machine other processes stretch wall time step by step.
    """
    import cv2
    import simplejpeg
    from PIL import Image

    from cvpipe.imaging import images
    from cvpipe.imaging.archive import ArchiveReader, locate_members

    images.load_decoders()
    table = locate_members(archive, list(members)[:: max(1, len(members) // sample)])
    with ArchiveReader(archive) as reader:
        blobs = [reader.read(member) for member in table]
        headers = [simplejpeg.decode_jpeg_header(blob) for blob in blobs]
        scales = [images.draft_scale(width, height, size) for height, width, _, _ in headers]
        sides = [(-(-height // s), -(-width // s)) for (height, width, _, _), s in zip(headers, scales, strict=True)]
        rgbx = [images._decode_plain_rgbx(blob, size).copy() for blob in blobs]
        rgb = [np.ascontiguousarray(array[..., :3]) for array in rgbx]
        rows = np.empty((len(blobs), size, size, 3), dtype=np.uint8)
        buffer = np.empty(4 * max(h * w for h, w in sides), dtype=np.uint8)

        def pillow_antialiased(data: bytes) -> object:
            image = Image.open(io.BytesIO(data))
            image.draft("RGB", (size, size))
            return image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)

        def exact_3(i: int) -> object:
            return cv2.resize(rgb[i], (size, size), dst=rows[i], interpolation=cv2.INTER_LINEAR_EXACT)

        def limit(i: int) -> object:
            return simplejpeg.decode_jpeg(blobs[i], min_height=sides[i][0], min_width=sides[i][1])

        def into_buffer(i: int) -> object:
            return simplejpeg.decode_jpeg(
                blobs[i], colorspace="RGBX", min_height=sides[i][0], min_width=sides[i][1], buffer=buffer
            )

        steps: dict[str, Callable[[int], object]] = {
            "zip read by offset (CRC checked)": lambda i: reader.read(table[i]),
            "EXIF orientation + header parse": lambda i: (images.jpeg_orientation(blobs[i]), headers[i]),
            "DCT-scaled decode, the limit's call (new RGB array)": limit,
            "DCT-scaled decode, RGBX into the reused buffer": into_buffer,
            "squash, 4 channels (RGBX -> resize -> RGB row)": lambda i: images.squash(rgbx[i], size, out=rows[i]),
            "squash, 3 channels (before)": exact_3,
            "whole load_rgb into a row": lambda i: images.load_rgb(blobs[i], size, out=rows[i]),
            "old policy: Pillow draft + antialiased BILINEAR": lambda i: pillow_antialiased(blobs[i]),
        }
        best = {name: float("inf") for name in steps}
        for _ in range(5):
            for name, step in steps.items():
                started = time.thread_time()
                for index in range(len(blobs)):
                    step(index)
                best[name] = min(best[name], (time.thread_time() - started) / len(blobs) * 1e3)
            started = time.thread_time()
            _fresh_file_write(scratch / "rows.bin", rows)
            write = (time.thread_time() - started) / len(blobs) * 1e3
            best["rows written into a new file (page cache)"] = min(
                best.get("rows written into a new file (page cache)", float("inf")), write
            )
    return best


# -------------------------------------------------------------------------------------------------- run


def run(images: int = 2000, rounds: int = 3, size: int = SIZE, cache: Path | None = None) -> list[common.Result]:
    """Measure and return the decode result row."""
    archive = common.synthetic_archive(images, cache)
    members = common.image_members(archive)
    with common.scratch("decode") as work:
        folder = common.extract_to_folders(archive, work / "folders", members)
        tf_side = {"folder": str(folder), "size": size}
        sides = {
            "cvpipe": {"archive": str(archive), "out": str(work / "train.npy"), "size": size},
            "simplejpeg_dct": {"archive": str(archive), "size": size},
            "seed": tf_side,
            "tf_dct": tf_side,
        }
        times = common.alternate("decode_speed", sides, rounds)
        costs = per_image_costs(archive, members, size, work)
    rate = {name: images / common.median(timing.wall) for name, timing in times.items()}
    cpu_ms = {name: common.median(timing.cpu) / images * 1e3 for name, timing in times.items()}
    speedup = rate["cvpipe"] / rate["seed"]
    # Judged against the limit built like the stage (processes on every core, the policy's accurate IDCT), round
    # by round: two contenders of the same shape get the same share of a loaded machine, where tf.data's many
    # threads get more than two processes do (wall time would then measure the scheduler, not the work).
    per_round = [ours / limit for ours, limit in zip(times["cvpipe"].wall, times[LIMIT].wall, strict=True)]
    to_limit = common.median(per_round)
    cpu_to_limit = cpu_ms["cvpipe"] / cpu_ms[LIMIT]
    labels = {
        "cvpipe": "cvpipe decode stage",
        "seed": "seed, image_dataset_from_directory one epoch",
        "simplejpeg_dct": f"decode limit, simplejpeg DCT-scaled decode in {common.cores()} processes",
        "tf_dct": "decode limit, tf.io.decode_jpeg(ratio) in tf.data AUTOTUNE",
    }
    details = [
        f"{images} synthetic Kaggle-like JPEGs (300-500 px, {archive.stat().st_size / images / 1024:.0f} KB "
        f"on average) -> {size}x{size}x3 uint8 on {common.cores()} cores, {rounds} alternating rounds, each "
        "contender in its own process; images/s from the median round's wall time, CPU ms/image from the median "
        "round's CPU time (all threads and processes)",
        *[
            f"{labels[name]}: {rate[name]:.0f} images/s, {cpu_ms[name]:.2f} CPU ms/image "
            f"(wall rounds: {common.runs(times[name].wall)})"
            for name in labels
        ],
        f"judged: {to_limit:.2f}x the wall time of the decode limit {LIMIT} (median of the rounds' ratios: "
        f"{common.runs(per_round, 'x')}) and {cpu_to_limit:.2f}x its CPU time (target <= {LIMIT_TARGET}x for both)",
        f"tf.data's limit (libjpeg's fast integer IDCT: not the policy's pixels; many threads, so a loaded machine "
        f"gives it a bigger share): cvpipe takes {rate['tf_dct'] / rate['cvpipe']:.2f}x its wall time and "
        f"{cpu_ms['cvpipe'] / cpu_ms['tf_dct']:.2f}x its CPU time",
        f"the seed (reported, not judged): {speedup:.2f}x its images/s on wall time, "
        f"{cpu_ms['seed'] / cpu_ms['cvpipe']:.2f}x its images per CPU-second; the decode limit alone is "
        f"{rate[LIMIT] / rate['seed']:.2f}x and {cpu_ms['seed'] / cpu_ms[LIMIT]:.2f}x",
        "one core, per image, best of 5 passes over a sample: "
        + "; ".join(f"{name} {ms:.3f} ms" for name, ms in costs.items()),
    ]
    return [
        common.Result(
            id="decode",
            what=f"JPEG -> {size}x{size} RGB for {images} Kaggle-like JPEGs",
            cvpipe=f"{rate['cvpipe']:.0f} img/s ({to_limit:.2f}x the decode limit's time)",
            seed=f"{rate['seed']:.0f} img/s",
            ratio=speedup,
            target=TARGET,
            passed=to_limit <= LIMIT_TARGET and cpu_to_limit <= LIMIT_TARGET,
            details=details,
        )
    ]


if __name__ == "__main__":
    quick = common.QUICK
    common.run_main(
        "decode",
        __doc__,
        run,
        SIDES,
        images=40 if quick else 2000,
        rounds=1 if quick else 3,
        size=32 if quick else SIZE,
    )
