"""One flow run per project: cvpipe's run lock, and a look at DVC's output lock for a ``dvc repro`` running.

DVC guards its own outputs: while a ``dvc repro`` runs or commits a stage it records the stage's deps (read)
and outs (write) in ``.dvc/tmp/rwlock``, and any other DVC process that wants to write one of them, or read
one being written, stops with ``ERROR: ... is busy, it is being blocked by: (PID ...)`` (measured: the
second of two ``dvc repro`` exits 255 within about 3 s and runs nothing). A flow run is many DVC processes,
one per stage, so DVC's repository lock is free between two of them; cvpipe adds :func:`project_run_lock`,
one flow run per project at a time, and :func:`refuse_if_dvc_is_busy`, which lets a flow run refuse to start
while a ``dvc repro`` is reproducing stages.

Why read DVC's private ``rwlock`` file: without it a flow run started during a ``dvc repro`` by hand would
merge its params file into ``params.yaml`` while that command reads it, write its run record, and only then
be refused stage by stage; ``tests/e2e/test_concurrency.py`` shows the refusal before anything is written.
DVC has no public call that says "a repro is running here". The look is best-effort; DVC's own check when a
stage starts is what guarantees that no two processes write one output.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from cvpipe.pipeline.repro import DVC_ARGV0

# Relative to the project root; DVC keeps its locks in .dvc/tmp, which its own .dvc/.gitignore leaves out of git.
RUN_LOCK = os.path.join(".dvc", "tmp", "cvpipe-flow.lock")
DVC_RWLOCK = os.path.join(".dvc", "tmp", "rwlock")


class ProjectBusyError(RuntimeError):
    """Another flow run or a DVC command is reproducing stages in the project; this run did nothing."""


def run_holder(ids: Mapping[str, str]) -> dict[str, Any]:
    """Who holds the run lock: this process, the flow run's ids, since when (for another run's refusal)."""
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "flow_run_id": ids.get("CVPIPE_FLOW_RUN_ID"),
        "flow_run_name": ids.get("CVPIPE_FLOW_RUN_NAME"),
        "since": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
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
    A best-effort look: DVC may be rewriting the file this instant.

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
            holders[pid] = DVC_ARGV0.sub("dvc", str(info.get("cmd", "")))
    return [f"PID {pid}: {command}" for pid, command in holders.items()]


def refuse_if_dvc_is_busy(project: Path) -> None:
    """Refuse to start while a DVC command (a ``dvc repro`` by hand) is reproducing stages in ``project``.

    DVC would refuse this run's first stage whose files that command holds anyway; refusing before the first
    stage says so at once, and leaves ``params.yaml`` alone while that command reads it. A ``dvc repro``
    started after this check is DVC's to stop: the later of the two to reach a stage is refused.

    Raises:
        ProjectBusyError: a live DVC process holds DVC's lock on some stage's files.
    """
    holders = dvc_lock_holders(project)
    if holders:
        raise ProjectBusyError(
            f"DVC is reproducing stages in {project} ({'; '.join(holders)}); this run did nothing: "
            "run it again when that command has finished"
        )
