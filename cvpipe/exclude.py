"""Images a person chose to leave out of the next split (``split.exclude``): the label audit's opt-in.

The label audit (:mod:`cvpipe.stages.label_audit`) never changes a label. Its list of suspects becomes a
split's concern only when someone copies their sha256 into ``split.exclude`` in params.yaml: DVC then reruns
the split (the key is one of its params), the lineage record keeps the list with the split's params, and
every model downstream is trained and tested without those images.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pandas as pd

log = logging.getLogger(__name__)


def excluding(manifest: pd.DataFrame, exclude: Sequence[str]) -> pd.DataFrame:
    """The manifest less every row whose sha256 is listed (all copies of an excluded image go)."""
    if not exclude:
        return manifest
    listed = {sha.lower() for sha in exclude}
    dropped = manifest["sha256"].isin(listed)
    unknown = len(listed - set(manifest["sha256"]))
    log.info("split.exclude: %d manifest row(s) left out; %d listed sha256 not in the manifest", dropped.sum(), unknown)
    return manifest[~dropped]
