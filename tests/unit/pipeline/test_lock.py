"""One flow run per project: the run lock, and the refusal while a ``dvc repro`` holds DVC's output lock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cvpipe.pipeline.lock import (
    DVC_RWLOCK,
    RUN_LOCK,
    ProjectBusyError,
    dvc_lock_holders,
    project_run_lock,
    refuse_if_dvc_is_busy,
)


def test_a_second_holder_of_the_run_lock_is_refused_and_told_who_holds_it(tmp_path: Path) -> None:
    first = {"pid": os.getpid(), "host": "box", "flow_run_id": "id-1", "flow_run_name": "calm-cat", "since": "t0"}
    (tmp_path / ".dvc").mkdir()  # a DVC repository; .dvc/tmp comes with the lock, as in a fresh clone
    with project_run_lock(tmp_path, first) as path:
        assert path == tmp_path / RUN_LOCK
        # flock locks belong to an open file, so a second run in this very process is refused too.
        with pytest.raises(ProjectBusyError) as refused, project_run_lock(tmp_path, {"flow_run_id": "id-2"}):
            pass
    message = str(refused.value)
    assert "another cvpipe flow run is reproducing" in message and "\n" not in message
    assert "flow run 'calm-cat' (id-1)" in message and f"process {os.getpid()} on box" in message
    with project_run_lock(tmp_path, {"flow_run_id": "id-3"}):  # released when the first run ended
        assert json.loads(path.read_text())["flow_run_id"] == "id-3"


def test_a_killed_holder_leaves_no_stale_run_lock(tmp_path: Path) -> None:
    lock = tmp_path / RUN_LOCK
    lock.parent.mkdir(parents=True)
    code = (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(lock)!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('locked', flush=True)\n"
        "time.sleep(300)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(ProjectBusyError, match="has not recorded itself"), project_run_lock(tmp_path, {}):
            pass
    finally:
        holder.kill()
        holder.wait()
    with project_run_lock(tmp_path, {"pid": os.getpid()}):
        pass


def test_dvc_lock_holders_are_the_live_processes_in_dvcs_rwlock(tmp_path: Path) -> None:
    assert dvc_lock_holders(tmp_path) == []  # no .dvc/tmp/rwlock: nobody
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    alive, dead_pid = os.getppid(), int(dead.stdout)
    rwlock = tmp_path / DVC_RWLOCK
    rwlock.parent.mkdir(parents=True)
    command = "/venv/lib/python3.11/site-packages/dvc/__main__.py repro decode"
    rwlock.write_text(
        json.dumps(
            {
                "write": {str(tmp_path / "out"): {"pid": alive, "cmd": command}},
                "read": {
                    str(tmp_path / "dep"): [{"pid": alive, "cmd": command}, {"pid": dead_pid, "cmd": "dvc repro"}]
                },
            }
        )
    )
    assert dvc_lock_holders(tmp_path) == [f"PID {alive}: dvc repro decode"]
    with pytest.raises(ProjectBusyError, match=rf"DVC is reproducing stages in .* \(PID {alive}: dvc repro decode\)"):
        refuse_if_dvc_is_busy(tmp_path)
    rwlock.write_text("{")  # DVC rewriting it this instant: no answer rather than a crash
    assert dvc_lock_holders(tmp_path) == []
    refuse_if_dvc_is_busy(tmp_path)
