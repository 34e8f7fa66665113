"""One Prefect task per DVC stage, and DVC's own stage graph for the flow to follow.

DVC, not Prefect, decides what is stale: a task runs ``dvc repro --single-item STAGE`` and DVC compares the
stage's command, deps, params and outs with ``dvc.lock``. Prefect's caching keys on task inputs and source,
not on file content, so it would return stale results after a file changed. Running each stage through DVC
also means a Prefect run and ``dvc repro`` leave the same ``dvc.lock``.

``--single-item`` makes DVC look at that stage only; the flow runs stages in topological order, so the
upstream stages are up to date by then and the result is the same as one ``dvc repro``. It also lets
independent stages (the training variants) run at the same time: DVC releases its repository lock while a
stage's command runs, and ``--wait-for-lock`` makes a second DVC wait for the short locked parts (collecting
the stages, committing outputs) instead of failing after 3 s.

Concurrent runs. DVC guards its own outputs: while a ``dvc repro`` runs or commits a stage it records the
stage's deps (read) and outs (write) in ``.dvc/tmp/rwlock``, and any other DVC process that wants to write
one of them, or read one being written, stops with ``ERROR: ... is busy, it is being blocked by: (PID ...)``
(measured: the second of two ``dvc repro`` exits 255 within about 3 s and runs nothing). A flow run is many
DVC processes, one per stage, so DVC's repository lock is free between two of them; cvpipe adds
:func:`project_run_lock`, one flow run per project at a time, and :func:`dvc_lock_holders`, which lets a flow
run refuse to start while a ``dvc repro`` is reproducing stages.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from prefect import task
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger
from prefect.tasks import exponential_backoff

from cvpipe.pipeline.workspace import dvc, tool_env

log = logging.getLogger(__name__)

RAN = "ran"
SKIPPED = "skipped"
RESTORED = "restored"  # DVC's run cache had this exact run: outputs checked out, command not run

# What DVC prints (INFO, on stdout) for the three outcomes of one stage.
_RUNNING = re.compile(r"^Running stage '(?P<stage>[^']+)'")
_UNCHANGED = re.compile(r"^Stage '(?P<stage>[^']+)' didn't change, skipping")
_CACHED = re.compile(r"^Stage '(?P<stage>[^']+)' is cached - skipping run")
# cvpipe's CLI log format ("%(asctime)s %(levelname)s %(name)s: %(message)s") and DVC's "ERROR: ..." lines.
_CVPIPE_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (?P<level>DEBUG|INFO|WARNING|ERROR|CRITICAL) (?P<name>[\w.]+): (?P<msg>.*)$"
)
_DVC_LINE = re.compile(r"^(?P<level>ERROR|WARNING): ")

# Stage families, by the part of the name before "@" (foreach stages are named "train@scratch").
TRAIN_FAMILY = "train"
DOWNLOAD_FAMILY = "download"
GPU_TAG = "gpu"
KILL_GRACE_SECONDS = 10.0
TAIL_LINES = 20

# cvpipe's run lock and DVC's output lock, relative to the project root (DVC keeps its locks in .dvc/tmp,
# which its own .dvc/.gitignore leaves out of git).
RUN_LOCK = os.path.join(".dvc", "tmp", "cvpipe-flow.lock")
DVC_RWLOCK = os.path.join(".dvc", "tmp", "rwlock")
# How DVC names the command holding a lock: its argv joined, "/.../site-packages/dvc/__main__.py repro".
_DVC_ARGV0 = re.compile(r"^\S*(?:/dvc/__main__\.py|/bin/dvc)(?=\s|$)")
_CVPIPE_ERROR = re.compile(r"^(?:internal )?error: ")


class StageFailedError(RuntimeError):
    """``dvc repro`` of one stage exited non-zero.

    Attributes:
        stage: the stage's DVC name.
        returncode: DVC's exit status.
        tail: the last lines DVC and the stage printed.
    """

    def __init__(self, stage: str, returncode: int, tail: Sequence[str]) -> None:
        self.stage, self.returncode, self.tail = stage, returncode, list(tail)
        super().__init__(f"stage {stage!r} failed (dvc exit {returncode}): {failure_line(self.tail)}")


class ProjectBusyError(RuntimeError):
    """Another flow run or a DVC command is reproducing stages in the project; this run did nothing."""


class StageTimeoutError(TimeoutError):
    """A stage ran past its time limit and was killed (Prefect marks the task run TimedOut)."""


@dataclass(frozen=True)
class StageOutcome:
    """What happened to one stage.

    Attributes:
        stage: the stage's DVC name.
        status: ``ran``, ``skipped`` (unchanged) or ``restored`` (from DVC's run cache).
        seconds: wall time of the ``dvc repro`` call.
    """

    stage: str
    status: str
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly copy."""
        return asdict(self)


def family(stage: str) -> str:
    """The stage's family: ``train@scratch`` -> ``train``, ``sub/dvc.yaml:split`` -> ``split``."""
    return stage.rsplit(":", 1)[-1].split("@", 1)[0]


# -- the graph ------------------------------------------------------------------------------------------------


def stage_graph(project_dir: Path) -> dict[str, tuple[str, ...]]:
    """Read DVC's own stage graph: each stage and the stages it directly depends on.

    Data sources (``dvc add``-ed files) are left out: they have no command and no upstream, so nothing runs
    for them, and leaving them out removes no path between stages.

    Args:
        project_dir: the DVC repository's root.

    Returns:
        ``{stage: (upstream stages, ...)}`` keyed by DVC's addressing (``train@scratch``, or
        ``sub/dvc.yaml:name`` for stages outside the root ``dvc.yaml``), in DVC's order.
    """
    from dvc.repo import Repo

    with Repo(str(project_dir)) as repo:
        graph = repo.index.graph
        stages = [stage for stage in graph.nodes if not stage.is_data_source]
        # DVC's edges point from a stage to the stage it depends on.
        return {
            _address(stage, repo.root_dir): tuple(
                sorted(_address(dep, repo.root_dir) for dep in graph.successors(stage) if not dep.is_data_source)
            )
            for stage in stages
        }


def _address(stage: Any, root: str) -> str:
    """The stage's name as ``dvc repro`` takes it from the repository root (DVC's own is relative to cwd)."""
    dvcfile = os.path.relpath(stage.path, root)
    name = getattr(stage, "name", None)
    if not name:
        return dvcfile  # a .dvc file stage (import): its path is its name
    return name if dvcfile == "dvc.yaml" else f"{dvcfile}:{name}"


def topological_order(graph: Mapping[str, Sequence[str]]) -> list[str]:
    """Stages ordered so that each comes after its upstream stages; ties keep the graph's order.

    Raises:
        ValueError: the graph names an unknown stage or has a cycle (DVC refuses both, so this is a bug).
    """
    missing = {up for ups in graph.values() for up in ups if up not in graph}
    if missing:
        raise ValueError(f"upstream stages not in the graph: {sorted(missing)}")
    order: list[str] = []
    remaining = list(graph)
    while remaining:
        # One layer at a time: every stage whose upstream stages are all placed already.
        layer = [stage for stage in remaining if all(up in order for up in graph[stage])]
        if not layer:
            raise ValueError(f"cycle among stages {remaining}")
        order.extend(layer)
        remaining = [stage for stage in remaining if stage not in layer]
    return order


def select_stages(graph: Mapping[str, Sequence[str]], targets: Iterable[str] | None) -> dict[str, tuple[str, ...]]:
    """The part of the graph ``dvc repro TARGETS`` would reproduce: the targets and everything upstream.

    A target is a stage name (``evaluate@scratch``) or a foreach group (``train`` selects every
    ``train@...``), as ``dvc repro`` accepts them.

    Raises:
        ValueError: a target names no stage; the message lists the stages there are.
    """
    if not targets:
        return {stage: tuple(ups) for stage, ups in graph.items()}
    wanted: set[str] = set()
    for target in targets:
        matches = [stage for stage in graph if stage == target or stage.startswith(f"{target}@")]
        if not matches:
            raise ValueError(f"no stage {target!r} in dvc.yaml; stages: {', '.join(graph)}")
        wanted.update(matches)
    closure: set[str] = set()
    pending = list(wanted)
    while pending:
        stage = pending.pop()
        if stage not in closure:
            closure.add(stage)
            pending.extend(graph[stage])
    return {stage: tuple(ups) for stage, ups in graph.items() if stage in closure}


# -- one stage ------------------------------------------------------------------------------------------------


def repro_argv(stage: str, force: bool = False) -> list[str]:
    """The DVC command line that reproduces ``stage`` alone."""
    return dvc("--wait-for-lock", "repro", "--single-item", *(["--force"] if force else []), stage)


def stage_status(stage: str, lines: Iterable[str]) -> str:
    """Whether DVC ran, skipped or restored ``stage``, from what it printed."""
    status = SKIPPED
    for line in lines:
        for pattern, found in ((_RUNNING, RAN), (_CACHED, RESTORED), (_UNCHANGED, SKIPPED)):
            match = pattern.match(line)
            if match and match["stage"] == stage:
                status = found
                if found == RAN:
                    return RAN
    return status


def line_level(line: str) -> tuple[int, str]:
    """The log level and message of one output line: cvpipe's log lines and DVC's errors keep their level."""
    match = _CVPIPE_LINE.match(line)
    if match:
        return logging.getLevelName(match["level"]), f"{match['name']}: {match['msg']}"
    match = _DVC_LINE.match(line)
    if match:
        return logging.getLevelName(match["level"]), line
    return logging.INFO, line


def failure_line(lines: Sequence[str]) -> str:
    """The one line that says why a stage failed, from what DVC and the stage printed.

    cvpipe's own ``error: ...`` line when the stage's command printed one (it says what to do); else DVC's
    last ``ERROR:`` line, followed by the processes it names when another DVC command holds the stage's files
    (DVC puts them, and a hint about stale locks, on the lines after); else the last line.
    """
    cvpipe_error = next((line for line in reversed(lines) if _CVPIPE_ERROR.match(line)), None)
    if cvpipe_error is not None:
        return cvpipe_error
    for index in range(len(lines) - 1, -1, -1):
        line = lines[index]
        if not line.startswith("ERROR: "):
            continue
        if line.endswith("blocked by:"):
            holders = []
            for holder in lines[index + 1 :]:
                if not holder.strip().startswith("(PID "):
                    break
                holders.append(_short_command(holder.strip()))
            line = f"{line} {'; '.join(dict.fromkeys(holders))} (another DVC command is using this stage's files)"
        return line
    return next((line for line in reversed(lines) if line.strip()), "")


def _short_command(text: str) -> str:
    """``(PID 7): /venv/.../dvc/__main__.py repro x`` -> ``(PID 7): dvc repro x``."""
    prefix, sep, command = text.partition("): ")
    return f"{prefix}{sep}{_DVC_ARGV0.sub('dvc', command)}" if sep else _DVC_ARGV0.sub("dvc", text)


def kill_tree(pid: int, grace_seconds: float = KILL_GRACE_SECONDS) -> None:
    """Terminate a process and all its descendants (DVC and the stage command it started), then kill."""
    import psutil  # a DVC dependency

    try:
        parent = psutil.Process(pid)
        procs = [*parent.children(recursive=True), parent]
    except psutil.NoSuchProcess:
        return
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace_seconds)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()


