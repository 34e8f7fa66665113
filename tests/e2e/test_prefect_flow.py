"""The Prefect flow end to end: real DVC in temp git repos, Prefect's test harness, and a real Prefect server.

- The real dvc.yaml on tiny synthetic data: the first run executes the stages, the second skips them, and the
  ``dvc.lock`` agrees with ``dvc repro``.
- A small fake DAG (``python stage.py ...`` stages, independent of cvpipe's real stages) for the semantics:
  parallel variants within the GPU bound, a failing variant and a timed-out one leave the others done and the
  flow failed naming them, downstream stages not run (Prefect leaves them ``NotReady``).
- The real download stage against the fake Kaggle on 127.0.0.1: a run that fails (401), then one failing twice
  and retried by Prefect; the Kaggle key (environment and ``kaggle.json``) is in none of their logs, artifacts,
  states, the server's database or the workspace's files.
- A real schedule: ``prefect server start`` on a free port, ``prefect deploy`` of the project's prefect.yaml
  with a short interval, a process worker; a scheduled run completes with its artifacts. Every process the
  test starts is stopped, whatever happens.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from cvpipe.pipeline.commands import dvc, kill_tree, run_tool
from cvpipe.pipeline.workspace import prepare_workspace
from flows.pipeline import RUN_RECORD, cvpipe_pipeline
from tests.e2e.test_dvc_pipeline import DATA_STAGES, ROOT, TINY
from tests.e2e.test_secrets import assert_no_secret, assert_no_secret_in_files, kaggle_client_env, secret_forms
from tests.support.fake_kaggle import FakeKaggle, Reply, competition_archive
from tests.support.prefect_server import (
    Api,
    prefect_argv,
    running_server,
    shared_harness,
    start_process,
    stop_shared_harness,
    wait_for,
)

# retrieved_at makes SOURCE.json differ between two downloads of the same data; each stage's lineage record
# holds its run's time and id.
VOLATILE_OUTS = {"data/raw/SOURCE.json"} | {f"reports/lineage/{stage}" for stage in DATA_STAGES}

pytestmark = pytest.mark.slow


# -- Prefect --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Prefect's test harness (a temporary server and database) for the whole session; yields its API URL.

    One harness per test process, whichever module asks first (tests/e2e/test_concurrency.py uses it too).
    """
    yield shared_harness(tmp_path_factory.mktemp("prefect-home"))
    stop_shared_harness()


def flow_run_id(state: Any) -> str:
    return str(state.state_details.flow_run_id)


# -- the real DAG ---------------------------------------------------------------------------------------------


def lock_without_volatile_outs(workspace: Path) -> dict[str, Any]:
    stages = yaml.safe_load((workspace / "dvc.lock").read_text())["stages"]
    for stage in stages.values():
        stage["outs"] = [out for out in stage.get("outs", []) if out["path"] not in VOLATILE_OUTS]
    return stages


def test_flow_runs_the_stages_then_skips_them_and_agrees_with_dvc_repro(prefect_api: str, tmp_path: Path) -> None:
    api = Api(prefect_api)
    workspace = prepare_workspace(ROOT, tmp_path / "ws", TINY)

    first = cvpipe_pipeline(targets=["decode"], project_dir=str(workspace), return_state=True)
    assert first.is_completed(), first.message
    assert first.result() == dict.fromkeys(DATA_STAGES, "ran")
    lock = (workspace / "dvc.lock").read_text()
    task_runs = api.task_runs(flow_run_id(first))
    assert sorted(task_runs) == sorted(DATA_STAGES)  # one task run per stage, named after it
    assert all(run["state_type"] == "COMPLETED" for run in task_runs.values())
    summary = api.artifacts(flow_run_id(first))["cvpipe-summary"]["data"]
    source = json.loads((workspace / "data/raw/SOURCE.json").read_text())
    assert source["archive"]["sha256"] in summary and "quarantined: 3 of 91" in summary
    record = json.loads((workspace / RUN_RECORD).read_text())
    assert record["flow_run_id"] == flow_run_id(first) and record["state"] == "completed"

    second = cvpipe_pipeline(targets=["decode"], project_dir=str(workspace), return_state=True)
    assert second.is_completed(), second.message
    assert second.result() == dict.fromkeys(DATA_STAGES, "skipped")
    assert (workspace / "dvc.lock").read_text() == lock

    # DVC agrees: nothing to do, and the same dvc.lock as a plain `dvc repro` of the same params.
    output = run_tool(dvc("repro", "decode"), workspace).stdout
    assert "Running stage" not in output
    assert (workspace / "dvc.lock").read_text() == lock
    twin = prepare_workspace(ROOT, tmp_path / "twin", TINY)
    run_tool(dvc("repro", "decode"), twin)
    assert lock_without_volatile_outs(twin) == lock_without_volatile_outs(workspace)


