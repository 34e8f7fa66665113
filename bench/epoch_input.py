"""epoch-input: feeding one training epoch (no model), after the first, from cvpipe's cache and the seed's way.

On the same Kaggle-like JPEGs, in alternating rounds, each side having already run one epoch:

- **cvpipe**: what ``cvpipe.stages.train`` hands ``fit`` for a split that fits in memory (``fit_inputs``; the seed's
  sizes always do): the decode stage's uint8 cache, read once into memory, shuffled and batched by Keras's
  array adapter (the ``tf.data`` pipeline ``fit`` builds from arrays); the cast to float32 happens in the model.
- **seed**: ``image_dataset_from_directory(image_size=(180, 180), batch_size=32)``, shuffled, which reads and
  decodes every JPEG again each epoch.

Both ``tf.data`` pipelines are consumed inside TensorFlow (``Dataset.reduce``), as ``fit`` consumes them, not
by a Python loop, whose ~1 ms a batch of eager overhead training never pays.

Target: >= 20x less time. Also shown, not judged: ``cvpipe.stages.train.ArrayBatches``, the path of a split too
large for memory (float32 batches read from the memory-mapped cache).

    .venv/bin/python bench/epoch_input.py [--images 2000] [--rounds 3]
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common

SIZE = 180
BATCH = 32
TARGET = 20.0


def seed_contenders(folder: str, size: int, batch: int) -> tuple[dict[str, Callable[[], Any]], dict[str, Any]]:
    """The seed's input pipeline, in the child process, after its first epoch."""
    dataset = common.seed_dataset(folder, size, batch)
    first = common.count_in_graph(dataset)
    return {"seed": lambda: common.count_in_graph(dataset)}, first


def _epoch(batches: Any) -> int:
    """Produce every batch of one epoch, as ``fit`` asks for them, then draw the next epoch's order."""
    count = 0
    for index in range(len(batches)):
        x, _ = batches[index]
        count += len(x)
    batches.on_epoch_end()
    return count


def cvpipe_contenders(cache: Path, labels: np.ndarray) -> dict[str, Callable[[], Any]]:
    """cvpipe's two training feeds: the in-memory array path ``fit`` takes, and ArrayBatches over the memmap."""
    # The adapter ``fit`` builds from arrays: private in Keras, but there is no public way to get the pipeline
    # ``fit`` iterates without also running a model.
    from keras.src.trainers.data_adapters import get_data_adapter

    from cvpipe.stages.train import ArrayBatches, fit_inputs

    images = np.load(cache, mmap_mode="r")
    feed = fit_inputs((images, labels), (images[:1], labels[:1]), BATCH, seed=1337, binary=True)
    in_memory = get_data_adapter(feed["x"], feed["y"], batch_size=BATCH, shuffle=True).get_tf_dataset()
    batches = ArrayBatches(images, labels, BATCH, shuffle=True, seed=1337)
    common.count_in_graph(in_memory)  # the first epoch: tf.data builds its functions; the memmap's pages come in
    _epoch(batches)
    return {"cvpipe": lambda: common.count_in_graph(in_memory), "array_batches": lambda: _epoch(batches)}


def run(images: int = 2000, rounds: int = 3, size: int = SIZE, cache: Path | None = None) -> list[common.Result]:
    """Measure and return the epoch-input result row."""
    from cvpipe.config import ImageConfig
    from cvpipe.stages.decode import decode_split

    archive = common.kaggle_like_archive(images, cache)
    members = common.image_members(archive)
    labels = common.member_labels(members)
    with common.scratch("epoch") as work:
        folder = common.extract_to_folders(archive, work / "folders", members)
        decode_split(archive, members, work / "train.npy", ImageConfig(size=size, workers=0))
        with common.Remote(
            "bench.epoch_input:seed_contenders", {"folder": str(folder), "size": size, "batch": BATCH}
        ) as seed:
            contenders = {**cvpipe_contenders(work / "train.npy", labels), "seed": seed.contender("seed")}
            times = common.alternate(contenders, rounds)
    cvpipe, seed_time = common.median(times["cvpipe"].wall), common.median(times["seed"].wall)
    batches = common.median(times["array_batches"].wall)
    ratio = seed_time / cvpipe
    cache_mb = images * size * size * 3 / 2**20
    details = [
        f"{images} images at {size}x{size}, batches of {BATCH}, shuffled, one epoch after a first one; "
        f"{common.cores()} cores, {rounds} alternating rounds, medians",
        f"cvpipe, what fit is fed: the uint8 cache ({cache_mb:.0f} MB) in memory through Keras's array adapter: "
        f"{cvpipe:.3f} s (rounds: {common.runs(times['cvpipe'].wall)}); {images / cvpipe:.0f} images/s",
        f"seed image_dataset_from_directory (float32 batches, decodes every JPEG again): {seed_time:.3f} s "
        f"(rounds: {common.runs(times['seed'].wall)}); {images / seed_time:.0f} images/s",
        f"reference, not judged: ArrayBatches (float32 batches from the memmap, the path of a split too large for "
        f"memory) {batches:.3f} s (rounds: {common.runs(times['array_batches'].wall)}), {seed_time / batches:.0f}x "
        f"less than the seed; the float32 cast writes {cache_mb * 4:.0f} MB a pass and is most of its epoch",
    ]
    return [
        common.Result.speedup(
            "epoch-input",
            f"feeding one training epoch of {images} images (no model), after the first",
            f"{cvpipe:.2f} s",
            f"{seed_time:.2f} s",
            ratio,
            TARGET,
            details,
            unit=" less time",
        )
    ]


def main() -> None:
    """Run at the sizes given on the command line (``--size 32 --images 40`` for a quick check)."""
    common.run_main("epoch-input", __doc__, run, images=2000, rounds=3, size=SIZE)


if __name__ == "__main__":
    main()