def run_streaming(
    argv: Sequence[str],
    cwd: Path,
    env: Mapping[str, str],
    on_line: Callable[[str], None],
    timeout_s: float | None = None,
) -> int:
    """Run a command, handing each line of its merged stdout/stderr to ``on_line`` as it comes.

    Args:
        argv: the command.
        cwd: where to run it.
        env: its whole environment.
        on_line: called with each output line (no newline).
        timeout_s: kill the command and its children after this many seconds.

    Returns:
        The exit status.

    Raises:
        StageTimeoutError: the command ran past ``timeout_s`` (it has been killed).
    """
    started = time.monotonic()
    # One stream keeps DVC's and the stage's lines in the order they were written. No new session: the
    # stage stays in the flow-run process's group, which Prefect's worker and runner kill on cancellation.
    proc = subprocess.Popen(
        list(argv),
        cwd=cwd,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        bufsize=1,
    )
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        kill_tree(proc.pid)

    # A timer, not Prefect's timeout_seconds: Prefect cannot interrupt a worker thread blocked on a pipe,
    # and it would leave DVC and the stage running.
    timer = threading.Timer(timeout_s, expire) if timeout_s else None
    try:
        if timer is not None:
            timer.daemon = True
            timer.start()
        assert proc.stdout is not None
        for line in proc.stdout:
            on_line(line.rstrip("\r\n"))
        returncode = proc.wait()
    finally:
        if timer is not None:
            timer.cancel()
            if expired.is_set():
                timer.join()  # the kill is complete (every process gone) before the caller hears of it
        if proc.poll() is None:  # interrupted (cancelled flow, exception in on_line): leave nothing running
            kill_tree(proc.pid)
        if proc.stdout is not None:
            proc.stdout.close()
    if expired.is_set():
        raise StageTimeoutError(f"killed after {time.monotonic() - started:.0f} s (limit {timeout_s:g} s)")
    return returncode