def test_download_failing_twice_is_retried_by_prefect_and_no_run_records_the_key(
    prefect_api: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = Api(prefect_api)
    outer, train = competition_archive(per_class=3)
    workspace = prepare_workspace(ROOT, tmp_path / "ws", {**TINY, "data": {"source": "kaggle", "retries": 0}})
    home = tmp_path / "home"
    with FakeKaggle(outer) as kaggle:
        for name, value in kaggle_client_env(kaggle, home).items():
            monkeypatch.setenv(name, value)
        # A run that fails: Kaggle turns the key down (401), which no retry can fix.
        kaggle.script("download", Reply(401, "Unauthenticated"))
        failed = cvpipe_pipeline(
            targets=["download"], project_dir=str(workspace), download_retries=0, return_state=True
        )
        # Kaggle answers 503 twice; cvpipe's own retries are off, so each failure fails the stage.
        kaggle.script("download", Reply(503, "Service Unavailable"), Reply(503, "Service Unavailable"))
        state = cvpipe_pipeline(
            targets=["download"],
            project_dir=str(workspace),
            download_retries=3,
            download_retry_delay_seconds=0.2,
            return_state=True,
        )
        requests = kaggle.count("download")
    assert failed.is_failed() and "Kaggle rejected the credentials (401)" in (failed.message or "")
    assert state.is_completed(), state.message
    assert state.result() == {"download": "ran"}
    assert requests == 4
    assert (workspace / "data/raw/images.zip").read_bytes() == train
    download = api.task_runs(flow_run_id(state))["download"]
    assert download["run_count"] == 3 and download["state_type"] == "COMPLETED"

    # The key is in no log line, artifact, state or parameter of either run, as the server holds them...
    secrets = secret_forms(kaggle.username, kaggle.key)
    for run in (failed, state):
        run_id = flow_run_id(run)
        logs, artifacts = api.logs(run_id), api.artifacts(run_id)
        assert any("Service Unavailable" in log["message"] or "(401)" in log["message"] for log in logs)
        assert "cvpipe-summary" in artifacts
        records = [logs, artifacts, api.task_runs(run_id), api.flow_run(run_id), run.message]
        assert_no_secret(json.dumps(records), secrets, f"Prefect's records of flow run {run_id}")
    # ...nor anywhere in the server's database, nor in any file of the workspace (dvc.lock, .dvc/tmp, the run
    # record, lineage records, the failed attempts' too).
    assert_no_secret_in_files([harness_database_dir(), Path(os.environ["PREFECT_HOME"])], secrets)
    assert assert_no_secret_in_files([workspace, home], secrets, allowed=[home / ".kaggle" / "kaggle.json"]) > 20


def harness_database_dir() -> Path:
    """The folder of the test harness's SQLite database (the database, its journal and write-ahead log)."""
    from prefect.settings import get_current_settings

    url = str(get_current_settings().server.database.connection_url.get_secret_value())
    return Path(url.split(":///", 1)[1]).parent


# -- a fake DAG for the failure and concurrency semantics ---------------------------------------------------------

STAGE_SCRIPT = """\
import json, os, sys, time
name, out, seconds, code = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
os.makedirs("trace", exist_ok=True)
tag = name.replace("@", "_")
with open("trace/runs.log", "a") as f:  # every start of every stage command, whoever started it
    f.write(f"{name} {os.getpid()}\\n")
with open(f"trace/{tag}.start", "w") as f:
    json.dump({"pid": os.getpid(), "t": time.time()}, f)
while os.path.exists(f"hold-{tag}"):  # a test holds the stage here until it removes the file
    time.sleep(0.05)
time.sleep(seconds)
if code:
    print(f"2026-01-02 03:04:05,678 ERROR cvpipe.fake: {name} failing on purpose", file=sys.stderr, flush=True)
    print(f"error: params.yaml: train.{tag}.epochs: failing on purpose", file=sys.stderr, flush=True)  # cvpipe's
    with open(f"trace/{tag}.end", "w") as f:
        json.dump({"t": time.time()}, f)
    sys.exit(code)
os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
if out.endswith(".html"):
    payload = "<html><body>report</body></html>"
elif name.startswith("evaluate@"):
    payload = json.dumps({"accuracy": 0.75, "loss": 0.5})
else:
    payload = json.dumps({"flow_run_id": os.environ.get("CVPIPE_FLOW_RUN_ID")})
with open(out, "w") as f:
    f.write(payload)
with open(f"trace/{tag}.end", "w") as f:
    json.dump({"t": time.time()}, f)
"""


def fake_project(dest: Path, variants: Mapping[str, tuple[float, int]]) -> Path:
    """A git + DVC repo: prep -> train@<variant> (sleep s, exit code) -> evaluate@<variant> -> report.

    Each stage's command records its start and end in ``trace/<stage>.start|end`` (``@`` as ``_``), appends
    ``<stage> <pid>`` to ``trace/runs.log`` and, while a file ``hold-<stage>`` exists in the repo, waits: a
    test holds a stage running for as long as it needs.
    """
    dest.mkdir(parents=True)
    (dest / "stage.py").write_text(STAGE_SCRIPT)
    stages = {
        "prep": {"cmd": "python stage.py prep prep.json 0 0", "deps": ["stage.py"], "outs": ["prep.json"]},
        "train": {
            "foreach": {name: {"sleep": sleep, "exit": code} for name, (sleep, code) in variants.items()},
            "do": {
                "cmd": "python stage.py train@${key} models/${key}.json ${item.sleep} ${item.exit}",
                "deps": ["prep.json", "stage.py"],
                "outs": ["models/${key}.json"],
            },
        },
        "evaluate": {
            "foreach": list(variants),
            "do": {
                "cmd": "python stage.py evaluate@${item} reports/metrics/${item}.json 0 0",
                "deps": ["models/${item}.json", "stage.py"],
                "outs": ["reports/metrics/${item}.json"],
            },
        },
        "report": {
            "cmd": "python stage.py report reports/index.html 0 0",
            "deps": [f"reports/metrics/{name}.json" for name in variants],
            "outs": ["reports/index.html"],
        },
    }
    (dest / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    (dest / ".gitignore").write_text("/trace/\n/hold-*\n")
    (dest / "params.yaml").write_text("{}\n")  # cvpipe's defaults: the flow validates params before running
    run_tool(["git", "init", "-q"], dest)
    run_tool(dvc("init", "-q"), dest)
    # What `dvc config core.autostage false` writes into the empty config of `dvc init`, without another DVC
    # start-up (a second or more on a loaded machine); it keeps a developer's global setting out of the test.
    (dest / ".dvc" / "config").write_text("[core]\n    autostage = false\n")
    return dest


def max_overlap(workspace: Path, prefix: str) -> int:
    """The most ``prefix`` stage commands that were running at one moment (killed ones ran to the end)."""
    events = []
    for start in (workspace / "trace").glob(f"{prefix}*.start"):
        end = start.with_suffix(".end")
        events.append((json.loads(start.read_text())["t"], 1))
        events.append((json.loads(end.read_text())["t"] if end.exists() else float("inf"), -1))
    running = peak = 0
    for _, step in sorted(events, key=lambda event: (event[0], event[1])):
        running += step
        peak = max(peak, running)
    return peak


def test_failed_and_timed_out_variants_leave_the_others_done_and_fail_the_flow(
    prefect_api: str, tmp_path: Path
) -> None:
    api = Api(prefect_api)
    # b fails, d runs past the time limit; a and c succeed.
    workspace = fake_project(tmp_path / "fake", {"a": (3, 0), "b": (1, 3), "c": (3, 0), "d": (300, 0)})
    started = time.monotonic()
    state = cvpipe_pipeline(
        project_dir=str(workspace), max_parallel=3, gpu_slots=2, train_timeout_minutes=0.25, return_state=True
    )
    assert time.monotonic() - started < 150
    assert state.is_failed()
    message = state.message or ""
    assert re.search(r"2 stage\(s\) failed: .*train@b", message) and "train@d" in message
    assert "not run because an upstream stage failed: evaluate@b, evaluate@d, report" in message

    run_id = flow_run_id(state)
    task_runs = api.task_runs(run_id)
    assert {name: run["state_name"] for name, run in task_runs.items()} == {
        "prep": "Completed",
        "train@a": "Completed",
        "train@b": "Failed",
        "train@c": "Completed",
        "train@d": "TimedOut",
        "evaluate@a": "Completed",
        "evaluate@c": "Completed",
        # Downstream of a failure: Prefect's wait_for left them pending, never run.
        "evaluate@b": "NotReady",
        "evaluate@d": "NotReady",
        "report": "NotReady",
    }
    assert all(task_runs[stage]["run_count"] == 0 for stage in ("evaluate@b", "evaluate@d", "report"))
    assert not (workspace / "trace/evaluate_b.start").exists() and not (workspace / "trace/report.start").exists()
    assert task_runs["train@b"]["run_count"] == 1  # no retries outside the download
    # The killed stage is gone, not left running.
    pid = json.loads((workspace / "trace/train_d.start").read_text())["pid"]
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    # Variants ran side by side, never more than the GPU slots allow.
    assert max_overlap(workspace, "train_") == 2

    # What succeeded is committed by DVC, with this flow run's id passed to the stages.
    lock = yaml.safe_load((workspace / "dvc.lock").read_text())["stages"]
    assert set(lock) == {"prep", "train@a", "train@c", "evaluate@a", "evaluate@c"}
    assert json.loads((workspace / "models/a.json").read_text())["flow_run_id"] == run_id

    artifacts = api.artifacts(run_id)
    assert {row["variant"] for row in json.loads(artifacts["cvpipe-metrics"]["data"])} == {"a", "c"}
    assert "**failed**" in artifacts["cvpipe-summary"]["data"] and "cvpipe-report" not in artifacts
    logs = api.logs(run_id)
    assert any(log["level"] == 40 and "cvpipe.fake: train@b failing on purpose" in log["message"] for log in logs)
    # A failed stage is its one line, in the task's state and the flow's: no Python traceback anywhere in the log.
    cause = "error: params.yaml: train.train_b.epochs: failing on purpose"
    assert cause in (task_runs["train@b"]["state"]["message"] or "") and cause in message
    assert any(log["level"] == 40 and log["message"] == cause for log in logs)
    assert not [log["message"] for log in logs if "Traceback" in log["message"] or "NoneType: None" in log["message"]]
    record = json.loads((workspace / RUN_RECORD).read_text())
    assert record["state"] == "failed" and set(record["failed"]) == {"train@b", "train@d"}


# -- a real server, a deployment from prefect.yaml, a worker -----------------------------------------------------


@pytest.fixture
def prefect_server(tmp_path: Path) -> Iterator[tuple[str, dict[str, str], dict[str, subprocess.Popen[str]]]]:
    """``prefect server start`` on a free 127.0.0.1 port; yields (API URL, env for CLIs, processes to watch).

    Every process registered in the yielded dict (the server, and whatever the test adds) is stopped with all
    its children at teardown, the server last.
    """
    with running_server(tmp_path, {"PREFECT_WORKER_QUERY_SECONDS": "2"}) as server:
        yield server


def _start(name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> subprocess.Popen[str]:
    return start_process(name, argv, env, log_dir, ROOT)


def _completed_scheduled_run(
    api: Api, deployment: str, procs: Mapping[str, subprocess.Popen[str]], timeout: float = 240
) -> dict[str, Any]:
    """Wait for a run of ``deployment`` that its schedule created and that completed."""
    query = {
        "deployments": {"name": {"any_": [deployment]}},
        "flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}},
    }
    runs = wait_for(lambda: api.flow_runs(query), timeout, f"a run of {deployment}", procs)
    return runs[0]


def _assert_run_has_stages_and_artifacts(api: Api, run: dict[str, Any], workspace: Path) -> None:
    assert run["auto_scheduled"] is True
    assert sorted(api.task_runs(run["id"])) == ["evaluate@a", "evaluate@b", "prep", "report", "train@a", "train@b"]
    artifacts = api.artifacts(run["id"])
    assert {"cvpipe-metrics", "cvpipe-summary", "cvpipe-report"} <= set(artifacts)
    assert f"{workspace}/reports/index.html" in artifacts["cvpipe-report"]["data"]
    assert {row["variant"] for row in json.loads(artifacts["cvpipe-metrics"]["data"])} == {"a", "b"}


def test_scheduled_runs_from_prefect_yaml_and_serve_complete_with_artifacts(
    prefect_server: tuple[str, dict[str, str], dict[str, subprocess.Popen[str]]], tmp_path: Path
) -> None:
    url, env, procs = prefect_server
    api = Api(url)
    log_dir = tmp_path / "logs"
    workspace = fake_project(tmp_path / "fake", {"a": (0, 0), "b": (0, 0)})

    # 1. The project's own prefect.yaml: a 10 s interval added to its nightly cron, the fake project, a worker.
    subprocess.run(
        prefect_argv("work-pool", "create", "cvpipe", "--type", "process"),
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    deploy = subprocess.run(
        prefect_argv(
            "--no-prompt",
            "deploy",
            "--prefect-file",
            str(ROOT / "prefect.yaml"),
            "--name",
            "nightly",
            "--interval",
            "10",
            "--param",
            f"project_dir={workspace}",
        ),
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    deployment = api.post("/deployments/filter", {"deployments": {"name": {"any_": ["nightly"]}}})[0]
    assert {"cron": "0 2 * * *", "timezone": "UTC", "day_or": True} in [s["schedule"] for s in deployment["schedules"]]
    assert deployment["concurrency_options"]["collision_strategy"] == "CANCEL_NEW"
    assert deployment["global_concurrency_limit"]["limit"] == 1
    procs["worker"] = _start("worker", prefect_argv("worker", "start", "--pool", "cvpipe"), env, log_dir)
    run = _completed_scheduled_run(api, "nightly", procs)
    _assert_run_has_stages_and_artifacts(api, run, workspace)
    record = json.loads((workspace / RUN_RECORD).read_text())
    assert record["deployment_id"] == deployment["id"] and record["flow_run_id"] == run["id"]

    # 2. `serve` instead of a worker (the worker stops first, so the two never share the workspace).
    worker = procs.pop("worker")
    kill_tree(worker.pid)
    worker.wait(timeout=30)
    serve = [sys.executable, "-m", "cvpipe.cli", "flow", "serve", "--interval", "10", "--name", "served"]
    procs["serve"] = _start("serve", [*serve, "--project-dir", str(workspace)], env, log_dir)
    _assert_run_has_stages_and_artifacts(api, _completed_scheduled_run(api, "served", procs), workspace)


def test_serve_without_a_server_says_what_to_do(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(tmp_path / "home"), PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-m", "cvpipe.cli", "flow", "serve"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "prefect server start" in result.stderr and "PREFECT_API_URL" in result.stderr
