"""Faults (issue 7): SIGKILL every stage half-way under the real ``dvc repro``, and a full disk mid-cache.

**Kills.** A stage is killed at a chosen instant: just before it renames one chosen output into place
(``KILL_BEFORE``), after some of its outputs are committed and while the rest exist only as temporary files.
The instant is exact, not raced: a test-only ``sitecustomize`` put on ``PYTHONPATH`` (nothing in cvpipe)
adds an audit hook to every stage process that DVC starts. The hook logs every file the stage opens for
writing and every rename, and when the stage is about to rename the chosen output it sends SIGKILL to its own
process group: ``dvc repro``, the shell, the stage and its workers die at once, as under the OOM killer.
Polling for temporary files instead would miss most writes (a JSON or a 30 kB cache is written in
microseconds) and be flaky.

The chain workspace runs ``dvc repro`` with every stage still to kill armed; the first armed stage DVC runs
is killed, the next ``dvc repro`` must finish it (and is killed in the next armed stage), and so on, until an
unarmed ``dvc repro`` completes. Meanwhile a reference workspace with the same params runs once,
uninterrupted, on the other core. The tests then assert, per killed stage:

- it was killed exactly before its chosen commit, and DVC did not record it as done;
- at the kill, every file in an output area got there by a rename (committed whole) or is a temporary or
  a progress log; the committed ones equal the uninterrupted run's; and no stage process, in either
  workspace, ever opened a file for writing at an output's final path;
- the next ``dvc repro`` completed it, ``dvc status`` is clean, and its outputs equal the uninterrupted
  run's (byte for byte where they are deterministic; see ``_comparable`` for timestamps and ids);
- no temporary file of a killed writer is left anywhere.

Progress logs are written in place on purpose and are not results: OpenLineage's ``events.jsonl`` (a START
line without COMPLETE is how a reader sees a killed run) and dvclive's ``live/`` curves. DVC records neither
stage as done and deletes both before the rerun.

Killing all 17 stages costs about five CPU-minutes (each model stage imports TensorFlow three times);
``make test`` kills one stage of each kind of writer (``DEFAULT_KILLS``), ``CVPIPE_FAULT_STAGES=all`` (or a
comma-separated list of stages) kills more.

**Full disk.** A stage writes its cache into a size-limited tmpfs (mounted in a private mount namespace, so
neither root nor cleanup is needed): it must exit 2 with one ``error:`` line saying what to do, remove its
temporary file and leave the previous outputs as they were. ``tests/unit/test_io.py`` injects ENOSPC where
namespaces are not available.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from cvpipe.config import VARIANTS, deep_merge
from cvpipe.pipeline.commands import dvc, tool_env
from cvpipe.pipeline.workspace import prepare_workspace
from tests.e2e.test_dvc_full_dag import TINY_MODELS
from tests.e2e.test_dvc_pipeline import ROOT

pytestmark = pytest.mark.slow

# Deterministic training so that a rerun's weights can be compared with the uninterrupted run's; no
# augmentation previews, so that the report does not import TensorFlow (the kill-all run is long enough).
FAULT_PARAMS: dict[str, Any] = deep_merge(
    TINY_MODELS, {"train": {"deterministic": True}, "report": {"augmented_images": 0}}
)

# stage -> the output it is killed just before renaming into place (workspace-relative).
KILL_BEFORE: dict[str, str] = {
    "download": "data/raw/SOURCE.json",  # the archive is in place, its provenance record not
    "ingest": "data/manifest/images.parquet",  # the validation report is in place, the manifest not
    "split": "data/splits/splits.parquet",  # the split report is in place, the split table not
    "decode": "data/cache/images/val_labels.npy",  # train cache and labels, val images in place
    "features": "data/cache/vgg16/val_labels.npy",  # same, for the VGG16 features
    **{f"train@{name}": f"models/{name}.keras" for name in VARIANTS},  # trained; the model not in place
    # Evaluated; nothing written yet. Its temporary file lies in reports/metrics, a folder the report reads.
    **{f"evaluate@{name}": f"reports/metrics/{name}.json" for name in VARIANTS},
    "audit": "reports/audit/report.json",  # thumbnails in place; the report (in a folder read whole) not
    "report": "reports/index.html",  # everything read, the page complete in its temporary file
}
# One stage per kind of writer: zip, JSON, parquet (pyarrow), positioned writes from worker processes,
# streamed arrays, a Keras checkpoint, CSV/JSON metrics, thumbnails.
DEFAULT_KILLS = (
    "download",
    "ingest",
    "split",
    "decode",
    "features",
    "train@feature_extraction",
    "evaluate@feature_extraction",
    "audit",
)
OUTPUT_AREAS = ("data", "models", "reports")
NOT_OUTPUTS = ("data/staging/",)  # the download's resumable cache, outside DVC's outputs
# Written in place by design (see the module docstring).
PROGRESS_LOGS = re.compile(r"reports/lineage/[^/]+/events\.jsonl|reports/train/[^/]+/live/.+")
TEMP_NAME = re.compile(r"\..+\.(tmp|partial\.keras)")
RUN_TIMEOUT_S = 900

HOOK = r'''"""Test-only (tests/e2e/test_faults.py): log a DVC stage's writes; SIGKILL it before a chosen rename."""
import json
import os
import signal
import sys
import threading


