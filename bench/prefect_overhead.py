"""Prefect's overhead on a night with nothing to do: a no-op scheduled run vs a no-op ``dvc repro``.

In one run, on one workspace (the real data stages download -> ingest -> split -> decode, tiny synthetic data,
already reproduced so every stage is up to date):

1. ``dvc repro decode``, a few times: DVC's own cost of finding nothing to do.
2. A local ``prefect server start`` on 127.0.0.1 and ``cvpipe flow serve --interval N``; the
   scheduled runs after the first (all stages skipped), timed by the server: running time (flow run start -> end)
   and latency (scheduled time -> end). The runner prefetches runs and starts their process a little early, so
   the latency can come out shorter than the running time.

Prints a table and writes ``bench/results/prefect-<date>.md`` with the machine and the command.

    .venv/bin/python -m bench.prefect_overhead [--runs 3] [--interval 15]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from bench import common
from cvpipe.pipeline.commands import dvc, kill_tree, run_tool, tool_env
from cvpipe.pipeline.workspace import prepare_workspace

TINY: dict[str, Any] = {
    "data": {"source": "synthetic", "synthetic": {"per_class": 40, "min_side": 64, "max_side": 96}},
    "split": {"per_class": {"train": 20, "val": 6, "test": 10}},
    "image": {"size": 32},
}
TARGET = "decode"
STARTUP_SECONDS = 180  # a loaded 2-core machine takes well over Prefect's default 30 s to start a server


def time_dvc_noop(workspace: Path, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        output = run_tool(dvc("repro", TARGET), workspace).stdout
        times.append(time.perf_counter() - started)
        assert "Running stage" not in output, "the workspace was not up to date"
    return times


def seconds_between(start: str, end: str) -> float:
    return (dt.datetime.fromisoformat(end) - dt.datetime.fromisoformat(start)).total_seconds()


def wait_for(predicate: Any, timeout: float, what: str, procs: list[subprocess.Popen[bytes]]) -> Any:
    """Poll ``predicate`` every second until it returns something truthy; fail if a process exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(proc.poll() is not None for proc in procs):
            raise RuntimeError(f"a process exited while waiting for {what}")
        with contextlib.suppress(httpx.HTTPError):
            if value := predicate():
                return value
        time.sleep(1)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


