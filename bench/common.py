"""Shared pieces of the CPU benchmarks: result rows, the machine, contenders timed in child processes, data, memory.

Every benchmark measures cvpipe and the seed's way of doing the same work side by side, in one run, on the
same images, and reports the ratio: the machines here are shared and noisy, so absolute figures move from
run to run while ratios measured in alternating rounds hold much better.

Each contender runs in a fresh ``python -m bench.<script> --contender NAME CONFIG`` process: it sets itself up
(imports, the seed's ``tf.data`` pipeline, a model), warms up, times the work once with :func:`measure`
and prints ``{"seconds": ..., "cpu": ...}`` as its last line. So cvpipe's side runs as in production (no
TensorFlow loaded beside the decode stage's pool) and no two contenders share an interpreter's threads.

A benchmark module exposes ``run(...) -> list[Result]`` and calls :func:`run_main`, which prints its table and
writes ``bench/results/<id>-<date>.md``, or, with ``--json PATH``, writes its results as JSON for ``run_all``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import inspect
import json
import os
import platform
import re
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Self

import numpy as np

from cvpipe.config import SyntheticConfig

ROOT = Path(__file__).resolve().parents[1]
QUICK = os.environ.get("CVPIPE_BENCH_QUICK") == "1"
"""Tiny sizes everywhere (``CVPIPE_BENCH_QUICK=1``): shows that every script runs; no figure holds."""
# Quick runs must not overwrite a real day's results.
RESULTS_DIR = Path(tempfile.gettempdir()) / "cvpipe-bench-quick" if QUICK else ROOT / "bench" / "results"
CLASSES = ("cat", "dog")
"""Kaggle's two labels, the default ``data.classes``: the synthetic archives are named like Kaggle's."""
PSS_EVERY = 10
_SAMPLE_SECONDS = 0.05
_STAGE = re.compile(r"Running stage '([^']+)'")


# ---------------------------------------------------------------------------------------------- results


@dataclass
class Result:
    """One row of the benchmark table, plus the lines that explain it."""

    id: str
    what: str
    cvpipe: str
    seed: str
    ratio: float | None
    target: str
    passed: bool | None
    details: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        """``pass``, ``miss`` or ``n/a`` (no target to meet)."""
        return "n/a" if self.passed is None else ("pass" if self.passed else "miss")

    @classmethod
    def alone(cls, id: str, what: str, value: str, target: str, passed: bool, details: list[str]) -> Result:
        """A row with no seed-way side (noop, memory, demo): no seed figure and no ratio."""
        return cls(id, what, value, "—", None, target, passed, details)

    @classmethod
    def speedup(
        cls,
        id: str,
        what: str,
        cvpipe: str,
        seed: str,
        ratio: float,
        minimum: float,
        details: list[str],
        unit: str = "",
    ) -> Result:
        """A row judged on one ratio against the seed's way: passed when ``ratio >= minimum``.

        ``unit`` follows the target, e.g. `` less time`` gives ``>= 20x less time``.
        """
        return cls(id, what, cvpipe, seed, ratio, f">= {minimum:g}x{unit}", ratio >= minimum, details)


def table(results: Sequence[Result]) -> str:
    """Return the Markdown table of results: id, cvpipe, seed way, ratio, target, pass/miss."""
    lines = ["| id | cvpipe | seed way | ratio | target | result |", "|---|---|---|---:|---|---|"]
    for row in results:
        ratio = "—" if row.ratio is None else f"{row.ratio:.2f}x"
        lines.append(f"| {row.id} | {row.cvpipe} | {row.seed} | {ratio} | {row.target} | {row.verdict} |")
    return "\n".join(lines)


def cpuinfo(key: str) -> str | None:
    """The first ``key: value`` of /proc/cpuinfo (None where there is none, e.g. not on Linux)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    return None


def cpu_model() -> str:
    """Return the CPU's model name from /proc/cpuinfo (or what platform knows)."""
    return cpuinfo("model name") or platform.processor() or "unknown"


def cpu_flags() -> set[str]:
    """Return the CPU feature flags (empty where /proc/cpuinfo is not available)."""
    return set((cpuinfo("flags") or "").split())


