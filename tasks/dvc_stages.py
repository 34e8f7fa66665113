"""One Prefect task per DVC stage: a thin wrapper over :func:`cvpipe.pipeline.repro.run_stage`.

DVC, not Prefect, decides what is stale (Prefect's caching keys on task inputs and source, not on file
content, so it would return stale results after a file changed); the task adds Prefect's retries (the
download only), tags, the run's slots and the run ids a stage's lineage records.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger
from prefect.states import Failed, State
from prefect.tasks import exponential_backoff

from cvpipe.pipeline.commands import StageTimeoutError
from cvpipe.pipeline.graph import family
from cvpipe.pipeline.repro import StageFailedError, StageOutcome, run_stage

log = logging.getLogger(__name__)

# Stage families by what they do: the network fetchers get retries, the trainers a time limit.
TRAIN_FAMILIES = ("train", "mnist_train")
NETWORK_FAMILIES = ("download", "mnist_data")
GPU_TAG = "gpu"


@dataclass(frozen=True)
class StagePolicy:
    """How the flow treats stage families.

    Attributes:
        download_retries: retries of the stages that touch the network (the download, MNIST's data).
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
    gpu_families: tuple[str, ...] = ("features", *TRAIN_FAMILIES, "evaluate", "mnist_evaluate")

    def task_options(self, stage: str) -> dict[str, Any]:
        """Options for ``dvc_stage.with_options`` for ``stage``: retries for the network stages only, tags."""
        options: dict[str, Any] = {"tags": [f"stage:{family(stage)}"]}
        if self.uses_gpu(stage):
            options["tags"].append(GPU_TAG)
        if family(stage) in NETWORK_FAMILIES and self.download_retries > 0:
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
        return self.train_timeout_s if family(stage) in TRAIN_FAMILIES else None

    def uses_gpu(self, stage: str) -> bool:
        """Whether ``stage`` needs one of the run's GPU slots."""
        return family(stage) in self.gpu_families


class Slots:
    """The run's bounds on stages running at once: ``max_parallel`` in all, ``gpu_slots`` of the GPU ones.

    Prefect's ``wait_for`` orders the stages; these semaphores bound how many run at once within one flow run
    (a tag concurrency limit on ``gpu`` bounds them across runs, on the server). GPU first, then the general
    slot: a stage waiting for the GPU holds no slot another stage could use, and one order means no deadlock.
    """

    def __init__(self, max_parallel: int, gpu_slots: int) -> None:
        self._all = threading.BoundedSemaphore(max_parallel)
        self._gpu = threading.BoundedSemaphore(gpu_slots) if gpu_slots else None

    @contextlib.contextmanager
    def held(self, gpu: bool) -> Iterator[None]:
        """Hold a slot (and a GPU slot when ``gpu``) for the block."""
        with self._gpu if gpu and self._gpu else contextlib.nullcontext(), self._all:
            yield


def lineage_env() -> dict[str, str]:
    """Prefect's ids for this run, as environment variables a stage (lineage, report) can record.

    A flow run id also tells the lineage record that Prefect started the stage. The environment is not part of
    a DVC stage's hash, so this does not make any stage stale.
    """
    from prefect.runtime import deployment, flow_run, task_run

    values = {
        "CVPIPE_FLOW_RUN_ID": flow_run.id,
        "CVPIPE_FLOW_RUN_NAME": flow_run.name,
        "CVPIPE_DEPLOYMENT_ID": deployment.id,
        "CVPIPE_TASK_RUN_ID": task_run.id,
    }
    return {name: str(value) for name, value in values.items() if value}


def drop_empty_exc_info(record: logging.LogRecord) -> bool:
    """A logging filter: a record logged with ``exc_info=True`` outside any exception carries no traceback.

    Prefect logs a task's returned ``Failed`` state ("Task run failed with state: ...") with ``exc_info=True``
    where no exception is being handled, which the formatter turns into a stray ``NoneType: None`` line.
    """
    if record.exc_info and record.exc_info[0] is None:
        record.exc_info = None
    return True


# Prefect's task engine logs on this logger; a filter on it sees exactly the records logged there.
logging.getLogger("prefect.task_runs").addFilter(drop_empty_exc_info)


def run_logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    """The Prefect run logger inside a run (lines reach the UI), this module's logger outside (``.fn()``)."""
    try:
        return get_run_logger()
    except MissingContextError:
        return log


# NO_CACHE: DVC decides what is stale; the slots are live objects, not inputs to hash.
@task(name="dvc-stage", task_run_name="{stage}", persist_result=False, cache_policy=NO_CACHE)
def dvc_stage(
    stage: str,
    project_dir: str,
    force: bool = False,
    timeout_s: float | None = None,
    slots: Slots | None = None,
    gpu: bool = False,
) -> StageOutcome | State:
    """Reproduce one DVC stage through DVC, within the run's slots; the task run is named after the stage.

    Returns:
        What happened to the stage; a ``Failed`` state whose message is the failure's one line when DVC or the
        stage's command failed, ``TimedOut`` when it ran past ``timeout_s`` (Prefect still retries it where the
        policy says so, and ``wait_for`` leaves the stages downstream ``NotReady``).
    """
    with slots.held(gpu) if slots else contextlib.nullcontext():
        try:
            return run_stage(stage, project_dir, force, timeout_s, extra_env=lineage_env(), logger=run_logger())
        except StageFailedError as failure:
            # Returned, not raised: Prefect logs a raised exception with its traceback (this wrapper's frames,
            # which say nothing), and the flow's log then held the cause 8 times. What the stage printed, its own
            # traceback on a bug included, is in the log already; the state carries the one line that says why.
            return Failed(message=str(failure))
        except StageTimeoutError as timeout:
            # Prefect's own name for a task that ran out of time, and as above one line rather than a traceback.
            return Failed(name="TimedOut", message=str(timeout))
