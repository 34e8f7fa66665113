"""The seed's five training variants, as data: one row each, in the order the walkthrough trains them.

Each row says which cache the variant reads, which builder of :data:`cvpipe.ml.models.MODEL_BUILDERS` makes
its model, which trained model it starts from, and whether it builds the VGG16 conv base from
``features.weights``. The train and evaluate stages, the CLI and ``config.VARIANTS`` read this table instead
of special-casing names.

This module imports no Keras: the CLI checks a variant's name here before anything loads TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cvpipe.errors import ConfigError

Inputs = Literal["images", "features"]
"""The cache a variant trains and is evaluated on: decoded images (uint8) or VGG16 features."""


@dataclass(frozen=True)
class Variant:
    """One training variant."""

    name: str
    inputs: Inputs
    builder: str
    """Name of its builder in :data:`cvpipe.ml.models.MODEL_BUILDERS`."""
    parent: str | None = None
    """The variant whose trained model this one starts from (``fine_tuning``: ``feature_extraction_aug``)."""
    needs_base: bool = False
    """Builds the VGG16 conv base from ``features.weights`` (a variant with a parent inherits its base)."""
    head: bool = False
    """Builds the dense head, with ``train.head_activation`` (a variant with a parent inherits its parent's)."""


VARIANTS: tuple[Variant, ...] = (
    Variant("scratch", "images", "scratch"),
    Variant("scratch_aug", "images", "scratch_aug"),
    Variant("feature_extraction", "features", "feature_extraction", head=True),
    Variant("feature_extraction_aug", "images", "feature_extraction_aug", needs_base=True, head=True),
    Variant("fine_tuning", "images", "fine_tuning", parent="feature_extraction_aug"),
)

NAMES: tuple[str, ...] = tuple(variant.name for variant in VARIANTS)

_BY_NAME = {variant.name: variant for variant in VARIANTS}


def get_variant(name: str) -> Variant:
    """Return the variant called ``name``.

    Raises:
        ConfigError: unknown name; the one-line message lists the five.
    """
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ConfigError(f"unknown training variant {name!r}; valid variants: {', '.join(NAMES)}") from None
