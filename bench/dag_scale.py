"""noop and memory: the whole DAG at Kaggle's scale (25,000 archive members), and memory from 5,000 to 25,000.

**noop.** A scratch workspace (``cvpipe.pipeline.workspace.prepare_workspace``: its own git + DVC repo holding the real
``dvc.yaml``) whose ``data.source: local`` archive has 25,000 64 px JPEGs from cvpipe's synthetic generator.
The whole DAG is reproduced once for real (tiny split, 32 px, one epoch per variant, two chains of variants
side by side: the no-op's cost does not depend on how long the stages took), then ``dvc repro`` is timed while nothing
has changed. For scale: the same with only the ``download`` stage (DVC's start-up and repo-opening floor),
``import dvc.cli`` alone, and one no-op after the archive's mtime changed (DVC rehashes it: its state
database is keyed on inode, mtime and size).

**memory.** Peak memory (sampled every 50 ms; the RSS summed over a stage's processes, pool workers
included, is what is judged) of ``ingest``, ``split``, ``decode`` and ``features`` at 5,000 and 25,000
images. Ingest and split at 25,000 are measured inside the no-op workspace's first run; at 5,000 they run
alone with the same params. Decode gets a split table holding every image (80/10/10), at 32 px. Features run at
``--feature-counts`` images (default 500 and 2,500, the same 5x step: VGG16 over 25,000 images takes over
ten minutes on two cores; ``--feature-counts 5000,25000`` runs the full sizes).

    .venv/bin/python -m bench.dag_scale [--images 25000] [--small 5000] [--feature-counts 500,2500]
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from bench import common
from bench.common import Peaks
from cvpipe.config import SPLITS, VARIANTS
from cvpipe.layout import ARCHIVE, MANIFEST_NAME, SPLITS_NAME, labels_file, split_file

NOOP_TARGET_SECONDS = 2.0
GROWTH_TARGET = 0.10
NOOP_RUNS = 5
SIZE = 32
STAGES = ("ingest", "split", "decode", "features")
DAG_MEMORY_STAGES = ("ingest", "split")
"""Stages whose memory at the larger count is measured inside the DAG's first run."""
ARCHIVE_SIDE = 64


def overrides(archive: Path) -> dict[str, Any]:
    """Params for a workspace whose whole DAG runs in a few minutes on 2 cores."""
    return {
        "data": {"source": "local", "path": str(archive)},
        "split": {"per_class": {"train": 20, "val": 10, "test": 10}, "fractions": None},
        "image": {"size": SIZE},
        "features": {"weights": "none"},
        "train": {variant: {"epochs": 1} for variant in VARIANTS},
        # MNIST's stages are in the same dvc.yaml: offline drawn digits, one epoch.
        "mnist": {"source": "synthetic", "epochs": 1, "synthetic": {"train": 300, "test": 100}},
    }


# ------------------------------------------------------------------------------------------ stage memory


class StageMonitor(common.Sampler):
    """Peak memory of each ``cvpipe <stage>`` process and its workers under a running ``dvc repro``."""

    def __init__(self, pid: int, stages: Collection[str]) -> None:
        """Watch the ``stages`` (``ingest``, ...) that process ``pid`` (a ``dvc repro``) starts."""
        import psutil

        super().__init__()
        self._root = psutil.Process(pid)
        self._watched = set(stages)
        self._stages: dict[int, str | None] = {}  # pid -> stage it runs: a process's command line is read once
        self.peaks: dict[str, Peaks] = {}

    @staticmethod
    def _stage_of(cmdline: Sequence[str]) -> str | None:
        for index, arg in enumerate(cmdline[:-1]):
            if Path(arg).name == "cvpipe":
                return cmdline[index + 1]
        return None

    def _stage(self, process: Any) -> str | None:
        if process.pid not in self._stages:
            self._stages[process.pid] = self._stage_of(process.cmdline())
        return self._stages[process.pid]

    def sample(self, full: bool) -> None:
        """Fold each running stage's memory into its peaks; ``full``: read the PSS too."""
        import psutil

        try:
            processes = self._root.children(recursive=True)
        except psutil.Error:
            return
        groups: dict[str, list[Any]] = {}
        for process in sorted(processes, key=lambda p: p.pid):
            with contextlib.suppress(psutil.Error):
                # A stage's process and its pool workers (forked: same command line) form one group, the
                # stage's process first (workers have higher pids).
                stage = self._stage(process)
                if stage in self._watched:
                    groups.setdefault(stage, []).append(process)
        for stage, group in groups.items():
            self.peaks.setdefault(stage, Peaks()).add_sample(group, with_pss=full)


