"""The Prefect layer's logic as plain functions: DAG handling, stage runs (``.fn()``), scheduling, reporting.

The flow itself runs under Prefect in ``tests/e2e/test_prefect_flow.py``.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from cvpipe.errors import ConfigError
from cvpipe.pipeline.workspace import dvc, run_tool
from flows.pipeline import (
    DagScheduler,
    RunReport,
    apply_params_file,
    build_parser,
    changed_keys,
    flow_parameters,
    lineage,
    metrics_rows,
    prefect_env_defaults,
    refuse_if_dvc_is_busy,
    summary_markdown,
)
from tasks.dvc_stages import (
    DVC_RWLOCK,
    RAN,
    RESTORED,
    RUN_LOCK,
    SKIPPED,
    ProjectBusyError,
    StageFailedError,
    StageOutcome,
    StagePolicy,
    StageTimeoutError,
    dvc_lock_holders,
    dvc_stage,
    failure_line,
    family,
    line_level,
    project_run_lock,
    repro_argv,
    run_streaming,
    select_stages,
    stage_graph,
    stage_status,
    topological_order,
)

ROOT = Path(__file__).resolve().parents[2]
# The shape of cvpipe's DAG once every stage is there.
GRAPH: dict[str, tuple[str, ...]] = {
    "download": (),
    "ingest": ("download",),
    "split": ("ingest",),
    "decode": ("download", "split"),
    "features": ("decode",),
    "train@scratch": ("decode",),
    "train@feature_extraction": ("features",),
    "train@feature_extraction_aug": ("decode",),
    "train@fine_tuning": ("train@feature_extraction_aug", "decode"),
    "evaluate@scratch": ("train@scratch",),
    "evaluate@fine_tuning": ("train@fine_tuning",),
}


# -- the graph ------------------------------------------------------------------------------------------------


def test_family_strips_foreach_key_and_dvcfile() -> None:
    assert family("train@scratch") == "train"
    assert family("download") == "download"
    assert family("sub/dvc.yaml:evaluate@x") == "evaluate"


def test_topological_order_puts_every_stage_after_its_upstream() -> None:
    order = topological_order(GRAPH)
    assert sorted(order) == sorted(GRAPH)
    for stage, ups in GRAPH.items():
        assert all(order.index(up) < order.index(stage) for up in ups), stage
    assert order[:4] == ["download", "ingest", "split", "decode"]


def test_topological_order_rejects_cycles_and_unknown_stages() -> None:
    with pytest.raises(ValueError, match="cycle"):
        topological_order({"a": ("b",), "b": ("a",)})
    with pytest.raises(ValueError, match="not in the graph"):
        topological_order({"a": ("ghost",)})


def test_select_stages_takes_targets_and_everything_upstream() -> None:
    assert set(select_stages(GRAPH, ["split"])) == {"download", "ingest", "split"}
    selected = select_stages(GRAPH, ["evaluate@fine_tuning"])
    assert set(selected) == {
        "download",
        "ingest",
        "split",
        "decode",
        "train@feature_extraction_aug",
        "train@fine_tuning",
        "evaluate@fine_tuning",
    }
    assert selected["train@fine_tuning"] == GRAPH["train@fine_tuning"]
    assert select_stages(GRAPH, None) == GRAPH


def test_select_stages_accepts_a_foreach_group() -> None:
    selected = select_stages(GRAPH, ["train"])
    assert {s for s in selected if s.startswith("train@")} == {s for s in GRAPH if s.startswith("train@")}
    assert "evaluate@scratch" not in selected


def test_select_stages_names_the_stages_there_are() -> None:
    with pytest.raises(ValueError, match=r"no stage 'trian'.*download, ingest"):
        select_stages(GRAPH, ["trian"])


# -- one stage ------------------------------------------------------------------------------------------------


def test_repro_argv_runs_one_stage_through_this_dvc() -> None:
    argv = repro_argv("train@scratch")
    assert argv[:3] == [sys.executable, "-m", "dvc"]
    assert argv[3:] == ["--wait-for-lock", "repro", "--single-item", "train@scratch"]
    assert repro_argv("download", force=True)[-2:] == ["--force", "download"]


@pytest.mark.parametrize(
    ("lines", "status"),
    [
        (["Running stage 'split':", "> cvpipe split ..."], RAN),
        (["Stage 'split' didn't change, skipping", "Data and pipelines are up to date."], SKIPPED),
        (["Stage 'split' is cached - skipping run, checking out outputs"], RESTORED),
        (["Running stage 'ingest':"], SKIPPED),  # another stage's line says nothing about this one
    ],
)
def test_stage_status_reads_what_dvc_printed(lines: list[str], status: str) -> None:
    assert stage_status("split", lines) == status


def test_line_level_keeps_cvpipe_and_dvc_levels() -> None:
    assert line_level("2026-01-02 03:04:05,678 WARNING cvpipe.stages.split: 3 images left out") == (
        logging.WARNING,
        "cvpipe.stages.split: 3 images left out",
    )
    assert line_level("ERROR: failed to reproduce 'split'") == (logging.ERROR, "ERROR: failed to reproduce 'split'")
    assert line_level("> cvpipe split") == (logging.INFO, "> cvpipe split")


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


def test_run_streaming_hands_over_lines_in_order(tmp_path: Path) -> None:
    code = "import sys; print('out 1'); print('err 2', file=sys.stderr, flush=True); print('out 3'); sys.exit(4)"
    lines: list[str] = []
    returncode = run_streaming([sys.executable, "-u", "-c", code], tmp_path, dict(os.environ), lines.append)
    assert returncode == 4
    assert lines == ["out 1", "err 2", "out 3"]


def test_run_streaming_timeout_kills_the_whole_process_tree(tmp_path: Path) -> None:
    # A parent that starts a silent grandchild, as DVC starts a stage command.
    pid_file = tmp_path / "child.pid"
    code = (
        "import subprocess, sys, time\n"
        f"child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "print('started', flush=True)\n"
        "child.wait()\n"
    )
    started = time.monotonic()
    with pytest.raises(StageTimeoutError, match="limit 2"):
        run_streaming([sys.executable, "-c", code], tmp_path, dict(os.environ), lambda _line: None, timeout_s=2)
    assert time.monotonic() - started < 30
    child = int(pid_file.read_text())
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE


# -- stages through DVC, via .fn() ----------------------------------------------------------------------------

STAGE_SCRIPT = """\
import os, sys, time
out, seconds, code = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
print("2026-01-02 03:04:05,678 WARNING cvpipe.fake: stage says hello", file=sys.stderr, flush=True)
time.sleep(seconds)
if code:
    sys.exit(code)
