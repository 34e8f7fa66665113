"""README.md's commands, typed as the README writes them, by a user whose shell has no venv on PATH.

One small workspace (the real dvc.yaml, tiny synthetic data) with ``.venv`` linked to the interpreter running the
tests (what ``make install`` creates), driven through a bare environment: ``PATH=/usr/bin:/bin``, no
``VIRTUAL_ENV``. That is how a new user met ``cvpipe: command not found`` (issue 14).
"""

from __future__ import annotations

import hashlib
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cvpipe.pipeline.workspace import prepare_workspace
from tests.e2e.test_dvc_pipeline import ROOT, TINY

pytestmark = pytest.mark.slow

PARAMS = {**TINY, "features": {"weights": "none", "batch_size": 16}}
UP_TO_FEATURES = {"download", "ingest", "split", "decode", "features"}
# TensorFlow's start-up lines a user saw 72 times in a first `dvc repro` (issue 14).
TF_NOISE = re.compile(r"absl::InitializeLog|oneDNN custom operations|cuda drivers|cuInit|cpu_feature_guard")


IDENTITY = {"NAME": "cvpipe-tests", "EMAIL": "tests@cvpipe.invalid"}


def bare_env(home: Path) -> dict[str, str]:
    """A new user's shell: system PATH only, no active venv, no telemetry, no internet weights."""
    return {
        **{f"GIT_{who}_{what}": value for who in ("AUTHOR", "COMMITTER") for what, value in IDENTITY.items()},
        "HOME": str(home),
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "DVC_NO_ANALYTICS": "1",
        "DO_NOT_TRACK": "1",
        "CVPIPE_WEIGHTS_ORIGIN": "off",
    }


def sh(command: str, cwd: Path, env: dict[str, str], ok: bool = True) -> subprocess.CompletedProcess[str]:
    """Run one README line with bash, as a user types it."""
    result = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if ok:
        assert result.returncode == 0, f"{command} (exit {result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result


def install(project: Path) -> None:
    """``make install``'s result: ``.venv/`` holding cvpipe and DVC (the tests' own interpreter, linked)."""
    (project / ".venv").symlink_to(Path(sys.prefix))