def dvc_repro(workspace: Path, *targets: str, watch: Collection[str] = ()) -> tuple[common.StageRun, dict[str, Peaks]]:
    """Run ``dvc repro`` in ``workspace``; return the run and the peak memory of the ``watch`` stages."""
    from cvpipe.pipeline.commands import dvc

    monitors: list[StageMonitor] = []

    def monitor(pid: int) -> StageMonitor:
        monitors.append(StageMonitor(pid, watch))
        return monitors[-1]

    done = common.run_stages(dvc("--wait-for-lock", "repro", *targets), workspace, monitor if watch else None)
    if done.returncode != 0:
        raise RuntimeError(f"dvc repro {' '.join(targets)} failed in {workspace}:\n{done.output[-3000:]}")
    return done, monitors[0].peaks if monitors else {}


@dataclass
class FirstRun:
    """The DAG's first ``dvc repro``: wall time, DVC's output, per-stage seconds and watched stages' memory."""

    seconds: float = 0.0
    output: str = ""
    stage_seconds: dict[str, float] = field(default_factory=dict)
    peaks: dict[str, Peaks] = field(default_factory=dict)


def reproduce_two_at_a_time(workspace: Path, watch: Collection[str] = DAG_MEMORY_STAGES) -> FirstRun:
    """Reproduce the whole DAG: the data stages, then two chains of variants side by side, then the rest.

    DVC releases its repo lock while a stage's command runs, so two ``dvc repro --single-item`` of stages that
    share no outputs run side by side (``--wait-for-lock`` for the moments they both hold it); on two cores the five
    independent trainings then take about half as long. fine_tuning starts from feature_extraction_aug's
    model, so those two share a chain.
    """
    from concurrent.futures import ThreadPoolExecutor

    started = time.perf_counter()
    data, peaks = dvc_repro(workspace, "features", watch=watch)
    # --single-item: each run locks only its own stages' files (two runs reaching the shared upstream stages
    # would clash on DVC's output locks), so the targets are listed in order, each training before its evaluation.
    chains = [
        [f"{stage}@{v}" for v in chain for stage in ("train", "evaluate")] for chain in (VARIANTS[:3], VARIANTS[3:])
    ]
    with ThreadPoolExecutor(max_workers=len(chains)) as pool:
        variants = [run for run, _ in pool.map(lambda chain: dvc_repro(workspace, "--single-item", *chain), chains)]
    rest, _ = dvc_repro(workspace)
    runs = [data, *variants, rest]
    return FirstRun(
        time.perf_counter() - started,
        "\n".join(run.output for run in runs),
        {name: took for run in runs for name, took in run.stages},
        peaks,
    )


def timed(argv: Sequence[str], cwd: Path) -> float:
    """Wall seconds of a command that must succeed."""
    started = time.perf_counter()
    subprocess.run(list(argv), cwd=cwd, env=common.tool_env(), check=True, capture_output=True)
    return time.perf_counter() - started


def noop_runs(workspace: Path, count: int, *args: str) -> list[float]:
    """Time ``count`` no-op ``dvc repro`` runs, checking that nothing ran."""
    seconds = []
    for _ in range(count):
        done, _ = dvc_repro(workspace, *args)
        if done.stages:
            raise RuntimeError(f"the workspace was not up to date:\n{done.output[-2000:]}")
        seconds.append(done.seconds)
    return seconds


# ------------------------------------------------------------------------------------------- direct runs


