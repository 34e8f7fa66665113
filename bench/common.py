"""Shared pieces of the CPU benchmarks: results, the machine, data sets, timing and peak memory.

Every benchmark measures cvpipe and the seed's way of doing the same work side by side, in one run, on the
same images, and reports the ratio: the machines here are shared and noisy, so absolute figures move from
run to run while ratios measured in alternating rounds hold much better.

A benchmark module exposes ``run(...) -> list[Result]`` and a ``main()`` that prints its table and writes
``bench/results/<id>-<date>.md``, or, with ``--json PATH``, writes its results as JSON for ``run_all.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib
import inspect
import io
import json
import os
import platform
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

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS_DIR = ROOT / "bench" / "results"
CLASSES = ("cat", "dog")
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)
_SAMPLE_SECONDS = 0.05
PSS_EVERY = 10


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


def fmt_ratio(ratio: float | None) -> str:
    """Format a ratio as ``2.31x``, or an em dash when there is none."""
    return "—" if ratio is None else f"{ratio:.2f}x"


def table(results: Sequence[Result]) -> str:
    """Return the Markdown table of results: id, cvpipe, seed way, ratio, target, pass/miss."""
    lines = ["| id | cvpipe | seed way | ratio | target | result |", "|---|---|---|---:|---|---|"]
    for result in results:
        lines.append(
            f"| {result.id} | {result.cvpipe} | {result.seed} | {fmt_ratio(result.ratio)} | {result.target} "
            f"| {result.verdict} |"
        )
    return "\n".join(lines)


def cpu_model() -> str:
    """Return the CPU's model name from /proc/cpuinfo (or what platform knows)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def cpu_flags() -> set[str]:
    """Return the CPU feature flags (empty where /proc/cpuinfo is not available)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def cores() -> int:
    """Return the cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def has_bf16_hardware() -> bool:
    """Whether the CPU multiplies bfloat16 natively (AVX512-BF16 or AMX-BF16); otherwise it is emulated."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def machine() -> dict[str, Any]:
    """Describe this machine for the results file."""
    flags = cpu_flags()
    simd = [name for name in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if name in flags]
    return {
        "cores": cores(),
        "cpu": cpu_model(),
        "simd": " ".join(simd) or "unknown",
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
        "load_average": " ".join(f"{value:.1f}" for value in os.getloadavg()),
    }


def versions() -> dict[str, str]:
    """Return the versions of the libraries the benchmarks exercise (those that import)."""
    found: dict[str, str] = {}
    for name in ("numpy", "PIL", "simplejpeg", "cv2", "tensorflow", "keras", "dvc"):
        with contextlib.suppress(Exception):
            module = __import__(name)
            found[name] = str(getattr(module, "__version__", "?"))
    return found


def write_markdown(
    name: str, results: Sequence[Result], command: str, started: dt.datetime, notes: Sequence[str] = ()
) -> Path:
    """Write ``bench/results/<name>-<date>.md``: the table, the machine, the command, every detail line."""
    info = machine()
    lines = [
        f"# Benchmarks: {name}, {started.date().isoformat()}",
        "",
        f"- date: {started.isoformat(timespec='seconds')}",
        f"- machine: {info['cores']} cores, {info['cpu']} ({info['simd']}), {info['memory_gib']} GiB, "
        f"Python {info['python']}, {info['system']}",
        f"- command: `{command}`",
        f"- load average (1, 5, 15 min) at the end: {info['load_average']} (a shared machine: other developers' "
        "tests run on the same cores, so every figure is measured side by side with its seed-way counterpart, "
        "in alternating rounds, and the ratio is what to read)",
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
    """Write results as JSON (what ``run_all.py`` collects from each benchmark process)."""
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


def bench_parser(description: str, options: Mapping[str, Any]) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark takes, and ``--<name>`` for each of ``options``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--json", type=Path, help="write the results here as JSON (for run_all.py) instead of .md")
    parser.add_argument("--cache", type=Path, default=None, help="where generated data sets are kept between runs")
    for name, default in options.items():
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        parser.add_argument(
            f"--{name.replace('_', '-')}", type=_option_type(default), default=default, help=f"default: {shown}"
        )
    return parser


def run_main(name: str, doc: str, run: Callable[..., Sequence[Result]], **options: Any) -> None:
    """A benchmark's ``main``: parse ``--<option>`` (defaults given here), call ``run``, print and store.

    Args:
        name: the results file's name (``bench/results/<name>-<date>.md``).
        doc: the module's docstring; its first line is the ``--help`` description.
        run: the benchmark; called with the options (and ``cache`` when it takes one).
        **options: ``run``'s keyword arguments that the command line may change, with their defaults.
    """
    args = bench_parser(doc.splitlines()[0], options).parse_args()
    kwargs = {option: getattr(args, option) for option in options}
    if "cache" in inspect.signature(run).parameters:
        kwargs["cache"] = args.cache
    started, t0 = dt.datetime.now(dt.timezone.utc), time.perf_counter()
    results = run(**kwargs)
    print(table(results))
    for result in results:
        print(f"\n{result.id}: {result.what}")
        for line in result.details:
            print(f"  - {line}")
    if args.json:
        save_json(args.json, results, time.perf_counter() - t0)
    else:
        command = "python " + " ".join(shlex.quote(arg) for arg in [f"bench/{Path(sys.argv[0]).name}", *sys.argv[1:]])
        print(f"\nwrote {write_markdown(name, results, command, started)}")


# ------------------------------------------------------------------------------------------------ timing


@dataclass
class Timing:
    """Per-round wall-clock and CPU seconds of one contender."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)


