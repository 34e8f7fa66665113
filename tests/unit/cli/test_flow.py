"""``cvpipe flow run|serve``: options to the flow's parameters, Prefect's environment, clear refusals."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest

from cvpipe.cli import main
from cvpipe.cli.flow import DEFAULT_GPU_SLOTS, DEFAULT_MAX_PARALLEL, flow_parameters, prefect_env_defaults


def test_prefect_defaults_are_project_local_and_yield_to_the_environment(tmp_path: Path) -> None:
    defaults = prefect_env_defaults(tmp_path, {})
    assert defaults["PREFECT_HOME"] == str(tmp_path.resolve() / ".prefect")
    assert defaults["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false" and defaults["DO_NOT_TRACK"] == "1"
    assert int(defaults["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"]) >= 60
    assert "PREFECT_HOME" not in prefect_env_defaults(tmp_path, {"PREFECT_HOME": "/elsewhere"})


def test_the_commands_defaults_are_the_flows() -> None:
    from flows.pipeline import cvpipe_pipeline

    signature = inspect.signature(cvpipe_pipeline.fn)
    assert signature.parameters["max_parallel"].default == DEFAULT_MAX_PARALLEL
    assert signature.parameters["gpu_slots"].default == DEFAULT_GPU_SLOTS
    assert set(flow_parameters(Path("."), None, False, "params.yaml", 2, 1)) <= set(signature.parameters)


@pytest.fixture
def prefect_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every variable the command would set is set already, so nothing leaks out of the test."""
    for name, value in prefect_env_defaults(tmp_path, {}).items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    (tmp_path / "params.yaml").write_text("split:\n  seed: 1\n", encoding="utf-8")
    return tmp_path


class FakeState:
    def __init__(self, completed: bool) -> None:
        self.completed, self.name, self.message = completed, "Failed", "1 stage(s) failed: prep (exit 1)"

    def is_completed(self) -> bool:
        return self.completed


def test_run_maps_options_to_the_flow_and_exits_1_unless_it_completed(
    prefect_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls: list[dict[str, Any]] = []

    def fake_flow(**kwargs: Any) -> FakeState:
        calls.append(kwargs)
        return FakeState(completed=len(calls) == 1)

    monkeypatch.setattr("flows.pipeline.cvpipe_pipeline", fake_flow)
    argv = ["flow", "run", "--project-dir", str(prefect_env), "--target", "decode", "--target", "train", "--force"]
    assert main([*argv, "--max-parallel", "3"]) == 0
    assert calls[0] == {
        "targets": ["decode", "train"],
        "force": True,
        "params_file": "params.yaml",
        "project_dir": str(prefect_env.resolve()),
        "max_parallel": 3,
        "gpu_slots": 1,
        "return_state": True,
    }
    assert main(argv) == 1
    assert "error: flow run ended Failed: 1 stage(s) failed: prep (exit 1)" in capsys.readouterr().err


def test_run_checks_the_whole_params_file_before_prefect_starts(
    prefect_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("flows.pipeline.cvpipe_pipeline", lambda **_: pytest.fail("the flow must not start"))
    # A typo in a key no stage lists (dvc repro would pass it), and a file params name that is not there.
    (prefect_env / "params.yaml").write_text("ingest:\n  wokers: 2\ntrain:\n  scratch:\n    epoch: 3\n")
    assert main(["flow", "run", "--project-dir", str(prefect_env)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "ingest.wokers: unknown key" in err and "train.scratch.epoch: unknown" in err
    assert "Traceback" not in err
    (prefect_env / "params.yaml").write_text("features:\n  weights: nosuch.h5\n")
    assert main(["flow", "run", "--project-dir", str(prefect_env)]) == 2
    assert "features.weights: nosuch.h5 is not a file" in capsys.readouterr().err


def test_serve_without_a_server_or_with_two_schedules_says_what_to_do(
    prefect_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["flow", "serve", "--project-dir", str(prefect_env)]) == 2
    err = capsys.readouterr().err
    assert "prefect server start" in err and "PREFECT_API_URL" in err and err.endswith("\n") and err.count("\n") == 1
    assert main(["flow", "serve", "--cron", "0 2 * * *", "--interval", "10"]) == 2
    assert "--cron or --interval, not both" in capsys.readouterr().err
