"""demo: the wall time of ``make demo`` with the venv installed, i.e. ``cvpipe demo`` (the whole DAG offline).

Runs ``cvpipe demo --dest <scratch>`` from the project root, as ``make demo`` does once the venv exists, and
times it; each DVC stage's share comes from the moment its "Running stage" line appeared.

    .venv/bin/python bench/demo_time.py
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common

TARGET_SECONDS = 300.0
_STAGE = re.compile(r"Running stage '([^']+)'")


def timed_demo(dest: Path) -> tuple[float, list[tuple[str, float]], str]:
    """Run the demo; return its wall seconds, (stage, seconds) in order, and the output's tail."""
    argv = [str(Path(sys.executable).with_name("cvpipe")), "demo", "--dest", str(dest)]
    started = time.perf_counter()
    process = subprocess.Popen(
        argv,
        cwd=common.ROOT,
        env=common.tool_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    marks: list[tuple[str, float]] = []
    tail: list[str] = []
    assert process.stdout is not None
    for line in process.stdout:
        match = _STAGE.search(line)
        if match:
            marks.append((match.group(1), time.perf_counter()))
        tail = [*tail[-40:], line.rstrip()]
    process.wait()
    ended = time.perf_counter()
    if process.returncode != 0:
        raise RuntimeError("cvpipe demo failed:\n" + "\n".join(tail))
    stages = [(name, (marks[i + 1][1] if i + 1 < len(marks) else ended) - at) for i, (name, at) in enumerate(marks)]
    return ended - started, stages, "\n".join(tail)


def run() -> list[common.Result]:
    """Measure and return the demo result row."""
    with common.scratch("demo") as work:
        seconds, stages, _ = timed_demo(work / "demo")
    ranked = sorted(stages, key=lambda item: item[1], reverse=True)
    modelling = [took for name, took in stages if name.split("@")[0] in ("train", "evaluate")]
    details = [
        "`cvpipe demo --dest <scratch>` from the project root with the venv installed (what `make demo` runs "
        "once `make install` has nothing to do): synthetic data, 64 px, random VGG16 weights, the demo's epochs",
        f"wall time {seconds:.0f} s for {len(stages)} stages; the {len(modelling)} training and evaluation stages "
        f"(each a new process importing TensorFlow) took {sum(modelling):.0f} s of it",
        "stages, longest first: " + ", ".join(f"{name} {took:.0f} s" for name, took in ranked),
    ]
    return [
        common.Result.alone(
            "demo",
            "`make demo` wall time, venv installed",
            f"{seconds:.0f} s",
            f"<= {TARGET_SECONDS:.0f} s",
            seconds <= TARGET_SECONDS,
            details,
        )
    ]


def main() -> None:
    """Time the demo once."""
    common.run_main("demo", __doc__, run)


if __name__ == "__main__":
    main()