def lineage_env() -> dict[str, str]:
    """Prefect's ids for this run, as environment variables a stage (lineage, report) can record.

    The environment is not part of a DVC stage's hash, so this does not make any stage stale.
    """
    from prefect.runtime import deployment, flow_run, task_run

    values = {
        "CVPIPE_ORCHESTRATOR": "prefect",
        "CVPIPE_FLOW_RUN_ID": flow_run.id,
        "CVPIPE_FLOW_RUN_NAME": flow_run.name,
        "CVPIPE_DEPLOYMENT_ID": deployment.id,
        "CVPIPE_TASK_RUN_ID": task_run.id,
    }
    return {name: str(value) for name, value in values.items() if value}


def _logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    """The Prefect run logger inside a run (lines reach the UI), this module's logger outside (``.fn()``)."""
    try:
        return get_run_logger()
    except MissingContextError:
        return log


def run_stage(
    stage: str,
    project_dir: str | Path,
    force: bool = False,
    timeout_s: float | None = None,
    extra_env: Mapping[str, str] | None = None,
) -> StageOutcome:
    """Reproduce one DVC stage, logging DVC's and the stage's output line by line.

    Args:
        stage: the stage's DVC name (``train@scratch``).
        project_dir: the DVC repository's root.
        force: rerun even if DVC finds nothing changed (``dvc repro --force``).
        timeout_s: kill the stage after this many seconds.
        extra_env: added to the stage's environment (run ids for lineage).

    Returns:
        Whether DVC ran, skipped or restored the stage, and how long it took.

    Raises:
        StageFailedError: DVC or the stage's command failed.
        StageTimeoutError: the stage ran past ``timeout_s``.
    """
    logger = _logger()
    env = {**tool_env(), "PYTHONUNBUFFERED": "1", **(extra_env or {})}
    lines: list[str] = []

    def on_line(line: str) -> None:
        lines.append(line)
        if line.strip():
            level, message = line_level(line)
            logger.log(level, "%s", message)

    started = time.monotonic()
    try:
        returncode = run_streaming(repro_argv(stage, force), Path(project_dir), env, on_line, timeout_s)
    except StageTimeoutError as exc:
        raise StageTimeoutError(f"stage {stage!r} ran past its time limit and was {exc}") from None
    seconds = round(time.monotonic() - started, 3)
    if returncode != 0:
        raise StageFailedError(stage, returncode, lines[-TAIL_LINES:])
    outcome = StageOutcome(stage, stage_status(stage, lines), seconds)
    logger.info("stage %s: %s in %.1f s", stage, outcome.status, seconds)
    return outcome


