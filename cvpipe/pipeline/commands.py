"""Running DVC (and other tools) as subprocesses: argv, environment, line streaming, process-tree kill."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from cvpipe.errors import CvpipeError

KILL_GRACE_SECONDS = 10.0


class StageTimeoutError(TimeoutError):
    """A command ran past its time limit and was killed (Prefect marks such a task run TimedOut)."""


def dvc(*args: str) -> list[str]:
    """The argv for this environment's DVC."""
    return [sys.executable, "-m", "dvc", *args]


def tool_env() -> dict[str, str]:
    """Environment for DVC and the stage commands: this interpreter's scripts first, no telemetry."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("DVC_NO_ANALYTICS", "1")
    env.setdefault("DO_NOT_TRACK", "1")
    return env


def run_tool(args: Sequence[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command (e.g. ``dvc repro``) in ``cwd``, streaming nothing, capturing text output.

    Raises:
        CvpipeError: ``check`` and the command exited non-zero; the message has the last lines it printed.
    """
    result = subprocess.run(list(args), cwd=cwd, env=tool_env(), text=True, capture_output=True, check=False)
    if check and result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        raise CvpipeError(f"{' '.join(args)} failed in {cwd} (exit {result.returncode}): {' | '.join(tail)}")
    return result


def kill_tree(pid: int, grace_seconds: float = KILL_GRACE_SECONDS) -> None:
    """Terminate a process and all its descendants (DVC and the stage command it started), then kill."""
    import psutil  # a DVC dependency

    try:
        parent = psutil.Process(pid)
        procs = [*parent.children(recursive=True), parent]
    except psutil.NoSuchProcess:
        return
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace_seconds)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()


def run_streaming(
    argv: Sequence[str],
    cwd: Path,
    env: Mapping[str, str],
    on_line: Callable[[str], None],
    timeout_s: float | None = None,
) -> int:
    """Run a command, handing each line of its merged stdout/stderr to ``on_line`` as it comes.

    Args:
        argv: the command.
        cwd: where to run it.
        env: its whole environment.
        on_line: called with each output line (no newline).
        timeout_s: kill the command and its children after this many seconds.

    Returns:
        The exit status.

    Raises:
        StageTimeoutError: the command ran past ``timeout_s`` (it has been killed).
    """
    started = time.monotonic()
    # One stream keeps DVC's and the stage's lines in the order they were written. No new session: the
    # stage stays in the flow-run process's group, which Prefect's worker and runner kill on cancellation.
    proc = subprocess.Popen(
        list(argv),
        cwd=cwd,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        bufsize=1,
    )
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        kill_tree(proc.pid)

    # A timer, not Prefect's timeout_seconds: Prefect cannot interrupt a worker thread blocked on a pipe,
    # and it would leave DVC and the stage running.
    timer = threading.Timer(timeout_s, expire) if timeout_s else None
    try:
        if timer is not None:
            timer.daemon = True
            timer.start()
        assert proc.stdout is not None
        for line in proc.stdout:
            on_line(line.rstrip("\r\n"))
        returncode = proc.wait()
    finally:
        if timer is not None:
            timer.cancel()
            if expired.is_set():
                timer.join()  # the kill is complete (every process gone) before the caller hears of it
        if proc.poll() is None:  # interrupted (cancelled flow, exception in on_line): leave nothing running
            kill_tree(proc.pid)
        if proc.stdout is not None:
            proc.stdout.close()
    if expired.is_set():
        raise StageTimeoutError(f"killed after {time.monotonic() - started:.0f} s (limit {timeout_s:g} s)")
    return returncode
