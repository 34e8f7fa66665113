"""VGG16 weights files for tests, written locally in the two layouts Keras 3 reads (never downloaded)."""

from __future__ import annotations

from pathlib import Path

import h5py
import keras
import numpy as np

from cvpipe.ml.weights import load_conv_base, seed_random_weights

SIZE = 32
SHAPE = (SIZE, SIZE, 3)


def write_legacy_h5(path: Path, base: keras.Model) -> None:
    """Write ``base``'s weights in the legacy (Keras 1/2) HDF5 layout of Keras's published notop file.

    Root attribute ``layer_names`` lists every layer (input and pooling layers with an empty
    ``weight_names``), each layer is a group whose ``weight_names`` attribute names its datasets; Keras 3
    loads such a file by the order of the layers that have weights.
    """
    with h5py.File(path, "w") as handle:
        names = ["input_1"] + [layer.name for layer in base.layers[1:]]
        handle.attrs["layer_names"] = np.array([name.encode() for name in names])
        for name, layer in zip(names, base.layers, strict=True):
            group = handle.create_group(name)
            values = layer.get_weights()
            weight_names = [f"{name}_W_1:0", f"{name}_b_1:0"][: len(values)]
            group.attrs["weight_names"] = np.array([w.encode() for w in weight_names], dtype="S")
            for weight_name, value in zip(weight_names, values, strict=True):
                group.create_dataset(weight_name, data=value)


def other_weights_base(seed: int = 7) -> keras.Model:
    """A 32-pixel conv base whose weights differ from the 'none' ones."""
    base = load_conv_base("none", SHAPE)
    seed_random_weights(base, seed)
    return base
