"""cvpipe.parallel: results in input order, and workers that never outlive their stage (issue 15)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from cvpipe.errors import CvpipeError
from cvpipe.parallel import WorkerDied, WorkerPool, chunked, map_chunks, start_pool

ROOT = Path(__file__).resolve().parents[2]


def _square(items: Sequence[int]) -> list[int]:
    return [item * item for item in items]


def _pids(items: Sequence[int]) -> list[int]:
    return [os.getpid() for _ in items]


def _die_on_seven(items: Sequence[int]) -> list[int]:
    if 7 in items:
        os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer does
    return list(items)


def _sleep(items: Sequence[int]) -> list[int]:
    time.sleep(60)
    return list(items)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (not yet reaped) is dead for this purpose.
    status = Path(f"/proc/{pid}/stat")
    return not status.exists() or status.read_text().split(")")[-1].split()[0] != "Z"


def test_chunks_cover_the_range_in_order() -> None:
    assert chunked(10, 3) == [(0, 3), (3, 7), (7, 10)]
    assert chunked(2, 5) == [(0, 1), (1, 2)]


def test_results_are_in_input_order_with_any_worker_count() -> None:
    items = list(range(200))
    assert map_chunks(_square, items, 1) == map_chunks(_square, items, 2) == [i * i for i in items]


def test_a_killed_worker_is_one_line_naming_memory_not_broken_process_pool() -> None:
    with pytest.raises(WorkerDied) as raised:
        map_chunks(_die_on_seven, list(range(100)), 2)
    assert isinstance(raised.value, CvpipeError) and raised.value.exit_code == 2
    assert "worker process died" in str(raised.value) and "memory" in str(raised.value)
    assert "workers" in str(raised.value)


def test_leaving_a_pool_by_an_exception_kills_its_workers_at_once() -> None:
    pool = start_pool(2)
    assert isinstance(pool, WorkerPool)
    workers = map_chunks(_pids, list(range(100)), 2, pool=pool)
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt), pool:
        pool.submit(_sleep, [1])
        pool.submit(_sleep, [2])
        raise KeyboardInterrupt
    assert time.monotonic() - started < 10  # not the 60 s the queued work would take
    assert not any(_alive(pid) for pid in set(workers))


def test_workers_ignore_sigint_and_die_with_their_parent(tmp_path: Path) -> None:
    """SIGKILL to the parent (the OOM killer, ``kill -9``): its workers follow it instead of blocking forever."""
    pids = tmp_path / "pids"
    script = textwrap.dedent(
        f"""
        import os, signal, time
        from cvpipe.parallel import start_pool
        def pid_and_sigint(_):
            return os.getpid(), signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        def sleep(_):
            time.sleep(60)
        pool = start_pool(2)
        seen = [pool.submit(pid_and_sigint, i).result() for i in range(4)]
        with open({str(pids)!r}, "w") as handle:
            handle.write(" ".join(str(pid) for pid, _ in seen) + "\\n" + str(all(ignored for _, ignored in seen)))
        pool.submit(sleep, 0)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    process = subprocess.run([sys.executable, "-c", script], cwd=ROOT, timeout=60, capture_output=True, text=True)
    assert process.returncode == -signal.SIGKILL, process.stderr
    workers, ignored = pids.read_text().splitlines()
    assert ignored == "True"
    deadline = time.monotonic() + 10
    while any(_alive(int(pid)) for pid in workers.split()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(int(pid)) for pid in workers.split())