def digests(project: Path, folders: tuple[str, ...] = ("data", "models", "reports")) -> dict[str, str]:
    """sha256 of every file under the DVC-owned folders, by relative path."""
    found = {}
    for folder in folders:
        for path in sorted((project / folder).rglob("*")):
            if path.is_file():
                found[str(path.relative_to(project))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    base = tmp_path_factory.mktemp("readme")
    workspace = prepare_workspace(ROOT, base / "cvpipe", PARAMS)
    install(workspace)
    (workspace / ".git/info/exclude").write_text(".venv\n", encoding="utf-8")
    home = base / "home"
    home.mkdir()
    return workspace, bare_env(home)


def test_dvc_repro_runs_with_no_venv_on_path_and_no_tensorflow_noise(project: tuple[Path, dict[str, str]]) -> None:
    workspace, env = project
    assert sh("command -v cvpipe", workspace, env, ok=False).returncode != 0  # really not on PATH
    result = sh(".venv/bin/dvc repro features", workspace, env)  # README: "The real experiment"
    output = result.stdout + result.stderr
    assert set(re.findall(r"Running stage '([^']+)'", output)) == UP_TO_FEATURES
    assert "command not found" not in output
    # features loads TensorFlow (Keras's backend): none of its C++ start-up lines reach the user.
    assert not TF_NOISE.search(output), [line for line in output.splitlines() if TF_NOISE.search(line)]
    assert sh(".venv/bin/dvc repro features", workspace, env).stdout.count("didn't change, skipping") == len(
        UP_TO_FEATURES
    )


def test_remote_sequence_gives_a_fresh_clone_bit_identical_outputs(
    project: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    workspace, env = project
    assert (workspace / "dvc.lock").is_file(), "runs after the repro test"
    remote = tmp_path / "remote"
    # README "Sharing data and models", with a local-folder remote in place of s3://.
    for line in (
        f".venv/bin/dvc remote add -d storage {remote}",
        "git add .dvc/config dvc.lock && git commit -qm 'DVC remote and outputs'",
        ".venv/bin/dvc push",
    ):
        sh(line, workspace, env)
    clone = tmp_path / "cvpipe"
    sh(f"git clone -q {workspace} {clone}", tmp_path, env)
    install(clone)  # README: make install
    # The README's `dvc pull` takes every stage's outputs; this workspace ran the DAG up to features only.
    sh(".venv/bin/dvc pull --with-deps features", clone, env)
    assert digests(clone, ("data/raw", "data/manifest", "data/splits", "data/cache/images", "data/cache/vgg16")) == (
        digests(workspace, ("data/raw", "data/manifest", "data/splits", "data/cache/images", "data/cache/vgg16"))
    )
    status = sh(".venv/bin/dvc status features", clone, env).stdout
    assert "up to date" in status.lower(), status


def test_lineage_model_of_a_file_inside_a_folder_output_matches(project: tuple[Path, dict[str, str]]) -> None:
    workspace, env = project
    out = sh(".venv/bin/cvpipe lineage model data/cache/images/test.npy", workspace, env).stdout
    assert "(matches the file on disk; in dvc.lock)" in out.splitlines()[0], out


def test_audit_by_hand_leaves_the_pipeline_unchanged(project: tuple[Path, dict[str, str]]) -> None:
    workspace, env = project
    sh(".venv/bin/dvc repro audit", workspace, env)
    record = workspace / "reports/lineage/audit/record.json"
    before = record.read_bytes()
    out = sh(".venv/bin/cvpipe audit", workspace, env).stdout  # README: "Auditing lineage"
    assert out.startswith("audit (") and "passed" in out
    assert record.read_bytes() == before  # DVC's record stays; the run by hand has its own
    assert (workspace / "reports/lineage-by-hand/audit/record.json").is_file()
    assert "up to date" in sh(".venv/bin/dvc status audit", workspace, env).stdout


def test_params_problems_are_all_listed_and_check_sees_missing_files(
    project: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    workspace, env = project
    bad = tmp_path / "params.yaml"
    bad.write_text("train:\n  scratch:\n    epoch: 3\ningest:\n  wokers: 2\n", encoding="utf-8")
    result = sh(f".venv/bin/cvpipe check --params {bad}", workspace, env, ok=False)
    assert result.returncode == 2
    assert "ingest.wokers: unknown key" in result.stderr and "train.scratch.epoch: unknown key" in result.stderr
    assert "more problem" not in result.stderr and "Traceback" not in result.stderr
    bad.write_text("data:\n  source: local\n  path: nosuch.zip\nfeatures:\n  weights: nosuch.h5\n")
    result = sh(f".venv/bin/cvpipe check --params {bad}", workspace, env, ok=False)
    assert result.returncode == 2 and "data.path: nosuch.zip does not exist" in result.stderr
    assert "features.weights: nosuch.h5 is not a file" in result.stderr


def test_usage_errors_come_before_tensorflow(project: tuple[Path, dict[str, str]]) -> None:
    workspace, env = project
    for line in (".venv/bin/cvpipe train nosuch", ".venv/bin/cvpipe train nosuch --inputs x --model m --out o"):
        started = time.monotonic()
        result = sh(line, workspace, env, ok=False)
        assert result.returncode == 2 and "unknown training variant 'nosuch'" in result.stderr, result.stderr
        assert result.stderr.count("\n") == 1 and time.monotonic() - started < 3.0  # TensorFlow alone takes ~4 s


def test_kaggle_offline_fails_at_once_with_one_line(project: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    workspace, env = project
    params = tmp_path / "params.yaml"
    params.write_text("data:\n  source: kaggle\n  retries: 3\n", encoding="utf-8")
    offline = {**env, "KAGGLE_USERNAME": "someone", "KAGGLE_KEY": "0" * 32}
    offline["CVPIPE_KAGGLE_ENDPOINT"] = "http://no-such-host.invalid"
    started = time.monotonic()
    result = sh(
        f".venv/bin/cvpipe download --out {tmp_path}/raw --staging {tmp_path}/staging --params {params}",
        workspace,
        offline,
        ok=False,
    )
    assert result.returncode == 2 and time.monotonic() - started < 10.0
    assert "no-such-host.invalid does not resolve" in result.stderr and result.stderr.count("\n") == 1, result.stderr


def test_an_unreachable_openlineage_backend_costs_seconds_not_minutes(project: tuple[Path, dict[str, str]]) -> None:
    workspace, env = project
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    result = sh(".venv/bin/dvc repro -f -s split", workspace, {**env, "OPENLINEAGE_URL": f"http://127.0.0.1:{port}"})
    assert time.monotonic() - started < 30.0  # the client's defaults took ~9 s per event
    output = result.stdout + result.stderr
    # One warning naming the cause (and track_stage's count at the end), no urllib3 retry lines.
    assert output.count("not sent (") == 1 and "kept in" in output and "Retrying" not in output, output
    events = (workspace / "reports/lineage/split/events.jsonl").read_text().splitlines()
    assert len(events) == 2


def test_small_commands_say_what_to_do(project: tuple[Path, dict[str, str]]) -> None:
    workspace, env = project
    result = sh(".venv/bin/cvpipe metrics", workspace, env, ok=False)  # no variant evaluated in this workspace
    assert result.returncode == 2 and "run `dvc repro`" in result.stderr
    result = sh(".venv/bin/cvpipe lineage diff nosuchrev HEAD", workspace, env, ok=False)
    assert result.returncode == 2 and "git knows no revision 'nosuchrev'" in result.stderr, result.stderr
    assert sh(".venv/bin/dvc dag --md", workspace, env).stdout.startswith("```mermaid")


def test_debug_keeps_tensorflow_lines(project: tuple[Path, dict[str, str]]) -> None:
    workspace, env = project
    # Last in this module: it rewrites the features stage's outputs.
    result = sh(".venv/bin/cvpipe --debug features", workspace, env)
    assert "absl::InitializeLog" in result.stderr  # filtered only when not debugging
