"""Concurrent runs on one project: one proceeds, the other refuses with a clear message, never both writing.

- Two ``dvc repro``, and a flow run while a ``dvc repro`` runs: DVC's output lock refuses the second
  ``dvc repro``; the flow run refuses before it runs any stage; and when a ``dvc repro`` gets in between two
  of a flow run's stages, DVC refuses the flow's stage and the task run's failure says why.
- A second flow run, and a ``dvc repro``, while a flow run runs: cvpipe's run lock refuses the second flow
  run, DVC refuses the ``dvc repro``.
- The deployment's concurrency limit (``prefect.yaml``): the server cancels a run that would overlap.

Real DVC in temp git repos (the fake DAG of ``test_prefect_flow``), real flow runs on Prefect's test harness.
A stage command is held running while a ``hold-<stage>`` file exists, so nothing here depends on timing; that
each stage command started exactly once (``trace/runs.log``) shows that no two processes wrote its outputs.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cvpipe.pipeline.commands import dvc, run_tool, tool_env
from cvpipe.pipeline.lock import RUN_LOCK
from flows.pipeline import DEPLOYMENT_NAME, FLOW_NAME, RUN_RECORD, cvpipe_pipeline
from tests.e2e.test_prefect_flow import ROOT, fake_project, flow_run_id
from tests.support.prefect_server import Api, shared_harness, stop_shared_harness

pytestmark = pytest.mark.slow

WAIT_S = 120.0


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Prefect's test harness; the same one as test_prefect_flow's when both modules run in one session."""
    yield shared_harness(tmp_path_factory.mktemp("prefect-home"))
    stop_shared_harness()


def until(predicate: Callable[[], Any], what: str, alive: Callable[[], bool] = lambda: True) -> Any:
    """Poll ``predicate`` until it is truthy; fail if ``alive`` turns false first or after WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        assert alive(), f"gave up waiting for {what}: the process ended"
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@contextlib.contextmanager
def held(workspace: Path, stage: str) -> Iterator[None]:
    """Hold ``stage``'s command running (see ``fake_project``) until the block ends."""
    hold = workspace / f"hold-{stage}"
    hold.touch()
    try:
        yield
    finally:
        hold.unlink(missing_ok=True)


def starts(workspace: Path) -> list[str]:
    """The stage commands started so far, one entry per start."""
    log = workspace / "trace" / "runs.log"
    return [line.split()[0] for line in log.read_text().splitlines()] if log.exists() else []


