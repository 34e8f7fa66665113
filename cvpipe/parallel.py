"""A process pool over contiguous chunks, with results in input order whatever the worker count.

Workers each open the archive themselves (a zipfile handle cannot be shared across processes), so the
work is handed out as index ranges and every result carries its position: outputs are byte-identical
with 1 or N workers.

Workers never outlive the stage. A pool left by an exception (Ctrl-C, SIGTERM turned into an exception by
the CLI, a failed chunk) terminates its workers instead of waiting for the queued work; on Linux each worker
also asks the kernel for SIGKILL when its parent dies (``PR_SET_PDEATHSIG``), so a stage killed outright
(SIGKILL, the OOM killer) leaves no worker blocked forever on a pipe. Workers ignore SIGINT: Ctrl-C reaches
the whole process group, and it is the parent's to handle. A worker that dies (the OOM killer) fails the
stage with one line naming the likely cause (:class:`WorkerDied`), not ``BrokenProcessPool``.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import signal
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from types import TracebackType
from typing import TypeVar

from cvpipe.errors import CvpipeError

T = TypeVar("T")
R = TypeVar("R")

# Below this many items a pool costs more (process start-up) than it saves.
_MIN_PARALLEL_ITEMS = 64
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_JOIN_SECONDS = 5.0


class WorkerDied(CvpipeError):
    """A worker process died mid-task: almost always the kernel's OOM killer."""


def _worker_init() -> None:
    """In each worker: leave SIGINT to the parent, take SIGTERM's default action, die with the parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


class WorkerPool(ProcessPoolExecutor):
    """A process pool whose workers die with it: see the module's docs."""

    def __init__(self, max_workers: int) -> None:
        """Start (lazily, on first submit) up to ``max_workers`` workers."""
        super().__init__(max_workers=max_workers, initializer=_worker_init)

    def terminate(self) -> None:
        """Stop every worker now: queued work is cancelled, running work is killed."""
        processes = list((getattr(self, "_processes", None) or {}).values())
        self.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            with contextlib.suppress(OSError, ValueError):
                process.terminate()
        for process in processes:
            with contextlib.suppress(OSError, ValueError, AssertionError):
                process.join(_JOIN_SECONDS)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> bool | None:
        if exc_type is None:
            return super().__exit__(exc_type, exc, traceback)
        self.terminate()
        return None


def worker_count(requested: int) -> int:
    """Workers to use: ``requested``, or every available core when it is 0."""
    if requested > 0:
        return requested
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def chunked(count: int, parts: int) -> list[tuple[int, int]]:
    """Split ``range(count)`` into at most ``parts`` contiguous ``(start, stop)`` ranges of similar size."""
    parts = max(1, min(parts, count))
    bounds = [round(i * count / parts) for i in range(parts + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(parts) if bounds[i] < bounds[i + 1]]


def _ready() -> int:
    return os.getpid()


def start_pool(workers: int) -> WorkerPool | None:
    """Start ``workers`` worker processes now, or return None when ``workers <= 1`` (work runs in-process).

    Forked workers inherit this process's memory as it is at the fork. A stage that starts its pool before
    loading its (size-dependent) tables gives workers whose memory does not depend on the dataset's size,
    and one pool serves all its splits. With the fork start method every worker starts on the first submit.
    """
    if workers <= 1:
        return None
    pool = WorkerPool(workers)
    pool.submit(_ready).result()
    return pool


def _died(error: BrokenProcessPool) -> WorkerDied:
    return WorkerDied(
        f"a worker process died mid-task ({error}); most likely the system ran out of memory and the kernel "
        "killed it (see `dmesg`): lower the stage's workers param (e.g. ingest.workers, image.workers) or free memory"
    )


def map_chunks(
    work: Callable[[Sequence[T]], list[R]],
    items: Sequence[T],
    workers: int,
    progress: Callable[[int], None] | None = None,
    chunks_per_worker: int = 8,
    max_chunk: int | None = None,
    pool: Executor | None = None,
) -> list[R]:
    """Apply ``work`` to chunks of ``items`` in a process pool and return the results in input order.

    Args:
        work: a picklable function taking a chunk and returning one result per item.
        items: the inputs.
        workers: pool size (see :func:`worker_count`); 1 runs in this process.
        progress: called with the number of items finished after each chunk.
        chunks_per_worker: more, smaller chunks give a smoother progress bar and better balance.
        max_chunk: at most this many items per chunk, for work whose memory grows with its chunk (a
            worker that buffers its chunk's output); ``None``: no bound.
        pool: a running pool to use (see :func:`start_pool`), left running; ``None``: a pool of ``workers``
            is started and shut down here.
    """
    count = len(items)
    if count == 0:
        return []
    # Enough chunks that none exceeds max_chunk: memory then stays flat however many items there are.
    at_least = math.ceil(count / max_chunk) if max_chunk else 1
    if workers <= 1 or count < _MIN_PARALLEL_ITEMS:
        results: list[R] = []
        for start, stop in chunked(count, max(1, count // 256, at_least)):
            results.extend(work(items[start:stop]))
            if progress is not None:
                progress(stop - start)
        return results
    ranges = chunked(count, max(workers * chunks_per_worker, at_least))
    slots: list[list[R] | None] = [None] * len(ranges)
    with contextlib.nullcontext(pool) if pool is not None else WorkerPool(workers) as running:
        try:
            futures = {running.submit(work, items[start:stop]): index for index, (start, stop) in enumerate(ranges)}
            for future in as_completed(futures):
                index = futures[future]
                slots[index] = future.result()
                if progress is not None:
                    progress(ranges[index][1] - ranges[index][0])
        except BrokenProcessPool as error:
            raise _died(error) from None
    return [result for chunk in slots for result in (chunk or [])]