with open(out, "w") as f:
    f.write(os.environ.get("CVPIPE_FLOW_RUN_ID", "none"))
"""


@pytest.fixture
def tiny_repo(tmp_path: Path) -> Path:
    """A git + DVC repo with three stages: ``make`` -> ``use``, and ``broken``, ``slow`` on their own."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "stage.py").write_text(STAGE_SCRIPT)
    stages = {
        "make": {"cmd": "python stage.py made.txt 0 0", "deps": ["stage.py"], "outs": ["made.txt"]},
        "use": {"cmd": "python stage.py used.txt 0 0", "deps": ["made.txt"], "outs": ["used.txt"]},
        "broken": {"cmd": "python stage.py broken.txt 0 3", "outs": ["broken.txt"]},
        "slow": {"cmd": "python stage.py slow.txt 300 0", "outs": ["slow.txt"]},
    }
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    run_tool(["git", "init", "-q"], repo)
    run_tool(dvc("init", "-q"), repo)
    return repo


@pytest.mark.slow
def test_stage_graph_is_dvcs(tiny_repo: Path) -> None:
    assert stage_graph(tiny_repo) == {"make": (), "use": ("make",), "broken": (), "slow": ()}


@pytest.mark.slow
def test_dvc_stage_runs_then_skips_outside_a_flow_run(tiny_repo: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tasks.dvc_stages")
    first = dvc_stage.fn("make", str(tiny_repo))
    assert isinstance(first, StageOutcome) and first.status == RAN and first.seconds > 0
    assert ("tasks.dvc_stages", logging.WARNING, "cvpipe.fake: stage says hello") in caplog.record_tuples
    assert dvc_stage.fn("make", str(tiny_repo)).status == SKIPPED
    assert dvc_stage.fn("make", str(tiny_repo), force=True).status == RAN
    assert (tiny_repo / "made.txt").read_text() == "none"  # no flow run outside Prefect


@pytest.mark.slow
def test_dvc_stage_failure_names_the_stage_and_shows_the_tail(tiny_repo: Path) -> None:
    with pytest.raises(StageFailedError, match=r"stage 'broken' failed \(dvc exit \d+\)") as error:
        dvc_stage.fn("broken", str(tiny_repo))
    assert any("cvpipe.fake: stage says hello" in line for line in error.value.tail)


@pytest.mark.slow
def test_dvc_stage_timeout_kills_the_stage(tiny_repo: Path) -> None:
    started = time.monotonic()
    with pytest.raises(StageTimeoutError, match="stage 'slow' ran past its time limit"):
        dvc_stage.fn("slow", str(tiny_repo), timeout_s=4)
    assert time.monotonic() - started < 40
    leftovers = [p for p in psutil.process_iter(["cmdline"]) if "slow.txt" in " ".join(p.info["cmdline"] or [])]
    assert leftovers == []


# -- concurrent runs ------------------------------------------------------------------------------------------


def test_a_second_holder_of_the_run_lock_is_refused_and_told_who_holds_it(tmp_path: Path) -> None:
    first = {"pid": os.getpid(), "host": "box", "flow_run_id": "id-1", "flow_run_name": "calm-cat", "since": "t0"}
    (tmp_path / ".dvc").mkdir()  # a DVC repository; .dvc/tmp comes with the lock, as in a fresh clone
    with project_run_lock(tmp_path, first) as path:
        assert path == tmp_path / RUN_LOCK
        # flock locks belong to an open file, so a second run in this very process is refused too.
        with pytest.raises(ProjectBusyError) as refused, project_run_lock(tmp_path, {"flow_run_id": "id-2"}):
            pass
    message = str(refused.value)
    assert "another cvpipe flow run is reproducing" in message and "\n" not in message
    assert "flow run 'calm-cat' (id-1)" in message and f"process {os.getpid()} on box" in message
    with project_run_lock(tmp_path, {"flow_run_id": "id-3"}):  # released when the first run ended
        assert json.loads(path.read_text())["flow_run_id"] == "id-3"


def test_a_killed_holder_leaves_no_stale_run_lock(tmp_path: Path) -> None:
    lock = tmp_path / RUN_LOCK
    lock.parent.mkdir(parents=True)
    code = (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(lock)!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('locked', flush=True)\n"
        "time.sleep(300)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(ProjectBusyError, match="has not recorded itself"), project_run_lock(tmp_path, {}):
            pass
    finally:
        holder.kill()
        holder.wait()
    with project_run_lock(tmp_path, {"pid": os.getpid()}):
        pass


def test_dvc_lock_holders_are_the_live_processes_in_dvcs_rwlock(tmp_path: Path) -> None:
    assert dvc_lock_holders(tmp_path) == []  # no .dvc/tmp/rwlock: nobody
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    alive, dead_pid = os.getppid(), int(dead.stdout)
    rwlock = tmp_path / DVC_RWLOCK
    rwlock.parent.mkdir(parents=True)
    command = "/venv/lib/python3.11/site-packages/dvc/__main__.py repro decode"
    rwlock.write_text(
        json.dumps(
            {
                "write": {str(tmp_path / "out"): {"pid": alive, "cmd": command}},
                "read": {
                    str(tmp_path / "dep"): [{"pid": alive, "cmd": command}, {"pid": dead_pid, "cmd": "dvc repro"}]
                },
            }
        )
    )
    assert dvc_lock_holders(tmp_path) == [f"PID {alive}: dvc repro decode"]
    with pytest.raises(ProjectBusyError, match=rf"DVC is reproducing stages in .* \(PID {alive}: dvc repro decode\)"):
        refuse_if_dvc_is_busy(tmp_path)
    rwlock.write_text("{")  # DVC rewriting it this instant: no answer rather than a crash
    assert dvc_lock_holders(tmp_path) == []


# -- scheduling -----------------------------------------------------------------------------------------------


def _gpu(stage: str) -> bool:
    return family(stage) in ("features", "train", "evaluate")


def test_scheduler_starts_a_stage_only_after_its_upstream_succeeded() -> None:
    scheduler = DagScheduler(GRAPH, max_parallel=4, gpu_slots=4, uses_gpu=_gpu)
    assert scheduler.ready() == ["download"]
    scheduler.start("download")
    assert scheduler.ready() == []
    scheduler.finish("download", ok=True)
    assert scheduler.ready() == ["ingest"]


def _run_to_decode(scheduler: DagScheduler) -> None:
    for stage in ("download", "ingest", "split", "decode"):
        assert scheduler.ready() == [stage]
        scheduler.start(stage)
        scheduler.finish(stage, ok=True)


def test_scheduler_bounds_parallel_and_gpu_stages() -> None:
    scheduler = DagScheduler(GRAPH, max_parallel=3, gpu_slots=2, uses_gpu=_gpu)
    _run_to_decode(scheduler)
    first = scheduler.ready()
    assert len(first) == 2 and all(_gpu(stage) for stage in first)  # 3 may run, 2 GPU slots
    unbounded = DagScheduler(GRAPH, max_parallel=3, gpu_slots=0, uses_gpu=_gpu)
    _run_to_decode(unbounded)
    assert len(unbounded.ready()) == 3


def test_scheduler_failure_stops_only_the_downstream_stages() -> None:
    scheduler = DagScheduler(GRAPH, max_parallel=8, gpu_slots=0, uses_gpu=_gpu)
    _run_to_decode(scheduler)
    while ready := scheduler.ready():
        for stage in ready:
            scheduler.start(stage)
            scheduler.finish(stage, ok=stage != "train@feature_extraction_aug")
    assert scheduler.failed == ["train@feature_extraction_aug"]
    assert scheduler.not_run() == ["train@fine_tuning", "evaluate@fine_tuning"]
    assert {"train@scratch", "evaluate@scratch", "train@feature_extraction"} <= set(scheduler.succeeded)


def test_failure_message_names_failed_and_unrun_stages() -> None:
    report = RunReport(failures={"train@scratch": "exit 1"}, not_run=["evaluate@scratch"])
    assert not report.ok
    message = report.failure_message()
    assert (
        "train@scratch (exit 1)" in message and "not run because an upstream stage failed: evaluate@scratch" in message
    )


# -- params ---------------------------------------------------------------------------------------------------


def test_changed_keys_lists_dotted_keys() -> None:
    before = {"split": {"seed": 1, "per_class": {"train": 2}}, "image": {"size": 32}}
    after = {"split": {"seed": 7, "per_class": {"train": 2}}, "image": {"size": 64}}
    assert changed_keys(before, after) == ["split.seed", "image.size"]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    return tmp_path


def test_params_yaml_itself_is_validated_and_left_alone(project: Path) -> None:
    before = (project / "params.yaml").read_text()
    assert apply_params_file(project, "params.yaml") == []
    assert (project / "params.yaml").read_text() == before


def test_params_file_is_merged_into_params_yaml_keeping_comments(project: Path) -> None:
    (project / "nightly.yaml").write_text("split:\n  seed: 7\nimage:\n  size: 64\n")
    assert apply_params_file(project, "nightly.yaml") == ["split.seed", "image.size"]
    text = (project / "params.yaml").read_text()
    assert "# cvpipe parameters" in text and "# phash bits" in text
    params = yaml.safe_load(text)
    assert params["split"]["seed"] == 7 and params["image"]["size"] == 64
    assert params["split"]["per_class"] == {"train": 1000, "val": 500, "test": 1000}
    assert apply_params_file(project, "nightly.yaml") == []


def test_invalid_params_file_writes_nothing(project: Path) -> None:
    before = (project / "params.yaml").read_text()
    (project / "bad.yaml").write_text("split:\n  sede: 7\n")
    with pytest.raises(ConfigError, match=r"split\.sede"):
        apply_params_file(project, "bad.yaml")
    with pytest.raises(ConfigError, match="no such overlay"):
        apply_params_file(project, "missing.yaml")
    assert (project / "params.yaml").read_text() == before


# -- lineage and artifacts ------------------------------------------------------------------------------------


def _write_json(path: Path, payload: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))


def test_lineage_and_metrics_come_from_the_stage_reports(tmp_path: Path) -> None:
    _write_json(
        tmp_path / "data/raw/SOURCE.json",
        {"source": "synthetic", "archive": {"sha256": "ab" * 32, "bytes": 10}, "retrieved_at": "2026-01-01"},
    )
    _write_json(tmp_path / "data/manifest/report.json", {"summary": {"members": 91, "quarantined": 3}})
    _write_json(tmp_path / "data/splits/report.json", {"counts": {"train": {"cat": 20, "dog": 20}}})
    _write_json(tmp_path / "reports/metrics/scratch.json", {"accuracy": 0.7, "loss": {"test": 0.6}, "roc": [1, 2]})
    facts = lineage(tmp_path)
    assert facts["archive_sha256"] == "ab" * 32 and facts["quarantined"] == 3 and facts["members"] == 91
    assert facts["split_counts"] == {"train": {"cat": 20, "dog": 20}}
    assert metrics_rows(tmp_path) == [{"variant": "scratch", "accuracy": 0.7, "loss.test": 0.6}]
    report = RunReport(outcomes={"split": StageOutcome("split", RAN, 1.5)}, failures={"train@x": "a | b"})
    markdown = summary_markdown(report, facts, {"flow_run_id": "id-1", "flow_run_name": "calm-cat"})
    assert "| split | ran | 1.5 |" in markdown and "**failed**: a / b" in markdown
    assert "ab" * 32 in markdown and "quarantined: 3 of 91" in markdown and "train: cat 20, dog 20" in markdown


def test_lineage_of_an_empty_project_is_empty(tmp_path: Path) -> None:
    assert lineage(tmp_path) == {} and metrics_rows(tmp_path) == []
    assert "no data stage outputs yet" in summary_markdown(RunReport(), {}, {})


# -- environment and command line -----------------------------------------------------------------------------


def test_prefect_defaults_are_project_local_and_yield_to_the_environment(tmp_path: Path) -> None:
    defaults = prefect_env_defaults(tmp_path, {})
    assert defaults["PREFECT_HOME"] == str(tmp_path.resolve() / ".prefect")
    assert defaults["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false" and defaults["DO_NOT_TRACK"] == "1"
    assert int(defaults["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"]) >= 60
    assert "PREFECT_HOME" not in prefect_env_defaults(tmp_path, {"PREFECT_HOME": "/elsewhere"})


def test_command_line_maps_to_flow_parameters(tmp_path: Path) -> None:
    args = build_parser().parse_args(["--target", "decode", "--target", "train", "--force", "--max-parallel", "3"])
    params = flow_parameters(args, tmp_path)
    assert params["targets"] == ["decode", "train"] and params["force"] is True and params["max_parallel"] == 3
    assert params["project_dir"] == str(tmp_path)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--cron", "0 2 * * *", "--interval", "10"])