@task(name="dvc-stage", task_run_name="{stage}", persist_result=False)
def dvc_stage(stage: str, project_dir: str, force: bool = False, timeout_s: float | None = None) -> StageOutcome:
    """Reproduce one DVC stage through DVC (see :func:`run_stage`); the task run is named after the stage."""
    return run_stage(stage, project_dir, force=force, timeout_s=timeout_s, extra_env=lineage_env())


@dataclass(frozen=True)
class StagePolicy:
    """How the flow treats stage families.

    Attributes:
        download_retries: retries of the download stage (the only one that touches the network).
        download_backoff_seconds: the first retry's delay; it doubles each retry, with jitter.
        retry_jitter_factor: each delay is randomised up to this fraction, so many runs do not retry together.
        train_timeout_s: time limit of each training stage (``None``: none).
        gpu_families: stage families that need the GPU; they share the run's GPU slots and carry the
            ``gpu`` tag, so a Prefect tag concurrency limit named ``gpu`` bounds them across runs too.
    """

    download_retries: int = 3
    download_backoff_seconds: float = 60.0
    retry_jitter_factor: float = 0.5
    train_timeout_s: float | None = 6 * 3600.0
    gpu_families: tuple[str, ...] = ("features", TRAIN_FAMILY, "evaluate")

    def task_options(self, stage: str) -> dict[str, Any]:
        """Options for ``dvc_stage.with_options`` for ``stage``: retries for the download only, tags."""
        options: dict[str, Any] = {"tags": [f"stage:{family(stage)}"]}
        if self.uses_gpu(stage):
            options["tags"].append(GPU_TAG)
        if family(stage) == DOWNLOAD_FAMILY and self.download_retries > 0:
            options.update(
                retries=self.download_retries,
                retry_delay_seconds=exponential_backoff(backoff_factor=self.download_backoff_seconds),
                retry_jitter_factor=self.retry_jitter_factor,
            )
        else:
            # No retries elsewhere: a failed ingest or training is a bug or bad data, not a flaky network.
            options["retries"] = 0
        return options

    def timeout_s(self, stage: str) -> float | None:
        """The time limit for ``stage``: training stages only."""
        return self.train_timeout_s if family(stage) == TRAIN_FAMILY else None

    def uses_gpu(self, stage: str) -> bool:
        """Whether ``stage`` needs one of the run's GPU slots."""
        return family(stage) in self.gpu_families