def cores() -> int:
    """Return the cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def has_bf16_hardware() -> bool:
    """Whether the CPU multiplies bfloat16 natively (AVX512-BF16 or AMX-BF16); otherwise it is emulated."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def machine_line() -> str:
    """One line naming the machine: cores, CPU model and SIMD, memory, Python, system."""
    simd = [name for name in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if name in cpu_flags()]
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{cores()} cores, {cpu_model()} ({' '.join(simd) or 'unknown SIMD'}), {memory:.1f} GiB, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )


def versions() -> dict[str, str]:
    """Return the versions of the libraries the benchmarks exercise (those that import)."""
    found: dict[str, str] = {}
    for name in ("numpy", "PIL", "simplejpeg", "cv2", "tensorflow", "keras", "dvc"):
        with contextlib.suppress(Exception):
            found[name] = str(getattr(__import__(name), "__version__", "?"))
    return found


def write_markdown(
    name: str, results: Sequence[Result], command: str, started: dt.datetime, notes: Sequence[str] = ()
) -> Path:
    """Write ``bench/results/<name>-<date>.md``: the table, the machine, the command, every detail line."""
    load = " ".join(f"{value:.1f}" for value in os.getloadavg())
    lines = [
        f"# Benchmarks: {name}, {started.date().isoformat()}",
        "",
        f"- date: {started.isoformat(timespec='seconds')}",
        f"- machine: {machine_line()}",
        f"- command: `{command}`",
        f"- load average (1, 5, 15 min) at the end: {load} (a shared machine: other developers' tests run on the "
        "same cores, so every figure is measured side by side with its seed-way counterpart, in alternating "
        "rounds, and the ratio is what to read)",
        f"- libraries: {', '.join(f'{k} {v}' for k, v in versions().items())}",
        *[f"- {note}" for note in notes],
        "",
        table(results),
        "",
    ]
    for result in results:
        lines += [f"## {result.id}: {result.what}", "", *[f"- {line}" for line in result.details], ""]
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}-{started.date().isoformat()}.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def save_json(path: Path, results: Sequence[Result], seconds: float) -> None:
    """Write results as JSON (what ``run_all`` collects from each benchmark process)."""
    payload = {"seconds": seconds, "results": [asdict(result) for result in results]}
    Path(path).write_text(json.dumps(payload, indent=1), encoding="utf-8")


def load_json(path: Path) -> tuple[list[Result], float]:
    """Read what :func:`save_json` wrote."""
    payload = json.loads(Path(path).read_text(encoding="utf-8"))
    return [Result(**row) for row in payload["results"]], float(payload["seconds"])


def _option_type(default: Any) -> Callable[[str], Any]:
    """How a command-line value becomes the type of ``default`` (a tuple of ints is written ``500,2500``)."""
    if isinstance(default, tuple):
        return lambda text: tuple(int(value) for value in text.split(","))
    return type(default)


def run_main(
    name: str,
    doc: str,
    run: Callable[..., Sequence[Result]],
    sides: Mapping[str, Callable[..., dict[str, Any]]] | None = None,
    **options: Any,
) -> None:
    """A benchmark's ``main``: run one contender (``--contender``), or ``run`` with ``--<option>`` values, print, store.

    Args:
        name: the results file's name (``bench/results/<name>-<date>.md``).
        doc: the module's docstring; its first line is the ``--help`` description.
        run: the benchmark; called with the options (and ``cache`` when it takes one).
        sides: the contenders a child process may be asked to run, by name.
        **options: ``run``'s keyword arguments that the command line may change, with their defaults.
    """
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the results here as JSON (for run_all) instead of .md")
    parser.add_argument("--cache", type=Path, default=None, help="where generated data sets are kept between runs")
    parser.add_argument("--contender", nargs=2, metavar=("NAME", "CONFIG"), help="(child) run one, print JSON")
    for option, default in options.items():
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        parser.add_argument(
            f"--{option.replace('_', '-')}", type=_option_type(default), default=default, help=f"{shown}"
        )
    args = parser.parse_args()
    if args.contender:
        side, config = args.contender
        print(json.dumps((sides or {})[side](**json.loads(config))), flush=True)
        return
    kwargs = {option: getattr(args, option) for option in options}
    if "cache" in inspect.signature(run).parameters:
        kwargs["cache"] = args.cache
    started, t0 = dt.datetime.now(dt.UTC), time.perf_counter()
    results = run(**kwargs)
    print(f"machine: {machine_line()}\n\n{table(results)}")
    for result in results:
        print(f"\n{result.id}: {result.what}", *[f"  - {line}" for line in result.details], sep="\n")
    if args.json:
        save_json(args.json, results, time.perf_counter() - t0)
    else:
        module = f"bench.{Path(sys.argv[0]).stem}"
        command = " ".join(shlex.quote(arg) for arg in ["python", "-m", module, *sys.argv[1:]])
        print(f"\nwrote {write_markdown(name, results, command, started)}")


