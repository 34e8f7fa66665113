"""demo: the wall time of ``make demo`` with the venv installed, i.e. ``cvpipe demo`` (the whole DAG offline).

Runs ``cvpipe demo --dest <scratch>`` from the project root, as ``make demo`` does once the venv exists, and
times it; each DVC stage's share comes from the moment its "Running stage" line appeared. The demo has no
smaller size than its DAG, so ``CVPIPE_BENCH_QUICK=1`` runs ``cvpipe demo --help`` instead: it checks the
script's wiring only.

    .venv/bin/python -m bench.demo_time
"""

from __future__ import annotations

import sys
from pathlib import Path

from bench import common

TARGET_SECONDS = 300.0


def run(extra: str = "") -> list[common.Result]:
    """Measure and return the demo result row (``extra``: more arguments, ``--help`` for a quick check)."""
    argv = [str(Path(sys.executable).with_name("cvpipe")), "demo", *extra.split()]
    with common.scratch("demo") as work:
        done = common.run_stages([*argv, "--dest", str(work / "demo")], common.ROOT)
    if done.returncode != 0:
        raise RuntimeError("cvpipe demo failed:\n" + done.output[-4000:])
    seconds, stages = done.seconds, done.stages
    ranked = sorted(stages, key=lambda item: item[1], reverse=True)
    modelling = [took for name, took in stages if name.split("@")[0] in ("train", "evaluate")]
    details = [
        "`cvpipe demo --dest <scratch>` from the project root with the venv installed (what `make demo` runs "
        "once `make install` has nothing to do): synthetic data, 64 px, random VGG16 weights, the demo's epochs"
        + (f"; run with `{extra}`" if extra else ""),
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


if __name__ == "__main__":
    common.run_main("demo", __doc__, run, extra="--help" if common.QUICK else "")