@contextlib.contextmanager
def prefect_server(scratch: Path) -> Iterator[tuple[str, dict[str, str], list[subprocess.Popen[bytes]]]]:
    """``prefect server start`` on a free 127.0.0.1 port; yields (API URL, env, processes stopped on exit)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/api"
    env = {
        **tool_env(),
        "PREFECT_HOME": str(scratch / "prefect-home"),
        "PREFECT_API_URL": url,
        "PREFECT_SERVER_UI_ENABLED": "false",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "NO_PROXY": "127.0.0.1,localhost",
    }
    argv = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with open(scratch / "server.log", "wb") as log:
        procs = [subprocess.Popen(argv, env=env, cwd=scratch, stdout=log, stderr=subprocess.STDOUT)]
    try:
        wait_for(lambda: httpx.get(f"{url}/health", timeout=2).status_code == 200, STARTUP_SECONDS, "the server", procs)
        yield url, env, procs
    finally:
        for proc in reversed(procs):  # the server last
            kill_tree(proc.pid)
            proc.wait(timeout=30)


def post(url: str, path: str, payload: dict[str, Any]) -> Any:
    response = httpx.post(f"{url}{path}", json=payload, timeout=30)
    response.raise_for_status()
    return response.json()


def scheduled_runs(workspace: Path, scratch: Path, runs: int, interval: float) -> list[dict[str, float]]:
    with prefect_server(scratch) as (url, env, procs):
        serve = [sys.executable, "-m", "cvpipe.cli", "flow", "serve", "--interval", str(interval), "--name", "bench"]
        serve += ["--project-dir", str(workspace), "--target", TARGET]
        with open(scratch / "serve.log", "wb") as log:
            procs.append(subprocess.Popen(serve, env=env, cwd=common.ROOT, stdout=log, stderr=subprocess.STDOUT))
        query = {"flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}, "sort": "EXPECTED_START_TIME_ASC"}
        done = wait_for(
            lambda: (found := post(url, "/flow_runs/filter", query)) and len(found) > runs and found,
            90 + (runs + 1) * interval * 3,
            "the scheduled runs",
            procs,
        )

        def task_seconds(run_id: str) -> float:
            tasks = post(url, "/task_runs/filter", {"flow_runs": {"id": {"any_": [run_id]}}})
            return float(sum(task["total_run_time"] for task in tasks))

        # The first run is a warm-up: it waits for the runner to start.
        return [
            {
                "running": seconds_between(run["start_time"], run["end_time"]),
                "latency": seconds_between(run["expected_start_time"], run["end_time"]),
                "stages": task_seconds(run["id"]),
            }
            for run in done[1 : runs + 1]
        ]


def table(rows: list[tuple[str, float, str]]) -> str:
    lines = ["| measure | seconds (median) | note |", "|---|---:|---|"]
    lines += [f"| {name} | {value:.2f} | {note} |" for name, value, note in rows]
    return "\n".join(lines)


def summarise(dvc_times: list[float], flow_times: list[dict[str, float]]) -> list[tuple[str, float, str]]:
    dvc_noop = statistics.median(dvc_times)
    running_s = statistics.median(run["running"] for run in flow_times)
    latency_s = statistics.median(run["latency"] for run in flow_times)
    stages_s = statistics.median(run["stages"] for run in flow_times)
    listed = {
        "dvc": ", ".join(f"{t:.2f}" for t in dvc_times),
        "running": ", ".join(f"{run['running']:.2f}" for run in flow_times),
        "latency": ", ".join(f"{run['latency']:.2f}" for run in flow_times),
        "stages": ", ".join(f"{run['stages']:.2f}" for run in flow_times),
    }
    return [
        (f"no-op `dvc repro {TARGET}` (4 stages)", dvc_noop, f"runs: {listed['dvc']}"),
        ("no-op scheduled flow run: running time", running_s, f"runs: {listed['running']}"),
        ("  of which the 4 task runs (one `dvc repro --single-item` each)", stages_s, f"runs: {listed['stages']}"),
        ("no-op scheduled flow run: scheduled time to done", latency_s, f"runs: {listed['latency']}; prefetched"),
        ("overhead over dvc repro: running time", running_s - dvc_noop, f"x{running_s / dvc_noop:.1f} of dvc repro"),
        ("overhead over dvc repro: scheduled to done", latency_s - dvc_noop, "what a no-op night costs more"),
    ]


def write_report(result: str, command: str, load: tuple[float, float]) -> Path:
    now = dt.datetime.now(dt.UTC)
    lines = [
        f"# Prefect overhead, {now.date().isoformat()}",
        "",
        f"- date: {now.isoformat(timespec='seconds')}",
        f"- machine: {common.machine_line()}",
        f"- command: `{command}`",
        f"- 1-min load average: {load[0]:.1f} at the start, {load[1]:.1f} at the end (other work shares the machine)",
        "- workspace: the real data stages (download, ingest, split, decode), tiny synthetic data, all up to date",
        f"- scheduled runs: `cvpipe flow serve --interval N --target {TARGET}` against "
        "`prefect server start` on 127.0.0.1 (SQLite); times from the server's flow-run records",
        "",
        result,
        "",
    ]
    out = common.RESULTS_DIR / f"prefect-{now.date().isoformat()}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines), encoding="utf-8")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="scheduled runs to time")
    parser.add_argument("--interval", type=float, default=15.0, help="seconds between scheduled runs")
    parser.add_argument("--dvc-repeats", type=int, default=3, help="no-op dvc repro runs to time")
    args = parser.parse_args()
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="cvpipe-bench-") as tmp:
        scratch = Path(tmp)
        workspace = prepare_workspace(common.ROOT, scratch / "ws", TINY)
        run_tool(dvc("repro", TARGET), workspace)
        dvc_times = time_dvc_noop(workspace, args.dvc_repeats)
        flow_times = scheduled_runs(workspace, scratch, args.runs, args.interval)
    result = table(summarise(dvc_times, flow_times))
    print(result)
    command = "python -m bench.prefect_overhead " + " ".join(sys.argv[1:])
    out = write_report(result, command.strip(), (load_start, os.getloadavg()[0]))
    print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
