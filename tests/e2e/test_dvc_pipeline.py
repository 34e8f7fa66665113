"""The real dvc.yaml, run by the real DVC CLI in a temp git repo, on tiny synthetic data."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from cvpipe.pipeline.commands import dvc, run_tool
from cvpipe.pipeline.workspace import prepare_workspace

ROOT = Path(__file__).resolve().parents[2]
TINY: dict[str, Any] = {
    "data": {"source": "synthetic", "synthetic": {"per_class": 40, "min_side": 64, "max_side": 96}},
    "split": {"per_class": {"train": 20, "val": 6, "test": 10}},
    "image": {"size": 32},
    # The MNIST stages on a few drawn digits: offline, and a second or two of training.
    "mnist": {"source": "synthetic", "epochs": 1, "synthetic": {"train": 200, "test": 50}},
}
DATA_STAGES = ["download", "ingest", "split", "decode"]
DETERMINISTIC_OUTPUTS = [
    "data/raw/images.zip",
    "data/manifest/images.parquet",
    "data/manifest/report.json",
    "data/splits/splits.parquet",
    "data/splits/report.json",
    "data/cache/images/train.npy",
    "data/cache/images/val.npy",
    "data/cache/images/test.npy",
    "data/cache/images/train_labels.npy",
]

pytestmark = pytest.mark.slow


def repro(workspace: Path, *targets: str) -> tuple[set[str], set[str]]:
    """Run ``dvc repro``; return (stages that ran, stages DVC skipped as unchanged)."""
    output = run_tool(dvc("repro", *targets), workspace).stdout
    ran = set(re.findall(r"Running stage '([^']+)'", output))
    skipped = set(re.findall(r"Stage '([^']+)' didn't change, skipping", output))
    return ran, skipped


def lock(workspace: Path) -> dict[str, Any]:
    return yaml.safe_load((workspace / "dvc.lock").read_text())["stages"]


def set_param(workspace: Path, section: str, key: str, value: Any) -> None:
    path = workspace / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params[section][key] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_workspace(ROOT, tmp_path_factory.mktemp("e2e") / "ws", TINY)


def test_repro_runs_every_data_stage_then_nothing(workspace: Path) -> None:
    ran, _ = repro(workspace, "decode")
    assert ran == set(DATA_STAGES)
    for output in DETERMINISTIC_OUTPUTS:
        assert (workspace / output).stat().st_size > 0, output
    ran, skipped = repro(workspace, "decode")
    assert ran == set()
    assert skipped == set(DATA_STAGES)


def test_seed_change_reruns_split_and_downstream_only(workspace: Path) -> None:
    before = lock(workspace)
    set_param(workspace, "split", "seed", 7)
    ran, skipped = repro(workspace, "decode")
    assert ran == {"split", "decode"}
    assert {"download", "ingest"} <= skipped
    after = lock(workspace)
    assert after["download"] == before["download"] and after["ingest"] == before["ingest"]
    assert after["split"]["params"]["params.yaml"]["split.seed"] == 7
    assert after["split"]["outs"] != before["split"]["outs"]


def test_same_inputs_give_byte_identical_outputs(workspace: Path, tmp_path: Path) -> None:
    current = yaml.safe_load((workspace / "params.yaml").read_text())
    twin = prepare_workspace(ROOT, tmp_path / "twin", current)
    set_param(twin, "ingest", "workers", 1)
    set_param(twin, "image", "workers", 1)
    repro(twin, "decode")
    for output in DETERMINISTIC_OUTPUTS:
        assert (twin / output).read_bytes() == (workspace / output).read_bytes(), output


def test_a_code_change_makes_exactly_the_stages_that_run_it_stale(workspace: Path) -> None:
    # archive.py decides which bytes ingest, split (its near-duplicate candidates' pixels) and decode read
    # (dvc.yaml lists it for them and the audit, not for the others).
    repro(workspace, "decode")
    code = workspace / "cvpipe/imaging/archive.py"
    original = code.read_bytes()
    code.write_bytes(original + b"\n# a change\n")
    try:
        status = json.loads(run_tool(dvc("status", "--json", *DATA_STAGES), workspace).stdout or "{}")
    finally:
        code.write_bytes(original)
    assert set(status) == {"ingest", "split", "decode"}
    assert repro(workspace, "decode")[0] == set()
