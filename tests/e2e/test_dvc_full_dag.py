"""The whole DAG (data, VGG16 features, five variants, evaluation) under the real DVC CLI, on tiny data."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from cvpipe.config import VARIANTS
from cvpipe.pipeline.commands import dvc, run_tool
from cvpipe.pipeline.workspace import prepare_workspace
from tests.e2e.test_dvc_pipeline import ROOT, TINY, repro, set_param

pytestmark = pytest.mark.slow

TINY_MODELS: dict[str, Any] = {
    **TINY,
    "features": {"weights": "none", "batch_size": 16},
    "train": {name: {"epochs": 1, "batch_size": 8} for name in VARIANTS},
    "evaluate": {"batch_size": 16},
}


def dag_stages(dvc_yaml: Path) -> set[str]:
    """Every stage of dvc.yaml by DVC's name (a foreach stage per item: ``train@scratch``)."""
    stages = yaml.safe_load(dvc_yaml.read_text(encoding="utf-8"))["stages"]
    return {
        f"{name}@{item}" if "foreach" in body else name
        for name, body in stages.items()
        for item in body.get("foreach") or [None]
    }


ALL_STAGES = dag_stages(ROOT / "dvc.yaml")
assert {f"train@{name}" for name in VARIANTS} <= ALL_STAGES


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = prepare_workspace(ROOT, tmp_path_factory.mktemp("full") / "ws", TINY_MODELS)
    ran, _ = repro(path)
    assert ran == ALL_STAGES
    return path


def test_every_variant_has_a_model_metrics_and_plots(workspace: Path) -> None:
    shown = json.loads(run_tool(dvc("metrics", "show", "--json"), workspace).stdout)
    files = next(iter(shown.values()))["data"]
    for name in VARIANTS:
        assert (workspace / f"models/{name}.keras").stat().st_size > 0
        metrics = files[f"reports/metrics/{name}.json"]["data"]
        assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["loss"] > 0
        assert metrics["n_samples"] == 20
        assert (workspace / f"reports/plots/{name}/confusion.csv").exists()
        assert (workspace / f"reports/plots/{name}/roc.csv").exists()
    html = workspace / "plots.html"
    run_tool(dvc("plots", "show", "-o", str(workspace / "plots_out")), workspace)
    assert (workspace / "plots_out/index.html").read_text().count("<div") >= 7
    assert not html.exists()


def test_nothing_reruns_then_one_variant_reruns_alone(workspace: Path) -> None:
    ran, skipped = repro(workspace)
    assert ran == set() and skipped == ALL_STAGES
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["train"]["scratch_aug"]["epochs"] = 2
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    ran, _ = repro(workspace)
    assert ran == {"train@scratch_aug", "evaluate@scratch_aug", "report"}


def test_features_change_reruns_features_and_their_readers_only(workspace: Path) -> None:
    set_param(workspace, "features", "dtype", "float16")
    ran, _ = repro(workspace)
    # The feature cache's readers: the dense head, and the two audits over the cached VGG16 vectors.
    readers = {"train@feature_extraction", "evaluate@feature_extraction", "label_audit", "embedding_audit"}
    assert ran == {"features", *readers, "report"}
    set_param(workspace, "features", "weights", "none")  # unchanged value: nothing to do
    assert repro(workspace)[0] == set()


def test_push_then_pull_in_a_fresh_clone_is_bit_identical(workspace: Path, tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    run_tool(dvc("remote", "add", "-d", "local", str(remote)), workspace)
    run_tool(["git", "add", "-A"], workspace)
    run_tool(["git", "commit", "-qm", "tiny experiment"], workspace)
    run_tool(dvc("push"), workspace)
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(workspace), str(clone)], check=True)
    run_tool(dvc("pull"), clone)
    tracked = [path for path in workspace.rglob("*") if path.is_file() and _dvc_output(path, workspace)]
    assert len(tracked) > 20
    for path in tracked:
        twin = clone / path.relative_to(workspace)
        assert twin.read_bytes() == path.read_bytes(), path
    assert run_tool(dvc("status"), clone).stdout.strip().endswith("Data and pipelines are up to date.")


def _dvc_output(path: Path, root: Path) -> bool:
    relative = path.relative_to(root).as_posix()
    return relative.startswith(("data/", "models/", "reports/"))
