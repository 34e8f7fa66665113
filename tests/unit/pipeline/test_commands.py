"""Subprocesses: DVC's argv, line streaming in order, and a timeout that kills the whole process tree."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import psutil
import pytest

from cvpipe.errors import CvpipeError
from cvpipe.pipeline.commands import StageTimeoutError, dvc, run_streaming, run_tool, tool_env


def test_dvc_is_this_environments_and_tools_come_first_on_the_path() -> None:
    assert dvc("repro", "x") == [sys.executable, "-m", "dvc", "repro", "x"]
    env = tool_env()
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    assert env["DVC_NO_ANALYTICS"] == "1"


def test_run_tool_failure_names_the_command_and_its_last_lines(tmp_path: Path) -> None:
    code = "import sys; print('first'); print('why it failed', file=sys.stderr); sys.exit(5)"
    with pytest.raises(CvpipeError, match=r"failed in .* \(exit 5\): why it failed"):
        run_tool([sys.executable, "-c", code], tmp_path)
    assert run_tool([sys.executable, "-c", code], tmp_path, check=False).returncode == 5


def test_run_streaming_hands_over_lines_in_order(tmp_path: Path) -> None:
    code = "import sys; print('out 1'); print('err 2', file=sys.stderr, flush=True); print('out 3'); sys.exit(4)"
    lines: list[str] = []
    returncode = run_streaming([sys.executable, "-u", "-c", code], tmp_path, dict(os.environ), lines.append)
    assert returncode == 4
    assert lines == ["out 1", "err 2", "out 3"]


def test_run_streaming_timeout_kills_the_whole_process_tree(tmp_path: Path) -> None:
    # A parent that starts a silent grandchild, as DVC starts a stage command.
    pid_file = tmp_path / "child.pid"
    code = (
        "import subprocess, sys, time\n"
        f"child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "print('started', flush=True)\n"
        "child.wait()\n"
    )
    started = time.monotonic()
    with pytest.raises(StageTimeoutError, match="limit 2"):
        run_streaming([sys.executable, "-c", code], tmp_path, dict(os.environ), lambda _line: None, timeout_s=2)
    assert time.monotonic() - started < 30
    child = int(pid_file.read_text())
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE
