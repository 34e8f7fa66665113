"""cvpipe.io: atomic writes, temporary files of killed writers, and a full disk (injected ENOSPC).

The real full disk (a size-limited tmpfs) is in tests/e2e/test_faults.py; these run everywhere, fast.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cvpipe import cli
from cvpipe.errors import CvpipeError, DiskFullError
from cvpipe.io import (
    atomic_path,
    disk_full_error,
    is_disk_full,
    remove_stale_temps,
    temp_path,
    write_bytes_atomic,
    write_json_atomic,
    write_parquet,
)


def enospc(path: object = None) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)


def dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(child.stdout)


def temps(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.name.startswith("."))


def test_atomic_write_appears_whole_with_umask_permissions(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "out.json"
    write_json_atomic(target, {"b": 1, "a": [1, 2]})
    assert json.loads(target.read_text()) == {"a": [1, 2], "b": 1}
    current = os.umask(0)
    os.umask(current)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~current
    assert temps(target.parent) == []


def test_nothing_is_in_place_until_the_block_ends_and_a_failure_keeps_the_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "train.npy"
    target.write_bytes(b"previous")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        assert target.read_bytes() == b"previous"
        raise RuntimeError("killed half-way")
    assert target.read_bytes() == b"previous"
    assert temps(tmp_path) == []


def test_temporary_names_are_hidden_and_name_their_writer(tmp_path: Path) -> None:
    with atomic_path(tmp_path / "train.npy") as tmp:
        assert tmp.parent == tmp_path
        assert tmp.name.startswith(f".train.npy.{os.getpid()}@") and tmp.name.endswith(".tmp")
        assert not list(tmp_path.glob("*.npy"))  # a glob over outputs never sees a temporary file


def test_temporary_files_of_dead_writers_are_removed_by_the_next_write(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    host = temp_path(target).name.split("@", 1)[1].split(".", 1)[0]
    stale = tmp_path / f".metrics.json.{dead_pid()}@{host}.abcd1234.tmp"
    live = tmp_path / f".metrics.json.{os.getppid()}@{host}.efgh5678.tmp"  # a writer that still runs
    elsewhere = tmp_path / f".metrics.json.{dead_pid()}@another-machine.ijkl9012.tmp"  # a shared folder
    other_output = tmp_path / f".report.json.{dead_pid()}@{host}.mnop3456.tmp"
    for path in (stale, live, elsewhere, other_output):
        path.write_bytes(b"partial")
    write_json_atomic(target, {"accuracy": 1.0})
    assert not stale.exists()
    assert live.exists() and elsewhere.exists() and other_output.exists()
    assert remove_stale_temps(tmp_path / "report.json") == [other_output]


def test_a_keras_style_suffix_is_kept_and_swept_too(tmp_path: Path) -> None:
    partial = temp_path(tmp_path / "scratch.keras", suffix=".partial.keras")
    assert partial.exists() and partial.name.endswith(".partial.keras")
    dead = partial.with_name(partial.name.replace(f".{os.getpid()}@", f".{dead_pid()}@"))
    partial.rename(dead)
    assert remove_stale_temps(tmp_path / "scratch.keras") == [dead]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_disk_full_mid_write_raises_one_line_and_keeps_the_previous_output(tmp_path: Path, code: int) -> None:
    target = tmp_path / "train.npy"
    target.write_bytes(b"previous")
    with pytest.raises(DiskFullError) as caught, atomic_path(target) as tmp, open(tmp, "wb") as handle:
        handle.write(b"x" * 1000)
        raise OSError(code, os.strerror(code), str(tmp))
    message = str(caught.value)
    assert "\n" not in message and caught.value.exit_code == 2
    assert message.startswith(f"no space left on device writing {target} (")
    assert "free there): free some space or move the workspace to a larger disk, then rerun" in message
    assert target.read_bytes() == b"previous"
    assert temps(tmp_path) == []


def test_disk_full_creating_the_temporary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*args: object, **kwargs: object) -> None:
        raise enospc()

    monkeypatch.setattr("cvpipe.io.tempfile.mkstemp", full)
    with pytest.raises(DiskFullError, match="no space left on device writing"):
        write_bytes_atomic(tmp_path / "a.bin", b"data")


def test_parquet_and_npy_writers_on_a_full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pyarrow writes from C++; the error it raises still carries ENOSPC (as h5py's text does)."""
    frame = pd.DataFrame({"a": range(10)})
    write_parquet(frame, tmp_path / "images.parquet")
    before = (tmp_path / "images.parquet").read_bytes()

    def full_parquet(self: pd.DataFrame, path: Path, **kwargs: object) -> None:
        Path(path).write_bytes(b"PAR1 half")
        raise OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", full_parquet)
    with pytest.raises(DiskFullError):
        write_parquet(frame, tmp_path / "images.parquet")
    assert (tmp_path / "images.parquet").read_bytes() == before
    with pytest.raises(DiskFullError), atomic_path(tmp_path / "test.npy") as tmp, open(tmp, "wb") as handle:
        np.save(handle, np.zeros(4))
        raise RuntimeError("writing failed") from OSError("Can't write data (errno = 28, No space left on device)")
    assert temps(tmp_path) == []


def test_other_errors_pass_through_unchanged(tmp_path: Path) -> None:
    with pytest.raises(PermissionError), atomic_path(tmp_path / "a.bin"):
        raise PermissionError(errno.EACCES, "denied")
    with pytest.raises(CvpipeError, match=r"^inner$"), atomic_path(tmp_path / "b.bin"):
        raise CvpipeError("inner")
    assert temps(tmp_path) == []


def test_is_disk_full_follows_the_exception_chain() -> None:
    assert is_disk_full(enospc())
    assert not is_disk_full(OSError(errno.EACCES, "denied"))
    try:
        try:
            raise enospc("/data/x")
        except OSError as error:
            raise RuntimeError("worker failed") from error
    except RuntimeError as wrapped:
        assert is_disk_full(wrapped)
    assert "no space left on device:" in str(disk_full_error(None))


def test_cli_maps_a_full_disk_anywhere_to_exit_2_and_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A library that hits ENOSPC outside cvpipe.io (Keras saving a checkpoint, dvclive) gets the same line."""

    def full(path: Path) -> None:
        raise RuntimeError("save failed") from enospc(str(tmp_path / "models" / "m.keras"))

    monkeypatch.setattr(cli.core, "load_params", full)
    assert cli.main(["check", "--params", str(tmp_path / "p.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: no space left on device writing {tmp_path / 'models' / 'm.keras'} (")
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_read_json_reads_a_file_and_gives_none_for_a_missing_or_corrupt_one(tmp_path: Path) -> None:
    from cvpipe.io import read_json

    (tmp_path / "ok.json").write_text('{"a": [1, 2]}')
    (tmp_path / "bad.json").write_text("{not json")
    assert read_json(tmp_path / "ok.json") == {"a": [1, 2]}
    assert read_json(tmp_path / "bad.json") is None and read_json(tmp_path / "missing.json") is None