def cpu_seconds() -> float:
    """CPU seconds used so far by this process and its reaped children (a process pool's workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def alternate(contenders: Mapping[str, Callable[[], object]], rounds: int) -> dict[str, Timing]:
    """Time each contender once per round, the order rotating every round.

    Alternating spreads a change in the machine's load over every contender instead of penalising one.
    CPU seconds are measured too: on a machine others load, a contender with more threads gets a larger share
    of the cores, and CPU time per image is the figure that load does not bend. A contender returning a dict
    with ``seconds``/``cpu`` (a :class:`Remote` one, timed in its own process) supplies its own figures.
    """
    names = list(contenders)
    times = {name: Timing() for name in names}
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            cpu_before, started = cpu_seconds(), time.perf_counter()
            reply = contenders[name]()
            wall, cpu = time.perf_counter() - started, cpu_seconds() - cpu_before
            if isinstance(reply, dict):
                wall, cpu = float(reply.get("seconds", wall)), float(reply.get("cpu", cpu))
            times[name].wall.append(wall)
            times[name].cpu.append(cpu)
    return times


def median(values: Sequence[float]) -> float:
    """The median (of per-round times)."""
    return float(statistics.median(values))


def runs(values: Sequence[float], unit: str = "s") -> str:
    """Format per-round values for a detail line."""
    return ", ".join(f"{value:.3g}{unit}" for value in values)


# ------------------------------------------------------------------------------------------------- data


def cache_root(requested: Path | None = None) -> Path:
    """Where generated data sets are kept between runs (they are deterministic, so reuse is safe)."""
    root = requested or Path(os.environ.get("CVPIPE_BENCH_CACHE", Path(tempfile.gettempdir()) / "cvpipe-bench"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def kaggle_like_archive(count: int, cache: Path | None = None, seed: int = 0) -> Path:
    """Return a zip of ``count`` Kaggle-like JPEGs (cvpipe's synthetic generator, 300-500 px, no plants)."""
    from cvpipe.config import SyntheticConfig
    from cvpipe.sources.synthetic import GENERATOR_VERSION, generate_synthetic

    path = cache_root(cache) / f"kaggle-like-{count}-s{seed}-v{GENERATOR_VERSION}.zip"
    if not path.exists():
        cfg = SyntheticConfig(per_class=count // 2, seed=seed, exact_duplicates=0, near_duplicates=0, corrupt=0)
        generate_synthetic(cfg, list(CLASSES), path)
    return path


def _small_jpeg(seed: int, index: int, side: int) -> bytes:
    """A small JPEG of smooth random colour: cheap to make, distinct perceptual hashes."""
    from PIL import Image

    rng = np.random.default_rng([seed, index])
    coarse = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
    image = Image.fromarray(coarse, "RGB").resize((side, side), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def small_archive(count: int, side: int = 64, cache: Path | None = None, seed: int = 0) -> Path:
    """Return a zip of ``count`` small JPEGs in Kaggle's layout, made in seconds (for DAG-scale benchmarks).

    The no-op and memory benchmarks need 25,000 archive members, not realistic pixels: what they measure
    (DVC's bookkeeping, memory that grows with the number of images) does not depend on image size.
    """
    path = cache_root(cache) / f"small-{count}-{side}px-s{seed}.zip"
    if path.exists():
        return path
    partial = path.with_suffix(".partial")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_STORED) as archive:
        for index in range(count):
            info = zipfile.ZipInfo(f"train/{CLASSES[index % 2]}.{index // 2}.jpg", date_time=_FIXED_TIME)
            archive.writestr(info, _small_jpeg(seed, index, side))
    partial.rename(path)
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


def count_in_graph(dataset: Any) -> dict[str, int]:
    """Run one epoch of a ``tf.data`` dataset inside TensorFlow, as ``fit`` consumes it; return the images.

    ``fit`` pulls batches with ``iterator.get_next()`` inside its compiled step, so no Python runs per batch;
    a Python ``for`` over the dataset would add ~1 ms a batch of eager overhead that training never pays.
    """
    import tensorflow as tf

    def add(count: Any, element: Any) -> Any:
        return count + tf.cast(tf.shape(tf.nest.flatten(element)[0])[0], tf.int64)

    return {"images": int(dataset.reduce(tf.constant(0, tf.int64), add))}


def count_batches(dataset: Any) -> dict[str, int]:
    """Run one epoch of ``dataset`` (batches of images, or of ``(images, labels)``); return how many images came."""
    count = 0
    for element in dataset:
        count += int((element[0] if isinstance(element, tuple) else element).shape[0])
    return {"images": count}


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
        """Fold one sample of the group's processes (``psutil.Process``, first the main one) into the peaks.

        Args:
            processes: the group, its main process first.
            with_pss: also read the PSS. It walks every mapping (``/proc/<pid>/smaps``): ~20 ms of CPU for a
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

    def merge(self, other: Peaks) -> None:
        """Keep the larger of each peak."""
        self.pss, self.rss, self.main = max(self.pss, other.pss), max(self.rss, other.rss), max(self.main, other.main)


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

        try:
            self.peaks.add_sample([self._root, *self._root.children(recursive=True)], with_pss=full)
        except psutil.Error:
            return


@dataclass
class Measured:
    """A command's wall time and peak memory."""

    seconds: float
    peaks: Peaks
    peak_single_bytes: int
    returncode: int
    output: str


def run_measured(argv: Sequence[str], cwd: Path, env: Mapping[str, str] | None = None) -> Measured:
    """Run a command to completion; return its wall time and peak memory.

    Peak memory from sampling (:class:`Peaks`) and, exact, the kernel's ``ru_maxrss`` of the largest single
    process of the tree (from ``wait4``; it includes waited-for children).
    """
    with tempfile.TemporaryFile("w+") as log:
        started = time.perf_counter()
        process = subprocess.Popen(list(argv), cwd=cwd, env=dict(env) if env else None, stdout=log, stderr=log)
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
    from cvpipe.pipeline.workspace import tool_env as workspace_env

    env = workspace_env()
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    return env


# ------------------------------------------------------------------------------------- remote contenders

_PROTOCOL = "@@bench "


class Remote:
    """Contenders that live in a child process, timed from here like local ones.

    The seed's side runs TensorFlow; keeping it in its own process leaves cvpipe's side as it runs in
    production (no TensorFlow loaded, so its process pool forks a small process) and keeps the two from
    sharing one interpreter's threads.
    """

    def __init__(self, factory: str, config: Mapping[str, Any]) -> None:
        """Start ``python -c serve(...)``: ``factory`` is ``module:function`` returning name -> callable."""
        code = "import sys; from bench.common import serve; serve(sys.argv[1], sys.argv[2])"
        self._process = subprocess.Popen(
            [sys.executable, "-c", code, factory, json.dumps(config)],
            cwd=ROOT,
            env=tool_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._info: dict[str, Any] | None = None

    @property
    def info(self) -> dict[str, Any]:
        """What the child said once its contenders were built (waits for it; setup overlaps local work)."""
        if self._info is None:
            self._info = self._reply()
        return self._info

    def _reply(self) -> dict[str, Any]:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            if line.startswith(_PROTOCOL):
                reply: dict[str, Any] = json.loads(line[len(_PROTOCOL) :])
                if "error" in reply:
                    raise RuntimeError(f"benchmark child failed: {reply['error']}")
                return reply
        raise RuntimeError(f"benchmark child exited ({self._process.wait()}) without answering")

    def call(self, name: str) -> dict[str, Any]:
        """Run contender ``name`` in the child once; return its reply (``seconds`` and what it adds)."""
        assert self._process.stdin is not None
        _ = self.info
        self._process.stdin.write(name + "\n")
        self._process.stdin.flush()
        return self._reply()

    def contender(self, name: str) -> Callable[[], object]:
        """A callable for :func:`alternate`."""
        return lambda: self.call(name)

    def close(self) -> None:
        """Stop the child."""
        if self._process.stdin is not None:
            self._process.stdin.close()
        self._process.wait(timeout=60)

    def __enter__(self) -> Remote:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._process.poll() is None:
            try:
                self.close()
            except subprocess.TimeoutExpired:
                self._process.kill()


def serve(factory: str, config_json: str) -> None:
    """The child's side of :class:`Remote`: build the contenders, then run one per line read on stdin."""
    module_name, function = factory.split(":")
    try:
        made = getattr(importlib.import_module(module_name), function)(**json.loads(config_json))
        contenders, info = made if isinstance(made, tuple) else (made, {})
    except Exception as error:
        print(_PROTOCOL + json.dumps({"error": f"{type(error).__name__}: {error}"}), flush=True)
        raise
    print(_PROTOCOL + json.dumps({"ready": True, **info}), flush=True)
    for line in sys.stdin:
        cpu_before, started = cpu_seconds(), time.perf_counter()
        extra = contenders[line.strip()]()
        reply = {"seconds": time.perf_counter() - started, "cpu": cpu_seconds() - cpu_before}
        reply.update(extra if isinstance(extra, dict) else {})
        print(_PROTOCOL + json.dumps(reply), flush=True)