def _install(log, stage, root, kill_before):
    local = threading.local()

    def record(entry):
        local.busy = True  # the log's own open() must not be logged
        try:
            with open(log, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"stage": stage, "pid": os.getpid(), **entry}) + "\n")
        finally:
            local.busy = False

    def inside(path):
        path = os.path.realpath(os.fsdecode(path))
        return path[len(root) + 1 :] if path.startswith(root + os.sep) else None

    def hook(event, args):
        if getattr(local, "busy", False):
            return
        if event == "os.rename":
            target = inside(args[1])
            if target is not None and target == kill_before:
                record({"kill": target})
                os.killpg(os.getpgrp(), signal.SIGKILL)
            if target is not None:
                record({"rename": target})
        elif event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            mode, flags = args[1], args[2] or 0
            writes = any(c in mode for c in "wax+") if isinstance(mode, str) else flags & (os.O_WRONLY | os.O_RDWR)
            target = inside(args[0]) if writes else None
            if target is not None:
                record({"open": target})

    sys.addaudithook(hook)


_stage = os.environ.get("DVC_STAGE", "").rsplit(":", 1)[-1]
if _stage and os.environ.get("CVPIPE_FAULT_LOG") and os.environ.get("DVC_ROOT"):
    _install(
        os.environ["CVPIPE_FAULT_LOG"],
        _stage,
        os.path.realpath(os.environ["DVC_ROOT"]),
        json.loads(os.environ.get("CVPIPE_FAULT_KILL", "{}")).get(_stage),
    )