def write_params(folder: Path, archive: Path) -> Path:
    """The project's params.yaml with :func:`overrides` merged in, as a stage reads it."""
    from cvpipe.config import deep_merge

    base = yaml.safe_load((common.ROOT / "params.yaml").read_text(encoding="utf-8")) or {}
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(deep_merge(base, overrides(archive)), sort_keys=False), encoding="utf-8")
    return path


def cvpipe_stage(stage: str, params: Path, *args: str | Path) -> common.Measured:
    """Run one ``cvpipe`` stage command; return its measurement (it must succeed)."""
    argv = [str(Path(sys.executable).with_name("cvpipe")), stage, *map(str, args), "--params", str(params)]
    measured = common.run_measured(argv, cwd=params.parent)
    if measured.returncode != 0:
        raise RuntimeError(f"cvpipe {stage} failed:\n{measured.output[-3000:]}")
    return measured


def all_images_split(archive: Path, out: Path) -> Path:
    """A split table putting every archive member in a split (80/10/10 by position), as the split stage writes it.

    The decode stage reads only ``split``, ``row``, ``member`` and ``label_index``; building the table from the
    archive's listing lets decode's memory be measured without waiting for ingest.
    """
    import pandas as pd

    members = common.image_members(archive)
    table = pd.DataFrame({"member": members})
    table["label"] = [Path(member).name.split(".")[0] for member in members]
    table["label_index"] = table["label"].map(common.CLASSES.index).astype("int64")
    table["split"] = np.array([SPLITS[0]] * 8 + list(SPLITS[1:]))[np.arange(len(table)) % 10]
    table["row"] = table.groupby("split").cumcount()
    table["sha256"] = table["group"] = table["member"]  # not read by decode
    out.parent.mkdir(parents=True, exist_ok=True)
    table[["split", "row", "member", "sha256", "label", "label_index", "group"]].to_parquet(out, index=False)
    return out


def features_input(decoded: Path, count: int, dest: Path) -> Path:
    """A decoded-image cache holding the first ``count`` train images of ``decoded``."""
    dest.mkdir(parents=True, exist_ok=True)
    images = np.load(split_file(decoded, "train"), mmap_mode="r")
    if count > len(images):
        raise ValueError(f"{count} feature images asked, the decoded cache has {len(images)}")
    np.save(split_file(dest, "train"), np.asarray(images[:count]))
    np.save(labels_file(dest, "train"), np.load(labels_file(decoded, "train"))[:count])
    return dest


def memory_runs(
    folder: Path, big: Path, small_path: Path, images: int, small: int, feature_counts: Sequence[int]
) -> dict[tuple[str, int], common.Measured]:
    """Run ingest and split at ``small`` members, decode at both sizes, features at ``feature_counts``."""
    folder.mkdir()
    params = write_params(folder, small_path)
    manifest = f"manifest/{MANIFEST_NAME}"
    measured = {
        ("ingest", small): cvpipe_stage("ingest", params, "--archive", small_path, "--out", "manifest"),
        ("split", small): cvpipe_stage("split", params, "--manifest", manifest, "--out", "splits"),
    }
    for count, archive in ((small, small_path), (images, big)):
        table = all_images_split(archive, folder / f"all-{count}" / SPLITS_NAME)
        measured[("decode", count)] = cvpipe_stage(
            "decode", params, "--archive", archive, "--splits", table, "--out", f"decoded-{count}"
        )
    for count in feature_counts:
        cache_dir = features_input(folder / f"decoded-{images}", count, folder / f"features-in-{count}")
        measured[("features", count)] = cvpipe_stage("features", params, "--images", cache_dir, "--out", f"f-{count}")
    return measured


@contextlib.contextmanager
def _step(label: str) -> Iterator[None]:
    started = time.perf_counter()
    print(f"[dag_scale] {label} ...", flush=True)
    yield
    print(f"[dag_scale] {label}: {time.perf_counter() - started:.0f} s", flush=True)


# -------------------------------------------------------------------------------------------------- run


@dataclass
class NoopTimes:
    """Seconds of the no-op runs and of what bounds them."""

    whole: list[float]
    floor: list[float]
    imports: list[float]
    rehash: float


