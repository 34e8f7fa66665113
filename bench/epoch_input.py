"""epoch-input: feeding one training epoch (no model), after the first, from cvpipe's cache and the seed's way.

On the same Kaggle-like JPEGs, in alternating rounds, each contender in its own process, timed on the epoch
after its first:

- **cvpipe**: what ``cvpipe.stages.train`` hands ``fit`` for a split that fits in memory (``fit_inputs``; the seed's
  sizes always do): the decode stage's uint8 cache, read once into memory, shuffled and batched by Keras's
  array adapter (the ``tf.data`` pipeline ``fit`` builds from arrays); the cast to float32 happens in the model.
- **seed**: ``image_dataset_from_directory(image_size=(180, 180), batch_size=32)``, shuffled, which reads and
  decodes every JPEG again each epoch.

Both ``tf.data`` pipelines are consumed inside TensorFlow (``Dataset.reduce``), as ``fit`` consumes them, not
by a Python loop, whose ~1 ms a batch of eager overhead training never pays.

Target: >= 20x less time. Also shown, not judged: ``cvpipe.ml.arrays.ArrayBatches``, the path of a split too
large for memory (float32 batches read from the memory-mapped cache).

    .venv/bin/python -m bench.epoch_input [--images 2000] [--rounds 3]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bench import common
from cvpipe.layout import labels_file, split_file

SIZE = 180
BATCH = 32
TARGET = 20.0


# ------------------------------------------------------------------------------------- contenders (children)


def seed(folder: str, size: int) -> dict[str, float]:
    """The seed's input pipeline, timed on its second epoch."""
    dataset = common.seed_dataset(folder, size, BATCH)
    common.count_in_graph(dataset)
    return common.measure(lambda: common.count_in_graph(dataset))


def _cache(folder: str) -> tuple[np.ndarray, np.ndarray]:
    return np.load(split_file(Path(folder), "train"), mmap_mode="r"), np.load(labels_file(Path(folder), "train"))


def cvpipe(folder: str) -> dict[str, float]:
    """What ``fit`` is fed from a cache that fits in memory, timed on its second epoch."""
    # The adapter ``fit`` builds from arrays: private in Keras, but there is no public way to get the pipeline
    # ``fit`` iterates without also running a model.
    from keras.src.trainers.data_adapters import get_data_adapter

    from cvpipe.ml.arrays import fit_inputs

    images, labels = _cache(folder)
    feed = fit_inputs((images, labels), (images[:1], labels[:1]), BATCH, seed=1337, binary=True)
    in_memory = get_data_adapter(feed["x"], feed["y"], batch_size=BATCH, shuffle=True).get_tf_dataset()
    common.count_in_graph(in_memory)  # the first epoch: tf.data builds its functions
    return common.measure(lambda: common.count_in_graph(in_memory))


def array_batches(folder: str) -> dict[str, float]:
    """ArrayBatches over the memory-mapped cache (a split too large for memory), timed on its second epoch."""
    from cvpipe.ml.arrays import ArrayBatches

    batches = ArrayBatches(*_cache(folder), BATCH, shuffle=True, seed=1337)

    def epoch() -> Any:
        for index in range(len(batches)):  # every batch, as ``fit`` asks for them, then the next order
            batches[index]
        batches.on_epoch_end()

    epoch()  # the memmap's pages come in
    return common.measure(epoch)


SIDES = {"cvpipe": cvpipe, "array_batches": array_batches, "seed": seed}


# -------------------------------------------------------------------------------------------------- run


def run(images: int = 2000, rounds: int = 3, size: int = SIZE, cache: Path | None = None) -> list[common.Result]:
    """Measure and return the epoch-input result row."""
    from cvpipe.config import ImageConfig
    from cvpipe.stages.decode import decode_split

    archive = common.synthetic_archive(images, cache)
    members = common.image_members(archive)
    with common.scratch("epoch") as work:
        folder = common.extract_to_folders(archive, work / "folders", members)
        decode_split(archive, members, split_file(work, "train"), ImageConfig(size=size, workers=0))
        np.save(labels_file(work, "train"), common.member_labels(members))
        cached = {"folder": str(work)}
        sides = {"cvpipe": cached, "array_batches": cached, "seed": {"folder": str(folder), "size": size}}
        times = common.alternate("epoch_input", sides, rounds)
    cvpipe_s, seed_s = common.median(times["cvpipe"].wall), common.median(times["seed"].wall)
    batches = common.median(times["array_batches"].wall)
    ratio = seed_s / cvpipe_s
    cache_mb = images * size * size * 3 / 2**20
    details = [
        f"{images} images at {size}x{size}, batches of {BATCH}, shuffled, one epoch after a first one; "
        f"{common.cores()} cores, {rounds} alternating rounds, each contender in its own process, medians",
        f"cvpipe, what fit is fed: the uint8 cache ({cache_mb:.0f} MB) in memory through Keras's array adapter: "
        f"{cvpipe_s:.3f} s (rounds: {common.runs(times['cvpipe'].wall)}); {images / cvpipe_s:.0f} images/s",
        f"seed image_dataset_from_directory (float32 batches, decodes every JPEG again): {seed_s:.3f} s "
        f"(rounds: {common.runs(times['seed'].wall)}); {images / seed_s:.0f} images/s",
        f"reference, not judged: ArrayBatches (float32 batches from the memmap, the path of a split too large for "
        f"memory) {batches:.3f} s (rounds: {common.runs(times['array_batches'].wall)}), {seed_s / batches:.0f}x "
        f"less than the seed; the float32 cast writes {cache_mb * 4:.0f} MB a pass and is most of its epoch",
    ]
    return [
        common.Result.speedup(
            "epoch-input",
            f"feeding one training epoch of {images} images (no model), after the first",
            f"{cvpipe_s:.2f} s",
            f"{seed_s:.2f} s",
            ratio,
            TARGET,
            details,
            unit=" less time",
        )
    ]


if __name__ == "__main__":
    quick = common.QUICK
    common.run_main(
        "epoch-input",
        __doc__,
        run,
        SIDES,
        images=40 if quick else 2000,
        rounds=1 if quick else 3,
        size=32 if quick else SIZE,
    )
