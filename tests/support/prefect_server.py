"""Local Prefect servers for the tests and the benchmarks, and the few REST calls that read their results.

Two ways to get a server, both on 127.0.0.1 only:

- :func:`shared_harness`: Prefect's test harness (a temporary server and database), started once per process
  and shared by every test module that asks for it: a second harness would cost another 10-20 s of start-up.
- :func:`running_server`: a real ``prefect server start`` on a free port, for what needs a server that
  outlives one process (schedules, workers, ``serve``); it is stopped with every process registered with it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import httpx

from cvpipe.pipeline.commands import kill_tree
from tests.support.fake_kaggle import free_port

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[2]
# A loaded 2-core CI machine takes well over Prefect's default 30 s to start a server.
STARTUP_TIMEOUT_S = 180
_harness: dict[str, Any] = {}


def prefect_argv(*args: str) -> list[str]:
    """The argv of this environment's ``prefect`` CLI."""
    return [sys.executable, "-m", "prefect", *args]


def healthy(api_url: str) -> bool:
    """Whether the server behind ``api_url`` answers its health check."""
    try:
        return httpx.get(f"{api_url.rstrip('/')}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def wait_for(
    predicate: Callable[[], T],
    timeout: float,
    what: str,
    procs: Mapping[str, subprocess.Popen[str]] | None = None,
) -> T:
    """Poll ``predicate`` every second until it returns something truthy; return that.

    Raises:
        AssertionError: a process in ``procs`` exited first, or ``timeout`` seconds passed.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, proc in (procs or {}).items():
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited with {proc.returncode} while waiting for {what}")
        value = predicate()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def server_env(api_url: str, home: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a server and the CLIs, workers and flows that talk to it: local, no telemetry."""
    env = dict(os.environ if base is None else base)
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_API_URL=api_url,
        PREFECT_SERVER_UI_ENABLED="false",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        DVC_NO_ANALYTICS="1",
        PYTHONPATH=str(ROOT),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        NO_PROXY="127.0.0.1,localhost",
    )
    return env


def start_process(
    name: str, argv: list[str], env: Mapping[str, str], log_dir: Path, cwd: Path
) -> subprocess.Popen[str]:
    """Start ``argv`` with its output in ``log_dir/<name>.log``."""
    with open(log_dir / f"{name}.log", "w") as log:
        return subprocess.Popen(list(argv), env=dict(env), cwd=cwd, stdout=log, stderr=subprocess.STDOUT, text=True)


@contextlib.contextmanager
def running_server(
    scratch: Path, extra_env: Mapping[str, str] | None = None, show_logs: bool = True
) -> Iterator[tuple[str, dict[str, str], dict[str, subprocess.Popen[str]]]]:
    """``prefect server start`` on a free 127.0.0.1 port; yields (API URL, env for CLIs, processes to watch).

    Every process registered in the yielded dict (the server, and whatever the caller adds) is stopped with
    all its children on exit, the server last.

    Args:
        scratch: a folder for the server's home and the logs (``scratch/logs/<name>.log``).
        extra_env: more variables for the server and the processes started with the yielded env.
        show_logs: write the tail of each log to stderr on exit (what a failed test shows).
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {**server_env(url, scratch / "prefect-home"), **(extra_env or {})}
    log_dir = scratch / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    procs: dict[str, subprocess.Popen[str]] = {}
    try:
        argv = prefect_argv("server", "start", "--host", "127.0.0.1", "--port", str(port))
        procs["server"] = start_process("server", argv, env, log_dir, scratch)
        wait_for(lambda: healthy(url), STARTUP_TIMEOUT_S, "the Prefect server", procs)
        yield url, env, procs
    finally:
        for name in [name for name in procs if name != "server"] + ["server"]:
            if name in procs:
                kill_tree(procs[name].pid)
                procs[name].wait(timeout=30)
        for log_file in sorted(log_dir.glob("*.log")) if show_logs else []:
            tail = "".join(log_file.read_text().splitlines(True)[-15:])
            sys.stderr.write(f"--- {log_file.name} (tail) ---\n{tail}")


def shared_harness(home: Path) -> str:
    """Start Prefect's test harness once for this process (later calls reuse it); return its API URL.

    Every test module's session fixture calls this, so the modules share one harness whichever runs first;
    it stops at :func:`stop_shared_harness` (registered by the first fixture) or when the process exits.

    Args:
        home: ``PREFECT_HOME`` for the harness (used by the first call only).
    """
    if "url" in _harness:
        return str(_harness["url"])
    import pytest
    from prefect.context import refresh_global_settings_context
    from prefect.settings import get_current_settings
    from prefect.testing.utilities import prefect_test_harness

    stack = contextlib.ExitStack()
    # Closed in reverse: the harness stops, the environment is restored, then Prefect rereads its settings.
    stack.callback(refresh_global_settings_context)
    patch = pytest.MonkeyPatch()
    stack.callback(patch.undo)
    for name, value in {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": str(STARTUP_TIMEOUT_S),
    }.items():
        patch.setenv(name, value)
    refresh_global_settings_context()
    stack.enter_context(prefect_test_harness(server_startup_timeout=STARTUP_TIMEOUT_S))
    _harness.update(url=str(get_current_settings().api.url), stack=stack)
    return str(_harness["url"])


def stop_shared_harness() -> None:
    """Stop the shared harness, if it runs, and restore the environment it changed."""
    stack = _harness.pop("stack", None)
    _harness.pop("url", None)
    if stack is not None:
        stack.close()


class Api:
    """The few Prefect REST calls the tests and benchmarks read results with."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def post(self, path: str, payload: Mapping[str, Any] | None = None) -> Any:
        """POST ``payload`` to ``path`` (``/flow_runs/filter``); return the JSON answer."""
        response = httpx.post(f"{self.url}{path}", json=dict(payload or {}), timeout=30)
        response.raise_for_status()
        return response.json()

    def flow_run(self, flow_run_id: str) -> dict[str, Any]:
        """One flow run."""
        response = httpx.get(f"{self.url}/flow_runs/{flow_run_id}", timeout=30)
        response.raise_for_status()
        return dict(response.json())

    def flow_runs(self, payload: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Flow runs matching a ``/flow_runs/filter`` payload."""
        return list(self.post("/flow_runs/filter", payload))

    def task_runs(self, flow_run_id: str) -> dict[str, dict[str, Any]]:
        """The flow run's task runs by name."""
        runs = self.post("/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}})
        return {run["name"]: run for run in runs}

    def artifacts(self, flow_run_id: str) -> dict[str, dict[str, Any]]:
        """The flow run's artifacts by key."""
        found = self.post("/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}})
        return {artifact["key"]: artifact for artifact in found}

    def logs(self, flow_run_id: str) -> list[dict[str, Any]]:
        """The flow run's log records, once this process has sent its last ones."""
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=10)  # the run's last log lines are sent in the background
        return list(self.post("/logs/filter", {"logs": {"flow_run_id": {"any_": [flow_run_id]}}}))