def output_of(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


def test_a_second_dvc_repro_and_a_flow_run_are_refused_while_dvc_repro_runs(
    prefect_api: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = Api(prefect_api)
    workspace = fake_project(tmp_path / "fake", {"a": (0, 0)})
    with held(workspace, "prep"):
        first = subprocess.Popen(
            dvc("repro", "prep"),
            cwd=workspace,
            env=tool_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        until(lambda: "prep" in starts(workspace), "the first dvc repro to run prep", lambda: first.poll() is None)

        # 1. Another `dvc repro`: DVC's output lock refuses it before it runs anything.
        second = run_tool(dvc("repro"), workspace, check=False)
        assert second.returncode != 0
        assert "is busy, it is being blocked by" in output_of(second) and f"(PID {first.pid})" in output_of(second)
        assert "Running stage" not in output_of(second)

        # 2. A flow run: refuses before its first stage, saying which DVC command to wait for.
        refused = cvpipe_pipeline(project_dir=str(workspace), return_state=True)
        assert refused.is_failed()
        assert f"DVC is reproducing stages in {workspace} (PID {first.pid}: dvc repro prep)" in (refused.message or "")
        assert api.task_runs(flow_run_id(refused)) == {}
        assert not (workspace / RUN_RECORD).exists()  # it wrote nothing

        # 3. A `dvc repro` that started between two of a flow run's stages, after the flow's own check: DVC
        # refuses the flow's stage, and the task run's failure names the process to wait for.
        monkeypatch.setattr("cvpipe.pipeline.lock.dvc_lock_holders", lambda _project: [])
        state = cvpipe_pipeline(project_dir=str(workspace), return_state=True)
        assert state.is_failed()
        blocked = f"is busy, it is being blocked by: (PID {first.pid}): dvc repro prep"
        prep = api.task_runs(flow_run_id(state))["prep"]
        assert prep["state_name"] == "Failed" and blocked in prep["state"]["message"]
        message = state.message or ""
        assert "1 stage(s) failed: prep (stage 'prep' failed (dvc exit 255)" in message and blocked in message
        assert "not run because an upstream stage failed: train@a, evaluate@a, report" in message
        assert any(log["level"] == 40 and "is busy" in log["message"] for log in api.logs(flow_run_id(state)))

    assert first.wait(timeout=WAIT_S) == 0, first.stdout.read() if first.stdout else ""
    assert starts(workspace) == ["prep"]  # only the first ever ran it
    assert "prep" in yaml.safe_load((workspace / "dvc.lock").read_text())["stages"]


def test_a_second_flow_run_and_a_dvc_repro_are_refused_while_a_flow_run_runs(prefect_api: str, tmp_path: Path) -> None:
    api = Api(prefect_api)
    workspace = fake_project(tmp_path / "fake", {"a": (0, 0)})
    outcome: dict[str, Any] = {}
    # A copy of this thread's context carries the harness's settings into the flow run's thread.
    context = contextvars.copy_context()

    def first_run() -> None:
        outcome["state"] = context.run(cvpipe_pipeline, project_dir=str(workspace), targets=["prep"], return_state=True)

    with held(workspace, "prep"):
        thread = threading.Thread(target=first_run, daemon=True)
        thread.start()
        until(lambda: "prep" in starts(workspace), "the first flow run to run prep", thread.is_alive)
        holder = json.loads((workspace / RUN_LOCK).read_text())

        # 1. A second flow run: cvpipe's run lock refuses it before it writes or runs anything.
        refused = cvpipe_pipeline(project_dir=str(workspace), return_state=True)
        assert refused.is_failed()
        message = refused.message or ""
        assert f"another cvpipe flow run is reproducing {workspace}" in message
        assert f"({holder['flow_run_id']}), process {holder['pid']}" in message and "this run did nothing" in message
        assert api.task_runs(flow_run_id(refused)) == {}
        assert json.loads((workspace / RUN_RECORD).read_text())["flow_run_id"] == holder["flow_run_id"]

        # 2. `dvc repro` by hand: DVC refuses it, naming the flow's stage process.
        by_hand = run_tool(dvc("repro"), workspace, check=False)
        assert by_hand.returncode != 0 and "Running stage" not in output_of(by_hand)
        assert "is busy, it is being blocked by" in output_of(by_hand)
        assert "repro --single-item prep" in output_of(by_hand)

    thread.join(timeout=WAIT_S)
    assert outcome["state"].is_completed(), outcome["state"].message
    assert flow_run_id(outcome["state"]) == holder["flow_run_id"]
    assert starts(workspace) == ["prep"]
    with contextlib.suppress(FileNotFoundError):  # released: the next run may take it
        assert (workspace / RUN_LOCK).read_text() == ""


def test_the_deployment_runs_one_at_a_time_and_cancels_a_run_that_would_overlap(prefect_api: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import ConcurrencyOptions
    from prefect.states import Completed, Pending, Running

    deployment = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"][0]
    assert deployment["name"] == DEPLOYMENT_NAME
    limit = deployment["concurrency_limit"]
    assert limit == {"limit": 1, "collision_strategy": "CANCEL_NEW"}
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name(FLOW_NAME)
        deployment_id = client.create_deployment(
            flow_id,
            name="concurrency-check",
            entrypoint=deployment["entrypoint"],
            concurrency_limit=limit["limit"],
            concurrency_options=ConcurrencyOptions(collision_strategy=limit["collision_strategy"]),
        )
        first, second = (client.create_flow_run_from_deployment(deployment_id) for _ in range(2))
        # What a worker (or `serve`) does before it starts a run's process: propose Pending.
        assert client.set_flow_run_state(first.id, Pending()).status.value == "ACCEPT"
        collision = client.set_flow_run_state(second.id, Pending())
        assert collision.status.value == "REJECT" and collision.state is not None
        assert collision.state.is_cancelled() and collision.state.message == "Deployment concurrency limit reached."
        for state in (Running(), Completed()):
            client.set_flow_run_state(first.id, state)
        # Once the first run has ended, the next one starts.
        third = client.create_flow_run_from_deployment(deployment_id)
        assert client.set_flow_run_state(third.id, Pending()).status.value == "ACCEPT"
