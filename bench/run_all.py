"""Every CPU benchmark, one after the other, each in its own process; one table and one results file.

    .venv/bin/python -m bench.run_all [--only decode,features] [--skip demo]     (make bench)
    CVPIPE_BENCH_QUICK=1 .venv/bin/python -m bench.run_all                  (tiny sizes: checks the wiring)

Prints the table (id, cvpipe, seed way, ratio, target, pass/miss) and writes ``bench/results/bench-<date>.md``
with the date, the machine, the command and every benchmark's details. A benchmark that fails is reported
as a miss with its error, and the others still run. ``docs/performance.md`` explains the figures.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import common
from bench.decode_speed import TARGET as DECODE_TARGET

# (name, module, ids it reports): the order they run in, cheapest first.
BENCHMARKS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("decode", "decode_speed", ("decode",)),
    ("epoch-input", "epoch_input", ("epoch-input",)),
    ("features", "features_speed", ("features",)),
    ("precision", "precision", ("precision-epoch", "precision-guard")),
    ("dag", "dag_scale", ("noop", "memory")),
    ("demo", "demo_time", ("demo",)),
)
BUDGET_SECONDS = 15 * 60
# The target a failure row still shows, for the rows whose target is fixed.
FAILED_TARGETS = {"decode": DECODE_TARGET}


def run_one(module: str, ids: tuple[str, ...], folder: Path, cache: Path | None) -> tuple[list[common.Result], float]:
    """Run one benchmark module; return its results (or a failure row per id) and its wall seconds."""
    out = folder / f"{module}.json"
    argv = [sys.executable, "-m", f"bench.{module}", "--json", str(out)]
    if cache is not None:
        argv += ["--cache", str(cache)]
    started = time.perf_counter()
    completed = subprocess.run(argv, cwd=common.ROOT, env=common.tool_env(), check=False)
    seconds = time.perf_counter() - started
    if completed.returncode == 0 and out.exists():
        return common.load_json(out)[0], seconds
    failure = f"bench.{module} failed (exit {completed.returncode}); rerun it alone to see why"
    return [
        common.Result(i, "failed", "—", "—", None, FAILED_TARGETS.get(i, "—"), False, [failure]) for i in ids
    ], seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated names: " + ", ".join(n for n, _, _ in BENCHMARKS))
    parser.add_argument("--skip", default="", help="comma-separated names to leave out")
    parser.add_argument("--cache", type=Path, default=None, help="where generated data sets are kept between runs")
    args = parser.parse_args()
    only = {name for name in args.only.split(",") if name}
    skip = {name for name in args.skip.split(",") if name}
    chosen = [b for b in BENCHMARKS if (not only or b[0] in only) and b[0] not in skip]

    started, t0 = dt.datetime.now(dt.UTC), time.perf_counter()
    results: list[common.Result] = []
    durations: list[str] = []
    with tempfile.TemporaryDirectory(prefix="cvpipe-bench-") as folder:
        for name, module, ids in chosen:
            print(f"\n=== {name} (bench.{module}) ===", flush=True)
            rows, seconds = run_one(module, ids, Path(folder), args.cache)
            results += rows
            durations.append(f"{name} {seconds:.0f} s")
    total = time.perf_counter() - t0
    command = " ".join(shlex.quote(arg) for arg in ["python", "-m", "bench.run_all", *sys.argv[1:]])
    notes = [
        *(["CVPIPE_BENCH_QUICK=1: tiny sizes, no figure holds"] if common.QUICK else []),
        f"total wall time {total / 60:.1f} min (budget {BUDGET_SECONDS // 60} min): " + ", ".join(durations),
        "a miss is reported with by how much and why; docs/performance.md explains each figure and its bound",
    ]
    path = common.write_markdown("bench", results, command, started, notes)
    print(f"\nmachine: {common.machine_line()}\n\n{common.table(results)}")
    print(f"\ntotal {total / 60:.1f} min; details in {path}")


if __name__ == "__main__":
    main()
