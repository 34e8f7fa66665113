"""Training callbacks: the best epoch kept in memory, dvclive curves outside DVC, progress by epoch."""

from __future__ import annotations

import subprocess
from pathlib import Path

import keras
import numpy as np
import pytest

from cvpipe.ml import callbacks, models


def test_best_epoch_keeps_the_lowest_finite_val_loss_in_memory() -> None:
    model = models.dense_head((1, 1, 4), 2)
    model.compile(optimizer="rmsprop", loss="binary_crossentropy")
    x, y = np.ones((4, 1, 1, 4), np.float32), np.ones((4, 1), np.float32)
    best = callbacks.BestEpoch()
    best.set_model(model)
    assert not best.restore()  # no epoch yet
    model.fit(x, y, epochs=1, verbose=0)  # builds the optimizer's variables
    best.on_epoch_end(0, {"val_loss": float("nan")})
    best.on_epoch_end(1, {"val_loss": float("inf")})
    assert best.best_epoch is None
    kept = model.get_weights()
    best.on_epoch_end(2, {"val_loss": 0.5})
    model.fit(x, y, epochs=1, verbose=0)
    best.on_epoch_end(3, {"val_loss": 0.7})  # worse: not kept
    assert best.restore() and best.best_epoch == 2 and best.best == 0.5
    for restored, expected in zip(model.get_weights(), kept, strict=True):
        np.testing.assert_array_equal(restored, expected)
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 1


def test_live_never_initialises_dvc_in_a_plain_git_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Stock dvclive runs `dvc init` in the enclosing Git repo when it finds no DVC repo.
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    with callbacks.open_live(tmp_path / "live") as live:
        live.log_metric("train/loss", 0.5)
        live.next_step()
    assert (tmp_path / "live" / "plots" / "metrics" / "train" / "loss.tsv").is_file()
    assert not (tmp_path / ".dvc").exists() and not (tmp_path / ".dvcignore").exists()
    assert not (tmp_path / "dvc.yaml").exists()


def test_epoch_progress_counts_epochs() -> None:
    seen: list[int] = []
    progress = callbacks.EpochProgress(seen.append)
    for epoch in range(3):
        progress.on_epoch_end(epoch, {"loss": 1.0})
    assert seen == [1, 1, 1]
