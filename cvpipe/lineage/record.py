"""Lineage records: for every stage run, what it read and wrote, with which params, code, environment and run.

``dvc.lock`` knows the hashes of a stage's dependencies and outputs, but not when the stage ran, on which
commit (and whether the tree was dirty), with which package versions, on which device, or for which Prefect
flow run. Each stage's CLI wrapper (:func:`cvpipe.lineage.track_stage`) writes that down in
``reports/lineage/<stage>/``:

* ``record.json``: the lineage record (see :func:`build_record`), one per stage run, listing every artifact
  the stage produced with its DVC hash;
* ``events.jsonl``: the run's OpenLineage events when no other transport is configured
  (:mod:`cvpipe.lineage.openlineage`).

The folder is an output of its stage in ``dvc.yaml``, so DVC removes it before the stage runs, versions it
with the stage's other outputs, pushes and pulls it, and restores it from the run cache together with the
outputs it describes. Only the report stage reads records, so their timestamps never make another stage
look changed.

Hashes are DVC's own (:mod:`cvpipe.lineage.dvcfile`). Inputs take their hash from the ``dvc.lock`` entry of
the stage that produced them (DVC writes it before starting the next stage); outside ``dvc repro`` they are
hashed. No secret is ever written (:mod:`cvpipe.lineage.secrets`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import getpass
import logging
import math
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvpipe.io import write_json_atomic
from cvpipe.layout import ADHOC_EVENTS, BY_HAND_LINEAGE_DIR, EVENTS_NAME, RECORD_NAME, lineage_dir
from cvpipe.lineage.dvcfile import dvc_hash, lock_outputs, param_values, producing_stage, read_lock, stage_spec
from cvpipe.lineage.secrets import redact

log = logging.getLogger(__name__)

RECORD_VERSION = 1
PACKAGES = (
    "cvpipe",
    "numpy",
    "pandas",
    "pyarrow",
    "pillow",
    "imagehash",
    "keras",
    "tensorflow",
    "jax",
    "torch",
    "dvc",
    "dvclive",
    "prefect",
    "pandera",
    "pydantic",
    "openlineage-python",
)
_MAX_DIRTY_PATHS = 20


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON types.

    Dataclasses (stage summaries) become dicts, NumPy scalars are unwrapped, paths become strings, NaN and
    infinity become null.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {item.name: jsonable(getattr(value, item.name)) for item in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(key): jsonable(entry) for key, entry in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        entries = sorted(value, key=str) if isinstance(value, (set, frozenset)) else value
        return [jsonable(entry) for entry in entries]
    if hasattr(value, "item") and callable(value.item) and type(value).__module__ == "numpy":
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _git(root: Path, *args: str) -> str | None:
    # GIT_OPTIONAL_LOCKS=0: a status check during a run must never take the index lock or rewrite it.
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    try:
        result = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, env=env, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout if result.returncode == 0 else None


def git_info(root: Path) -> dict[str, Any]:
    """The commit the code and params came from and whether tracked files differed from it.

    ``dvc.lock`` and DVC's ``.gitignore`` files are left out of the dirty check: DVC rewrites them during
    the very run being recorded, so they would make every stage after the first look dirty.
    """
    commit = _git(root, "rev-parse", "--verify", "-q", "HEAD")
    if commit is None:
        inside = _git(root, "rev-parse", "--is-inside-work-tree")
        return {"commit": None, "dirty": None, "repository": bool(inside and inside.strip() == "true")}
    status = (
        _git(
            root,
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            ".",
            ":(exclude)dvc.lock",
            ":(exclude,glob)**/.gitignore",
        )
        or ""
    )
    dirty = [line[3:] for line in status.splitlines() if line.strip()]
    branch = (_git(root, "rev-parse", "--abbrev-ref", "HEAD") or "").strip() or None
    return {
        "commit": commit.strip(),
        "branch": branch,
        "dirty": bool(dirty),
        "dirty_paths": dirty[:_MAX_DIRTY_PATHS],
        "repository": True,
    }


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape a result (those installed)."""
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def device_info() -> dict[str, Any]:
    """The Keras backend and accelerators, from modules the stage already imported (nothing new is loaded)."""
    info: dict[str, Any] = {}
    keras = sys.modules.get("keras")
    if keras is not None:
        with contextlib.suppress(Exception):
            info["keras_backend"] = keras.backend.backend()
    tf = sys.modules.get("tensorflow")
    if tf is not None and hasattr(tf, "config"):
        with contextlib.suppress(Exception):
            info["gpus"] = [device.name for device in tf.config.list_physical_devices("GPU")]
    return info


def environment() -> dict[str, Any]:
    """Who ran the stage, where, with which interpreter and packages."""
    try:
        user: str | None = getpass.getuser()
    except Exception:  # no login name in some containers; not worth failing a stage over
        user = None
    return {
        "user": user,
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "packages": package_versions(),
        **device_info(),
    }