'''


def selected_kills() -> tuple[str, ...]:
    """The stages to kill: ``DEFAULT_KILLS``, or ``$CVPIPE_FAULT_STAGES`` (``all`` or a comma list)."""
    chosen = os.environ.get("CVPIPE_FAULT_STAGES", "").strip()
    if not chosen:
        return DEFAULT_KILLS
    if chosen == "all":
        return tuple(KILL_BEFORE)
    stages = tuple(name.strip() for name in chosen.split(",") if name.strip())
    unknown = sorted(set(stages) - set(KILL_BEFORE))
    if unknown:
        raise pytest.UsageError(f"CVPIPE_FAULT_STAGES: unknown stage(s) {unknown}; known: {sorted(KILL_BEFORE)}")
    return stages


KILLS = selected_kills()
# What `dvc repro` is asked for: the whole DAG when the report is killed, else just what the kills need.
TARGETS: tuple[str, ...] = () if "report" in KILLS else tuple(KILLS)


# ---------------------------------------------------------------------------------------------------------
# Running DVC with the hook


def _env(hook_dir: Path, log: Path, kills: dict[str, str]) -> dict[str, str]:
    """DVC's environment plus the hook: where it logs, and which stage to kill before which rename."""
    env = tool_env()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hook_dir), env.get("PYTHONPATH")]))
    env["CVPIPE_FAULT_LOG"] = str(log)
    env["CVPIPE_FAULT_KILL"] = json.dumps(kills)
    return env


def _start_repro(workspace: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    """``dvc repro`` in its own process group, so that the hook's SIGKILL takes DVC down with the stage."""
    return subprocess.Popen(
        dvc("repro", *TARGETS),
        cwd=workspace,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _finish(process: subprocess.Popen[str]) -> tuple[int, str]:
    """Wait for a ``dvc repro``; return its exit code (``-9`` when the hook killed it) and output."""
    try:
        output, _ = process.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        _kill_group(process)
        output, _ = process.communicate()
        pytest.fail(f"dvc repro ran past {RUN_TIMEOUT_S} s:\n{output[-3000:]}")
    return process.returncode, output


def _kill_group(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)


def read_log(path: Path) -> list[dict[str, Any]]:
    """The hook's entries; a line cut by the SIGKILL (a worker writing at that instant) is skipped."""
    if not path.exists():
        return []
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue
    return entries


def output_files(workspace: Path) -> list[str]:
    """Every file in the output areas, workspace-relative (but the ``.gitignore`` files DVC may add)."""
    found = []
    for area in OUTPUT_AREAS:
        for path in (workspace / area).rglob("*"):
            relative = path.relative_to(workspace).as_posix()
            if path.is_file() and not relative.startswith(NOT_OUTPUTS) and path.name != ".gitignore":
                found.append(relative)
    return sorted(found)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def lock_stages(workspace: Path) -> dict[str, Any]:
    """The stages ``dvc.lock`` records as done."""
    lock = workspace / "dvc.lock"
    return yaml.safe_load(lock.read_text())["stages"] if lock.exists() else {}


# ---------------------------------------------------------------------------------------------------------
# Fixtures: the reference run (background) and the kill chain


@dataclass
class Reference:
    """An uninterrupted ``dvc repro`` of the same DAG, running in the background until first needed."""

    workspace: Path
    log: Path
    process: subprocess.Popen[str]
    result: tuple[int, str] | None = None

    def done(self) -> Path:
        if self.result is None:
            self.result = _finish(self.process)
        code, output = self.result
        assert code == 0, f"the uninterrupted reference run failed:\n{output[-3000:]}"
        return self.workspace


@dataclass
class Kill:
    """What one killed ``dvc repro`` left behind."""

    stage: str
    target: str
    target_existed: bool
    misplaced: list[str]  # files in an output area that no rename put there
    committed: dict[str, str]  # outputs the killed run had renamed into place -> sha256
    recorded_as_done: bool


@dataclass
class Chain:
    """The workspace whose stages were killed one by one, the hook's log of each ``dvc repro``, the kills."""

    workspace: Path
    logs: list[Path] = field(default_factory=list)
    kills: dict[str, Kill] = field(default_factory=dict)


@pytest.fixture(scope="module")
def hook_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fault_hook")
    (folder / "sitecustomize.py").write_text(HOOK, encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, hook_dir: Path) -> Iterator[Reference]:
    base = tmp_path_factory.mktemp("faults_reference")
    workspace = prepare_workspace(ROOT, base / "ws", FAULT_PARAMS)
    log = base / "writes.jsonl"
    ref = Reference(workspace, log, _start_repro(workspace, _env(hook_dir, log, {})))
    yield ref
    _kill_group(ref.process)


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory, hook_dir: Path, reference: Reference) -> Chain:
    """Kill each selected stage once, resuming with ``dvc repro`` each time, then finish uninterrupted."""
    base = tmp_path_factory.mktemp("faults_chain")
    result = Chain(prepare_workspace(ROOT, base / "ws", FAULT_PARAMS))
    armed = {stage: KILL_BEFORE[stage] for stage in KILLS}
    for attempt in range(len(KILLS) + 1):
        log = base / f"writes-{attempt}.jsonl"
        result.logs.append(log)
        code, output = _finish(_start_repro(result.workspace, _env(hook_dir, log, armed)))
        killed = [entry for entry in read_log(log) if "kill" in entry]
        if not killed:
            assert code == 0, f"dvc repro failed after the kills {sorted(result.kills)}:\n{output[-3000:]}"
            assert not armed, (
                f"these stages finished without renaming these outputs into place, so they do not write them "
                f"atomically (or KILL_BEFORE is out of date): {armed}"
            )
            return result
        assert code == -signal.SIGKILL, f"the hook killed {killed[0]} but dvc repro exited {code}:\n{output}"
        kill = _inspect_kill(result, killed[0], read_log(log))
        result.kills[kill.stage] = kill
        del armed[kill.stage]
    pytest.fail(f"more dvc repro runs than kills: {sorted(result.kills)} killed, {sorted(armed)} armed")


def _inspect_kill(chain: Chain, kill: dict[str, Any], this_run: list[dict[str, Any]]) -> Kill:
    """Look at the output areas right after a kill, before anything else touches them."""
    workspace, stage = chain.workspace, kill["stage"]
    renamed = {entry["rename"] for log in chain.logs for entry in read_log(log) if "rename" in entry}
    misplaced = [
        path
        for path in output_files(workspace)
        if path not in renamed and not TEMP_NAME.fullmatch(Path(path).name) and not PROGRESS_LOGS.fullmatch(path)
    ]
    committed = {
        entry["rename"]: sha256(workspace / entry["rename"])
        for entry in this_run
        if entry.get("stage") == stage and "rename" in entry and (workspace / entry["rename"]).is_file()
    }
    return Kill(
        stage=stage,
        target=kill["kill"],
        target_existed=(workspace / kill["kill"]).exists(),
        misplaced=misplaced,
        committed=committed,
        recorded_as_done=stage in lock_stages(workspace),
    )


# ---------------------------------------------------------------------------------------------------------
# Comparing with the uninterrupted run


def _keras_identity(path: Path) -> tuple[bytes, str]:
    """A .keras file minus what differs between identical trainings: the save date, Python object ids."""
    with zipfile.ZipFile(path) as archive:
        weights = archive.read("model.weights.h5")
        config = archive.read("config.json").decode("utf-8")
    return weights, re.sub(r'"shared_object_id": \d+', '"shared_object_id": 0', config)


def _without(path: Path, *keys: str) -> dict[str, Any]:
    """A JSON object without some (nested, dotted) keys."""
    payload = json.loads(path.read_text())
    for key in keys:
        *parents, last = key.split(".")
        holder = payload
        for parent in parents:
            holder = holder[parent]
        holder.pop(last)
    return payload


def _compared(path: str) -> bool:
    """Outputs compared between runs: all but lineage records and progress logs (timestamps, run ids)."""
    return not path.startswith("reports/lineage/") and not PROGRESS_LOGS.fullmatch(path)


def _byte_identical(path: str) -> bool:
    """Outputs that two runs write byte for byte (the others: see ``_comparable``)."""
    return _compared(path) and not NOT_BYTE_IDENTICAL.fullmatch(path)


NOT_BYTE_IDENTICAL = re.compile(
    r"data/raw/SOURCE\.json|models/[^/]+\.keras|reports/train/[^/]+/history\.json|reports/index\.html"
)


def _comparable(workspace: Path, relative: str) -> object:
    """What must be equal between two runs: the bytes, or the bytes minus timestamps, durations and ids."""
    path = workspace / relative
    if relative == "data/raw/SOURCE.json":
        return _without(path, "retrieved_at")
    if relative.endswith(".keras"):
        return _keras_identity(path)
    if relative.endswith("/history.json"):
        return _without(path, "summary.seconds")
    if relative == "reports/index.html":
        return True  # dates, durations and run ids throughout; what it shows is compared file by file
    return sha256(path)


def _files_under(workspace: Path, out: str) -> list[str]:
    path = workspace / out
    children = [child for child in path.rglob("*") if child.is_file()] if path.is_dir() else [path]
    return sorted(child.relative_to(workspace).as_posix() for child in children)


def _stage_outs(workspace: Path, stage: str) -> dict[str, str]:
    """The outputs DVC recorded for ``stage``: path -> md5."""
    return {out["path"]: out["md5"] for out in lock_stages(workspace)[stage]["outs"]}


# ---------------------------------------------------------------------------------------------------------
# The kill tests, one per killed stage


@pytest.mark.parametrize("stage", KILLS)
def test_kill_lands_half_way_and_dvc_does_not_record_the_stage(chain: Chain, stage: str) -> None:
    kill = chain.kills.get(stage)
    assert kill is not None, f"{stage} was never killed: it did not rename {KILL_BEFORE[stage]} into place"
    assert kill.target == KILL_BEFORE[stage]
    assert not kill.target_existed, f"{kill.target} was in place before its rename: not written atomically"
    assert not kill.recorded_as_done, f"dvc.lock records {stage} as done after it was killed"


@pytest.mark.parametrize("stage", KILLS)
def test_no_partial_file_ever_in_an_outputs_place(chain: Chain, reference: Reference, stage: str) -> None:
    kill = chain.kills[stage]
    assert kill.misplaced == [], f"killed {stage}: files in an output's place that no rename put there"
    ref = reference.done()
    for path, digest in kill.committed.items():
        if _byte_identical(path):
            assert digest == sha256(ref / path), f"{path}, in place when {stage} was killed, is not complete"
    # At every instant, not only at the kill: no stage process, killed or not, in either workspace, opened an
    # output's final path for writing (pyarrow and HDF5 write from C and are checked by the kill above).
    for log in [*chain.logs, reference.log]:
        direct = {
            entry["open"]
            for entry in read_log(log)
            if entry.get("stage") == stage
            and "open" in entry
            and entry["open"].startswith(tuple(f"{area}/" for area in OUTPUT_AREAS))
            and not TEMP_NAME.fullmatch(Path(entry["open"]).name)
            and not PROGRESS_LOGS.fullmatch(entry["open"])
        }
        assert not direct, f"{stage} wrote these outputs in place, not through a temporary file: {sorted(direct)}"


def test_next_repro_completes_and_leaves_nothing_to_do(chain: Chain) -> None:
    assert set(chain.kills) == set(KILLS)
    done = lock_stages(chain.workspace)
    assert set(KILLS) <= set(done)
    status = subprocess.run(
        dvc("status", *TARGETS), cwd=chain.workspace, env=tool_env(), text=True, capture_output=True, check=True
    )
    assert status.stdout.strip().endswith("Data and pipelines are up to date."), status.stdout
    for stage in KILLS:
        record = json.loads((chain.workspace / f"reports/lineage/{stage}/record.json").read_text())
        assert record["status"] == "completed", stage


@pytest.mark.parametrize("stage", KILLS)
def test_outputs_equal_an_uninterrupted_run(chain: Chain, reference: Reference, stage: str) -> None:
    ref = reference.done()
    ours, theirs = _stage_outs(chain.workspace, stage), _stage_outs(ref, stage)
    assert sorted(ours) == sorted(theirs)
    for out, md5 in theirs.items():
        files = [path for path in _files_under(ref, out) if _compared(path)]
        assert [path for path in _files_under(chain.workspace, out) if _compared(path)] == files
        for path in files:
            assert _comparable(chain.workspace, path) == _comparable(ref, path), f"{path} differs after the kill"
        if all(_byte_identical(path) for path in _files_under(ref, out)):
            assert ours[out] == md5, f"dvc.lock: {out} differs from the uninterrupted run's"


def test_killed_writers_leave_no_temporary_files(chain: Chain) -> None:
    assert [path for path in output_files(chain.workspace) if TEMP_NAME.fullmatch(Path(path).name)] == []


# ---------------------------------------------------------------------------------------------------------
# Full disk


def _namespaces_work() -> bool:
    """Whether a private mount namespace (unprivileged via a user namespace) can mount a tmpfs here."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", "mount -t tmpfs -o size=4k tmpfs /mnt"],
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


@dataclass
class FullDiskRun:
    code: int
    stderr: str
    left: dict[str, str]  # file name -> sha256, in the full folder after the run


def run_on_full_disk(command: list[str], out: Path, previous: dict[str, bytes], spare: int, cwd: Path) -> FullDiskRun:
    """Run ``command`` with ``out`` a tmpfs holding ``previous`` and ``spare`` bytes more, then list it.

    The tmpfs lives in a private mount namespace: it vanishes with the command, and the real ``out`` (an
    empty folder) is never touched.
    """
    out.mkdir(parents=True, exist_ok=True)
    seed = out.parent / f"{out.name}.previous"
    seed.mkdir()
    for name, data in previous.items():
        (seed / name).write_bytes(data)
    pages = len(previous) + -(-spare // 4096)  # tmpfs counts whole 4 KiB pages
    script = (
        f'mount -t tmpfs -o size={pages * 4}k tmpfs "$1" && cp "$2"/* "$1"/ && shift 2 && "$@"; code=$?; '
        f'echo "exit=$code" >&2; cd "{out}" && sha256sum .??* * 2>/dev/null; true'
    )
    result = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, "sh", str(out), str(seed), *command],
        cwd=cwd,
        env=tool_env(),
        text=True,
        capture_output=True,
        check=False,
    )
    code = int(re.findall(r"^exit=(\d+)$", result.stderr, re.M)[-1])
    stderr = re.sub(r"^exit=\d+\n?", "", result.stderr, flags=re.M)
    left = {name: digest for digest, name in (line.split(maxsplit=1) for line in result.stdout.splitlines())}
    return FullDiskRun(code, stderr, left)


FULL_DISK_STAGES = {
    # stage: (command after `cvpipe`, output folder, the output that does not fit)
    "ingest": (["ingest", "--archive", "{ws}/data/raw/images.zip"], "data/manifest", "images.parquet"),
    "decode": (
        ["decode", "--archive", "{ws}/data/raw/images.zip", "--splits", "{ws}/data/splits/splits.parquet"],
        "data/cache/images",
        "train.npy",
    ),
}


@pytest.mark.skipif(not _namespaces_work(), reason="no private mount namespace here (unshare/userns not allowed)")
@pytest.mark.parametrize("stage", sorted(FULL_DISK_STAGES))
def test_full_disk_gives_one_clear_line_and_keeps_previous_outputs(
    reference: Reference, tmp_path: Path, stage: str
) -> None:
    ws = reference.done()
    args, folder, too_big = FULL_DISK_STAGES[stage]
    outputs = sorted(path.name for path in (ws / folder).iterdir())
    previous = {name: f"previous {name}\n".encode() for name in outputs}
    # Room for every output but the one that does not fit (the first written, or the largest).
    spare = sum((ws / folder / name).stat().st_size for name in outputs if name != too_big)
    spare = min(spare, (ws / folder / too_big).stat().st_size // 2)
    command = [
        str(Path(sys.executable).parent / "cvpipe"),
        *(arg.format(ws=ws) for arg in args),
        "--out",
        str(tmp_path / "out"),
        "--params",
        str(ws / "params.yaml"),
    ]
    run = run_on_full_disk(command, tmp_path / "out", previous, spare, cwd=tmp_path)
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert run.code == 2, run.stderr
    assert "Traceback" not in run.stderr
    assert len(errors) == 1 and errors[0] == run.stderr.strip().splitlines()[-1], run.stderr
    assert "no space left on device writing" in errors[0] and "free some space" in errors[0]
    assert not [name for name in run.left if TEMP_NAME.fullmatch(name)], run.left
    assert set(run.left) == set(outputs)
    assert run.left[too_big] == hashlib.sha256(previous[too_big]).hexdigest(), "the previous output was touched"
    for name, digest in run.left.items():  # each file is the previous one or a complete new one
        assert digest in (hashlib.sha256(previous[name]).hexdigest(), sha256(ws / folder / name)), name
