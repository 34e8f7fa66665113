"""Keras callbacks of the train stage: the best epoch kept in memory, dvclive curves, one log line an epoch."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np

logger = logging.getLogger(__name__)


class BestEpoch(keras.callbacks.Callback):
    """Keep the weights and optimizer state of the epoch with the lowest finite ``val_loss``, in memory.

    What ``ModelCheckpoint(save_best_only=True)`` gives, without writing the whole model to disk at every
    improvement: a VGG16 model is a 60 MB ``.keras`` file, and early epochs improve nearly every time. The
    caller saves once, after :meth:`restore`. A snapshot costs one copy of the variables in memory.
    """

    def __init__(self, monitor: str = "val_loss") -> None:
        """Watch ``monitor`` (lower is better)."""
        super().__init__()
        self.monitor = monitor
        self.best = math.inf
        self.best_epoch: int | None = None
        self._weights: list[np.ndarray] = []
        self._optimizer: list[np.ndarray] = []

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        """Snapshot the model when ``monitor`` improved (NaN and inf never do)."""
        value = (logs or {}).get(self.monitor)
        if value is None or not math.isfinite(value) or value >= self.best:
            return
        self.best, self.best_epoch = float(value), epoch
        # Copies: a backend may hand out a view of the variable's buffer, which the next step overwrites.
        self._weights = [np.array(weight, copy=True) for weight in self.model.get_weights()]
        self._optimizer = [np.array(keras.ops.convert_to_numpy(v), copy=True) for v in self._optimizer_variables()]

    def restore(self) -> bool:
        """Put the best epoch's weights and optimizer state back; False when no epoch had a finite value."""
        if self.best_epoch is None:
            return False
        self.model.set_weights(self._weights)
        for variable, value in zip(self._optimizer_variables(), self._optimizer, strict=True):
            variable.assign(value)
        return True

    def _optimizer_variables(self) -> list[Any]:
        optimizer = getattr(self.model, "optimizer", None)
        return list(optimizer.variables) if optimizer is not None else []


class LiveCallback(keras.callbacks.Callback):
    """Send each epoch's metrics to dvclive (``train/loss``, ``val/accuracy``, ...) on every backend.

    ``dvclive.keras.DVCLiveCallback`` subclasses ``tf.keras.callbacks.Callback`` and so needs TensorFlow.
    """

    def __init__(self, live: Any) -> None:
        """Wrap an open ``dvclive.Live``."""
        super().__init__()
        self._live = live

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        """Log the epoch's metrics and advance the step."""
        for name, value in sorted((logs or {}).items()):
            split, metric = ("val", name[4:]) if name.startswith("val_") else ("train", name)
            self._live.log_metric(f"{split}/{metric}", float(value))
        self._live.next_step()


class EpochLogger(keras.callbacks.Callback):
    """Log one line per epoch (``fit`` runs with ``verbose=0``: the library never prints)."""

    def __init__(self, variant: str, epochs: int) -> None:
        """Name the run in each line."""
        super().__init__()
        self._variant = variant
        self._epochs = epochs

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        """Log the epoch's metrics."""
        metrics = " ".join(f"{name}={value:.4f}" for name, value in sorted((logs or {}).items()))
        logger.info("%s epoch %d/%d %s", self._variant, epoch + 1, self._epochs, metrics)


class EpochProgress(keras.callbacks.Callback):
    """Call ``progress(1)`` after each epoch (the CLI's progress bar counts epochs)."""

    def __init__(self, progress: Callable[[int], None]) -> None:
        """Wrap the progress callback."""
        super().__init__()
        self._progress = progress

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        """Advance by one epoch."""
        self._progress(1)


def open_live(directory: Path) -> Any:
    """Return a ``dvclive.Live`` writing curves to ``directory`` that never edits dvc.yaml or makes experiments.

    Outside a DVC pipeline (no ``DVC_ROOT``: tests, a notebook, a direct CLI call) stock ``Live`` looks for a
    DVC repo and, finding only a Git one, runs ``dvc init`` in it (and crashes in a Git repo without commits);
    so it talks to DVC only when DVC started us. The curves (``plots/metrics/**.tsv``, ``metrics.json``) are
    the same either way.
    """
    from dvclive import Live  # imported here: only the train stage needs it, and it pulls in DVC

    class _StageLive(Live):
        def _init_dvc(self) -> None:
            if not os.environ.get("DVC_ROOT"):
                self._dvc_file = self._init_dvc_file()
                return
            try:
                super()._init_dvc()
            except Exception as error:  # the curves matter more than DVC's bookkeeping
                logger.warning("dvclive could not attach to the DVC repo (%s); writing curves only", error)
                self._dvc_repo = None
                self._dvc_file = self._init_dvc_file()

    return _StageLive(str(directory), dvcyaml=False, save_dvc_exp=False, report=None)