def orchestrator(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Who started the stage: a Prefect flow run (ids passed by ``tasks.dvc_stages``), DVC, or a person."""
    environ = os.environ if environ is None else environ
    kind = "prefect" if environ.get("CVPIPE_FLOW_RUN_ID") else "dvc" if environ.get("DVC_STAGE") else "manual"
    names = {
        "flow_run_id": "CVPIPE_FLOW_RUN_ID",
        "flow_run_name": "CVPIPE_FLOW_RUN_NAME",
        "deployment_id": "CVPIPE_DEPLOYMENT_ID",
        "task_run_id": "CVPIPE_TASK_RUN_ID",
        "dvc_stage": "DVC_STAGE",
        "dvc_experiment": "DVC_EXP_NAME",
    }
    return {"kind": kind, **{key: environ[name] for key, name in names.items() if environ.get(name)}}


def project_root(environ: Mapping[str, str] | None = None) -> Path:
    """The DVC project's root: ``$DVC_ROOT`` under ``dvc repro``, else the current folder."""
    environ = os.environ if environ is None else environ
    return Path(environ.get("DVC_ROOT") or Path.cwd()).resolve()


def relative(root: Path, path: Path | str) -> str:
    """``path`` relative to ``root`` (POSIX, normalised) when inside it, else absolute."""
    resolved = Path(os.path.abspath(path))
    try:
        return os.path.normpath(resolved.relative_to(root).as_posix())
    except ValueError:
        return resolved.as_posix()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _iso(moment: dt.datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- one stage run --------------------------------------------------------------------------------------------


@dataclass
class StageRun:
    """A stage being run: what it reads and writes, and what it has reported so far.

    Attributes:
        stage: the DVC stage name (``train@scratch``), or the command's name outside the pipeline.
        command: the cvpipe subcommand.
        root: the project root every path is relative to.
        inputs: data the stage reads (not code), relative paths.
        outputs: artifacts the stage writes, relative paths (its lineage folder excluded).
        code: code files dvc.yaml lists as the stage's dependencies.
        params: the values of the params keys the stage reads.
        record_dir: where the record goes, or None for a run outside the pipeline (no record).
        run_id: the run's UUID, shared by the record and the OpenLineage events.
        summary: what the stage function returned (its typed summary); set by the caller, written into the
            record field by field (:func:`jsonable`).
        git: the commit and dirtiness (looked up once, when the run begins).
        who: who started the run (:func:`orchestrator`).
    """

    stage: str
    command: str
    root: Path
    inputs: list[str]
    outputs: list[str]
    code: list[str]
    params: dict[str, Any]
    record_dir: Path | None
    run_id: str
    started: dt.datetime = field(default_factory=_now)
    git: dict[str, Any] = field(default_factory=dict)
    who: dict[str, Any] = field(default_factory=dict)
    summary: Any = field(default_factory=dict)
    input_hashes: dict[str, dict[str, Any]] = field(default_factory=dict)
    output_hashes: dict[str, dict[str, Any]] = field(default_factory=dict)
    _clock: float = field(default_factory=time.monotonic)

    @property
    def seconds(self) -> float:
        """Seconds since the run began."""
        return round(time.monotonic() - self._clock, 3)


def _hash_inputs(root: Path, paths: Sequence[str], trust_lock: bool) -> dict[str, dict[str, Any]]:
    """Each input's DVC hash and the stage that produced it.

    Under ``dvc repro`` the producing stage's ``dvc.lock`` entry is current (DVC writes it before the next
    stage starts), so big caches are not read again; otherwise the files are hashed.
    """
    produced = lock_outputs(read_lock(root))
    hashes: dict[str, dict[str, Any]] = {}
    for path in paths:
        locked = produced.get(path)
        if locked and trust_lock and "md5" in locked:
            hashes[path] = dict(locked)
            continue
        try:
            hashes[path] = dvc_hash(root / path)
        except OSError as error:
            log.debug("lineage: cannot hash input %s: %s", path, error)
            hashes[path] = {"missing": True}
        producer = producing_stage(path, produced)
        if producer:
            hashes[path]["stage"] = producer
    return hashes


def begin_stage(
    command: str,
    inputs: Sequence[Path | str],
    outputs: Sequence[Path | str],
    params_file: Path,
    sections: Sequence[str],
    stage: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> StageRun:
    """Describe the stage about to run, from ``dvc.yaml`` when it defines it, else from the CLI's arguments.

    Args:
        command: the cvpipe subcommand (``split``).
        inputs: the data paths the command reads (its options).
        outputs: the paths the command writes.
        params_file: the params file the command reads.
        sections: params sections the command reads, recorded when dvc.yaml does not list the stage's keys.
        stage: the stage's name when the command does not run under DVC (``train@scratch``); under DVC,
            ``$DVC_STAGE``.
        environ: the environment (tests pass their own).
    """
    environ = os.environ if environ is None else environ
    root = project_root(environ)
    name = (environ.get("DVC_STAGE") or stage or command).rsplit(":", 1)[-1]
    cli_inputs = [relative(root, path) for path in inputs]
    cli_outputs = [relative(root, path) for path in outputs]
    spec = stage_spec(root, name)
    folder = lineage_dir(name).as_posix()
    # The run is the pipeline's stage when dvc.yaml gives it a lineage folder and the command writes the
    # outputs dvc.yaml expects; a command run by hand with other paths gets events but no record.
    in_pipeline = spec is not None and folder in spec.outs and set(cli_outputs) <= set(spec.outs)
    if in_pipeline and spec is not None:
        code = [dep for dep in spec.deps if dep.endswith(".py")]
        data_inputs = [dep for dep in spec.deps if dep not in code]
        data_outputs = [out for out in spec.outs if out != folder]
        keys: Sequence[str] = spec.params
    else:
        code, data_inputs, data_outputs, keys = [], cli_inputs, cli_outputs, list(sections)
    run = StageRun(
        stage=name,
        command=command,
        root=root,
        inputs=data_inputs,
        outputs=data_outputs,
        code=code,
        params=param_values(params_file, keys),
        record_dir=_record_dir(root, folder, name, environ) if in_pipeline else None,
        run_id=_new_run_id(),
        git=git_info(root),
        who=orchestrator(environ),
    )
    if run.record_dir is not None:
        # DVC removed the folder already; a run by hand replaces the previous run's record and events.
        for stale in (RECORD_NAME, EVENTS_NAME):
            (run.record_dir / stale).unlink(missing_ok=True)
    # A run outside the pipeline is not versioned by DVC: its events name the datasets without reading them
    # again (benchmarks time such runs, and hashing gigabytes would add seconds).
    if in_pipeline:
        run.input_hashes = _hash_inputs(root, data_inputs, trust_lock="DVC_STAGE" in environ)
    return run


def _record_dir(root: Path, folder: str, stage: str, environ: Mapping[str, str]) -> Path:
    """The stage's lineage folder, or :data:`~cvpipe.layout.BY_HAND_LINEAGE_DIR` for a run by hand over a versioned one.

    Run by hand (no ``$DVC_STAGE``), a stage whose lineage folder ``dvc.lock`` already versions would make
    ``dvc status`` report it (and the report) changed, and the next ``dvc repro`` silently put DVC's copy back.
    """
    if "DVC_STAGE" not in environ and folder in lock_outputs(read_lock(root)):
        return root / BY_HAND_LINEAGE_DIR / stage
    return root / folder


def _new_run_id() -> str:
    """A UUIDv7: time-ordered, as OpenLineage recommends for run ids."""
    # Imported here: the OpenLineage client package takes ~0.2 s to import, which every `cvpipe` command
    # (help included) would otherwise pay.
    from openlineage.client.uuid import generate_new_uuid

    return str(generate_new_uuid())


def output_entries(run: StageRun) -> list[dict[str, Any]]:
    """The artifacts the run produced, each with its DVC hash (and row count for tables)."""
    entries = []
    for path in run.outputs:
        entry: dict[str, Any] = {"path": path, **run.output_hashes.get(path, {"missing": True})}
        if path.endswith(".parquet") and "md5" in entry:
            with contextlib.suppress(Exception):
                import pyarrow.parquet as pq

                entry["rows"] = pq.ParquetFile(run.root / path).metadata.num_rows
        entries.append(entry)
    return entries


def hash_outputs(run: StageRun) -> None:
    """Hash every output the run wrote (missing ones are recorded as missing); none outside the pipeline."""
    if run.record_dir is None:
        return
    for path in run.outputs:
        try:
            run.output_hashes[path] = dvc_hash(run.root / path)
        except OSError:
            run.output_hashes[path] = {"missing": True}


def build_record(run: StageRun, status: str, openlineage: Mapping[str, Any]) -> dict[str, Any]:
    """The lineage record of a finished run (see the module docstring); redacted, plain JSON."""
    finished = _now()
    record = {
        "cvpipe_lineage": RECORD_VERSION,
        "stage": run.stage,
        "command": run.command,
        "run_id": run.run_id,
        "status": status,
        "started_at": _iso(run.started),
        "finished_at": _iso(finished),
        "seconds": run.seconds,
        "orchestrator": run.who,
        "git": run.git,
        "environment": environment(),
        "params": run.params,
        "inputs": [{"path": path, **run.input_hashes.get(path, {})} for path in run.inputs],
        "code": [{"path": path, **_safe_hash(run.root / path)} for path in run.code],
        "outputs": output_entries(run),
        "summary": run.summary,
        "openlineage": dict(openlineage),
    }
    return redact(jsonable(record))


def _safe_hash(path: Path) -> dict[str, Any]:
    try:
        return dvc_hash(path)
    except OSError:
        return {"missing": True}


def write_record(run: StageRun, record: Mapping[str, Any]) -> Path | None:
    """Write the record into the run's lineage folder (atomically); nothing for a run outside the pipeline."""
    if run.record_dir is None:
        return None
    path = run.record_dir / RECORD_NAME
    write_json_atomic(path, dict(record))
    return path


def events_file(run: StageRun) -> Path:
    """Where the run's OpenLineage events go when no transport is configured."""
    return run.record_dir / EVENTS_NAME if run.record_dir is not None else run.root / ADHOC_EVENTS