# -- concurrent runs ------------------------------------------------------------------------------------------


def run_holder(ids: Mapping[str, str]) -> dict[str, Any]:
    """Who holds the run lock: this process, the flow run's ids, since when (for another run's refusal)."""
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "flow_run_id": ids.get("CVPIPE_FLOW_RUN_ID"),
        "flow_run_name": ids.get("CVPIPE_FLOW_RUN_NAME"),
        "since": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def describe_holder(holder: Mapping[str, Any]) -> str:
    """``flow run 'name' (id), process 12 on host, since ...`` from what :func:`run_holder` wrote."""
    parts = []
    if holder.get("flow_run_id"):
        parts.append(f"flow run {holder.get('flow_run_name')!r} ({holder['flow_run_id']})")
    if holder.get("pid"):
        parts.append(f"process {holder['pid']} on {holder.get('host', '?')}")
    if holder.get("since"):
        parts.append(f"since {holder['since']}")
    return ", ".join(parts) or "a process that has not recorded itself yet"


@contextlib.contextmanager
def project_run_lock(project_dir: Path, holder: Mapping[str, Any]) -> Iterator[Path]:
    """Hold cvpipe's run lock on a project for the block: one flow run per project at a time.

    An advisory ``flock`` on ``.dvc/tmp/cvpipe-flow.lock``, taken without waiting. The operating system
    releases it when the process ends, however it ends, so a killed or cancelled run leaves no stale lock; a
    file that merely exists blocks nobody. The holder's description is written into the file for the
    refusal message. Linux and macOS (``fcntl``).

    Args:
        project_dir: the DVC project's root (it has a ``.dvc/`` folder).
        holder: what to record about this run (:func:`run_holder`).

    Yields:
        The lock file's path.

    Raises:
        ProjectBusyError: another process (another flow run, in this process or not) holds the lock.
        FileNotFoundError: ``project_dir`` has no ``.dvc/`` folder.
    """
    import fcntl

    path = Path(project_dir) / RUN_LOCK
    path.parent.mkdir(exist_ok=True)  # .dvc/tmp is not in git; .dvc/ itself must exist (a DVC repository)
    # Not truncated on open: a refused run must still be able to read who holds it.
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ProjectBusyError(
                f"another cvpipe flow run is reproducing {project_dir} ({describe_holder(_read_holder(fd))}); "
                "this run did nothing: let that one finish or cancel it, then run again"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(dict(holder)).encode(), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the lock


def _read_holder(fd: int) -> dict[str, Any]:
    """The holder recorded in the lock file, or {} while the holder is still writing it."""
    try:
        data = json.loads(os.pread(fd, 65536, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def dvc_lock_holders(project_dir: Path) -> list[str]:
    """The DVC commands reproducing (running or committing) stages in the project now, from DVC's output lock.

    DVC records each stage's deps and outs with its process id in ``.dvc/tmp/rwlock`` while it runs or
    commits the stage; entries of processes that no longer exist are stale (DVC drops them itself next time).
    A best-effort look (DVC may be rewriting the file this instant): DVC's own check when a stage starts is
    what guarantees that no two processes write one output.

    Args:
        project_dir: the DVC project's root.

    Returns:
        ``PID 123: dvc repro decode`` for each live process, in the order found.
    """
    import psutil  # a DVC dependency

    try:
        data = json.loads((Path(project_dir) / DVC_RWLOCK).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if not isinstance(data, dict):
        return []
    infos = list((data.get("write") or {}).values())
    infos += [info for readers in (data.get("read") or {}).values() for info in readers]
    holders: dict[int, str] = {}
    for info in infos:
        pid = info.get("pid") if isinstance(info, dict) else None
        if isinstance(pid, int) and pid != os.getpid() and pid not in holders and psutil.pid_exists(pid):
            holders[pid] = _DVC_ARGV0.sub("dvc", str(info.get("cmd", "")))
    return [f"PID {pid}: {command}" for pid, command in holders.items()]
