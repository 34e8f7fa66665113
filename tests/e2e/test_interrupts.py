"""Ctrl-C and SIGTERM (issue 15): the real CLI exits 130 / 143, and the real ``dvc repro`` commits nothing.

Before the fix, typer turned the ``KeyboardInterrupt`` into a *returned* 130 that ``cvpipe.cli.main``
dropped: the stage exited 0 and DVC recorded a decode cache holding only ``train.npy`` as complete. A
SIGTERM to the stage's PID killed it on the spot and left its pool workers blocked forever.

The instant is exact, as in ``test_faults.py``: a test-only ``sitecustomize`` adds an audit hook to the stage
process, which sends the signal when the stage is about to rename a chosen output into place (or, for the
SIGTERM case, from a worker while the pool is busy), and logs the PIDs of every process that reads the
archive (the workers included).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cvpipe.pipeline.commands import dvc, tool_env
from cvpipe.pipeline.workspace import prepare_workspace
from tests.e2e.test_dvc_pipeline import ROOT

pytestmark = pytest.mark.slow

PARAMS: dict[str, Any] = {
    "data": {"source": "synthetic", "synthetic": {"per_class": 60, "min_side": 64, "max_side": 96}},
    # 80 train images: more than cvpipe.parallel decodes in-process, so that the pool runs.
    "split": {"per_class": {"train": 40, "val": 6, "test": 10}},
    "image": {"workers": 2},
}
TIMEOUT_S = 300

HOOK = r'''"""Test-only (tests/e2e/test_interrupts.py): signal the stage at a chosen instant; log archive readers."""
import json
import os
import signal
import sys
import time

_MAIN = os.getpid()


def _install(log, before, signum, group, from_worker):
    def record(entry):
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"pid": os.getpid(), **entry}) + "\n")

    fired = []

    def hook(event, args):
        if event == "os.rename" and before and os.fspath(args[1]).endswith(before):
            record({"signal": signum, "before": before})
            if group:
                os.killpg(os.getpgrp(), signum)  # Ctrl-C: the terminal signals the whole process group
            else:
                os.kill(os.getpid(), signum)
        elif event == "open" and isinstance(args[0], (str, os.PathLike)) and os.fspath(args[0]).endswith("images.zip"):
            if os.getpid() != _MAIN:
                record({"worker": True})
                if from_worker and not fired:
                    fired.append(True)
                    os.kill(_MAIN, signum)  # `kill PID` on the stage while its workers are busy
                    time.sleep(2)

    sys.addaudithook(hook)


if os.environ.get("CVPIPE_INTERRUPT_LOG"):
    _install(
        os.environ["CVPIPE_INTERRUPT_LOG"],
        os.environ.get("CVPIPE_INTERRUPT_BEFORE", ""),
        int(os.environ.get("CVPIPE_INTERRUPT_SIGNAL", "2")),
        os.environ.get("CVPIPE_INTERRUPT_GROUP") == "1",
        os.environ.get("CVPIPE_INTERRUPT_FROM_WORKER") == "1",
    )
'''


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A workspace with download, ingest and split done; decode to be interrupted."""
    base = tmp_path_factory.mktemp("interrupts")
    (base / "hook").mkdir()
    (base / "hook" / "sitecustomize.py").write_text(HOOK, encoding="utf-8")
    ws = prepare_workspace(ROOT, base / "ws", PARAMS)
    done = subprocess.run(dvc("repro", "split"), cwd=ws, env=tool_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    yield ws


def _env(workspace: Path, log: Path, **hook: str) -> dict[str, str]:
    env = tool_env()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(workspace.parent / "hook"), env.get("PYTHONPATH")]))
    env["CVPIPE_INTERRUPT_LOG"] = str(log)
    env.update({f"CVPIPE_INTERRUPT_{key.upper()}": value for key, value in hook.items()})
    return env


def _run(argv: list[str], workspace: Path, env: dict[str, str]) -> tuple[int, str]:
    process = subprocess.Popen(
        argv,
        cwd=workspace,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"{argv} ran past {TIMEOUT_S} s:\n{output[-3000:]}")
    return process.returncode, output


def _log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(")")[-1].split()[0] != "Z"


def _workers_gone(log: Path) -> list[int]:
    """The workers of the logged run still alive after a few seconds' grace."""
    pids = {entry["pid"] for entry in _log(log) if entry.get("worker")}
    assert pids, "the hook saw no worker read the archive: the test did not exercise the pool"
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return sorted(pid for pid in pids if _alive(pid))


def _decode_locked(workspace: Path) -> bool:
    lock = workspace / "dvc.lock"
    return lock.exists() and "decode" in (yaml.safe_load(lock.read_text()) or {}).get("stages", {})


def _temporaries(workspace: Path) -> list[str]:
    return sorted(p.name for p in (workspace / "data" / "cache").rglob("*") if p.name.startswith("."))


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_the_cli_exits_128_plus_the_signal(workspace: Path, tmp_path: Path, signum: int, code: int) -> None:
    log = tmp_path / "hook.jsonl"
    env = _env(workspace, log, before="/val.npy", signal=str(int(signum)), group="1")
    argv = ["cvpipe", "decode", "--archive", "data/raw/images.zip", "--splits", "data/splits/splits.parquet"]
    returncode, output = _run([*argv, "--out", str(tmp_path / "cache")], workspace, env)
    assert any("signal" in entry for entry in _log(log)), output
    assert returncode == code, output
    assert f"interrupted ({signal.Signals(signum).name})" in output
    assert "Traceback" not in output and "internal error" not in output
    assert (tmp_path / "cache" / "train.npy").exists() and not (tmp_path / "cache" / "val.npy").exists()
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")], "a temporary file was left"
    assert _workers_gone(log) == []


def test_ctrl_c_during_dvc_repro_commits_nothing(workspace: Path, tmp_path: Path) -> None:
    """SIGINT to the process group half-way through decode: DVC reports the stage failed, dvc.lock keeps no decode."""
    log = tmp_path / "hook.jsonl"
    env = _env(workspace, log, before="/val.npy", signal=str(int(signal.SIGINT)), group="1")
    returncode, output = _run(dvc("repro", "-f", "--single-item", "decode"), workspace, env)
    assert any("signal" in entry for entry in _log(log)), output
    assert returncode != 0, output
    assert not _decode_locked(workspace), "DVC recorded the interrupted decode as done"
    assert (workspace / "data/cache/images/train.npy").exists()  # what the stage had committed when interrupted
    assert not (workspace / "data/cache/images/val.npy").exists()
    status = subprocess.run(dvc("status", "decode"), cwd=workspace, env=tool_env(), capture_output=True, text=True)
    assert "up to date" not in status.stdout, status.stdout
    assert _temporaries(workspace) == []
    assert _workers_gone(log) == []


def test_sigterm_to_the_stage_pid_leaves_no_worker_and_commits_nothing(workspace: Path, tmp_path: Path) -> None:
    """``kill PID`` (docker stop) on the stage, not its group, while its pool is busy."""
    log = tmp_path / "hook.jsonl"
    env = _env(workspace, log, signal=str(int(signal.SIGTERM)), from_worker="1")
    returncode, output = _run(dvc("repro", "-f", "--single-item", "decode"), workspace, env)
    assert returncode != 0, output
    assert "143" in output, output  # DVC names the stage command's exit code
    assert not _decode_locked(workspace)
    assert _temporaries(workspace) == []
    assert _workers_gone(log) == []
