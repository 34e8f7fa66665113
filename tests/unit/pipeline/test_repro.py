"""One stage through DVC: DVC's status says whether it is stale, ``dvc repro --single-item`` runs it."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import psutil
import pytest

from cvpipe.pipeline.commands import StageTimeoutError, dvc, run_tool, tool_env
from cvpipe.pipeline.repro import (
    RAN,
    SKIPPED,
    StageFailedError,
    failure_line,
    is_stale,
    line_level,
    repro_argv,
    run_stage,
    status_argv,
)
from tests.support.tiny_dvc import tiny_repo


def test_repro_and_status_argv_run_one_stage_through_this_dvc() -> None:
    argv = repro_argv("train@scratch")
    assert argv[:3] == [sys.executable, "-m", "dvc"]
    assert argv[3:] == ["--wait-for-lock", "repro", "--single-item", "train@scratch"]
    assert repro_argv("download", force=True)[-2:] == ["--force", "download"]
    assert status_argv("split")[3:] == ["--wait-for-lock", "status", "--json", "split"]


def test_line_level_keeps_cvpipe_and_dvc_levels() -> None:
    assert line_level("2026-01-02 03:04:05,678 WARNING cvpipe.stages.split: 3 images left out") == (
        logging.WARNING,
        "cvpipe.stages.split: 3 images left out",
    )
    assert line_level("ERROR: failed to reproduce 'split'") == (logging.ERROR, "ERROR: failed to reproduce 'split'")
    assert line_level("> cvpipe split") == (logging.INFO, "> cvpipe split")
    assert line_level("error: params.yaml: x: bad") == (logging.ERROR, "error: params.yaml: x: bad")  # exit 2


# What DVC 3.67 printed when another `dvc repro` held the stage's files (measured), and a cvpipe stage's failure.
BUSY_TAIL = [
    "Running stage 'prep':",
    "ERROR: failed to reproduce 'prep': '/ws/prep.json' is busy, it is being blocked by:",
    "  (PID 4242): /venv/lib/python3.11/site-packages/dvc/__main__.py repro prep",
    "  (PID 4242): /venv/lib/python3.11/site-packages/dvc/__main__.py repro prep",
    "",
    "If there are no processes with such PIDs, you can manually remove '/ws/.dvc/tmp/rwlock' and try again.",
]
CVPIPE_TAIL = [
    "> cvpipe download",
    "error: Kaggle rejected the credentials (401): check KAGGLE_USERNAME/KAGGLE_KEY or kaggle.json",
    "ERROR: failed to reproduce 'download': failed to run: cvpipe download, exited with 2",
]


def test_failure_line_says_why_the_stage_failed() -> None:
    assert failure_line(BUSY_TAIL) == (
        "ERROR: failed to reproduce 'prep': '/ws/prep.json' is busy, it is being blocked by: "
        "(PID 4242): dvc repro prep (another DVC command is using this stage's files)"
    )
    assert failure_line(CVPIPE_TAIL) == CVPIPE_TAIL[1]  # cvpipe's line says what to do
    assert failure_line(["some output", "last words", ""]) == "last words"
    assert str(StageFailedError("prep", 255, BUSY_TAIL)).startswith("stage 'prep' failed (dvc exit 255): ERROR:")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return tiny_repo(tmp_path / "repo")


@pytest.mark.slow
def test_stale_is_what_dvc_status_says(repo: Path) -> None:
    env = tool_env()
    assert is_stale("make", repo, env)  # never run: no dvc.lock entry
    run_tool(dvc("repro", "make"), repo)
    assert not is_stale("make", repo, env)
    (repo / "made.txt").unlink()  # an output gone: DVC reruns it (the lock entry alone would say nothing)
    assert is_stale("make", repo, env)
    run_tool(dvc("repro", "make"), repo)
    (repo / "stage.py").write_text((repo / "stage.py").read_text() + "\n")  # a dep changed
    assert is_stale("make", repo, env)
    assert is_stale("ghost", repo, env)  # DVC cannot say: dvc repro will report why


@pytest.mark.slow
def test_run_stage_runs_a_stale_stage_and_skips_an_up_to_date_one(repo: Path) -> None:
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logger = logging.getLogger("test_repro.collect")
    logger.addHandler(Collect())
    logger.setLevel(logging.INFO)
    assert run_stage("make", repo, logger=logger).status == RAN
    assert "cvpipe.fake: stage says hello" in lines
    lock = (repo / "dvc.lock").read_text()
    assert run_stage("make", repo, logger=logger).status == SKIPPED
    assert (repo / "dvc.lock").read_text() == lock
    assert run_stage("make", repo, force=True).status == RAN


@pytest.mark.slow
def test_run_stage_failure_names_the_stage_and_shows_the_tail(repo: Path) -> None:
    with pytest.raises(StageFailedError, match=r"stage 'broken' failed \(dvc exit \d+\)") as error:
        run_stage("broken", repo)
    assert any("cvpipe.fake: stage says hello" in line for line in error.value.tail)


@pytest.mark.slow
def test_run_stage_timeout_kills_the_stage(repo: Path) -> None:
    started = time.monotonic()
    with pytest.raises(StageTimeoutError, match="stage 'slow' ran past its time limit"):
        run_stage("slow", repo, timeout_s=4)
    assert time.monotonic() - started < 40
    leftovers = [p for p in psutil.process_iter(["cmdline"]) if "slow.txt" in " ".join(p.info["cmdline"] or [])]
    assert leftovers == []
