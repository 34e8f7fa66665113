"""The Prefect tasks as plain functions: stage options, the run's slots, a stage through DVC (``.fn()``).

Prefect's own ordering (``wait_for``: a stage whose upstream failed ends ``NotReady``) and the flow run
under Prefect are tested in ``tests/e2e/test_prefect_flow.py``.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from pathlib import Path

import pytest
from prefect.states import State

from cvpipe.pipeline.graph import family
from cvpipe.pipeline.repro import RAN, SKIPPED, StageOutcome
from tasks.dvc_stages import Slots, StagePolicy, drop_empty_exc_info, dvc_stage, lineage_env
from tests.support.tiny_dvc import tiny_repo


def test_policy_retries_only_the_download_with_exponential_backoff_and_jitter() -> None:
    policy = StagePolicy(download_retries=3, download_backoff_seconds=5.0, retry_jitter_factor=0.5)
    download = policy.task_options("download")
    assert download["retries"] == 3
    assert download["retry_delay_seconds"](3) == [5.0, 10.0, 20.0]
    assert download["retry_jitter_factor"] == 0.5
    for stage in ("ingest", "train@scratch", "evaluate@scratch"):
        assert policy.task_options(stage)["retries"] == 0, stage
        assert "retry_delay_seconds" not in policy.task_options(stage)


def test_policy_times_out_training_only_and_tags_gpu_stages() -> None:
    policy = StagePolicy(train_timeout_s=60.0)
    assert policy.timeout_s("train@fine_tuning") == 60.0
    assert policy.timeout_s("evaluate@fine_tuning") is None and policy.timeout_s("download") is None
    assert "gpu" in policy.task_options("train@scratch")["tags"]
    assert "gpu" in policy.task_options("features")["tags"]
    assert policy.task_options("split")["tags"] == ["stage:split"]


def test_mnist_stages_get_the_network_and_training_policies_of_their_kind() -> None:
    policy = StagePolicy(download_retries=2, train_timeout_s=60.0)
    assert policy.task_options("mnist_data")["retries"] == 2
    assert policy.timeout_s("mnist_train") == 60.0
    assert "gpu" in policy.task_options("mnist_train")["tags"]
    assert "gpu" in policy.task_options("mnist_evaluate")["tags"]
    assert policy.timeout_s("mnist_evaluate") is None


def _peaks(slots: Slots, stages: list[str]) -> tuple[int, int]:
    """Run ``stages`` on one thread each within ``slots``; the most running at once, in all and on the GPU."""
    lock = threading.Lock()
    running = {"all": 0, "gpu": 0}
    peak = {"all": 0, "gpu": 0}

    def stage(name: str) -> None:
        gpu = family(name) in StagePolicy().gpu_families
        with slots.held(gpu):
            with lock:
                running["all"] += 1
                running["gpu"] += gpu
                peak.update(all=max(peak["all"], running["all"]), gpu=max(peak["gpu"], running["gpu"]))
            time.sleep(0.05)
            with lock:
                running["all"] -= 1
                running["gpu"] -= gpu

    threads = [threading.Thread(target=stage, args=(name,)) for name in stages]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return peak["all"], peak["gpu"]


def test_slots_bound_parallel_and_gpu_stages() -> None:
    stages = [f"train@v{i}" for i in range(6)] + ["audit", "report", "mnist", "split"]
    assert _peaks(Slots(max_parallel=3, gpu_slots=2), stages) == (3, 2)  # 3 may run, 2 of them on the GPU
    assert _peaks(Slots(max_parallel=3, gpu_slots=0), stages[:6]) == (3, 3)  # 0: no separate GPU bound
    assert _peaks(Slots(max_parallel=1, gpu_slots=1), stages) == (1, 1)


def test_lineage_env_is_empty_outside_a_flow_run() -> None:
    assert lineage_env() == {}


@pytest.mark.slow
def test_dvc_stage_runs_then_skips_outside_a_flow_run(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    repo = tiny_repo(tmp_path / "repo")
    caplog.set_level(logging.INFO, logger="tasks.dvc_stages")
    first = dvc_stage.fn("make", str(repo), slots=Slots(1, 1))
    assert isinstance(first, StageOutcome) and first.status == RAN and first.seconds > 0
    assert ("tasks.dvc_stages", logging.WARNING, "cvpipe.fake: stage says hello") in caplog.record_tuples
    assert dvc_stage.fn("make", str(repo)).status == SKIPPED
    assert dvc_stage.fn("make", str(repo), force=True).status == RAN
    assert (repo / "made.txt").read_text() == "none"  # no flow run outside Prefect


@pytest.mark.slow
def test_a_failed_stage_is_a_failed_state_with_one_line_not_an_exception(tmp_path: Path) -> None:
    # Raised, Prefect would log the exception with its traceback (in the task's and the flow's log).
    state = dvc_stage.fn("broken", str(tiny_repo(tmp_path / "repo")))
    assert isinstance(state, State) and state.is_failed()
    message = state.message or ""
    assert message.startswith("stage 'broken' failed (dvc exit ") and "exited with 3" in message
    assert "\n" not in message


def test_prefect_s_exc_info_outside_an_exception_adds_no_line() -> None:
    # Prefect logs a returned Failed state with exc_info=True, where no exception is being handled.
    record = logging.LogRecord("prefect.task_runs", logging.ERROR, __file__, 1, "failed", None, (None, None, None))
    assert drop_empty_exc_info(record) and record.exc_info is None
    assert logging.Formatter().format(record) == "failed"
    try:
        raise ValueError("kept")
    except ValueError:
        raised = logging.LogRecord("prefect.task_runs", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    assert drop_empty_exc_info(raised) and raised.exc_info is not None