def first_run_with_memory(
    workspace: Path, work: Path, archives: tuple[Path, Path], images: int, small: int, feature_counts: Sequence[int]
) -> tuple[FirstRun, dict[tuple[str, int], common.Measured]]:
    """The DAG's first run and the memory runs, side by side.

    Memory does not depend on the CPU others take, and nothing is timed until both are done.
    """
    dag: dict[str, Any] = {}

    def first_run() -> None:
        try:
            dag["run"] = reproduce_two_at_a_time(workspace)
        except Exception as error:  # re-raised below, in the main thread
            dag["error"] = str(error)

    thread = threading.Thread(target=first_run)
    thread.start()
    try:
        measured = memory_runs(work / "direct", *archives, images, small, feature_counts)
    finally:
        thread.join()
    if "error" in dag:
        raise RuntimeError(dag["error"])
    return dag["run"], measured


def time_noops(workspace: Path, count: int) -> NoopTimes:
    """No-op runs of the whole DAG, of one stage (DVC's floor), ``import dvc.cli``, and one after a touch."""
    noop_runs(workspace, 1)  # the first no-op after a run can still write the state database
    whole = noop_runs(workspace, count)
    floor = noop_runs(workspace, max(3, count // 2), "download", "--single-item")
    imports = [timed([sys.executable, "-c", "import dvc.cli"], workspace) for _ in range(3)]
    os.utime(workspace / ARCHIVE)  # same bytes, new mtime: a state-database miss
    return NoopTimes(whole, floor, imports, noop_runs(workspace, 1)[0])


def noop_result(
    times: NoopTimes, first: FirstRun, lock_stages: int, images: int, side: int, archive_mib: float
) -> common.Result:
    """The noop row."""
    noop = statistics.median(times.whole)
    ranked = sorted(first.stage_seconds.items(), key=lambda item: item[1], reverse=True)
    return common.Result.alone(
        "noop",
        f"no-op `dvc repro` of the whole DAG ({lock_stages} stages) with a {images:,}-image archive",
        f"{noop:.2f} s",
        f"<= {NOOP_TARGET_SECONDS:g} s",
        noop <= NOOP_TARGET_SECONDS,
        [
            f"archive: {images:,} JPEGs of {side}x{side} ({archive_mib:.0f} MiB); the DAG's first `dvc repro` ran "
            f"{first.output.count('Running stage')} stages in {first.seconds:.0f} s, two at a time, alongside the "
            "memory runs; stages, longest first: " + ", ".join(f"{name} {took:.0f} s" for name, took in ranked),
            f"no-op `dvc repro`, whole DAG: median {noop:.2f} s (runs: {common.runs(times.whole)})",
            "no-op `dvc repro download --single-item` (one stage, no deps: DVC's start-up and repo-opening "
            f"floor): median {statistics.median(times.floor):.2f} s (runs: {common.runs(times.floor)})",
            f"`python -c 'import dvc.cli'` alone: median {statistics.median(times.imports):.2f} s "
            f"(runs: {common.runs(times.imports)})",
            f"no-op after the archive's mtime changed (DVC rehashes its {archive_mib:.0f} MiB): {times.rehash:.2f} s",
        ],
    )


def memory_result(
    peaks: dict[tuple[str, int], Peaks],
    seconds: dict[tuple[str, int], float],
    small: int,
    images: int,
    feature_counts: Sequence[int],
    size: int,
) -> common.Result:
    """The memory row: growth of each stage's summed peak RSS from the smaller to the larger count."""
    mib = common.mib
    details, growths = [], []
    for stage in STAGES:
        counts = sorted(count for (name, count) in peaks if name == stage)
        low, high = peaks[(stage, counts[0])], peaks[(stage, counts[-1])]
        growth = high.rss / low.rss - 1 if low.rss else float("inf")
        growths.append((stage, growth))
        where = " (inside the DAG's first run)" if stage in DAG_MEMORY_STAGES else ""
        details.append(
            f"{stage}{where}, {counts[0]:,} -> {counts[-1]:,}: summed RSS {mib(low.rss)} -> {mib(high.rss)} "
            f"({growth:+.1%}); main process RSS {mib(low.main)} -> {mib(high.main)} "
            f"({high.main / low.main - 1:+.1%}); summed PSS {mib(low.pss)} -> {mib(high.pss)} "
            f"({high.pss / low.pss - 1:+.1%})"
            if low.main and low.pss
            else f"{stage}: not measured"
        )
    worst_stage, worst = max(growths, key=lambda item: item[1])
    return common.Result.alone(
        "memory",
        f"peak memory of ingest, split, decode, features, {small:,} -> {images:,} images",
        f"worst: {worst_stage} {worst:+.0%}",
        f"< {GROWTH_TARGET:.0%} growth",
        all(growth < GROWTH_TARGET for _, growth in growths),
        [
            f"sampled every 50 ms (the PSS every {common.PSS_EVERY}th sample: it costs ~20 ms of CPU a TensorFlow "
            "process); judged on the peak RSS summed over the stage's processes (pool workers included): a page a "
            "forked worker still shares with its parent counts once per process, so memory the parent grows "
            "before forking counts several times (a strict measure). Also shown: the main process's RSS alone, "
            "and the summed PSS (shared pages split among the processes sharing them; it moves with whatever else "
            "maps the same libraries, here the DAG's TensorFlow stages running alongside)",
            *details,
            f"features at {feature_counts[0]:,} and {feature_counts[-1]:,} images (same 5x step; "
            f"`--feature-counts 5000,25000` for the full sizes), {size} px, random weights",
            "seconds of the runs outside the DAG: "
            + ", ".join(f"{stage}@{count:,} {took:.0f} s" for (stage, count), took in seconds.items()),
        ],
    )


def run(
    images: int = 25_000,
    small: int = 5_000,
    feature_counts: tuple[int, ...] = (500, 2_500),
    side: int = ARCHIVE_SIDE,
    noop_count: int = NOOP_RUNS,
    cache: Path | None = None,
) -> list[common.Result]:
    """Measure and return the noop and memory result rows.

    Args:
        images: archive members of the whole-DAG workspace (Kaggle's 25,000).
        small: the smaller count of the memory runs.
        feature_counts: images of the two features runs (the same 5x step, smaller than the archive's).
        side: side in pixels of the archive's JPEGs.
        noop_count: timed no-op runs of the whole DAG.
        cache: where the generated archives are kept between runs.
    """
    from cvpipe.pipeline.workspace import prepare_workspace

    archives = common.synthetic_archive(images, cache, side), common.synthetic_archive(small, cache, side)
    with common.scratch("dag") as work:
        workspace = prepare_workspace(common.ROOT, work / "workspace", overrides(archives[0]))
        with _step(f"whole DAG at {images} members, memory runs alongside"):
            first, measured = first_run_with_memory(workspace, work, archives, images, small, feature_counts)
        with _step("no-op runs"):
            noops = time_noops(workspace, noop_count)
        lock_stages = len((yaml.safe_load((workspace / "dvc.lock").read_text()) or {}).get("stages", {}))
    peaks = {(stage, images): first.peaks.get(stage, Peaks()) for stage in DAG_MEMORY_STAGES}
    peaks.update({key: value.peaks for key, value in measured.items()})
    seconds = {key: value.seconds for key, value in measured.items()}
    archive_mib = archives[0].stat().st_size / 2**20
    return [
        noop_result(noops, first, lock_stages, images, side, archive_mib),
        memory_result(peaks, seconds, small, images, feature_counts, SIZE),
    ]


if __name__ == "__main__":
    quick = common.QUICK  # the whole DAG still runs once: a few minutes
    common.run_main(
        "dag-scale",
        __doc__,
        run,
        images=400 if quick else 25_000,
        small=100 if quick else 5_000,  # the split asks 40 a class
        feature_counts=(8, 40) if quick else (500, 2_500),
        side=ARCHIVE_SIDE,
        noop_count=1 if quick else NOOP_RUNS,
    )
