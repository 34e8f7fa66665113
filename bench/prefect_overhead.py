"""Prefect's overhead on a night with nothing to do: a no-op scheduled run vs a no-op ``dvc repro``.

In one run, on one workspace (the real data stages download -> ingest -> split -> decode, tiny synthetic data,
already reproduced so every stage is up to date):

1. ``dvc repro decode``, a few times: DVC's own cost of finding nothing to do.
2. A local ``prefect server start`` on 127.0.0.1 and ``python -m flows.pipeline --serve --interval N``; the
   scheduled runs after the first (all stages skipped), timed by the server: running time (flow run start -> end)
   and latency (scheduled time -> end). The runner prefetches runs and starts their process a little early, so
   the latency can come out shorter than the running time.

Prints a table and writes ``bench/results/prefect-<date>.md`` with the machine and the command.

    .venv/bin/python bench/prefect_overhead.py [--runs 3] [--interval 15]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import cpu_model  # noqa: E402
from cvpipe.pipeline.workspace import dvc, prepare_workspace, run_tool  # noqa: E402
from tests.support.prefect_server import Api, running_server, start_process, wait_for  # noqa: E402

TINY: dict[str, Any] = {
    "data": {"source": "synthetic", "synthetic": {"per_class": 40, "min_side": 64, "max_side": 96}},
    "split": {"per_class": {"train": 20, "val": 6, "test": 10}},
    "image": {"size": 32},
}
TARGET = "decode"


def time_dvc_noop(workspace: Path, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        output = run_tool(dvc("repro", TARGET), workspace).stdout
        times.append(time.perf_counter() - started)
        assert "Running stage" not in output, "the workspace was not up to date"
    return times


def completed_runs(api: Api) -> list[dict[str, Any]]:
    return api.flow_runs({"flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}, "sort": "EXPECTED_START_TIME_ASC"})


def seconds_between(start: str, end: str) -> float:
    return (dt.datetime.fromisoformat(end) - dt.datetime.fromisoformat(start)).total_seconds()


def scheduled_runs(workspace: Path, scratch: Path, runs: int, interval: float) -> list[dict[str, float]]:
    with running_server(scratch, show_logs=False) as (url, env, procs):
        api = Api(url)
        serve = [sys.executable, "-m", "flows.pipeline", "--serve", "--interval", str(interval), "--name", "bench"]
        serve += ["--project-dir", str(workspace), "--target", TARGET]
        procs["serve"] = start_process("serve", serve, env, scratch / "logs", ROOT)
        done = wait_for(
            lambda: (found := completed_runs(api)) and len(found) > runs and found,
            90 + (runs + 1) * interval * 3,
            "the scheduled runs",
            procs,
        )
        # The first run is a warm-up: it waits for the runner to start.
        return [
            {
                "running": seconds_between(run["start_time"], run["end_time"]),
                "latency": seconds_between(run["expected_start_time"], run["end_time"]),
                "stages": sum(task["total_run_time"] for task in api.task_runs(run["id"]).values()),
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


def machine() -> str:
    system = f"{platform.system()} {platform.release()}"
    return f"{os.cpu_count()} cores, {cpu_model()}, Python {platform.python_version()}, {system}"


def write_report(result: str, command: str, load: tuple[float, float]) -> Path:
    now = dt.datetime.now(dt.timezone.utc)
    lines = [
        f"# Prefect overhead, {now.date().isoformat()}",
        "",
        f"- date: {now.isoformat(timespec='seconds')}",
        f"- machine: {machine()}",
        f"- command: `{command}`",
        f"- 1-min load average: {load[0]:.1f} at the start, {load[1]:.1f} at the end (other work shares the machine)",
        "- workspace: the real data stages (download, ingest, split, decode), tiny synthetic data, all up to date",
        f"- scheduled runs: `python -m flows.pipeline --serve --interval N --target {TARGET}` against "
        "`prefect server start` on 127.0.0.1 (SQLite); times from the server's flow-run records",
        "",
        result,
        "",
    ]
    out = ROOT / "bench" / "results" / f"prefect-{now.date().isoformat()}.md"
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
        workspace = prepare_workspace(ROOT, scratch / "ws", TINY)
        run_tool(dvc("repro", TARGET), workspace)
        dvc_times = time_dvc_noop(workspace, args.dvc_repeats)
        flow_times = scheduled_runs(workspace, scratch, args.runs, args.interval)
    result = table(summarise(dvc_times, flow_times))
    print(result)
    command = "python bench/prefect_overhead.py " + " ".join(sys.argv[1:])
    out = write_report(result, command.strip(), (load_start, os.getloadavg()[0]))
    print(f"\nwritten to {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
