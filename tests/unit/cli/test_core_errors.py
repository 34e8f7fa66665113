"""Failures the user can fix that used to be ``internal error`` (exit 1), and signals (issue 15)."""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

import pandas as pd
import pytest

from cvpipe import cli


def _err(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and "internal error" not in err, err
    return err.splitlines()[-1]


def test_a_truncated_parquet_input_is_one_line_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``dvc repro --single-item`` after an input was damaged: pyarrow's error, with the file and the fix."""
    splits = tmp_path / "splits.parquet"
    pd.DataFrame({"split": ["train"], "row": [0], "member": ["a"], "label_index": [0]}).to_parquet(splits)
    splits.write_bytes(splits.read_bytes()[:100])
    (tmp_path / "p.yaml").write_text("image: {workers: 1}\n")
    argv = ["decode", "--archive", str(tmp_path / "a.zip"), "--splits", str(splits), "--out", str(tmp_path / "c")]
    argv += ["--params", str(tmp_path / "p.yaml")]
    assert cli.main(argv) == 2
    err = _err(capsys)
    assert str(splits) in err and "not a readable parquet file" in err and "dvc repro -f split" in err


def test_any_stage_reading_a_corrupt_parquet_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The split reading a truncated ``images.parquet`` (pyarrow names the file): exit 2, with the fix."""
    import pyarrow.parquet as pq

    manifest = tmp_path / "images.parquet"
    manifest.write_bytes(b"PAR1 truncated")

    def damaged(_: Path) -> None:
        pq.read_table(manifest)

    monkeypatch.setattr(cli.core, "load_params", damaged)
    assert cli.main(["check", "--params", str(tmp_path / "p.yaml")]) == 2
    err = _err(capsys)
    assert str(manifest) in err and "truncated or corrupt" in err and "dvc repro -f" in err


@pytest.mark.parametrize("code", [errno.EACCES, errno.EROFS])
def test_a_read_only_output_folder_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], code: int
) -> None:
    target = str(tmp_path / "data" / "manifest" / ".images.parquet.tmp")

    def refused(_: Path) -> None:
        raise (PermissionError if code == errno.EACCES else OSError)(code, os.strerror(code), target)

    monkeypatch.setattr(cli.core, "load_params", refused)
    assert cli.main(["check", "--params", str(tmp_path / "p.yaml")]) == 2
    err = _err(capsys)
    assert err.startswith(f"error: cannot write or read {target}: ") and "make it writable" in err


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_during_a_command_exits_128_plus_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], signum: int, code: int
) -> None:
    """typer turned Ctrl-C into a returned 130 that main dropped (exit 0: DVC committed half an output)."""

    def interrupted(_: Path) -> None:
        os.kill(os.getpid(), signum)
        raise AssertionError("the signal should have interrupted the command")

    monkeypatch.setattr(cli.core, "load_params", interrupted)
    assert cli.main(["check", "--params", str(tmp_path / "p.yaml")]) == code
    assert _err(capsys) == f"interrupted ({signal.Signals(signum).name})"
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # restored after the command


def test_typers_own_exit_codes_are_kept(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import typer

    def leave(_: Path) -> None:
        raise typer.Exit(3)

    monkeypatch.setattr(cli.core, "load_params", leave)
    assert cli.main(["check", "--params", str(tmp_path / "p.yaml")]) == 3