# ------------------------------------------------------------------------------------------------ timing


@dataclass
class Timing:
    """Per-round wall-clock and CPU seconds of one contender, and everything else its children reported."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    replies: list[dict[str, Any]] = field(default_factory=list)


def cpu_seconds() -> float:
    """CPU seconds used so far by this process and its reaped children (a process pool's workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure(work: Callable[[], object]) -> dict[str, float]:
    """Run ``work`` once; return its wall and CPU seconds (every thread, and pool workers reaped meanwhile).

    CPU time is measured as well as wall time: on a machine others load, a contender with more threads gets
    a larger share of the cores, and CPU time is the figure that load does not bend.
    """
    cpu_before, started = cpu_seconds(), time.perf_counter()
    work()
    return {"seconds": time.perf_counter() - started, "cpu": cpu_seconds() - cpu_before}


def in_child(module: str, side: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """Run contender ``side`` of ``bench.<module>`` in a fresh process; return the JSON it printed last."""
    argv = [sys.executable, "-m", f"bench.{module}", "--contender", side, json.dumps(config)]
    done = subprocess.run(argv, cwd=ROOT, env=tool_env(), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"bench.{module} --contender {side} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    reply: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return reply


def alternate(module: str, sides: Mapping[str, Mapping[str, Any]], rounds: int) -> dict[str, Timing]:
    """Time each contender once per round, each in its own process, the order rotating every round.

    Alternating spreads a change in the machine's load over every contender instead of penalising one.
    """
    names = list(sides)
    times = {name: Timing() for name in names}
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            reply = in_child(module, name, sides[name])
            times[name].wall.append(float(reply["seconds"]))
            times[name].cpu.append(float(reply["cpu"]))
            times[name].replies.append(reply)
    return times


def median(values: Sequence[float]) -> float:
    """The median (of per-round times)."""
    return float(statistics.median(values))


def runs(values: Sequence[float], unit: str = "s") -> str:
    """Format per-round values for a detail line."""
    return ", ".join(f"{value:.3g}{unit}" for value in values)


@dataclass
class StageRun:
    """A command that runs DVC stages: its wall time, each stage's seconds in order, its output."""

    seconds: float
    stages: list[tuple[str, float]]
    output: str
    returncode: int


def run_stages(
    argv: Sequence[str], cwd: Path, watch: Callable[[int], contextlib.AbstractContextManager[Any]] | None = None
) -> StageRun:
    """Run ``argv`` (``dvc repro``, ``cvpipe demo``); each stage's seconds from when its "Running stage" line came.

    Args:
        argv: the command.
        cwd: where it runs.
        watch: a context manager factory given the process id, entered while it runs (memory sampling).
    """
    started = time.perf_counter()
    process = subprocess.Popen(
        list(argv), cwd=cwd, env=tool_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    marks: list[tuple[str, float]] = []
    lines: list[str] = []
    assert process.stdout is not None
    with watch(process.pid) if watch else contextlib.nullcontext():
        for line in process.stdout:
            if match := _STAGE.search(line):
                marks.append((match.group(1), time.perf_counter()))
            lines.append(line)
        process.wait()
    ended = time.perf_counter()
    stages = [(name, (marks[i + 1][1] if i + 1 < len(marks) else ended) - at) for i, (name, at) in enumerate(marks)]
    return StageRun(ended - started, stages, "".join(lines), process.returncode)


# ------------------------------------------------------------------------------------------------- data


def cache_root(requested: Path | None = None) -> Path:
    """Where generated data sets are kept between runs (they are deterministic, so reuse is safe)."""
    root = requested or Path(os.environ.get("CVPIPE_BENCH_CACHE", Path(tempfile.gettempdir()) / "cvpipe-bench"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def synthetic_archive(count: int, cache: Path | None = None, side: int | None = None, seed: int = 0) -> Path:
    """Return a zip of ``count`` JPEGs from cvpipe's synthetic generator, in Kaggle's layout, nothing planted.

    Args:
        count: images, half of each class.
        cache: where generated archives are kept (see :func:`cache_root`).
        side: every image ``side`` x ``side``; None: Kaggle-like 300-500 px (~30 KB each). The no-op and memory
            benchmarks take 64 px: what they measure (DVC's bookkeeping, memory that grows with the number
            of images) does not depend on image size, and 25,000 small images are drawn in seconds.
        seed: the generator's seed.
    """
    from cvpipe.sources.synthetic import GENERATOR_VERSION, generate_synthetic

    sides = {} if side is None else {"min_side": side, "max_side": side}
    path = cache_root(cache) / f"synthetic-{count}-{side or 'kaggle'}px-s{seed}-v{GENERATOR_VERSION}.zip"
    if not path.exists():
        cfg = SyntheticConfig(
            per_class=count // 2, seed=seed, exact_duplicates=0, near_duplicates=0, corrupt=0, **sides
        )
        generate_synthetic(cfg, list(CLASSES), path)
    return path


def extract_to_folders(archive_path: Path, dest: Path, members: Sequence[str] | None = None) -> Path:
    """Extract Kaggle-layout members to ``dest/<class>/<file>``: what ``image_dataset_from_directory`` reads."""
    with zipfile.ZipFile(archive_path) as archive:
        for member in members if members is not None else archive.namelist():
            name = Path(member).name
            folder = dest / name.split(".")[0]
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(archive.read(member))
    return dest


def image_members(archive_path: Path) -> list[str]:
    """The archive's members in name order (the synthetic archives hold images only)."""
    with zipfile.ZipFile(archive_path) as archive:
        return sorted(archive.namelist())


def member_labels(members: Sequence[str]) -> np.ndarray:
    """Integer labels of Kaggle-layout members (``train/cat.12.jpg``): the index of the class in :data:`CLASSES`."""
    return np.array([CLASSES.index(Path(member).name.split(".")[0]) for member in members], dtype=np.int32)


def seed_dataset(folder: str | Path, size: int, batch: int) -> Any:
    """The seed's input pipeline: ``image_dataset_from_directory`` over class folders, shuffled, squashed to size."""
    import keras

    return keras.utils.image_dataset_from_directory(
        str(folder), image_size=(size, size), batch_size=batch, shuffle=True, seed=1337, verbose=False
    )


def count_in_graph(dataset: Any) -> int:
    """Run one epoch of a ``tf.data`` dataset inside TensorFlow, as ``fit`` consumes it; return the images.

    ``fit`` pulls batches with ``iterator.get_next()`` inside its compiled step, so no Python runs per batch;
    a Python ``for`` over the dataset would add ~1 ms a batch of eager overhead that training never pays.
    """
    import tensorflow as tf

    def add(count: Any, element: Any) -> Any:
        return count + tf.cast(tf.shape(tf.nest.flatten(element)[0])[0], tf.int64)

    return int(dataset.reduce(tf.constant(0, tf.int64), add))


def count_batches(dataset: Any) -> int:
    """Run one epoch of ``dataset`` (batches of images, or of ``(images, labels)``); return how many images came."""
    return sum(int((element[0] if isinstance(element, tuple) else element).shape[0]) for element in dataset)


# ----------------------------------------------------------------------------------------------- memory


@dataclass
class Peaks:
    """Peak memory of a group of processes (a stage and its workers), in bytes.

    ``pss``: the summed proportional set size, each shared page split among the processes sharing it: what
    the group holds. ``rss``: the summed resident set size, which counts a page a forked worker still shares
    with its parent once per process. ``main``: the resident set size of the group's first process alone.
    """

    pss: int = 0
    rss: int = 0
    main: int = 0

    def add_sample(self, processes: Sequence[Any], with_pss: bool = True) -> None:
        """Fold one sample of the group's processes (``psutil.Process``, the main one first) into the peaks.

        ``with_pss``: also read the PSS. It walks every mapping (``/proc/<pid>/smaps``): ~20 ms of CPU for a
        process that imported TensorFlow, against microseconds for the RSS alone.
        """
        import psutil

        pss = rss = main = 0
        for index, process in enumerate(processes):
            with contextlib.suppress(psutil.Error):
                info = process.memory_full_info() if with_pss else process.memory_info()
                rss += info.rss
                pss += info.pss if with_pss else 0
                main = info.rss if index == 0 else main
        self.pss, self.rss, self.main = max(self.pss, pss), max(self.rss, rss), max(self.main, main)


class Sampler:
    """Call :meth:`sample` every ``interval`` seconds on a daemon thread, from entering ``with`` to leaving it.

    Every :data:`PSS_EVERY`-th sample (the first included) is a full one (:meth:`Peaks.add_sample`'s
    ``with_pss``): the RSS, which is judged, is read every time; the PSS, shown for reference, 10x less often,
    so that watching a TensorFlow process does not take a third of a core from the work being measured.
    """

    def __init__(self, interval: float = _SAMPLE_SECONDS) -> None:
        """Sample every ``interval`` seconds."""
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._count = 0

    def sample(self, full: bool) -> None:
        """Take one sample (subclasses); ``full``: read the PSS too."""
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample(self._count % PSS_EVERY == 0)
            self._count += 1
            self._stop.wait(self._interval)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class TreeMonitor(Sampler):
    """Sample the memory of a process and all its descendants every 50 ms, keeping the peaks."""

    def __init__(self, pid: int, interval: float = _SAMPLE_SECONDS) -> None:
        """Watch process ``pid`` and whatever it starts."""
        import psutil

        super().__init__(interval)
        self._root = psutil.Process(pid)
        self.peaks = Peaks()

    def sample(self, full: bool) -> None:
        """Fold the tree's current memory into the peaks (a process that just ended is skipped)."""
        import psutil

        with contextlib.suppress(psutil.Error):
            self.peaks.add_sample([self._root, *self._root.children(recursive=True)], with_pss=full)


@dataclass
class Measured:
    """A command's wall time and peak memory."""

    seconds: float
    peaks: Peaks
    peak_single_bytes: int
    returncode: int
    output: str


def run_measured(argv: Sequence[str], cwd: Path) -> Measured:
    """Run a command to completion; return its wall time and peak memory.

    Peak memory from sampling (:class:`Peaks`) and, exact, the kernel's ``ru_maxrss`` of the largest single
    process of the tree (from ``wait4``; it includes waited-for children).
    """
    with tempfile.TemporaryFile("w+") as log:
        started = time.perf_counter()
        process = subprocess.Popen(list(argv), cwd=cwd, env=tool_env(), stdout=log, stderr=log)
        with TreeMonitor(process.pid) as monitor:
            _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        output = log.read()
    return Measured(seconds, monitor.peaks, usage.ru_maxrss * 1024, process.returncode, output)


def mib(value: float) -> str:
    """Format bytes as MiB."""
    return f"{value / 2**20:.0f} MiB"


@contextlib.contextmanager
def scratch(prefix: str) -> Iterator[Path]:
    """A temporary folder, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix=f"cvpipe-bench-{prefix}-") as folder:
        yield Path(folder)


def tool_env() -> dict[str, str]:
    """Environment for subprocesses: this venv's scripts first, quiet TensorFlow, no telemetry."""
    from cvpipe.pipeline.commands import tool_env as workspace_env

    env = workspace_env()
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env
